"""OCR (emoreact.embed.ocr): rendered words read back with their boxes, the modes and the missing extra,
and readings bounded by their budget, line and character caps. The engine's tests skip where the `ocr`
extra is missing (`./run` installs it); the budget's own logic runs everywhere on a simulated clock."""
import logging
import sys
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from emoreact.embed import ModelLoadError, OcrLine, OcrReader, OcrResult, OcrSettings, OcrUnavailable, ocr_reader
from emoreact.embed import ocr as ocr_module

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font(size: int, name: str = "DejaVuSans-Bold.ttf") -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / name), size)


def _meme(size=(640, 427), top="SO SAD RIGHT NOW", bottom="we lost him yesterday", font_size=44) -> Image.Image:
    """A picture with white, black-outlined words at the top and bottom, as memes draw them."""
    image = Image.new("RGB", size, (90, 120, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 3, size[1] // 3, 2 * size[0] // 3, 2 * size[1] // 3), fill=(240, 200, 60))
    font = _font(font_size)
    draw.text((size[0] // 2, 12), top, font=font, fill="white", anchor="mt", stroke_width=3, stroke_fill="black")
    draw.text((size[0] // 2, size[1] - 12), bottom, font=font, fill="white", anchor="mb", stroke_width=3,
              stroke_fill="black")
    return image


def _page(size: tuple[int, int], font_size: int, line_gap: int) -> Image.Image:
    """A white page of black text lines from top to bottom, each numbered (`line 12 of the page`)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(font_size, "DejaVuSans.ttf")
    for number, y in enumerate(range(10, size[1] - font_size, font_size + line_gap)):
        draw.text((10, y), f"line {number} of the page says hello", font=font, fill="black")
    return image


@pytest.fixture(scope="module")
def reader() -> OcrReader:
    pytest.importorskip("rapidocr", reason="the ocr extra is not installed")
    pytest.importorskip("onnxruntime", reason="the ocr extra is not installed")
    return OcrReader(OcrSettings(mode="on")).warm()


def _words(result: OcrResult) -> list[str]:
    return result.text.lower().split()


def test_reads_the_words_of_a_meme_with_boxes_where_they_were_drawn(reader):
    image = _meme()
    result = reader.read(image)
    assert [line.text.lower() for line in result.lines] == ["so sad right now", "we lost him yesterday"]
    assert result.text.lower() == "so sad right now\nwe lost him yesterday"
    assert not result.truncated and result.ms > 0
    top, bottom = result.lines
    for line in result.lines:
        assert line.score >= reader.settings.min_score
        assert len(line.box) == 4 and all(0 <= x <= 640 and 0 <= y <= 427 for x, y in line.box)
    assert max(y for _, y in top.box) < 100 and min(y for _, y in bottom.box) > 300
    assert top.to_json() == {"text": top.text, "score": round(top.score, 4), "box": [list(p) for p in top.box]}


def test_boxes_are_in_the_original_pixels_of_a_scaled_down_image(reader):
    small = reader.read(_meme())
    scaling = OcrReader(OcrSettings(mode="on", max_side=640))
    scaling._engine = reader._engine  # the loaded engine; it never scales tiles up, so max_side is the plan's alone
    big = scaling.read(_meme().resize((1920, 1281), Image.Resampling.BICUBIC))  # read at 640 wide
    assert [line.text.lower() for line in big.lines] == [line.text.lower() for line in small.lines]
    for a, b in zip(small.lines, big.lines):
        for (xa, ya), (xb, yb) in zip(a.box, b.box):
            assert abs(xb - 3 * xa) <= 30 and abs(yb - 3 * ya) <= 30


def test_transparent_pixels_read_as_white(reader):
    image = Image.new("RGBA", (400, 120), (0, 0, 0, 0))  # black where transparent, if read naively
    ImageDraw.Draw(image).text((200, 60), "I HATE THIS", font=_font(40), fill=(0, 0, 0, 255), anchor="mm")
    assert _words(reader.read(image)) == ["i", "hate", "this"]


def test_a_picture_without_words_gives_no_lines(reader):
    image = Image.new("RGB", (320, 240), (200, 220, 240))
    ImageDraw.Draw(image).ellipse((80, 40, 240, 200), fill=(250, 200, 40), outline="black", width=4)
    result = reader.read(image)
    assert result.lines == () and result.text == "" and not result.truncated
    assert reader.read(Image.new("RGB", (4, 300), "white")) == OcrResult()  # too thin to hold a line


def test_concurrent_reads_from_threads_agree(reader):
    image, results = _meme(), []
    threads = [threading.Thread(target=lambda: results.append(reader.read(image).text)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and len(set(results)) == 1 and "yesterday" in results[0].lower()


@pytest.mark.long
def test_a_20000_pixel_tall_screenshot_gives_a_bounded_answer_from_the_top(reader):
    image = _page((1080, 20000), font_size=30, line_gap=20)  # ~400 lines of text
    result = reader.read(image)
    assert result.truncated
    assert 0 < len(result.lines) <= reader.settings.max_lines
    assert sum(len(line.text) for line in result.lines) <= reader.settings.max_chars
    first = result.lines[0]
    assert "line 0" in first.text and max(y for _, y in first.box) < 100  # read from the top, in original pixels
    tops = [min(y for _, y in line.box) for line in result.lines]
    assert tops == sorted(tops)  # reading order


@pytest.mark.long
def test_a_page_packed_with_small_text_hits_the_caps(reader):
    settings = OcrSettings(mode="on", max_lines=8, max_chars=120)
    capped = OcrReader(settings)
    capped._engine = reader._engine  # the same loaded engine, other caps
    result = capped.read(_page((900, 900), font_size=14, line_gap=4))  # ~48 lines
    assert result.truncated
    assert 0 < len(result.lines) <= 8 and sum(len(line.text) for line in result.lines) <= 120


def test_off_gives_no_reader_and_on_or_auto_give_one_with_the_extra(reader):
    assert ocr_reader("off") is None
    assert isinstance(ocr_reader("on"), OcrReader)
    assert ocr_reader(OcrSettings(mode="auto", max_lines=3)).settings.max_lines == 3


@pytest.fixture
def without_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # `import rapidocr` now raises ImportError
    monkeypatch.setattr(ocr_module, "_warned", set())


def test_on_without_the_extra_names_it(without_extra):
    with pytest.raises(OcrUnavailable, match=r'pip install "emoreact\[ocr\]"') as caught:
        ocr_reader("on")
    assert isinstance(caught.value, ModelLoadError) and "rapidocr" in str(caught.value)
    with pytest.raises(OcrUnavailable, match="emoreact"):
        OcrReader().read(_meme())  # a reader built by hand says the same on first use


def test_a_broken_opencv_is_named_with_the_build_the_extra_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    problem = ocr_module.engine_problem()
    assert problem.startswith("opencv: ") and "opencv-python-headless" in problem
    with pytest.raises(OcrUnavailable, match="opencv-python-headless"):
        ocr_reader("on")


def test_auto_without_the_extra_reads_nothing_and_warns_once(without_extra, caplog):
    with caplog.at_level(logging.WARNING, logger="emoreact.embed.ocr"):
        assert ocr_reader("auto") is None
        assert ocr_reader() is None
    warnings = [r for r in caplog.records if "emoreact[ocr]" in r.getMessage()]
    assert len(warnings) == 1
    assert ocr_reader("off") is None


@pytest.mark.parametrize("bad, message", [
    ({"mode": "sometimes"}, "not one of auto, on, off"),
    ({"min_score": 1.5}, "between 0 and 1"),
    ({"budget_ms": 0}, "budget_ms must be positive"),
    ({"max_side": 32}, "too small"),
])
def test_bad_settings_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        OcrSettings(**bad)


@pytest.mark.parametrize("text, kept", [
    ("SO SAD", True), ("we lost him yesterday", True), ("ONTHE FIRSTTRY :(", True), ("42", True),
    ("悲伤的一天", True), ("I", False), ("·", False), ("||:", False), ("a-.-.-", False), ("", False),
])
def test_the_character_filter_keeps_words_and_drops_texture_readings(text, kept):
    assert ocr_module._is_words(text) is kept


# The budget, on a simulated clock: an engine whose detection takes 300 ms and recognition 50 ms a batch.

class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _SimulatedReader(OcrReader):
    """Finds `per_tile` lines in every tile, spending simulated time; no engine needed."""

    def __init__(self, settings: OcrSettings, clock: _Clock, per_tile: int = 4) -> None:
        super().__init__(settings)
        self.clock, self.per_tile, self.tiles_read = clock, per_tile, []

    def _run_detection(self, tile):
        self.clock.now += 0.300
        self.tiles_read.append(tile.shape)
        height, width = tile.shape[:2]
        rows = np.linspace(100, 1000, self.per_tile) if height > 1100 else np.linspace(20, height - 20, self.per_tile)
        return np.array([[[10, y - 10], [width - 10, y - 10], [width - 10, y + 10], [10, y + 10]] for y in rows],
                        np.float32)

    def _crops(self, tile, boxes):
        return [tile[:8, :8]] * len(boxes)

    def _run_recognition(self, crops):
        self.clock.now += 0.050
        return [("hello there", 0.95)] * len(crops)


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(ocr_module, "time", clock)
    return clock


def test_a_tall_image_is_read_tile_by_tile_until_the_budget_and_overruns_it_by_one_step_at_most(clock):
    settings = OcrSettings(mode="on", budget_ms=900, max_lines=100)
    reader = _SimulatedReader(settings, clock)
    result = reader.read(Image.new("RGB", (1080, 20000), "white"))
    # a tile costs 300 ms + one batch of 50 ms: two tiles take 700 ms, a third detection would end at 1,000
    assert result.truncated and len(reader.tiles_read) == 2 and len(result.lines) == 8
    assert result.ms <= settings.budget_ms
    assert all(shape == (1280, 640, 3) for shape in reader.tiles_read)  # scaled to 640 wide, 1280-pixel tiles
    ys = [line.box[0][1] for line in result.lines]
    assert ys == sorted(ys) and max(ys) < 2400 / (640 / 1080)  # within the first two tiles, in original pixels


def test_the_first_detection_and_batch_run_even_over_the_budget_and_nothing_after_them(clock):
    reader = _SimulatedReader(OcrSettings(mode="on", budget_ms=100), clock, per_tile=12)
    result = reader.read(Image.new("RGB", (640, 480), "white"))
    assert result.truncated and len(result.lines) == 6 and len(reader.tiles_read) == 1  # 1 of 2 batches
    assert result.ms == pytest.approx(350)  # the detection and the first batch, nothing after them


class _MemeWithMarks(_SimulatedReader):
    """Finds seven small marks in the picture above one tall caption at the bottom."""

    def _run_detection(self, tile):
        self.clock.now += 0.300
        marks = [[[20 + 40 * i, 100], [50 + 40 * i, 100], [50 + 40 * i, 110], [20 + 40 * i, 110]] for i in range(7)]
        caption = [[[20, 400], [600, 400], [600, 440], [20, 440]]]
        return np.array(marks + caption, np.float32)

    def _crops(self, tile, boxes):
        return [box[2, 1] - box[0, 1] for box in boxes]  # each region's height stands for its crop

    def _run_recognition(self, crops):
        self.clock.now += 0.050
        return [("the caption" if height > 20 else "xx", 0.95) for height in crops]


def test_under_a_tight_budget_the_tall_caption_is_read_before_small_marks_and_lines_keep_reading_order(clock):
    reader = _MemeWithMarks(OcrSettings(mode="on", budget_ms=100), clock)
    result = reader.read(Image.new("RGB", (640, 480), "white"))
    assert result.truncated  # the second batch (two marks) was not read
    assert [line.text for line in result.lines] == ["xx"] * 5 + ["the caption"]  # the caption and 5 marks
    assert [line.box[0][1] for line in result.lines] == [100] * 5 + [400]


def test_lines_and_characters_are_capped(clock):
    lines = _SimulatedReader(OcrSettings(mode="on", max_lines=5), clock, per_tile=12).read(
        Image.new("RGB", (640, 480), "white"))
    assert lines.truncated and len(lines.lines) == 5
    chars = _SimulatedReader(OcrSettings(mode="on", max_chars=25), clock, per_tile=12).read(
        Image.new("RGB", (640, 480), "white"))
    assert chars.truncated and [line.text for line in chars.lines] == ["hello there", "hello there", "hel"]


def test_an_ordinary_picture_is_one_tile_and_a_wide_strip_is_read_left_to_right():
    plan = ocr_module._Plan.of((640, 427), 1280)
    assert plan.scale == 1 and plan.tiles == ((0, 0, 640, 427),)
    photo = ocr_module._Plan.of((4000, 3000), 1280)
    assert photo.size == (1280, 960) and len(photo.tiles) == 1
    strip = ocr_module._Plan.of((12000, 600), 1280)
    assert strip.size == (12000, 600) and not strip.vertical and len(strip.tiles) > 9
    assert strip.owned[0][0] == 0 and strip.owned[-1][1] == 12000
    assert all(a[1] == b[0] for a, b in zip(strip.owned, strip.owned[1:]))  # every centre kept by one tile
    assert all(t[0] <= lo and hi <= t[2] for t, (lo, hi) in zip(strip.tiles, strip.owned))


def test_an_ocr_line_is_frozen_and_its_json_is_plain():
    line = OcrLine("eww", 0.912345, ((1, 2), (3, 2), (3, 4), (1, 4)))
    assert line.to_json() == {"text": "eww", "score": 0.9123, "box": [[1, 2], [3, 2], [3, 4], [1, 4]]}
    with pytest.raises(AttributeError):
        line.text = "other"
