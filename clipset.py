"""The clip set of `bench clips` and the demo: GIFs, animated WebPs and MP4s made from the demo's emoji art.

A clip is a run of frames, each showing one drawing filling the frame as the demo's images do (bobbing
by a pixel or two, as animated emojis do), in one of three kinds:

| kind | what it shows | labels |
|---|---|---|
| stretch | a neutral face, with a stretch of one emotion (35-75% of the time) starting anywhere | by share |
| mixed | two emotions, in two or three runs (A B, B A or A B A) | by share |
| static | one face the whole time: frames that differ by one pixel's shade, invisible | its own |

"By share": a clip carries every label shown for at least `SHARE` of its time (a frame's time is
its delay), so a short burst of an emotion is not the clip's emotion. GIF and WebP frames have
varying delays (40-200 ms); an MP4 runs at a constant `MP4_FPS`. Each clip also records the labels
of its first frame and of the frame shown at half its duration: the answers a single-frame reader
would be scored against.

By default the art is the demo's held-out style (OpenMoji): the demo's head trains on the other two
styles (Noto, Twemoji), so a clip is never judged by a head that saw its drawings. MP4 needs PyAV
(`emoreact[video]`). The same seed and arguments give the same bytes (MP4: with the same PyAV).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from emoreact.heads import frames
from emoreact.labels import load_label_config
from emoreact.postset import EMOTIONS, STYLES, arts_by_emotion

SHARE = frames.SHARE  # a clip is labelled with each label shown for at least this share of its time
KINDS = ("stretch", "mixed", "static")
FORMATS = ("gif", "webp", "mp4")
SIDE = 128  # frame width and height, even (MP4's yuv420p halves the colour planes)
MP4_FPS = 10  # MP4 frames per second (constant; GIF and WebP delays vary)
_DELAYS_MS = (40, 60, 80, 100, 120, 160, 200)  # GIF and WebP frame delays (GIF counts in 10 ms)
_STRETCH_SHARE = (0.35, 0.75)  # a stretch's share of the time, before snapping to whole frames


@dataclass(frozen=True)
class GeneratedClip:
    """One clip: its encoded bytes and what it shows, frame by frame."""

    name: str  # kind-format-number, e.g. stretch-gif-0003
    data: bytes  # the encoded file
    format: str  # gif | webp | mp4
    kind: str  # stretch | mixed | static
    labels: tuple[str, ...]  # every label shown for at least SHARE of the time, in the label config's order
    first_frame_labels: tuple[str, ...]  # the labels of the drawing in the first frame
    middle_frame_labels: tuple[str, ...]  # ... of the frame shown at half the duration
    frames: tuple[str, ...]  # each frame's drawing, style/hexcode
    delays_ms: tuple[int, ...]  # each frame's time on screen

    @property
    def duration_ms(self) -> int:
        return sum(self.delays_ms)

    @property
    def suffix(self) -> str:
        return f".{self.format}"

    @property
    def middle_frame(self) -> int:
        """The index of the frame on screen at half the duration."""
        return _frame_at(self.delays_ms, self.duration_ms / 2)


def make_clips(seed: int = 0, per_kind: int = 12, formats: tuple[str, ...] = FORMATS,
               split: str = "test") -> list[GeneratedClip]:
    """Gives `per_kind` clips of each kind in each format, from the art of `split` ("test": the demo's
    held-out style; "train": the other two). Emotions take turns, so each is as common as the others."""
    if unknown := set(formats) - set(FORMATS):
        raise ValueError(f"clip formats {sorted(unknown)}: choose from {FORMATS}")
    arts = _art_pool(split)
    clips = []
    for kind in KINDS:
        for fmt in formats:
            for i in range(per_kind):
                clips.append(make_clip(kind, fmt, seed=seed, number=i, arts=arts))
    return clips


def make_clip(kind: str, fmt: str, seed: int = 0, number: int = 0, frames: int | None = None,
              side: int = SIDE, fps: int = MP4_FPS, split: str = "test", arts: dict | None = None) -> GeneratedClip:
    """Gives clip `number` of a kind and format: `frames` frames (default: 8-16 for GIF and WebP,
    12-30 for MP4), `side` pixels square, an MP4 at `fps`. Its emotion is EMOTIONS[number % 6] (a static
    clip's every seventh is neutral)."""
    if kind not in KINDS:
        raise ValueError(f"clip kind {kind!r}: choose from {KINDS}")
    if fmt not in FORMATS:
        raise ValueError(f"clip format {fmt!r}: choose from {FORMATS}")
    if side < 16 or side % 2:
        raise ValueError(f"side {side}: give an even number of pixels, at least 16")
    arts = arts or _art_pool(split)
    rng = random.Random(f"{seed}/{kind}/{fmt}/{number}")  # each clip its own stream: stable under edits
    count = frames or (rng.randint(12, 30) if fmt == "mp4" else rng.randint(8, 16))
    if count < 2:
        raise ValueError(f"frames {count}: a clip has at least 2")
    delays = [round(1000 / fps)] * count if fmt == "mp4" else [rng.choice(_DELAYS_MS) for _ in range(count)]
    drawings = _PLANS[kind](rng, number, delays, arts)
    images = _render(rng, drawings, side, static=kind == "static")
    data = _ENCODERS[fmt](images, delays, fps)
    order = load_label_config().names
    middle = drawings[_frame_at(delays, sum(delays) / 2)]
    return GeneratedClip(name=f"{kind}-{fmt}-{number:04d}", data=data, format=fmt, kind=kind,
                         labels=labels_by_share(drawings, delays, order), first_frame_labels=drawings[0].labels,
                         middle_frame_labels=middle.labels, frames=tuple(d.name for d in drawings),
                         delays_ms=tuple(delays))


def labels_by_share(drawings, delays, order: list[str], share: float = SHARE) -> tuple[str, ...]:
    """Gives every label that the frames' drawings show for at least `share` of the summed delays."""
    total = sum(delays)
    shown: dict[str, int] = {}
    for drawing, delay in zip(drawings, delays, strict=True):
        for label in drawing.labels:
            shown[label] = shown.get(label, 0) + delay
    return tuple(label for label in order if shown.get(label, 0) >= share * total)


def still(clip_frame: str, side: int = SIDE, split: str = "test") -> bytes:
    """Gives a PNG of one drawing (style/hexcode) drawn as a clip frame is: the still a clip's frame is."""
    art = {a.name: a for group in _art_pool(split).values() for a in group}.get(clip_frame)
    if art is None:
        raise ValueError(f"no drawing {clip_frame!r} in the {split} art")
    buffer = io.BytesIO()
    _frame(art, side, (0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def art_names(split: str = "test") -> list[tuple[str, tuple[str, ...]]]:
    """Gives (style/hexcode, labels) of every drawing the clips of `split` draw from, each once."""
    seen = {a.name: a.labels for group in _art_pool(split).values() for a in group}
    return sorted(seen.items())


def write_clips(clips: list[GeneratedClip], out_dir: str | Path) -> list[Path]:
    """Writes each clip to `out_dir`/NAME.FORMAT; gives the paths, in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for clip in clips:
        path = out / f"{clip.name}{clip.suffix}"
        path.write_bytes(clip.data)
        paths.append(path)
    return paths


# --- what each frame shows ---------------------------------------------------------------------------

def _stretch(rng, number, delays, arts):
    """A neutral face, one emotion for a run of frames that starts anywhere (the first frame included)."""
    emotion = EMOTIONS[number % len(EMOTIONS)]
    neutral, face = rng.choice(arts["neutral"]), rng.choice(arts[emotion])
    count, total = len(delays), sum(delays)
    for _ in range(100):  # draw runs until the emotion's share of the time lands in range (or keep the last)
        length = max(1, min(count - 1, round(rng.uniform(*_STRETCH_SHARE) * count)))
        start = rng.randint(0, count - length)
        if _STRETCH_SHARE[0] <= sum(delays[start:start + length]) / total <= _STRETCH_SHARE[1]:
            break
    return [face if start <= n < start + length else neutral for n in range(count)]


def _mixed(rng, number, delays, arts):
    """Two emotions whose drawings share no label, in runs A B, B A or A B A of random lengths."""
    first = EMOTIONS[number % len(EMOTIONS)]
    a = rng.choice(arts[first])
    b = rng.choice([art for e in EMOTIONS if e not in a.labels for art in arts[e]
                    if not set(art.labels) & set(a.labels)])
    count = len(delays)
    cut = rng.randint(1, count - 1)
    layout = rng.choice(("AB", "BA", "ABA")) if count >= 3 else rng.choice(("AB", "BA"))
    if layout == "AB":
        return [a if n < cut else b for n in range(count)]
    if layout == "BA":
        return [b if n < cut else a for n in range(count)]
    start = rng.randint(1, count - 2)
    end = rng.randint(start + 1, count - 1)
    return [b if start <= n < end else a for n in range(count)]


def _static(rng, number, delays, arts):
    """One face for the whole clip; every seventh clip a neutral one."""
    faces = (*EMOTIONS, "neutral")
    return [rng.choice(arts[faces[number % len(faces)]])] * len(delays)


_PLANS = {"stretch": _stretch, "mixed": _mixed, "static": _static}


def _frame_at(delays, t_ms: float) -> int:
    """Gives the index of the frame on screen at `t_ms`."""
    elapsed = 0
    for n, delay in enumerate(delays):
        elapsed += delay
        if t_ms < elapsed:
            return n
    return len(delays) - 1


@lru_cache(maxsize=4)
def _art_pool(split: str) -> dict:
    if split not in STYLES:
        raise ValueError(f"clip art {split!r}: choose test or train")
    return arts_by_emotion(STYLES[split], load_label_config().names)


# --- drawing and encoding ------------------------------------------------------------------------------

def _render(rng, drawings, side: int, static: bool) -> list[Image.Image]:
    """Gives one RGB frame per drawing: moving clips bob by up to side/64 pixels; a static clip's frames
    differ only in one corner pixel's shade (so encoders keep every frame, and the eye sees none)."""
    wobble = max(1, side // 64)
    images, offset = [], None
    for n, drawing in enumerate(drawings):
        if static:
            offset = (0, 0)
        else:  # each frame moves from the last: encoders merge equal frames into one
            previous = offset
            while offset == previous:
                offset = (rng.randint(-wobble, wobble), rng.randint(-wobble, wobble))
        image = _frame(drawing, side, offset)
        if static and n % 2:
            image.putpixel((0, 0), (246, 246, 246))
        images.append(image)
    return images


def _frame(drawing, side: int, offset: tuple[int, int]) -> Image.Image:
    """The drawing fills the frame, as in the demo's images: the demo's head, trained on those, reads the
    same drawings shrunk to 90% of the frame with macro-F1 0.47 instead of 0.67 (75%: 0.21)."""
    image = Image.new("RGB", (side, side), "white")  # the art's own background, where the bobbing uncovers it
    image.paste(_face(drawing.path, side), offset)
    return image


@lru_cache(maxsize=256)
def _face(path: Path, size: int) -> Image.Image:
    with Image.open(path) as drawing:
        return drawing.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def _gif(images, delays, _fps) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=list(delays), loop=0)
    return buffer.getvalue()


def _webp(images, delays, _fps) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, "WEBP", save_all=True, append_images=images[1:], duration=list(delays), loop=0,
                   quality=80, method=4)
    return buffer.getvalue()


def _mp4(images, _delays, fps: int) -> bytes:
    """H.264 (MPEG-4 Part 2 where this PyAV lacks libx264) in MP4, yuv420p, constant `fps`."""
    try:
        import av
    except ImportError as exc:
        raise ImportError("MP4 clips need PyAV: pip install 'emoreact[video]'") from exc
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "23", "preset": "veryfast"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return buffer.getvalue()


_ENCODERS = {"gif": _gif, "webp": _webp, "mp4": _mp4}
