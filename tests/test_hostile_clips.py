"""Hostile clips at the decoder: each is refused from its headers, cut by the time budget, or decoded within the
configured limits; none raises memory by more than the frame budget, none hangs, none crashes the caller.
(The web-level hostile uploads are in tests/test_hardening_uploads.py.)"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from emoreact.embed import Clip, ClipSettings, ImageError, decode_media, is_clip
from emoreact.embed.clips import memory_budget_bytes
from clip_data import (counting_clock, decode_in_process, hours_long_video, raw_apng, raw_gif, raw_webp, video,
                       zip_bomb)


def test_a_gif_of_100000_frames_is_refused_from_its_blocks():
    data = raw_gif(16, 16, 100_000)
    assert is_clip(data)
    with pytest.raises(ImageError, match=r"more than 10,000 frames.*ClipSettings.max_source_frames") as info:
        decode_media(data)
    assert info.value.kind == "too_large"


def test_a_gif_of_100000_frames_allowed_in_is_cut_by_the_time_budget():
    settings = ClipSettings(max_source_frames=200_000, time_budget_s=5)
    clip = decode_media(raw_gif(16, 16, 100_000), settings=settings, clock=counting_clock())
    # The first chosen frame is the one at the middle of the first eighth (frame 6,250): the budget runs out
    # long before (the clock reads k + 1 after frame k: spent at frame 4), and the frame reached stands in.
    assert isinstance(clip, Clip) and clip.truncated and clip.frames_used == 1 and clip.frame_count == 100_000
    assert clip.times_ms == [400] and clip.weights == [1.0]


@pytest.mark.parametrize("make, name", [(raw_gif, "GIF"), (raw_apng, "APNG"), (raw_webp, "WEBP")])
def test_a_30000x30000_canvas_of_many_frames_is_refused_before_decoding(make, name):
    data = make(30_000, 30_000, 1000)
    assert is_clip(data)
    with pytest.raises(ImageError, match=f"the {name} canvas is 30000x30000 pixels, over the limit") as info:
        decode_media(data)
    assert info.value.kind == "too_large"


def test_a_gif_frame_drawn_past_the_screen_counts_in_the_canvas():
    data = raw_gif(16, 16, 3)
    third = b"\x2c" + struct.pack("<HHHHB", 14, 11, 1, 1, 0)  # the third frame's descriptor: at (14, 11)
    grown = data.replace(third, b"\x2c" + struct.pack("<HHHHB", 14, 11, 2000, 1000, 0))
    # Pillow (and browsers) grow the canvas to hold such a frame: the limit is checked on the grown one.
    with pytest.raises(ImageError, match="the GIF canvas is 2014x1011 pixels, over the limit of 1,000,000"):
        decode_media(grown, max_pixels=1_000_000)


def test_a_large_canvas_times_many_frames_is_refused_by_the_work_budget():
    data = raw_gif(6000, 6000, 200)  # 36 megapixels a frame, under the 40 of one image; 200 frames of them
    with pytest.raises(ImageError, match=r"188 frames of 6000x6000.*ClipSettings.max_decoded_pixels") as info:
        decode_media(data)
    assert info.value.kind == "too_large"


def test_a_video_of_hours_is_refused_from_its_header():
    with pytest.raises(ImageError, match=r"12,000 s long, over the limit of 600 s \(ClipSettings.max_duration_s\)"):
        decode_in_process(hours_long_video())


def test_a_video_of_hours_allowed_in_is_seeked_not_decoded_through():
    answer, frames = decode_in_process(hours_long_video(), max_duration_s=1e6)
    # 8 slices of 25 min: the frame shown at each middle, found by seeking to it.
    assert answer["times_ms"] == [0, 1_200_000, 3_600_000, 4_800_000, 6_000_000, 7_200_000, 9_600_000, 10_800_000]
    assert len(frames) == 8 and not answer["truncated"]


@pytest.mark.parametrize("fmt, codec, name", [("mp4", "libx264", "MP4"), ("mov", "mpeg4", "MOV")])
def test_a_truncated_mp4_or_mov_is_refused_as_damaged(fmt, codec, name):
    data = video(fmt, codec, n=30)
    with pytest.raises(ImageError, match=f"the {name} file is damaged or truncated") as info:
        decode_in_process(data[: len(data) // 2], fmt=name)
    assert info.value.kind == "invalid"


def test_a_truncated_webm_gives_the_frames_it_holds():
    data = video("webm", "libvpx", n=30)  # WebM is streamable: the frames before the cut decode
    answer, frames = decode_in_process(data[: len(data) * 9 // 10], fmt="WEBM")
    assert 1 <= len(frames) <= 8 and max(answer["times_ms"]) < 3000


@pytest.mark.parametrize("prefix", [b"", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"])
def test_a_zip_bomb_named_mp4_is_never_inflated(prefix):
    bomb = prefix + zip_bomb()
    assert len(bomb) < 300_000
    if not prefix:  # no video, no image: refused by its content, whatever its name
        with pytest.raises(ImageError, match="not an image or a clip") as info:
            decode_media(bomb)
        assert info.value.kind == "invalid"
    else:  # an MP4 header over zlib data: the demuxer finds no movie in it
        with pytest.raises(ImageError, match="the MP4 file is damaged or truncated") as info:
            decode_in_process(bomb)
        assert info.value.kind == "invalid"


def test_a_webm_whose_header_claims_a_huge_size_is_decoded_at_its_true_size():
    data = bytearray(video("webm", "libvpx", n=3, size=(256, 256)))
    for element in (b"\xb0\x82\x01\x00", b"\xba\x82\x01\x00"):  # PixelWidth, PixelHeight: 256 -> 30000
        at = data.find(element)
        data[at + 2:at + 4] = (30_000).to_bytes(2, "big")
    # FFmpeg reads the frame size from the VP8 stream itself, so the claim costs nothing; were it believed,
    # the header check would refuse it (the test below).
    answer, frames = decode_in_process(bytes(data), fmt="WEBM")
    assert answer["size"] == [256, 256] and {f.shape for f in frames} == {(256, 256, 3)}


def test_video_frames_over_the_pixel_limit_are_refused():
    with pytest.raises(ImageError, match="frames are 256x256 pixels, over the limit of 40,000") as info:
        decode_in_process(video("webm", "libvpx", n=3, size=(256, 256)), fmt="WEBM", max_pixels=40_000)
    assert info.value.kind == "too_large"


@pytest.mark.subprocess
def test_a_video_too_large_for_the_worker_memory_is_refused_naming_the_limit():
    data = video(n=2, size=(10240, 10240), preset="ultrafast")  # 100 megapixels a frame, 300 kB
    with pytest.raises(ImageError, match="10240x10240 pixels, over the limit of 40,000,000"):
        decode_media(data)
    # Allowed past the pixel limit, it is the worker's memory limit that stops it, by name.
    settings = ClipSettings(video_memory_mb=384)
    with pytest.raises(ImageError, match=r"384 MB \(ClipSettings.video_memory_mb\)"):
        decode_media(data, max_pixels=10**9, min_side=224, settings=settings)


@pytest.mark.subprocess
def test_damaged_videos_never_take_the_worker_pool_down():
    import random

    good = video(n=20)
    rng = random.Random(26)
    outcomes = set()
    for _ in range(12):
        bad = bytearray(good)
        for _ in range(20):
            bad[rng.randrange(64, len(bad))] = rng.randrange(256)  # the header stays an MP4's
        try:
            outcomes.add(type(decode_media(bytes(bad))).__name__)
        except ImageError as exc:
            outcomes.add(exc.kind)
    assert outcomes <= {"Clip", "invalid", "too_large"}
    assert decode_media(good).frames_used >= 1  # and the next good clip decodes


MEASURE = """
import json, sys
from emoreact.embed import ClipSettings, ImageError, decode_media

