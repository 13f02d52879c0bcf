"""Clips: animated GIF, WebP and PNG (and video, with PyAV) decode into a few frames chosen by time."""
import io

import numpy as np
import pytest
from PIL import Image

from emoreact.embed import Clip, ClipSettings, ImageError, decode_image, decode_media, is_clip
from emoreact.embed.clips import drop_near_duplicates, plan_frames, shown_ms
from emoreact.embed.images import sniff_format, sniff_video
from clip_data import child_request, counting_clock, decode_in_process, video

ANIMATED = ["GIF", "WEBP", "PNG"]


def animation(fmt: str, frames: list[Image.Image], durations, **kwargs) -> bytes:
    """Gives an animated GIF, WebP (lossless, so colours come back exact) or APNG of `frames`."""
    buffer = io.BytesIO()
    if fmt == "WEBP":
        kwargs.setdefault("lossless", True)
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=durations, loop=0, **kwargs)
    return buffer.getvalue()


def solid(n: int, size=(64, 48)) -> list[Image.Image]:
    """Gives n frames of clearly different solid reds (12 grey levels apart or more)."""
    return [Image.new("RGB", size, (min(255, 12 * i + 6), 0, 0)) for i in range(n)]


def red_of(frame: Image.Image) -> int:
    return frame.getpixel((0, 0))[0]


@pytest.mark.parametrize("fmt", ANIMATED)
def test_each_frame_of_a_short_animation_is_chosen_with_its_share_of_time(fmt):
    clip = decode_media(animation(fmt, solid(3), [100, 200, 300]))
    assert isinstance(clip, Clip)
    assert clip.format == fmt and clip.size == (64, 48) and clip.frame_count == 3 and clip.duration_ms == 600
    assert [red_of(f) for f in clip.frames] == [6, 18, 30]
    assert clip.times_ms == [0, 100, 300]
    assert clip.weights == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert clip.frames_used == 3 and not clip.truncated
    assert all(f.mode == "RGB" for f in clip.frames)


@pytest.mark.parametrize("fmt", ANIMATED)
def test_a_long_animation_gives_the_frames_shown_at_the_middle_of_equal_slices(fmt):
    # 20 frames of 50 ms: 8 slices of 125 ms, middles at 62.5, 187.5, ... -> frames 1, 3, 6, 8, 11, 13, 16, 18
    clip = decode_media(animation(fmt, solid(20), [50] * 20))
    assert [red_of(f) for f in clip.frames] == [12 * i + 6 for i in (1, 3, 6, 8, 11, 13, 16, 18)]
    assert clip.times_ms == [50 * i for i in (1, 3, 6, 8, 11, 13, 16, 18)]
    assert clip.weights == pytest.approx([1 / 8] * 8) and clip.frame_count == 20


def test_frames_are_chosen_by_time_not_by_count():
    # One long frame in the middle holds most of the time: it stands for the slices it is shown through.
    delays = [100] * 4 + [3000] + [100] * 5
    clip = decode_media(animation("GIF", solid(10), delays), settings=ClipSettings(max_frames=4))
    # 4 slices of 1000 ms of 4000 ms: middles at 500 (frame 4, from 400), 1500, 2500 (frame 4), 3500 (frame 5)
    assert [red_of(f) for f in clip.frames] == [12 * 4 + 6, 12 * 5 + 6]
    assert clip.times_ms == [400, 3400] and clip.weights == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize("fmt", ANIMATED)
def test_delays_of_10_ms_or_less_are_shown_as_100_ms_as_browsers_do(fmt):
    clip = decode_media(animation(fmt, solid(3), [0, 10, 20]))
    assert clip.duration_ms == 220 and clip.times_ms == [0, 100, 200]
    assert shown_ms(0) == shown_ms(10) == 100 and shown_ms(11) == 11


@pytest.mark.parametrize("fmt", ANIMATED)
def test_a_static_animation_costs_one_frame(fmt):
    frames = []
    for i in range(12):  # a pixel that moves: a real animation, but each frame barely differs
        frame = Image.new("RGB", (64, 48), (200, 40, 40))
        frame.putpixel((i, 0), (0, 0, 0))
        frames.append(frame)
    clip = decode_media(animation(fmt, frames, [80] * 12))
    assert isinstance(clip, Clip) and clip.frames_used == 1 and clip.weights == [1.0]
    assert clip.frame_count == 12 and clip.times_ms == [0]


