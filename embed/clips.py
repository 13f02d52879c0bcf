"""Decoding clips (animated GIF, WebP and PNG; MP4, MOV and WebM videos) into a few frames chosen by time.

A clip is judged by what it shows over its duration, not by its first frame. `decode_media` gives a still
image exactly as `decode_image` does, and a `Clip` for anything that moves: at most `max_frames` frames,
each the frame shown at the middle of one of `max_frames` equal slices of the clip's duration, each
weighted by the share of the duration it stands for; a frame that barely differs from the last one kept
is dropped and its share goes to that one, so a static animation costs one frame.

Limits, all checked from the headers before any pixel is decoded, all in `ClipSettings`: the canvas
(`max_pixels`, as for stills), the frames an animation may hold (`max_source_frames`), the canvas pixels
decoded to reach the last chosen frame (`max_decoded_pixels`: GIF, WebP and APNG frames are deltas over
the previous ones, so every frame up to the last chosen one is decoded), a video's duration
(`max_duration_s`). A time budget (`time_budget_s`) ends decoding early: the frames decoded so far are
used and the clip says `truncated`. Videos are decoded by PyAV in a child process under a memory and a
wall-clock limit (embed/video.py).
"""
from __future__ import annotations

import bisect
import io
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import (ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, ImageError, _decode_errors, decode_image, sniff_format,
                     sniff_video, to_rgb)

CLIP_FORMATS = ("GIF", "WEBP", "PNG", "MP4", "MOV", "WEBM", "MKV")  # what `Clip.format` may say
ACCEPTED = "JPEG, PNG, WebP or GIF images, animated GIF, WebP or PNG, or MP4, MOV or WebM videos"
# Browsers show a GIF frame delay of 0 or 10 ms as 100 ms (Chromium and Firefox: "<= 10 ms"), for every
# animated format; files made for browsers rely on it, so a clip's timeline follows it too.
_FASTEST_SHOWN_MS = 10
_SHOWN_INSTEAD_MS = 100
_THUMB = 32  # near-duplicates are compared as 32x32 grey thumbnails
_CANVAS_BYTES = 24  # bytes a canvas pixel costs at most while a frame is drawn, kept for disposal, copied and
                    # composited to RGB (about 17 measured for a GIF)


