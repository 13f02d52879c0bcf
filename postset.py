"""The post set of `bench posts` and the demo: pictures from the demo's emoji art, captions, and words drawn as
memes draw them.

A post is an image, a caption and labels, in one of four slices:

| slice | picture | caption | drawn on the image | labels |
|---|---|---|---|---|
| picture | an emoji of an emotion | empty or a neutral phrase | nothing | the emoji's |
| caption | neutral: a neutral emoji or a plain background | a phrase of an emotion | nothing | the phrase's |
| drawn | neutral, as above | empty (only OCR can find the words) | a phrase of an emotion | the phrase's |
| both | an emoji of an emotion | the phrase, or empty | or the phrase | the union of the two |

In "both", half the posts agree (the phrase's emotion is one of the picture's) and half conflict.
The phrases come from committed lists, `phrases/train.toml` and `phrases/test.toml`, disjoint phrase
for phrase; test posts use the demo's held-out art style (openmoji), training posts the other two.
Words are drawn meme-style: DejaVu fonts (matplotlib's own), sizes fitted to the width, white,
black, yellow or red letters, mostly with a black or white outline, at the top, the bottom or both.
"""
from __future__ import annotations

import csv
import random
import re
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from emoreact.demo import DEMO_DIR
from emoreact.labels import load_label_config

PHRASES_DIR = DEMO_DIR / "phrases"  # data, shipped with the demo's images
TOWER_WORDS = PHRASES_DIR / "text_tower_words.txt"  # written by tools/text_tower_words.py
SLICES = ("picture", "caption", "drawn", "both")
EMOTIONS = ("happy", "sad", "angry", "fear", "surprise", "disgust")  # what the pictures and phrases carry
STYLES = {"test": ("openmoji",), "train": ("google", "twitter")}  # the demo's held-out style is the test's
MANIFEST_COLUMNS = ("path", "caption", "labels", "split", "slice", "drawn_text", "picture", "picture_labels",
                    "word_labels")
_SIZES = ((512, 512), (480, 480), (448, 512), (512, 448))  # post canvases, width x height
_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf",
          "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf")
# (fill, outline or None): classic white-on-black meme letters first, then the other common looks
_INKS = (("white", "black"), ("white", "black"), ("black", None), ("black", "white"), ("yellow", "black"),
         ((220, 30, 30), "white"))
_WORD = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits; apostrophes and punctuation split nothing


@dataclass(frozen=True)
class _Art:
    path: Path  # a 64x64 emoji drawing on white
    name: str  # style/hexcode
    labels: tuple[str, ...]


def load_phrases(which: str = "test") -> dict[str, tuple[str, ...]]:
    """Gives label -> phrases of `phrases/<which>.toml` ("test" or "train"), checked against the labels."""
    if which not in STYLES:
        raise ValueError(f"phrases {which!r}: choose test or train")
    path = PHRASES_DIR / f"{which}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    names = load_label_config().names
    for label, phrases in data.items():
        if label not in names:
            raise ValueError(f"{path}: {label!r} is not a label of labels.toml ({names})")
        if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise ValueError(f"{path}: {label} must be a non-empty list of phrases")
    return {label: tuple(phrases) for label, phrases in data.items()}


def text_tower_words() -> frozenset[str]:
    """Gives the words of the captions the bundled emoji CLIP's text tower trained on (lower case)."""
    lines = TOWER_WORDS.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def known_words(texts) -> dict[str, list[str]]:
    """Gives {"known": [...], "unknown": [...]}: the distinct words of `texts` that the bundled text tower
    saw in training and those it never saw. A word is a run of letters or digits, lower-cased; with
    its apostrophe dropped ("can't" -> "cant") when the tower knows it only that way."""
    vocabulary = text_tower_words()
    known, unknown = set(), set()
    for text in texts:
        for word in re.findall(r"[^\W_]+(?:'[^\W_]+)*", text.lower()):
            (known if word in vocabulary or word.replace("'", "") in vocabulary else unknown).add(word)
    return {"known": sorted(known), "unknown": sorted(unknown)}