def test_a_dropped_near_duplicate_gives_its_share_to_the_frame_kept_for_it():
    a, b = Image.new("RGB", (8, 8), (10, 10, 10)), Image.new("RGB", (8, 8), (200, 200, 200))
    almost_a = Image.new("RGB", (8, 8), (11, 10, 10))
    frames, times, weights = drop_near_duplicates([a, almost_a, b, b], [0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], 0.005)
    assert frames == [a, b] and times == [0, 2] and weights == pytest.approx([0.3, 0.7])
    assert drop_near_duplicates([a, almost_a], [0, 1], [0.5, 0.5], 0.0)[2] == [0.5, 0.5]  # 0 keeps all


def test_plan_frames_is_a_pure_rule_over_durations():
    assert plan_frames([100.0, 300.0], 8) == [(0, 0.25), (1, 0.75)]
    assert plan_frames([100.0] * 4, 2) == [(1, 0.5), (3, 0.5)]  # middles at 100 and 300
    assert plan_frames([100.0] * 9, 3) == [(1, pytest.approx(1 / 3)), (4, pytest.approx(1 / 3)),
                                           (7, pytest.approx(1 / 3))]


@pytest.mark.parametrize("fmt", ANIMATED)
def test_frames_are_scaled_down_to_min_side(fmt):
    clip = decode_media(animation(fmt, solid(3, size=(400, 300)), [100] * 3), min_side=100)
    assert [f.size for f in clip.frames] == [(133, 100)] * 3 and clip.size == (400, 300)
    small = decode_media(animation(fmt, solid(3, size=(80, 60)), [100] * 3), min_side=100)
    assert [f.size for f in small.frames] == [(80, 60)] * 3


@pytest.mark.parametrize("fmt, kwargs", [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("GIF", {}),
                                         ("PNG", {"mode": "RGBA"}), ("GIF", {"mode": "P"})])
def test_stills_decode_exactly_as_decode_image(fmt, kwargs):
    image = Image.effect_noise((90, 70), 60).convert(kwargs.get("mode", "RGB"))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    still = decode_media(data, min_side=32)
    assert isinstance(still, Image.Image) and not is_clip(data)
    assert np.array_equal(np.asarray(still), np.asarray(decode_image(data, min_side=32)))


@pytest.mark.parametrize("fmt", ANIMATED)
def test_a_one_frame_animation_is_a_still(fmt):
    data = animation(fmt, solid(1), [100])
    assert not is_clip(data)
    assert isinstance(decode_media(data), Image.Image)


@pytest.mark.parametrize("fmt", ANIMATED)
def test_is_clip_reads_headers_only(fmt):
    assert is_clip(animation(fmt, solid(2), [100, 100]))


def test_an_apng_default_image_outside_the_animation_is_not_a_frame():
    default, *frames = solid(4)
    buffer = io.BytesIO()
    default.save(buffer, "PNG", save_all=True, append_images=frames, duration=[100, 100, 100], default_image=True)
    clip = decode_media(buffer.getvalue())
    assert [red_of(f) for f in clip.frames] == [18, 30, 42] and clip.frame_count == 3


@pytest.mark.parametrize("fmt", ANIMATED)
def test_the_time_budget_ends_decoding_and_the_frames_so_far_are_used(fmt):
    data = animation(fmt, solid(8), [100] * 8)
    # The clock is read once at the start and once after each frame: frame k is read at k + 1 seconds.
    clip = decode_media(data, settings=ClipSettings(time_budget_s=3), clock=counting_clock())
    assert clip.truncated and clip.frames_used == 3 and [red_of(f) for f in clip.frames] == [6, 18, 30]
    assert clip.weights == pytest.approx([1 / 3] * 3) and clip.frame_count == 8
    whole = decode_media(data, settings=ClipSettings(time_budget_s=10), clock=counting_clock())
    assert not whole.truncated and whole.frames_used == 8


def test_a_budget_spent_before_the_first_chosen_frame_keeps_the_frame_reached():
    data = animation("GIF", solid(40), [50] * 40)  # first chosen frame: 2 (the middle of 0-250 ms)
    clip = decode_media(data, settings=ClipSettings(time_budget_s=0))
    assert clip.truncated and clip.frames_used == 1 and clip.weights == [1.0] and red_of(clip.frames[0]) == 6