def peak():  # VmHWM: this process's peak resident memory (ru_maxrss would carry the forking parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
settings = ClipSettings(**json.loads(sys.argv[2]))
before = peak()
try:
    outcome = type(decode_media(data, max_pixels=int(sys.argv[3]), settings=settings)).__name__
except ImageError as exc:
    outcome = exc.kind
print(json.dumps({"outcome": outcome, "grew": peak() - before}))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("name, make, settings, outcome", [
    # drawn frame by frame until the 1 s budget runs out: the canvas is the cost, whatever the frame count
    ("gif 1414x1414 x 3000", lambda: raw_gif(1414, 1414, 3000),
     {"time_budget_s": 1.0, "max_decoded_pixels": 10**12}, "Clip"),
    ("gif 100,000 frames", lambda: raw_gif(16, 16, 100_000), {}, "too_large"),
    ("gif 30000x30000", lambda: raw_gif(30_000, 30_000, 1000), {}, "too_large"),
    ("apng 30000x30000", lambda: raw_apng(30_000, 30_000, 1000), {}, "too_large"),
    ("webp 30000x30000", lambda: raw_webp(30_000, 30_000, 1000), {}, "too_large"),
    ("mp4 of hours", hours_long_video, {"max_duration_s": 1e6}, "Clip"),
    ("zip bomb", zip_bomb, {}, "invalid"),
])
def test_no_hostile_clip_raises_memory_past_the_frame_budget(tmp_path, name, make, settings, outcome):
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    max_pixels = 2_000_000
    path = tmp_path / "clip"
    path.write_bytes(make())
    root = str(Path(__file__).resolve().parents[1].parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), root])))
    run = subprocess.run([sys.executable, "-c", MEASURE, str(path), json.dumps(settings), str(max_pixels)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    budget = memory_budget_bytes(max_pixels, ClipSettings(**settings))
    assert result["outcome"] == outcome
    assert result["grew"] <= budget + 32 * 2**20, f"{name}: grew {result['grew']:,} bytes, budget {budget:,}"
