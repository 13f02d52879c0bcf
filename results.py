"""The result records, each defined once: a prediction, an image that could not be read, a scored row.

A record is an ordered list of typed, documented fields. Everything that shows a result comes from
it: the JSON answer (`Record.answer`, what `predict`, the CLI's line and the HTTP API give), the
Arrow schema of result files (`Record.arrow_schema`, for `predict --out` and `score`) and the
OpenAPI schema (`Record.model`, the pydantic model the web app documents). Adding a field to a
result is one entry in its record; nothing else spells the fields out.

pyarrow and pydantic are imported where used: importing this module costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

# The kinds a field may have: Python type, Arrow type (given the head's labels) and JSON rounding.
(STR, INT, SCORE, BOOL, STRINGS, LABEL_SCORES, EMOJI_SCORES, NEIGHBOURS, POST_TEXT, CHANNELS, LABEL_CHANNELS,
 CLIP, STORED_CLIP, TIMELINE) = (
    "str", "int", "score", "bool", "strings", "label_scores", "emoji_scores", "neighbours", "post_text", "channels",
    "label_channels", "clip", "stored_clip", "timeline")
DIGITS = 4  # scores in JSON answers are rounded to this many digits (files keep float32)
CHANNEL_NAMES = ("image", "text", "frames")  # the channels an answer's `channels` holds (heads/fusion.py)


@dataclass(frozen=True)
class ResultField:
    """One field of a result: its name, kind (one of the constants above) and what it means."""

    name: str
    kind: str
    doc: str
    nullable: bool = False  # may be null (JSON) / missing (Arrow)
    omitted_when_none: bool = False  # the key is left out of a JSON answer when the value is None

    def __post_init__(self) -> None:
        if self.kind not in _PYTHON:
            raise ValueError(f"field {self.name!r}: unknown kind {self.kind!r}; choose one of {sorted(_PYTHON)}")


@dataclass(frozen=True)
class Record:
    """An ordered set of fields: the keys of a JSON answer in order, and the columns of its files."""

    name: str  # the schema's name in the OpenAPI document
    doc: str
    fields: tuple[ResultField, ...]
    # Arrow (Parquet) files start with these columns, in this order; the other fields follow in answer
    # order. Empty: the columns keep the answer order. (JSON lines are answers, in answer order.)
    leading_columns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names) or not set(self.leading_columns) <= set(names):
            raise ValueError(f"record {self.name}: field names must be unique and leading columns among them")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def columns(self) -> tuple[ResultField, ...]:
        """Gives the fields in file order."""
        by_name = {f.name: f for f in self.fields}
        lead = tuple(by_name[name] for name in self.leading_columns)
        return lead + tuple(f for f in self.fields if f.name not in self.leading_columns)

    def answer(self, **values) -> dict:
        """Gives the JSON answer for one result: every field (values by name), scores rounded; a
        field left out when it may be and its value is None. An unknown or missing value is a TypeError."""
        if set(values) != set(self.names):
            missing, extra = set(self.names) - set(values), set(values) - set(self.names)
            raise TypeError(f"{self.name} takes {self.names}; missing {sorted(missing)}, unknown {sorted(extra)}")
        out = {}
        for f in self.fields:
            value = values[f.name]
            if value is None and f.omitted_when_none:
                continue
            out[f.name] = _rounded(f.kind, value)
        return out

    def arrow_schema(self, labels: list[str], *, after: "Record | None" = None):
        """Gives the pyarrow schema of this record's files for a head's `labels`; with `after`, that
        record's columns come first (a file holding both, e.g. predictions and unreadable images)."""
        import pyarrow as pa

        seen, columns = set(), []
        for f in (*(after.columns() if after else ()), *self.columns()):
            if f.name not in seen:
                seen.add(f.name)
                columns.append(pa.field(f.name, _arrow_type(f.kind, labels)))
        return pa.schema(columns)

    def model(self):
        """Gives the pydantic model of the JSON answer (the OpenAPI schema), named `name`."""
        return _model(self)


def _rounded(kind: str, value):
    if value is None:
        return None
    if kind == SCORE:
        return round(float(value), DIGITS)
    if kind in (LABEL_SCORES, EMOJI_SCORES):
        return {k: round(float(v), DIGITS) for k, v in value.items()}
    if kind == CHANNELS:
        return {k: _rounded(LABEL_SCORES, v) for k, v in value.items()}
    if kind == TIMELINE:
        return [{"t_ms": int(moment["t_ms"]), "emotions": list(moment["emotions"]),
                 "emotion_scores": _rounded(LABEL_SCORES, moment["emotion_scores"])} for moment in value]
    if kind in (CLIP, STORED_CLIP):
        return dict(value)
    if kind == POST_TEXT:
        return {"caption": value["caption"], "ocr": [{"text": line["text"], "score": round(float(line["score"]), DIGITS),
                                                       "box": [[round(float(c), 1) for c in point] for point in line["box"]]}
                                                      for line in value["ocr"]]}
    return value