@pytest.mark.parametrize("fmt", ANIMATED)
def test_an_animation_with_too_many_frames_is_refused_naming_the_setting(fmt):
    data = animation(fmt, solid(6, size=(8, 8)), [100] * 6)
    with pytest.raises(ImageError, match="more than 5 frames.*max_source_frames") as info:
        decode_media(data, settings=ClipSettings(max_source_frames=5))
    assert info.value.kind == "too_large"


@pytest.mark.parametrize("fmt", ANIMATED)
def test_decoding_work_over_the_pixel_budget_is_refused_before_decoding(fmt):
    data = animation(fmt, solid(6, size=(100, 100)), [100] * 6)
    with pytest.raises(ImageError, match=r"6 frames of 100x100.*60,000 pixels.*max_decoded_pixels") as info:
        decode_media(data, settings=ClipSettings(max_decoded_pixels=50_000))
    assert info.value.kind == "too_large"


@pytest.mark.parametrize("fmt", ANIMATED)
def test_a_canvas_over_the_pixel_limit_is_refused(fmt):
    data = animation(fmt, solid(2, size=(300, 200)), [100, 100])
    with pytest.raises(ImageError, match="canvas is 300x200 pixels, over the limit of 50,000") as info:
        decode_media(data, max_pixels=50_000)
    assert info.value.kind == "too_large"


def test_a_gif_cut_off_mid_frame_gives_its_complete_frames():
    data = animation("GIF", [Image.effect_noise((64, 64), 80).convert("RGB") for _ in range(4)], [100] * 4)
    cut = decode_media(data[: len(data) * 3 // 4])
    assert isinstance(cut, Clip) and cut.frame_count in (2, 3) and cut.frames_used >= 2


def test_other_formats_are_refused_naming_what_is_accepted():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    with pytest.raises(ImageError, match="TIFF files are not accepted; send .*animated GIF.*MP4") as info:
        decode_media(buffer.getvalue())
    assert info.value.kind == "unsupported"
    with pytest.raises(ImageError, match="not an image or a clip") as info:
        decode_media(b"<html>hello</html>")
    assert info.value.kind == "invalid"
    with pytest.raises(ImageError, match="empty"):
        decode_media(b"")


@pytest.mark.parametrize("head, name", [
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "MP4"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "MOV"),
    (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "MOV"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "WEBM"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "MKV"),
    (b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00", None),  # a still image in the same box format
    (b"GIF89a\x01\x00\x01\x00", None),
])
def test_video_containers_are_sniffed_by_content(head, name):
    assert sniff_video(head + bytes(64)) == name


def test_avif_and_heic_are_named_whatever_their_first_box_size():
    assert sniff_format(b"\x00\x00\x00\x20ftypavif" + bytes(8)) == "AVIF"
    assert sniff_format(b"\x00\x00\x00\x1cftypheix" + bytes(8)) == "HEIC"


@pytest.mark.parametrize("field, value, words", [
    ("max_frames", 0, "max_frames must be a whole number of at least 1"),
    ("max_frames", 2.5, "max_frames must be a whole number"),
    ("time_budget_s", -1, "time_budget_s must be seconds >= 0"),
    ("min_change", 2, "min_change must be a mean grey difference from 0 to 1"),
    ("max_source_frames", 0, "max_source_frames"),
    ("max_decoded_pixels", True, "max_decoded_pixels"),
    ("max_duration_s", 0, "max_duration_s must be seconds > 0"),
    ("video_memory_mb", 256, "video_memory_mb must be at least 384"),
    ("video_timeout_s", 1.0, "video_timeout_s must be seconds above time_budget_s"),
])
def test_clip_settings_refuse_bad_values_saying_which(field, value, words):
    with pytest.raises(ValueError, match=words):
        ClipSettings(**{field: value})


# -- videos (PyAV, the `video` extra) ---------------------------------------------------------------------------
# The worker's decoding (`video._decode`) is tested in process, fast; the whole path, which starts a worker
# process (about 0.25 s), under the `subprocess` mark.


def test_a_video_gives_the_frames_shown_at_the_middle_of_equal_slices():
    answer, frames = decode_in_process(video(n=50, fps=10))  # 5 s: middles at 0.3125 s, 0.9375 s, ...
    assert answer["times_ms"] == [300, 900, 1500, 2100, 2800, 3400, 4000, 4600]
    assert answer["weights"] == pytest.approx([1 / 8] * 8)
    assert answer["duration_ms"] == 5000 and answer["frame_count"] == 50 and answer["size"] == [64, 48]
    assert not answer["truncated"]
    reds = [int(f[..., 0].mean()) for f in frames]
    assert all(abs(red - 5 * t // 100) <= 4 for red, t in zip(reds, answer["times_ms"]))


def test_a_video_of_few_frames_gives_each_weighted_by_its_time():
    answer, frames = decode_in_process(video(n=4, fps=4))
    assert answer["times_ms"] == [0, 250, 500, 750] and answer["weights"] == pytest.approx([0.25] * 4)
    assert len(frames) == 4


def test_video_frames_come_back_scaled_to_min_side():
    answer, frames = decode_in_process(video(n=3, size=(320, 240)), min_side=60)
    assert {f.shape for f in frames} == {(60, 80, 3)} and answer["size"] == [320, 240]


def test_a_video_turned_by_its_display_matrix_comes_back_upright():
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)  # counterclockwise, as a phone held upright records
        pixels = np.zeros((48, 64, 3), np.uint8)
        pixels[:, :32, 0] = 255  # red on the left, blue on the right
        pixels[:, 32:, 2] = 255
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, "rgb24")))
        container.mux(stream.encode())
    answer, frames = decode_in_process(buffer.getvalue())
    assert frames[0].shape == (64, 48, 3) and answer["size"] == [64, 48]  # shown 48 wide; stored 64 wide
    assert frames[0][-3, 24, 0] > 200 and frames[0][2, 24, 2] > 200  # the left side turned to the bottom