def make_posts(out_dir: str | Path, seed: int = 0, per_slice: int = 60, phrases: str = "test") -> list[dict]:
    """Writes `per_slice` posts of each slice under `out_dir` (images/*.png and manifest.csv); gives the
    manifest's rows (path relative to out_dir, caption, labels "a|b", split, slice, drawn_text, ...).
    The same seed and arguments write the same files, byte for byte."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    table = load_phrases(phrases)
    order = load_label_config().names
    arts = arts_by_emotion(STYLES[phrases], order)
    rows = []
    for slice_ in SLICES:
        for i in range(per_slice):
            rng = random.Random(f"{seed}/{phrases}/{slice_}/{i}")  # each post its own stream: stable under edits
            post = _POSTS[slice_](rng, EMOTIONS[i % len(EMOTIONS)], table, arts)
            image = _render(rng, post["picture"], post.pop("drawn_lines"))
            rel = f"images/{slice_}-{i:04d}.png"
            image.save(out / rel, optimize=False)
            labels = sorted(set(post["picture_labels"]) | set(post["word_labels"]), key=order.index)
            picture = post["picture"].name if post["picture"] else "plain"
            rows.append({"path": rel, "caption": post["caption"], "labels": "|".join(labels), "split": phrases,
                         "slice": slice_, "drawn_text": post["drawn_text"], "picture": picture,
                         "picture_labels": "|".join(post["picture_labels"]),
                         "word_labels": "|".join(post["word_labels"])})
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def ocr_word_accuracy(expected_texts, ocr_texts, spaces: str = "ignored") -> float:
    """Gives the share of expected words that OCR read, over all texts (case-insensitive; punctuation
    and apostrophes ignored). A word counts once, matched in order (the most words any ordered
    alignment matches). `spaces="ignored"`: a word counts when its letters appear, in order with the
    others, in the OCR text with its spaces removed, so "ONTHE FIRSTTRY" reads all of "on the first
    try"; `spaces="strict"`: a word counts only as a word of the OCR text."""
    if spaces not in ("ignored", "strict"):
        raise ValueError(f"spaces={spaces!r}: choose ignored or strict")
    total = read = 0
    for expected, ocr in zip(expected_texts, ocr_texts, strict=True):
        words = _words(expected)
        total += len(words)
        read += _aligned(words, "".join(_words(ocr))) if spaces == "ignored" else _aligned_words(words, _words(ocr))
    return read / total if total else 1.0


def measure_ocr(rows: list[dict], root: str | Path, reader) -> dict:
    """Reads every post with drawn words with `reader` (an emoreact.embed.OcrReader); gives word
    accuracy (spaces ignored and strict), the reader's ms per image (p50, p95; decoding not counted) and
    the share of images read whole within the budget (nothing cut, no step over `budget_ms`)."""
    drawn = [row for row in rows if row["drawn_text"]]
    if not drawn:
        return {"images": 0}
    texts, times, finished = [], [], 0
    for row in drawn:
        with Image.open(Path(root) / row["path"]) as image:
            result = reader.read(image)
        texts.append(result.text)
        times.append(result.ms)
        finished += not result.truncated and result.ms <= reader.settings.budget_ms
    expected = [row["drawn_text"] for row in drawn]
    return {"images": len(drawn),
            "word_accuracy": round(ocr_word_accuracy(expected, texts), 4),
            "word_accuracy_strict_spaces": round(ocr_word_accuracy(expected, texts, "strict"), 4),
            "ms_p50": round(statistics.median(times), 1),
            "ms_p95": round(float(np.percentile(times, 95)), 1),
            "within_budget": round(finished / len(drawn), 4)}


def post_records(rows: list[dict], root: str | Path, split_of) -> list:
    """Gives the embed job's records for post rows written under `root`: path, labels, caption and the split
    `split_of(n, row)` gives (train, val or test)."""
    from emoreact.embed import Record, clean_caption

    return [Record(Path(root) / row["path"], tuple(row["labels"].split("|")), split_of(n, row),
                   clean_caption(row["caption"])) for n, row in enumerate(rows)]