@dataclass(frozen=True)
class ClipSettings:
    """How a clip is decoded: how many frames, within which limits. Every limit names itself in the error."""

    max_frames: int = 8              # frames chosen at most, spread over the clip's duration
    time_budget_s: float = 2.0       # decoding stops when spent; the frames decoded so far are used (truncated)
    min_change: float = 0.005        # a frame whose 32x32 grey thumbnail differs from the last kept one's by less
                                     # (mean absolute difference, 0-1) is dropped: about 1.3 grey levels on average,
                                     # above lossy-video noise, below a face changing its expression
    max_source_frames: int = 10_000  # an animation with more frames is refused (413); counted from the headers
                                     # without decoding (videos are seeked by time: `max_duration_s` bounds them)
    max_decoded_pixels: int = 1_000_000_000  # canvas pixels x frames decoded to reach the last chosen frame;
                                     # over it the animation is refused (413): the work bound
    max_duration_s: float = 600.0    # a longer video is refused (413): a clip, not a film; animations are
                                     # bounded by frames instead (a slide show of long frames costs little)
    video_memory_mb: int = 1024      # the address-space limit (RLIMIT_AS) of the video decoding child process
    video_timeout_s: float = 15.0    # the wall-clock limit of that child; past it the child is killed (413)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"ClipSettings: {what}")

        for name in ("max_frames", "max_source_frames", "max_decoded_pixels", "video_memory_mb"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a whole number of at least 1, not {value!r}")
        need(self.video_memory_mb >= 384, f"video_memory_mb must be at least 384 (Python, PyAV and FFmpeg alone "
             f"take about 300 MB of address space), not {self.video_memory_mb}")
        need(_number(self.time_budget_s) and self.time_budget_s >= 0,
             f"time_budget_s must be seconds >= 0 (0 decodes one frame), not {self.time_budget_s!r}")
        need(_number(self.min_change) and 0 <= self.min_change <= 1,
             f"min_change must be a mean grey difference from 0 to 1, not {self.min_change!r}")
        need(_number(self.max_duration_s) and self.max_duration_s > 0,
             f"max_duration_s must be seconds > 0, not {self.max_duration_s!r}")
        need(_number(self.video_timeout_s) and self.video_timeout_s > self.time_budget_s,
             f"video_timeout_s must be seconds above time_budget_s ({self.time_budget_s}), "
             f"not {self.video_timeout_s!r}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Clip:
    """A decoded clip: its chosen frames in time order, with their times and the shares they stand for."""

    frames: list[Image.Image]  # RGB 8-bit, in time order, at least one
    times_ms: list[int]        # each chosen frame's start time in the clip
    weights: list[float]       # share of the clip's (decoded) duration each frame stands for; sums to 1
    duration_ms: int
    frame_count: int           # frames in the source (a video: as its stream says or as its rate gives)
    format: str                # one of CLIP_FORMATS
    size: tuple[int, int]      # the canvas (width, height) as stored
    truncated: bool            # the time budget stopped decoding before the last chosen frame

    @property
    def frames_used(self) -> int:
        return len(self.frames)


def memory_budget_bytes(max_pixels: int, settings: ClipSettings) -> int:
    """Gives the most memory decoding one animation holds in this process (the frame budget): the canvas at
    `_CANVAS_BYTES` a pixel, and the chosen frames before near-duplicates are dropped, 3 bytes a pixel each
    (at most `max_pixels`; far fewer once scaled to `min_side`). A video's frames come from its worker, whose
    own memory is capped at `video_memory_mb`; here they cost what the chosen frames cost, twice (the bytes
    read from the pipe, then the images)."""
    return max_pixels * (_CANVAS_BYTES + 2 * 3 * settings.max_frames)


def decode_media(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None,
                 settings: ClipSettings = ClipSettings(), *,
                 clock: Callable[[], float] = time.monotonic) -> Image.Image | Clip:
    """Gives a still image (exactly what `decode_image` gives) or a `Clip` for an animation or a video.

    `min_side`: a clip's frames are scaled down so their shorter side is `min_side` (as a model that looks at
    that many pixels would), and only the chosen frames are kept. Raises ImageError: kind "invalid" for a
    damaged file, "unsupported" for another format (or a video without PyAV), "too_large" for a limit.
    `clock` gives seconds; the time budget is measured with it (tests pass a fake one).
    """
    if not data:
        raise ImageError(f"the file is empty; send {ACCEPTED}")
    video = sniff_video(data)
    if video is not None:
        from .video import decode_video  # the worker process imports PyAV (the `video` extra), not this one

        frames, said = decode_video(data, video, max_pixels, min_side, settings)
        frames, times, weights = drop_near_duplicates(frames, said["times_ms"], said["weights"], settings.min_change)
        return Clip(frames=frames, times_ms=times, weights=weights, duration_ms=said["duration_ms"],
                    frame_count=said["frame_count"], format=video, size=tuple(said["size"]),
                    truncated=said["truncated"])
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"the file is not an image or a clip (its content is none of {ACCEPTED})")
    if fmt not in ALLOWED_FORMATS:
        raise ImageError(f"{fmt} files are not accepted; send {ACCEPTED}", kind="unsupported")
    if fmt not in _SCANNERS:
        return decode_image(data, max_pixels, min_side)
    scan = _SCANNERS[fmt](data, settings.max_source_frames)
    if scan is None or len(scan.delays_ms) < 2:
        return decode_image(data, max_pixels, min_side)
    return _decode_animation(data, fmt, scan, max_pixels, min_side, settings, clock)


def is_clip(data: bytes) -> bool:
    """Tells from the headers alone (no frame decoded) whether `data` is a video or an animation of 2+ frames."""
    if sniff_video(data) is not None:
        return True
    fmt = sniff_format(data)
    if fmt not in _SCANNERS:
        return False
    scan = _SCANNERS[fmt](data, 1)
    return scan is not None and len(scan.delays_ms) >= 2


# -- choosing frames by time: pure over durations -------------------------------------------------------------


def shown_ms(delay_ms: float) -> float:
    """Gives how long a browser shows a frame whose file says `delay_ms` (0 and 10 ms become 100 ms)."""
    return _SHOWN_INSTEAD_MS if delay_ms <= _FASTEST_SHOWN_MS else float(delay_ms)


def plan_frames(durations_ms: list[float], max_frames: int) -> list[tuple[int, float]]:
    """Gives [(frame index, share of the duration)] in time order for frames shown for `durations_ms` (> 0).

    With at most `max_frames` frames each is chosen, weighted by its own duration. With more, the duration
    is cut into `max_frames` equal slices and the frame shown at the middle of each is chosen, 1/max_frames
    per slice (a frame shown through several slice middles is chosen once with their shares summed).
    """
    total = float(sum(durations_ms))
    if len(durations_ms) <= max_frames:
        return [(i, d / total) for i, d in enumerate(durations_ms)]
    starts = np.cumsum([0.0, *durations_ms[:-1]]).tolist()
    shares: dict[int, float] = {}
    for k in range(max_frames):
        index = bisect.bisect_right(starts, (k + 0.5) * total / max_frames) - 1
        shares[index] = shares.get(index, 0.0) + 1.0 / max_frames
    return sorted(shares.items())


def drop_near_duplicates(frames: list[Image.Image], times_ms: list[int], weights: list[float],
                         min_change: float) -> tuple[list[Image.Image], list[int], list[float]]:
    """Gives the frames whose 32x32 grey thumbnail differs from the last kept one's by `min_change` or more
    (mean absolute difference, 0-1); a dropped frame's weight goes to the frame kept before it. The weights
    come back scaled to sum to 1."""
    kept: list[int] = []
    shares: list[float] = []
    last = None
    for i, frame in enumerate(frames):
        thumb = np.asarray(frame.convert("L").resize((_THUMB, _THUMB), Image.Resampling.BOX), np.float32) / 255
        if last is not None and float(np.abs(thumb - last).mean()) < min_change:
            shares[-1] += weights[i]
            continue
        kept.append(i)
        shares.append(weights[i])
        last = thumb
    total = sum(shares)
    return [frames[i] for i in kept], [times_ms[i] for i in kept], [s / total for s in shares]


def shrink(image: Image.Image, min_side: int | None) -> Image.Image:
    """Gives `image` scaled down (bicubic, as the model's preprocessing resizes) so its shorter side is
    `min_side`; unchanged when it is not larger."""
    width, height = image.size
    if not min_side or min(width, height) <= min_side:
        return image
    scale = min_side / min(width, height)
    size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


# -- animations through Pillow -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scan:
    """What the headers of an animation say: the canvas, each frame's delay, and Pillow's index of frame 0."""

    size: tuple[int, int]
    delays_ms: list[float]
    first: int = 0  # an APNG whose default image is not part of the animation: Pillow counts it as frame 0
    declared: int = 0  # frames an APNG's header declares (acTL); the frames present are counted all the same


def _decode_animation(data: bytes, fmt: str, scan: _Scan, max_pixels: int, min_side: int | None,
                      settings: ClipSettings, clock: Callable[[], float]) -> Clip:
    """Gives the Clip of an animated GIF, WebP or PNG, decoding frames in order up to the last chosen one."""
    width, height = scan.size
    name = "APNG" if fmt == "PNG" else fmt
    if width * height > max_pixels:
        raise ImageError(f"the {name} canvas is {width}x{height} pixels, over the limit of {max_pixels:,} "
                         "per frame; send a smaller clip", kind="too_large")
    if max(len(scan.delays_ms), scan.declared) > settings.max_source_frames:
        raise ImageError(f"the {name} has more than {settings.max_source_frames:,} frames, the limit "
                         "(ClipSettings.max_source_frames); send a shorter clip", kind="too_large")
    durations = [shown_ms(d) for d in scan.delays_ms]
    starts = np.cumsum([0.0, *durations[:-1]]).tolist()
    plan = dict(plan_frames(durations, settings.max_frames))
    last = max(plan)
    work = width * height * (last + 1)
    if work > settings.max_decoded_pixels:
        raise ImageError(f"the {name} needs {last + 1:,} frames of {width}x{height} decoded ({work:,} pixels), "
                         f"over the limit of {settings.max_decoded_pixels:,} (ClipSettings.max_decoded_pixels); "
                         "send a shorter or smaller clip", kind="too_large")
    frames: list[Image.Image] = []
    times: list[int] = []
    weights: list[float] = []
    truncated = False
    started = clock()
    with _decode_errors(fmt):
        image = Image.open(io.BytesIO(data), formats=[fmt])
        for index in range(last + 1):
            image.seek(index + scan.first)  # decodes the frames before it (each is drawn over the last)
            spent = clock() - started >= settings.time_budget_s and index < last
            if index in plan or (spent and not frames):
                image.load()
                frames.append(shrink(to_rgb(image.copy()), min_side))
                times.append(round(starts[index]))
                weights.append(plan.get(index, 1.0))
            if spent:
                truncated = True
                break
    frames, times, weights = drop_near_duplicates(frames, times, weights, settings.min_change)
    return Clip(frames=frames, times_ms=times, weights=weights, duration_ms=round(sum(durations)),
                frame_count=len(durations), format=fmt, size=(width, height), truncated=truncated)


def _scan_gif(data: bytes, limit: int) -> _Scan | None:
    """Reads a GIF's blocks (no pixel decoded): the canvas and each complete frame's delay, stopping after
    `limit` + 1 frames. A frame cut off by the end of the file is not counted."""
    if len(data) < 13:
        return None
    size = struct.unpack_from("<HH", data, 6)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    delays: list[float] = []
    delay = 0.0
    end = len(data)
    while pos < end and len(delays) <= limit:
        block = data[pos]
        if block == 0x21 and pos + 1 < end:  # an extension: the graphic control one holds the delay
            if data[pos + 1] == 0xF9 and pos + 5 < end and data[pos + 2] >= 4:
                delay = struct.unpack_from("<H", data, pos + 4)[0] * 10.0
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C and pos + 10 < end:  # an image: descriptor, local palette, LZW data
            left, top, width, height, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            pos = _skip_sub_blocks(data, pos + 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1)
            if pos > end:
                break
            delays.append(delay)
            delay = 0.0
            # A frame past the screen's edge grows the canvas (as Pillow and browsers draw it): count it in.
            size = (max(size[0], left + width), max(size[1], top + height))
        else:  # the trailer, or bytes that are no block: browsers stop there too
            break
    return _Scan(size, delays)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """Gives the position after the data sub-blocks starting at `pos`, or past the end when cut off."""
    end = len(data)
    while pos < end:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return end + 1


def _scan_webp(data: bytes, limit: int) -> _Scan | None:
    """Reads a WebP's RIFF chunks: the VP8X canvas and each ANMF frame's duration (None for a simple WebP)."""
    pos, end = 12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0]) if len(data) >= 12 else 0
    size = None
    delays: list[float] = []
    while pos + 8 <= end and len(delays) <= limit:
        kind, length = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if kind == b"VP8X" and body + 10 <= end:
            size = (int.from_bytes(data[body + 4:body + 7], "little") + 1,
                    int.from_bytes(data[body + 7:body + 10], "little") + 1)
        elif kind == b"ANMF" and body + 16 <= end:
            if body + length > end:
                break  # a frame cut off
            delays.append(float(int.from_bytes(data[body + 12:body + 15], "little")))
        pos = body + length + (length & 1)
    return None if size is None else _Scan(size, delays)


