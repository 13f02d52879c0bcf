"""The generated clip set (emoreact/clipset.py): deterministic, labelled by share of time, decodable, honest
about which art it draws from."""
import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageSequence

from emoreact.clipset import (FORMATS, KINDS, MP4_FPS, SHARE, art_names, labels_by_share, make_clip, make_clips,
                               still)
from emoreact.postset import EMOTIONS, STYLES

try:
    import av  # the video extra: MP4 clips are made with PyAV
except ImportError:
    av = None
needs_av = pytest.mark.skipif(av is None, reason="MP4 clips need the video extra (PyAV)")
MADE = FORMATS if av is not None else ("gif", "webp")


@pytest.fixture(scope="module")
def clips():
    return make_clips(seed=0, per_kind=6, formats=MADE)


@dataclass(frozen=True)
class _Drawing:
    labels: tuple[str, ...]


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others():
    first = [hashlib.sha256(c.data).hexdigest() for c in make_clips(seed=3, per_kind=2, formats=MADE)]
    again = [hashlib.sha256(c.data).hexdigest() for c in make_clips(seed=3, per_kind=2, formats=MADE)]
    other = [hashlib.sha256(c.data).hexdigest() for c in make_clips(seed=4, per_kind=2, formats=MADE)]
    assert first == again
    assert not set(first) & set(other)


def test_every_kind_comes_in_every_format(clips):
    assert {(c.kind, c.format) for c in clips} == {(k, f) for k in KINDS for f in MADE}
    assert len(clips) == 6 * len(KINDS) * len(MADE)
    assert len({c.name for c in clips}) == len(clips)


def test_a_label_counts_when_shown_for_at_least_the_stated_share_of_the_time():
    happy, sad, both = _Drawing(("happy",)), _Drawing(("sad",)), _Drawing(("fear", "surprise"))
    order = ["happy", "sad", "angry", "fear", "surprise", "disgust", "neutral", "other"]
    # happy on screen 300 of 1000 ms: exactly the share; sad 700 ms
    assert labels_by_share([happy, sad, sad], [300, 400, 300], order) == ("happy", "sad")
    assert labels_by_share([happy, sad, sad], [290, 410, 300], order) == ("sad",)
    # by time, not by frame count: one long frame outweighs three short ones
    assert labels_by_share([happy, sad, sad, sad], [820, 60, 60, 60], order) == ("happy",)
    assert labels_by_share([both, happy], [500, 500], order) == ("happy", "fear", "surprise")
    assert SHARE == 0.3


def test_each_clips_labels_are_its_drawings_labels_shown_for_the_share(clips):
    drawn = dict(art_names())
    for clip in clips:
        time_shown = {}
        for frame, delay in zip(clip.frames, clip.delays_ms, strict=True):
            for label in drawn[frame]:
                time_shown[label] = time_shown.get(label, 0) + delay
        assert set(clip.labels) == {label for label, ms in time_shown.items() if ms >= SHARE * clip.duration_ms}
        assert clip.first_frame_labels == drawn[clip.frames[0]]
        middle = np.searchsorted(np.cumsum(clip.delays_ms), clip.duration_ms / 2, side="right")
        assert clip.middle_frame_labels == drawn[clip.frames[middle]]


def test_a_stretch_is_one_emotion_on_a_neutral_face_starting_anywhere(clips):
    stretches = [c for c in clips if c.kind == "stretch"]
    drawn = dict(art_names())
    for clip in stretches:
        assert len(set(clip.frames)) == 2
        emotion = [d for f, d in zip(clip.frames, clip.delays_ms) if drawn[f] != ("neutral",)]
        assert 0.35 <= sum(emotion) / clip.duration_ms <= 0.75
        emotions = set(clip.labels) - {"neutral"}
        assert emotions and emotions <= set(EMOTIONS)
    # the stretch is not always after a neutral first frame, nor always at the start
    firsts = {c.first_frame_labels == ("neutral",) for c in stretches}
    assert firsts == {True, False}