def slice_scores(store, heads: dict, rows: list[dict], root: str | Path) -> dict:
    """Gives {slice: {name: macro-F1 over the emotions}} of each head (name -> EmotionHead) on the post `rows`
    written under `root` and embedded in `store` (an open Store), from each head's own decisions; with two
    heads named image_only and post, also post_minus_image_only."""
    from sklearn.metrics import f1_score

    root = Path(root).absolute()
    by_path = {Path(item.path).relative_to(root).as_posix(): item.id for item in store.items()
               if Path(item.path).is_relative_to(root)}
    out: dict[str, dict] = {}
    for slice_ in SLICES:
        chosen_rows = [row for row in rows if row["slice"] == slice_ and row["path"] in by_path]
        if not chosen_rows:
            continue
        ids = np.array([by_path[row["path"]] for row in chosen_rows], np.int64)
        x, text = store.vectors_of(ids), store.text_vectors_of(ids)
        truth = np.array([[e in row["labels"].split("|") for e in EMOTIONS] for row in chosen_rows])
        present = truth.any(axis=0)
        for name, head in heads.items():
            columns = [head.labels.index(e) for e in EMOTIONS]
            decided = head.decide(head.predict_proba(x, text=text), text)[:, columns]
            f1 = f1_score(truth[:, present], decided[:, present], average="macro", zero_division=0)
            out.setdefault(slice_, {"posts": len(chosen_rows)})[name] = round(float(f1), 4)
        if {"image_only", "post"} <= out[slice_].keys():
            out[slice_]["post_minus_image_only"] = round(out[slice_]["post"] - out[slice_]["image_only"], 4)
    return out


# --- the slices ---------------------------------------------------------------------------------------

def _picture_post(rng, emotion, table, arts):
    art = rng.choice(arts[emotion])
    caption = rng.choice(table["neutral"]) if rng.random() < 0.5 else ""
    return _post(art, art.labels, (), caption, "", [])


def _caption_post(rng, emotion, table, arts):
    phrase = rng.choice(table[emotion])
    return _post(_neutral_picture(rng, arts), (), (emotion,), phrase, "", [])


def _drawn_post(rng, emotion, table, arts):
    phrase = rng.choice(table[emotion])
    return _post(_neutral_picture(rng, arts), (), (emotion,), "", phrase, _meme_lines(rng, phrase))


def _both_post(rng, emotion, table, arts):
    art = rng.choice(arts[emotion])
    agree = rng.random() < 0.5
    words = emotion if agree else rng.choice([e for e in EMOTIONS if e not in art.labels])
    phrase = rng.choice(table[words])
    if rng.random() < 0.5:
        return _post(art, art.labels, (words,), phrase, "", [])
    return _post(art, art.labels, (words,), "", phrase, _meme_lines(rng, phrase))


_POSTS = {"picture": _picture_post, "caption": _caption_post, "drawn": _drawn_post, "both": _both_post}


def _post(art, picture_labels, word_labels, caption, drawn_text, drawn_lines) -> dict:
    return {"picture": art, "picture_labels": tuple(picture_labels), "word_labels": tuple(word_labels),
            "caption": caption, "drawn_text": drawn_text, "drawn_lines": drawn_lines}


def _neutral_picture(rng, arts) -> _Art | None:
    """A neutral emoji half the time, else None: a plain, photo-like background."""
    return rng.choice(arts["neutral"]) if rng.random() < 0.5 else None


def _meme_lines(rng, phrase: str) -> list[tuple[str, str]]:
    """Gives (position, text) lines: the phrase at the top or bottom, or split over both when long."""
    text = phrase.upper() if rng.random() < 0.6 else phrase
    words = text.split()
    if len(words) >= 4 and rng.random() < 0.5:
        half = (len(words) + 1) // 2
        return [("top", " ".join(words[:half])), ("bottom", " ".join(words[half:]))]
    return [(rng.choice(("top", "bottom")), text)]