def _scan_png(data: bytes, limit: int) -> _Scan | None:
    """Reads a PNG's chunks (data skipped): the IHDR size and each APNG frame control's delay."""
    pos, end = 8, len(data)
    size = None
    delays: list[float] = []
    declared = None
    default_shown = False  # the first frame control comes before IDAT: the default image is frame 0
    seen_idat = False
    while pos + 8 <= end and len(delays) <= limit:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if body + length + 4 > end:
            break  # a chunk cut off
        if kind == b"IHDR" and length >= 8:
            size = struct.unpack_from(">II", data, body)
        elif kind == b"acTL" and length >= 8:
            declared = struct.unpack_from(">I", data, body)[0]
        elif kind == b"fcTL" and length >= 26:
            default_shown = default_shown or (not delays and not seen_idat)
            numerator, denominator = struct.unpack_from(">HH", data, body + 20)
            delays.append(numerator / (denominator or 100) * 1000.0)
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            break
        pos = body + length + 4
    if size is None or declared is None:
        return None
    return _Scan(size, delays[:declared], first=0 if default_shown else 1, declared=declared)


_SCANNERS: dict[str, Callable[[bytes, int], _Scan | None]] = {"GIF": _scan_gif, "WEBP": _scan_webp,
                                                              "PNG": _scan_png}