def test_a_spent_video_budget_gives_the_frames_so_far():
    answer, frames = decode_in_process(video(n=50), time_budget_s=0)
    assert answer["truncated"] and len(frames) == 1 and answer["weights"] == [1.0]


def test_a_video_over_the_duration_limit_is_refused_from_its_header():
    with pytest.raises(ImageError, match=r"5 s long, over the limit of 2 s \(ClipSettings.max_duration_s\)") as info:
        decode_in_process(video(n=50), max_duration_s=2.0)
    assert info.value.kind == "too_large"


def test_video_frames_over_the_pixel_limit_are_refused_from_the_header():
    with pytest.raises(ImageError, match="frames are 64x48 pixels, over the limit of 1,000") as info:
        decode_in_process(video(n=2), max_pixels=1000)
    assert info.value.kind == "too_large"


def test_a_codec_outside_the_list_is_refused():
    with pytest.raises(ImageError, match="png video is not accepted; send H.264") as info:
        decode_in_process(video("mov", "png", n=2), fmt="MOV")
    assert info.value.kind == "unsupported"


def test_a_file_with_no_video_track_is_refused():
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ImageError, match="no video track") as info:
        decode_in_process(buffer.getvalue())
    assert info.value.kind == "unsupported"


def test_a_webm_without_a_duration_is_measured_from_its_packets():
    data = video("webm", "libvpx", n=20, fps=10)
    # Take the Duration element (ID 0x4489) out of the header, as a browser's recorder leaves it.
    at = data.find(b"\x44\x89")
    size = data[at + 2] & 0x7F  # a one-byte EBML size: 0x84 (float32) or 0x88 (float64)
    stripped = data[:at] + b"\xec" + bytes([0x80 | size]) + bytes(size) + data[at + 3 + size:]  # a Void element
    answer, frames = decode_in_process(stripped, fmt="WEBM")
    assert answer["duration_ms"] == 2000 and len(frames) == 8


def test_video_without_pyav_names_the_extra(monkeypatch):
    data = video(n=2)
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # `import av` now fails as if not installed
    with pytest.raises(ImageError, match=r'MP4 videos need PyAV.*pip install "emoreact\[video\]"') as info:
        decode_media(data)
    assert info.value.kind == "unsupported"


@pytest.mark.subprocess
@pytest.mark.parametrize("fmt, codec, name", [("mp4", "libx264", "MP4"), ("mp4", "mpeg4", "MP4"),
                                              ("mov", "mpeg4", "MOV"), ("webm", "libvpx", "WEBM"),
                                              ("matroska", "libvpx-vp9", "MKV")])
def test_videos_decode_in_a_child_process(fmt, codec, name):
    data = video(fmt, codec, n=30, fps=10, size=(96, 64))
    assert is_clip(data)
    clip = decode_media(data, min_side=32)
    assert isinstance(clip, Clip) and clip.format == name and clip.size == (96, 64) and clip.frame_count == 30
    assert clip.duration_ms == 3000 and clip.frames_used == 8 and not clip.truncated
    assert all(f.mode == "RGB" and f.size == (48, 32) for f in clip.frames)
    assert clip.times_ms == sorted(clip.times_ms) and sum(clip.weights) == pytest.approx(1.0)