def arts_by_emotion(styles: tuple[str, ...], order: list[str]) -> dict[str, list[_Art]]:
    """Gives emotion -> the demo's drawings whose labels are that emotion (and maybe another emotion);
    "neutral" -> those labelled neutral only. Labels are listed in `order`."""
    found = {e: [] for e in (*EMOTIONS, "neutral")}
    with (DEMO_DIR / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["style"] not in styles:
                continue
            labels = tuple(row["labels"].split("|"))
            labels = tuple(sorted(labels, key=order.index))
            art = _Art(DEMO_DIR / row["path"], f"{row['style']}/{Path(row['path']).stem}", labels)
            if labels == ("neutral",):
                found["neutral"].append(art)
            elif set(labels) <= set(EMOTIONS):
                for label in labels:
                    found[label].append(art)
    return found


# --- drawing --------------------------------------------------------------------------------------------

def _render(rng, art: _Art | None, lines: list[tuple[str, str]]) -> Image.Image:
    width, height = rng.choice(_SIZES)
    if art is None:
        image = _plain_background(rng, (width, height))
    else:
        image = Image.new("RGB", (width, height), "white")  # the art's own background
        side = int(min(width, height) * rng.uniform(0.48, 0.56))
        with Image.open(art.path) as drawing:
            picture = drawing.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        image.paste(picture, ((width - side) // 2, (height - side) // 2))
    draw = ImageDraw.Draw(image)
    font_name = rng.choice(_FONTS)
    fill, outline = rng.choice(_INKS)
    if art is None and outline is None:
        outline = "white"  # black letters on a busy background: memes outline them
    for position, text in lines:
        font = _fitted_font(draw, font_name, text, width, rng.randint(36, 64))
        stroke = max(2, font.size // 14) if outline else 0
        y = int(height * 0.04) if position == "top" else height - int(height * 0.04)
        draw.text((width // 2, y), text, font=font, fill=fill, anchor="mt" if position == "top" else "mb",
                  stroke_width=stroke, stroke_fill=outline)
    return image


def _fitted_font(draw, name: str, text: str, width: int, size: int) -> ImageFont.FreeTypeFont:
    """Gives the font at `size`, or smaller until the text fits 92% of the width (never under 18 px)."""
    path = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)
    while True:
        font = ImageFont.truetype(path, size)
        left, _, right, _ = draw.textbbox((0, 0), text, font=font, stroke_width=3)
        if right - left <= 0.92 * width or size <= 18:
            return font
        size -= 2


def _plain_background(rng, size: tuple[int, int]) -> Image.Image:
    """A smooth two-colour gradient with faint noise, like an out-of-focus photo; no emotion in it."""
    width, height = size
    noise = np.random.default_rng(rng.getrandbits(64))
    top, bottom = (np.array([rng.randint(40, 220) for _ in range(3)], np.float32) for _ in range(2))
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + noise.normal(0, 6, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# --- word matching --------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))


def _aligned(words: list[str], letters: str) -> int:
    """Gives the most of `words` that occur, in order and without overlapping, in `letters`."""
    best = [[0] * (len(letters) + 1) for _ in range(len(words) + 1)]
    for i, word in enumerate(words, 1):
        for j in range(1, len(letters) + 1):
            best[i][j] = max(best[i - 1][j], best[i][j - 1])
            if j >= len(word) and letters[j - len(word):j] == word:
                best[i][j] = max(best[i][j], best[i - 1][j - len(word)] + 1)
    return best[-1][-1]


def _aligned_words(words: list[str], read: list[str]) -> int:
    """Gives the longest common subsequence of two word lists."""
    best = [[0] * (len(read) + 1) for _ in range(len(words) + 1)]
    for i, word in enumerate(words, 1):
        for j, other in enumerate(read, 1):
            best[i][j] = best[i - 1][j - 1] + 1 if word == other else max(best[i - 1][j], best[i][j - 1])
    return best[-1][-1]