_PYTHON = {STR: str, INT: int, SCORE: float, BOOL: bool, STRINGS: list[str],
           LABEL_SCORES: dict[str, float], EMOJI_SCORES: dict[str, float], NEIGHBOURS: None,
           POST_TEXT: None, CHANNELS: dict[str, dict[str, float] | None], LABEL_CHANNELS: dict[str, str],
           CLIP: None, STORED_CLIP: None, TIMELINE: None}


def _arrow_type(kind: str, labels: list[str]):
    import pyarrow as pa

    if kind == NEIGHBOURS:
        return pa.list_(pa.struct([pa.field(f.name, _arrow_type(f.kind, labels)) for f in NEIGHBOUR.columns()]))
    if kind == POST_TEXT:
        line = pa.struct([("text", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.list_(pa.float32())))])
        return pa.struct([("caption", pa.string()), ("ocr", pa.list_(line))])
    if kind == CHANNELS:
        return pa.struct([(name, _arrow_type(LABEL_SCORES, labels)) for name in CHANNEL_NAMES])
    if kind in (CLIP, STORED_CLIP):
        stored = [("format", pa.string()), ("duration_ms", pa.int64()), ("frame_count", pa.int64())]
        return pa.struct(stored if kind == STORED_CLIP else stored + [
            ("frames_used", pa.int64()), ("truncated", pa.bool_()), ("peaks", pa.map_(pa.string(), pa.int64()))])
    if kind == TIMELINE:
        return pa.list_(pa.struct([("t_ms", pa.int64()), ("emotions", pa.list_(pa.string())),
                                   ("emotion_scores", _arrow_type(LABEL_SCORES, labels))]))
    if kind == LABEL_CHANNELS:
        return pa.map_(pa.string(), pa.string())
    return {STR: pa.string(), INT: pa.int64(), SCORE: pa.float32(), BOOL: pa.bool_(),
            STRINGS: pa.list_(pa.string()),
            LABEL_SCORES: pa.struct([(name, pa.float32()) for name in labels]),  # one column per label
            EMOJI_SCORES: pa.map_(pa.string(), pa.float32())}[kind]


@lru_cache(maxsize=None)
def _model(record: Record):
    from pydantic import Field, create_model

    definitions = {}
    for f in record.fields:
        python = {NEIGHBOURS: list[NEIGHBOUR.model()] if f.kind == NEIGHBOURS else None,
                  POST_TEXT: _post_text_model() if f.kind == POST_TEXT else None,
                  CLIP: _clip_model(True) if f.kind == CLIP else None,
                  STORED_CLIP: _clip_model(False) if f.kind == STORED_CLIP else None,
                  TIMELINE: list[_moment_model()] if f.kind == TIMELINE else None}.get(f.kind) or _PYTHON[f.kind]
        if f.omitted_when_none:  # not required: the key may be absent
            definitions[f.name] = (python | None, Field(default=None, description=f.doc))
        else:
            definitions[f.name] = (python | None if f.nullable else python, Field(description=f.doc))
    return create_model(record.name, __doc__=record.doc, **definitions)


@lru_cache(maxsize=None)
def _post_text_model():
    from pydantic import Field, create_model

    line = create_model("OcrLine", __doc__="A line of text read in the image.",
                        text=(str, Field(description="the words read")),
                        score=(float, Field(description="the OCR engine's confidence, 0 to 1")),
                        box=(list[list[float]], Field(description="its four corners [x, y] in the image's pixels")))
    return create_model("PostText", __doc__="The words of a post: its caption and the text read in its image.",
                        caption=(str | None, Field(description="the caption as given, cleaned (null: none)")),
                        ocr=(list[line], Field(description="lines read in the image, in reading order "
                                                           "(empty: none, or OCR off)")))


@lru_cache(maxsize=None)
def _clip_model(with_answer: bool):
    from pydantic import Field, create_model

    fields = dict(
        format=(str, Field(description="GIF, WEBP or PNG (animated), MP4, MOV or WEBM")),
        duration_ms=(int, Field(description="the clip's length in milliseconds")),
        frame_count=(int, Field(description="frames in the file")))
    if not with_answer:
        return create_model("StoredClip", __doc__="A stored clip: its vector pools its frames'.", **fields)
    return create_model(
        "Clip", __doc__="An animation or video: frames chosen by time, pooled into one answer.", **fields,
        frames_used=(int, Field(description="frames the answer looked at (near-identical frames count once)")),
        truncated=(bool, Field(description="true: decoding stopped at the time budget or a frame limit, and the "
                                           "answer is made of the frames decoded until then")),
        peaks=(dict[str, int], Field(description="per label, the time (ms) of the frame whose score for it is "
                                                 "highest")))