@pytest.mark.subprocess
def test_a_static_video_costs_one_frame():
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(30):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 120, np.uint8), "rgb24")))
        container.mux(stream.encode())
    clip = decode_media(buffer.getvalue())
    assert clip.frames_used == 1 and clip.weights == [1.0] and clip.frame_count == 30


@pytest.mark.subprocess
def test_a_worker_is_reused_and_a_dead_one_replaced():
    from emoreact.embed import video as video_module

    data = video(n=12)
    settings = ClipSettings(video_memory_mb=1100)  # a limit no other test uses: its own workers
    first = decode_media(data, settings=settings)
    (worker,) = video_module._IDLE[1100]
    decode_media(data, settings=settings)
    assert video_module._IDLE[1100] == [worker] and worker.clips == 2  # the same process answered both
    worker.process.kill()
    worker.process.wait()
    assert decode_media(data, settings=settings).times_ms == first.times_ms  # a fresh worker took over
    assert video_module._IDLE[1100][0] is not worker


@pytest.mark.subprocess
def test_a_worker_past_the_time_limit_is_killed_and_named():
    # A fresh worker takes about 0.25 s to start: a limit of 1 ms always runs out, whatever the machine.
    settings = ClipSettings(video_memory_mb=1200, time_budget_s=0, video_timeout_s=0.001)
    with pytest.raises(ImageError, match=r"longer than 0.001 s.*ClipSettings.video_timeout_s") as info:
        decode_media(video(n=4), settings=settings)
    assert info.value.kind == "too_large"
    from emoreact.embed import video as video_module

    assert not video_module._IDLE.get(1200)  # the killed worker is not kept


@pytest.mark.subprocess
def test_a_worker_over_its_memory_limit_answers_too_large_naming_the_setting():
    from types import SimpleNamespace

    from emoreact.embed import video as video_module

    # Under the 384 MB that ClipSettings allows: even PyAV's libraries cannot be mapped in 200 MB.
    settings = SimpleNamespace(video_memory_mb=200, video_timeout_s=15.0)
    answer, frames = video_module._ask_worker(video(n=4), child_request(memory_mb=200), settings)
    assert answer["kind"] == "too_large" and "200 MB" in answer["error"] and "video_memory_mb" in answer["error"]
    assert frames == [] and not video_module._IDLE.get(200)


# -- fuzzing the animation headers: only ImageError escapes -----------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANIMATION_SEEDS = [animation(fmt, solid(3, size=(12, 8)), [0, 50, 120]) for fmt in ANIMATED]


def check_media(data: bytes) -> None:
    is_clip(data)
    try:
        result = decode_media(data, max_pixels=1_000_000, settings=ClipSettings(max_source_frames=500))
    except ImageError as exc:
        assert str(exc) and exc.kind in ("invalid", "unsupported", "too_large")
    else:
        frames = result.frames if isinstance(result, Clip) else [result]
        assert frames and all(f.mode == "RGB" and f.width * f.height <= 1_000_000 for f in frames)
        if isinstance(result, Clip):
            assert sum(result.weights) == pytest.approx(1.0) and result.times_ms == sorted(result.times_ms)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(ANIMATION_SEEDS), flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)),
                                                             max_size=8), cut=st.integers(0, 4000))
def test_mutated_animations_decode_or_raise_image_error(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    check_media(bytes(data[: max(1, len(data) - cut % len(data))]))


@pytest.mark.subprocess
def test_concurrent_videos_each_take_their_own_worker():
    from concurrent.futures import ThreadPoolExecutor

    from emoreact.embed import video as video_module

    clips = [video(n=20, size=(64 + 16 * i, 48)) for i in range(3)]
    settings = ClipSettings(video_memory_mb=1300)  # a limit no other test uses: its own workers
    with ThreadPoolExecutor(3) as pool:
        sizes = [clip.size for clip in pool.map(lambda data: decode_media(data, settings=settings), clips)]
    assert sizes == [(64, 48), (80, 48), (96, 48)]  # each answer is its own clip's
    assert 1 <= len(video_module._IDLE[1300]) <= video_module._KEEP_IDLE  # the rest were ended, not leaked
