"""Reading the words in an image (OCR), offline, bounded in time and size: the `ocr` extra.

The engine is rapidocr on onnxruntime: its detection and recognition models (PP-OCR, Apache-2.0)
ship inside its wheel, so nothing is downloaded. `pip install "emoreact[ocr]"` installs it.

How an image is read (`OcrReader.read`):
1. The image is scaled down so that the detector sees at most `max_side` pixels along a side at
   once. An ordinary picture (up to 2:1) is read in one pass; a longer strip (a tall screenshot) is
   scaled so that its short side is at most `max_side / 2` and read in overlapping tiles from the
   top (or the left), each line kept by the one tile that holds its centre.
2. Detection finds the text regions of a tile; recognition runs only on those regions, in batches,
   the tall ones first (a meme's caption before the small marks of its picture). An image without
   text costs one detection pass and gives no lines.
3. A line is kept when its score is at least `min_score` and its characters are mostly letters or
   digits (readings of textures are punctuation or single glyphs); boxes are mapped back to the
   original image's pixels.
4. Each step (a tile's detection, a batch of recognition) starts only if the time left in
   `budget_ms` covers what the same step took last time, so a reading overruns its budget by at
   most one step. The exceptions are the first detection and the first batch of recognition after
   it, which always run: on a slow machine an image with words still gives its first lines (and
   overruns by those two steps at most). `max_lines` and `max_chars` cap what is kept. A reading
   cut short by any of these says so (`truncated`).

Modes (`OcrSettings.mode`, the `--ocr` option): "off" reads nothing; "on" reads every image and
raises `OcrUnavailable` naming the extra when it is not installed; "auto" reads the same way when
the extra is installed, and otherwise reads nothing, with one warning.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .identity import ModelLoadError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
EXTRA_HINT = 'pip install "emoreact[ocr]"'
_REC_BATCH = 6  # crops recognised per step (rapidocr's own batch size); the budget is checked between steps
_MAX_BOXES = 256  # regions the detector reports per tile: bounds its post-processing on a page of tiny text
_MIN_SIDE = 8  # an image (after scaling) with a side under this many pixels holds no readable line
_MIN_ALNUM = 2  # a kept line has at least this many letters or digits...
_MIN_ALNUM_SHARE = 0.5  # ...and they are at least this share of its non-space characters
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as decode_image does


class OcrUnavailable(ModelLoadError):
    """OCR was asked for ("on") but its engine cannot be imported; the message names the extra."""


@dataclass(frozen=True)
class OcrSettings:
    """How words are read from an image; the defaults suit memes and phone screenshots."""

    mode: str = "auto"  # "auto" | "on" | "off" (module docstring)
    min_score: float = 0.8  # lines recognised with less confidence are dropped (texture junk reads 0.6-0.75)
    budget_ms: float = 1000.0  # time for one image; steps that would overrun it are skipped (truncated)
    max_side: int = 1280  # pixels the detector sees along a side at once; larger images are scaled or tiled
    max_lines: int = 32  # lines kept per image, in reading order
    max_chars: int = 1000  # characters kept per image, over all its lines

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"OCR mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"OCR min_score {self.min_score} is not between 0 and 1")
        for name in ("budget_ms", "max_side", "max_lines", "max_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"OCR {name} must be positive, got {getattr(self, name)}")
        if self.max_side < 64:
            raise ValueError(f"OCR max_side {self.max_side} is too small to read anything; use 640 or more")


@dataclass(frozen=True)
class OcrLine:
    """One line of text read from an image."""

    text: str
    score: float  # the recogniser's confidence, 0-1
    box: tuple[tuple[int, int], ...]  # 4 (x, y) corners in the original image's pixels, clockwise from top-left

    def to_json(self) -> dict:
        return {"text": self.text, "score": round(self.score, 4), "box": [list(p) for p in self.box]}


@dataclass(frozen=True)
class OcrResult:
    """What was read from one image."""

    lines: tuple[OcrLine, ...] = ()  # in reading order: tile by tile, top to bottom, left to right
    truncated: bool = False  # the budget, max_lines or max_chars stopped the reading early
    ms: float = 0.0  # time spent reading (not counting a wait for the engine)
    text: str = field(init=False)  # the lines' text joined by newlines

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", "\n".join(line.text for line in self.lines))


def ocr_reader(settings: OcrSettings | str = "auto") -> OcrReader | None:
    """Gives a reader for `settings` (or a mode name), or None where nothing is to be read: mode
    "off", or "auto" without the extra (one warning). Mode "on" without the extra raises
    OcrUnavailable naming it."""
    settings = OcrSettings(mode=settings) if isinstance(settings, str) else settings
    if settings.mode == "off":
        return None
    problem = engine_problem()
    if problem is None:
        return OcrReader(settings)
    if settings.mode == "on":
        raise OcrUnavailable(f"OCR is on but its engine cannot be loaded ({problem}); {EXTRA_HINT}, "
                             "or use --ocr auto or off")
    _warn_once(f"OCR is off: its engine cannot be loaded ({problem}); {EXTRA_HINT} to read words in images")
    return None


def engine_problem() -> str | None:
    """Gives why the OCR engine cannot be imported, or None when it can."""
    try:
        import cv2  # noqa: F401
    except Exception as exc:  # a mixed or half-installed opencv fails in more ways than ImportError
        return (f"opencv: {type(exc).__name__}: {exc}; the extra needs opencv-python-headless alone: opencv-python "
                "beside it breaks cv2, and without libGL opencv-python cannot load")
    try:
        import onnxruntime  # noqa: F401
        from rapidocr import RapidOCR  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class OcrReader:
    """Reads the text lines of PIL images; one engine, loaded on first use, shared by threads.

    Calls are serialised by a lock: onnxruntime already spreads one image over every core, so two
    readings at once would not finish sooner, and the engine's per-call settings are not shared-safe.
    """

    def __init__(self, settings: OcrSettings = OcrSettings()) -> None:
        self.settings = settings
        self._engine = None
        self._lock = threading.Lock()

    def warm(self) -> OcrReader:
        """Loads the engine and its models now (a server does this before taking requests)."""
        with self._lock:
            self._run_detection(np.full((64, 64, 3), 255, np.uint8))
            self._run_recognition([np.full((48, 96, 3), 255, np.uint8)])
        return self

    def read(self, image: Image.Image) -> OcrResult:
        """Gives the lines read from `image` (any mode; transparency is read as white)."""
        plan = _Plan.of(image.size, self.settings.max_side)
        if plan is None:
            return OcrResult()
        pixels = _bgr(image, plan.size)
        with self._lock:
            return _Reading(self, plan, pixels).run()

    def _load(self):
        if self._engine is None:
            problem = engine_problem()
            if problem is not None:
                raise OcrUnavailable(f"the OCR engine cannot be loaded ({problem}); {EXTRA_HINT}")
            from rapidocr import RapidOCR
            side = self.settings.max_side
            self._engine = RapidOCR(params={
                "Global.log_level": "error",  # it warns for every image without text
                "Global.use_cls": False,  # memes and screenshots are upright; the 180-degree check only errs
                "Global.max_side_len": 2 * side,  # the tiles are sized here; no second scaling
                "Det.limit_type": "max", "Det.limit_side_len": side,
                "Det.max_candidates": _MAX_BOXES,
            })
        return self._engine

    def _run_detection(self, tile: np.ndarray) -> np.ndarray:
        """Gives the (K, 4, 2) float32 corners of the text regions found in a BGR tile."""
        out = self._load()(tile, use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(out, "boxes", None)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return np.asarray(boxes, np.float32).reshape(-1, 4, 2)

    def _run_recognition(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Gives (text, score) for each BGR crop of one line."""
        rec = self._load().recognize_txt(crops)
        return list(zip(rec.txts, (float(s) for s in rec.scores)))

    def _crops(self, tile: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        return self._load().crop_text_regions(tile, boxes)


@dataclass(frozen=True)
class _Plan:
    """How an image is scaled and cut into tiles (coordinates in the scaled image)."""

    original: tuple[int, int]  # the image's (width, height)
    scale: float  # scaled size = original size x scale
    size: tuple[int, int]  # scaled (width, height)
    tiles: tuple[tuple[int, int, int, int], ...]  # (x0, y0, x1, y1) of each tile, in reading order
    owned: tuple[tuple[float, float], ...]  # per tile, the span along the long axis whose line centres it keeps
    vertical: bool  # tiles run top to bottom (else left to right)

    @classmethod
    def of(cls, size: tuple[int, int], max_side: int) -> _Plan | None:
        width, height = size
        long_side, short_side = max(width, height), min(width, height)
        scale = min(1.0, max_side / min(long_side, 2 * short_side))
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        if min(w, h) < _MIN_SIDE:
            return None
        vertical = h >= w
        length = h if vertical else w
        overlap = max_side // 8  # a line lower than this is whole in the tile that keeps it
        starts = [0] if length <= max_side else list(range(0, length - max_side, max_side - overlap)) + [length - max_side]
        ends = [min(length, s + max_side) for s in starts]
        cuts = [0.0] + [(starts[i + 1] + ends[i]) / 2 for i in range(len(starts) - 1)] + [float(length)]
        tiles = tuple((0, s, w, e) if vertical else (s, 0, e, h) for s, e in zip(starts, ends))
        return cls(size, scale, (w, h), tiles, tuple(zip(cuts[:-1], cuts[1:])), vertical)


class _Reading:
    """One image's reading: the steps, the budget, the caps."""

    def __init__(self, reader: OcrReader, plan: _Plan, pixels: np.ndarray) -> None:
        self.reader, self.plan, self.pixels, self.settings = reader, plan, pixels, reader.settings
        self.start = time.perf_counter()
        self.deadline = self.start + self.settings.budget_ms / 1000
        self.last = {"det": 0.0, "rec": 0.0}  # what each kind of step took last time, in seconds
        self.lines: list[OcrLine] = []
        self.chars = 0
        self.truncated = False
        self.recognised = False  # the first batch of recognition always runs, so text found is never all lost

    def run(self) -> OcrResult:
        for tile, owned in zip(self.plan.tiles, self.plan.owned):
            if not self._room("det") or not self._read_tile(tile, owned):
                break
        ms = (time.perf_counter() - self.start) * 1000
        return OcrResult(tuple(self.lines), self.truncated, round(ms, 1))

    def _room(self, step: str) -> bool:
        """Tells whether a step fits in the time left; marks the reading truncated when not."""
        if time.perf_counter() + self.last[step] > self.deadline:
            self.truncated = True
            return False
        return True

    def _timed(self, step: str, fn, *args):
        began = time.perf_counter()
        out = fn(*args)
        self.last[step] = time.perf_counter() - began
        return out

    def _read_tile(self, tile: tuple[int, int, int, int], owned: tuple[float, float]) -> bool:
        """Reads one tile; gives False when the reading must stop. Its lines join in reading order."""
        x0, y0, x1, y1 = tile
        pixels = np.ascontiguousarray(self.pixels[y0:y1, x0:x1])
        boxes = self._timed("det", self.reader._run_detection, pixels)
        centres = boxes.mean(axis=1) + (x0, y0)
        axis = 1 if self.plan.vertical else 0
        boxes = boxes[(centres[:, axis] >= owned[0]) & (centres[:, axis] < owned[1])]
        found: list[tuple[int, OcrLine]] = []
        try:
            return self._recognise(pixels, boxes, (x0, y0), found)
        finally:
            self.lines.extend(line for _, line in sorted(found, key=lambda item: item[0]))

    def _recognise(self, pixels: np.ndarray, boxes: np.ndarray, offset: tuple[int, int],
                   found: list[tuple[int, OcrLine]]) -> bool:
        """Recognises a tile's regions in batches, the tall ones first (`_first`), into `found` as
        (reading-order index, line); gives False when the reading must stop."""
        order = _first(boxes)
        for begin in range(0, len(order), _REC_BATCH):
            if len(self.lines) + len(found) >= self.settings.max_lines or self.chars >= self.settings.max_chars:
                self.truncated = True
                return False
            if self.recognised and not self._room("rec"):
                return False
            batch = order[begin:begin + _REC_BATCH]
            crops = self.reader._crops(pixels, boxes[batch].copy())
            self.recognised = True
            for index, (text, score) in zip(batch, self._timed("rec", self.reader._run_recognition, crops)):
                line = self._line(text.strip(), score, boxes[index] + offset, len(self.lines) + len(found))
                if line is not None:
                    found.append((int(index), line))
        return True

    def _line(self, text: str, score: float, box: np.ndarray, kept: int) -> OcrLine | None:
        """Gives the line to keep (cut to the characters left), or None; `kept`: lines kept so far."""
        if score < self.settings.min_score or not _is_words(text):
            return None
        if kept >= self.settings.max_lines:
            self.truncated = True
            return None
        room = self.settings.max_chars - self.chars
        if len(text) > room:
            text, self.truncated = text[:room], True
        if not text:
            return None
        self.chars += len(text)
        (w, h), scale = self.plan.original, self.plan.scale
        corners = tuple((min(max(round(x / scale), 0), w), min(max(round(y / scale), 0), h)) for x, y in box)
        return OcrLine(text, score, corners)


def _first(boxes: np.ndarray) -> np.ndarray:
    """Gives the order in which to recognise a tile's (K, 4, 2) regions: those at least half as tall as
    the tallest come first, then the rest, each group in reading order. A meme's caption is its tallest
    text; small marks the detector also finds (dots, patterns of the picture) wait, so that a tight
    budget cuts them rather than the caption. A page of even lines stays in reading order."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    heights = np.minimum(np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1),
                         np.linalg.norm(boxes[:, 3] - boxes[:, 0], axis=1))
    small = heights < 0.5 * heights.max()
    return np.concatenate([np.flatnonzero(~small), np.flatnonzero(small)])


def _is_words(text: str) -> bool:
    """Tells whether a recognised line looks like words rather than a reading of a texture."""
    chars = [c for c in text if not c.isspace()]
    alnum = sum(c.isalnum() for c in chars)
    return alnum >= _MIN_ALNUM and alnum >= _MIN_ALNUM_SHARE * len(chars)


def _bgr(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Gives the image as a (H, W, 3) uint8 BGR array at `size` (the engine's channel order)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, _BACKGROUND)
        image.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image)[:, :, ::-1].copy()