@lru_cache(maxsize=None)
def _moment_model():
    from pydantic import Field, create_model

    return create_model("Moment", __doc__="One chosen frame of a clip and what it alone shows.",
                        t_ms=(int, Field(description="the frame's time in the clip, in milliseconds")),
                        emotions=(list[str], Field(description="labels over their threshold in this frame")),
                        emotion_scores=(dict[str, float], Field(description="score per label in this frame")))


# ---- the fields, each defined once ---------------------------------------------------------

IMAGE = ResultField("image", STR, "the uploaded file's name")
EMOTION_SCORES = ResultField("emotion_scores", LABEL_SCORES, "score per label, 0 to 1, in label order")
PREDICTED_EMOTIONS = ResultField("predicted_emotions", STRINGS, "labels over their tuned threshold, strongest first")
ALLOWED_EMOJIS = ResultField("allowed_emojis", STRINGS, "emojis that fit the predicted labels, best fit first")
REACTION_SCORES = ResultField("reaction_scores", EMOJI_SCORES,
                              "fit score per allowed emoji, best first: its weight x the score of the best "
                              "predicted label allowing it")
BLOCKED_EMOJIS = ResultField("blocked_emojis", STRINGS, "emojis a predicted label rules out: never offered")

NEIGHBOUR = Record("Neighbour", "An indexed image near the query, most similar first.", (
    ResultField("id", INT, "the image's id in the store"),
    ResultField("path", STR, "the file the image was embedded from, as recorded at embed time"),
    ResultField("labels", STRINGS, "the image's stored labels"),
    ResultField("split", STR, "train, val or test"),
    ResultField("similarity", SCORE, "cosine similarity of the CLIP embeddings, -1 to 1"),
    ResultField("clip", STORED_CLIP, "set when the stored image is a clip (an animation or video): its format, length "
                              "and frames (left out for still images)", omitted_when_none=True),
))

PREDICTION = Record("Prediction", "One image's answer, the same object `cli.py predict` prints.", (
    IMAGE, PREDICTED_EMOTIONS, ALLOWED_EMOJIS, BLOCKED_EMOJIS, EMOTION_SCORES, REACTION_SCORES,
    ResultField("novelty", SCORE, "0 to 1: the share of indexed images closer to their nearest indexed image than "
                                  "this image is to its own (null: no store)", nullable=True),
    ResultField("unsure", BOOL, "novelty at or above the server's level: the image is unlike anything indexed, "
                                "treat the answer as a guess (null: no store)", nullable=True),
    ResultField("neighbours", NEIGHBOURS, "the k nearest indexed images (left out without a store)",
                omitted_when_none=True),
    ResultField("neighbours_exact", BOOL, "true: the neighbours are the exact k nearest (a flat index); false: an "
                                          "approximate index's, exact similarities but nearer images may be missing "
                                          "(its measured recall@10 is in the store manifest; more likely when "
                                          "novelty is high) (left out without a store)", omitted_when_none=True),
    ResultField("text", POST_TEXT, "the post's words: its caption and the lines read in its image"),
    ResultField("channels", CHANNELS, "each channel's own score per label: image (the picture alone; for a clip "
                                      "its pooled frames), text (the words alone; null when the post has none or "
                                      "the head reads no words) and, for a clip only, frames (per label the "
                                      "highest score of a single frame)"),
    ResultField("decided_by", LABEL_CHANNELS, "per predicted emotion, the channel whose own score for it is "
                                              "higher: image or text, and frames in place of image for a clip"),
    ResultField("clip", CLIP, "for an animation or video: its format, length, frames used, whether decoding "
                              "was cut short, and the frame that carried each label most (left out for a "
                              "still image)", omitted_when_none=True),
    ResultField("timeline", TIMELINE, "for an animation or video, one entry per chosen frame in time order: its "
                                      "time and what that frame alone shows (left out for a still image)",
                omitted_when_none=True),
), leading_columns=("image", "emotion_scores", "predicted_emotions", "allowed_emojis", "reaction_scores",
                    "blocked_emojis"))

UNREADABLE = Record("UnreadableImage", "An image that could not be read or decoded; the others are answered.", (
    IMAGE,
    ResultField("error", STR, "what went wrong and how to fix it"),
    ResultField("kind", STR, "invalid, unsupported or too_large"),
))

SCORED_ROW = Record("ScoredRow", "One stored image scored by `cli.py score` from its stored vector.", (
    ResultField("id", INT, "the image's id in the store"),
    ResultField("path", STR, "the file the image was embedded from, as stored"),
    ResultField("split", STR, "train, val or test"),
    EMOTION_SCORES, PREDICTED_EMOTIONS, ALLOWED_EMOJIS, REACTION_SCORES, BLOCKED_EMOJIS,
))


def with_fields(record: Record, *added: ResultField) -> Record:
    """Gives `record` with more fields at the end (for records built on another, and for tests)."""
    return replace(record, fields=record.fields + added)


__all__ = ["NEIGHBOUR", "PREDICTION", "SCORED_ROW", "UNREADABLE", "Record", "ResultField", "with_fields"]