def test_a_mixed_clip_shows_two_emotions_and_is_labelled_by_their_shares(clips):
    mixed = [c for c in clips if c.kind == "mixed"]
    for clip in mixed:
        assert len(set(clip.frames)) == 2
        assert "neutral" not in clip.labels and set(clip.labels) <= set(EMOTIONS)
    # some clips show an emotion too briefly to carry it, others carry both
    assert any(len(set(c.labels)) >= 2 for c in mixed)


def test_a_static_clip_shows_one_drawing_in_frames_the_eye_cannot_tell_apart(clips):
    static = [c for c in clips if c.kind == "static"]
    for clip in static:
        assert len(set(clip.frames)) == 1
        assert clip.labels == clip.first_frame_labels == clip.middle_frame_labels
    gif = next(c for c in static if c.format == "gif")
    with Image.open(io.BytesIO(gif.data)) as image:
        frames = [np.asarray(f.convert("RGB"), np.int16) for f in ImageSequence.Iterator(image)]
    assert len(frames) == len(gif.frames) > 1  # still animated: the encoder merged nothing
    assert max(int(np.abs(f - frames[0]).max(axis=2).astype(bool).sum()) for f in frames) <= 1  # one pixel


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_gif_and_webp_clips_decode_with_pillow_with_their_frames_and_delays(clips, fmt):
    for clip in [c for c in clips if c.format == fmt]:
        with Image.open(io.BytesIO(clip.data)) as image:
            assert image.format == fmt.upper() and image.is_animated
            assert image.n_frames == len(clip.frames)
            delays = [_loaded(frame).info["duration"] for frame in ImageSequence.Iterator(image)]
            assert image.size == (128, 128)
        assert delays == list(clip.delays_ms)
    assert len({d for c in clips if c.format == fmt for d in c.delays_ms}) > 3  # delays vary


def _loaded(frame):
    frame.load()  # WebP sets a frame's duration when it decodes it
    return frame


@needs_av
def test_mp4_clips_decode_with_pyav_at_their_frame_rate(clips):
    for clip in [c for c in clips if c.format == "mp4"]:
        with av.open(io.BytesIO(clip.data)) as container:
            stream = container.streams.video[0]
            frames = list(container.decode(stream))
            assert stream.average_rate == MP4_FPS
        assert len(frames) == len(clip.frames)
        assert (frames[0].width, frames[0].height) == (128, 128)
        assert frames[0].format.name == "yuv420p"


@needs_av
def test_a_long_mp4_has_the_asked_length_and_size():
    clip = make_clip("stretch", "mp4", frames=50, fps=25, side=320)
    with av.open(io.BytesIO(clip.data)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 50 and (stream.width, stream.height) == (320, 320)
        assert float(stream.duration * stream.time_base) == pytest.approx(2.0)
    assert clip.duration_ms == 2000


def test_test_clips_draw_only_the_held_out_style_and_training_clips_the_others():
    test, train = make_clips(per_kind=2, formats=("gif",)), make_clips(per_kind=2, formats=("gif",), split="train")
    assert {f.split("/")[0] for c in test for f in c.frames} == set(STYLES["test"])
    assert {f.split("/")[0] for c in train for f in c.frames} <= set(STYLES["train"])


def test_a_still_is_a_clip_frame_of_the_same_drawing(clips):
    clip = next(c for c in clips if c.kind == "static" and c.format == "gif")
    with Image.open(io.BytesIO(still(clip.frames[0]))) as image:
        picture = np.asarray(image.convert("RGB"), np.int16)
    with Image.open(io.BytesIO(clip.data)) as image:
        first = np.asarray(image.convert("RGB"), np.int16)
    assert picture.shape == first.shape
    assert np.abs(picture - first).mean() < 8  # the GIF's palette shifts colours a little


@pytest.mark.parametrize("args, message", [
    (("wave", "gif"), "clip kind 'wave'"),
    (("stretch", "avi"), "clip format 'avi'"),
])
def test_unknown_kinds_and_formats_are_refused_naming_the_choices(args, message):
    with pytest.raises(ValueError, match=message):
        make_clip(*args)
    with pytest.raises(ValueError, match="clip formats"):
        make_clips(formats=("avi",))
