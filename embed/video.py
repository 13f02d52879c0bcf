"""Decoding videos (MP4, MOV, WebM, Matroska) into frames chosen by time: PyAV, in a child process.

FFmpeg's allocations cannot be bounded from Python, and a hostile stream may make a decoder ask for
gigabytes or spin; so each video is decoded by a fresh `python -m emoreact.embed.video` that first limits
its own address space (RLIMIT_AS = `ClipSettings.video_memory_mb`) and CPU time, reads the file from stdin
and writes the chosen frames (RGB, scaled down to `min_side`) to stdout. The parent waits at most
`ClipSettings.video_timeout_s` and kills it after that. A process per clip rather than a reused worker:
starting one costs about 0.1-0.15 s (docs/design.md, "Clips"), and in exchange each clip gets a fresh
limit, a kill ends exactly one clip, concurrent requests decode side by side, and the parent needs no
multiprocessing start method (spawn and forkserver would re-import the parent's `__main__`: the CLI).

The child checks the header first: the demuxer is the one the content was sniffed as (FFmpeg never
probes, so no playlist or concat demuxer opens other files), the codec is one of `CODECS`, the frame
size is at most `max_pixels`, the duration at most `max_duration_s`. It then seeks to each chosen time
(the middle of each of `max_frames` equal slices of the duration) rather than decoding every frame.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .images import ImageError

log = logging.getLogger(__name__)

VIDEO_EXTRA = 'pip install "emoreact[video]"'
CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg")  # decoders run
_DEMUXERS = {"MP4": "mov", "MOV": "mov", "WEBM": "matroska", "MKV": "matroska"}
_SEEK_AHEAD_S = 2.0  # a chosen time this far past the last decoded frame is reached by seeking, else by decoding on
_HEADER = struct.Struct("<I")  # the child's answer: a length-prefixed JSON header, then the frames' RGB bytes


def decode_video(data: bytes, fmt: str, max_pixels: int, min_side: int | None, settings):
    """Gives the Clip of a video (`fmt` as sniffed: MP4, MOV, WEBM or MKV), decoded in a child process."""
    from .clips import Clip, drop_near_duplicates  # clips imports this module lazily: no cycle at import

    try:
        import av  # noqa: F401 - only to say early and clearly that the extra is missing
    except ImportError:
        raise ImageError(f"{fmt} videos need PyAV, which is not installed: {VIDEO_EXTRA}; or send an image "
                         "or an animated GIF, WebP or PNG", kind="unsupported") from None
    request = {"format": fmt, "max_pixels": max_pixels, "min_side": min_side, "max_frames": settings.max_frames,
               "time_budget_s": settings.time_budget_s, "max_duration_s": settings.max_duration_s,
               "memory_mb": settings.video_memory_mb, "cpu_s": settings.video_timeout_s}
    answer, frames = _run_child(data, request, settings)
    if "error" in answer:
        raise ImageError(answer["error"], kind=answer.get("kind", "invalid"))
    images = [Image.fromarray(array, "RGB") for array in frames]
    images, times, weights = drop_near_duplicates(images, answer["times_ms"], answer["weights"], settings.min_change)
    return Clip(frames=images, times_ms=times, weights=weights, duration_ms=answer["duration_ms"],
                frame_count=answer["frame_count"], format=fmt, size=tuple(answer["size"]),
                truncated=answer["truncated"])


def _run_child(data: bytes, request: dict, settings) -> tuple[dict, list[np.ndarray]]:
    """Gives the child's answer and frames; a child killed or past the time limit gives an ImageError."""
    import emoreact

    package_root = str(Path(emoreact.__file__).parent.parent)  # where this process found `emoreact`
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-m", "emoreact.embed.video", json.dumps(request)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = child.communicate(data, timeout=settings.video_timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise ImageError(f"decoding the {request['format']} video took longer than {settings.video_timeout_s:g} s, "
                         "the limit (ClipSettings.video_timeout_s); send a shorter or smaller clip",
                         kind="too_large") from None
    if err:
        log.debug("video decoder said: %s", err.decode("utf-8", "replace")[-2000:])
    if child.returncode != 0 or len(out) < _HEADER.size:
        how = (f"was stopped by signal {signal.Signals(-child.returncode).name}" if child.returncode < 0
               else f"failed (exit status {child.returncode})")
        kind = "too_large" if b"MemoryError" in err else "invalid"
        raise ImageError(f"the video decoder {how}: the {request['format']} file is damaged, or decoding it needs "
                         f"more than {settings.video_memory_mb} MB (ClipSettings.video_memory_mb)", kind=kind)
    length = _HEADER.unpack_from(out)[0]
    answer = json.loads(out[_HEADER.size:_HEADER.size + length])
    frames, pos = [], _HEADER.size + length
    for width, height in answer.get("shapes", []):
        size = width * height * 3
        frames.append(np.frombuffer(out, np.uint8, size, pos).reshape(height, width, 3))
        pos += size
    return answer, frames


# -- the child process ------------------------------------------------------------------------------------------


def _limit_self(memory_mb: int, cpu_s: float) -> None:
    """Caps this process's address space and CPU time, and lets it write no file."""
    import resource

    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(cpu_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _child_main(request: dict) -> None:
    """Reads a video from stdin and writes the answer (header, then frames) to stdout."""
    _limit_self(request["memory_mb"], request["cpu_s"])
    data = sys.stdin.buffer.read()
    try:
        answer, frames = _decode(data, request)
    except ImageError as exc:
        answer, frames = {"error": str(exc), "kind": exc.kind}, []
    except (MemoryError, ImportError):  # PyAV's libraries could not even be mapped under the limit
        answer, frames = {"error": f"decoding the {request['format']} video needs more than {request['memory_mb']} "
                                   "MB, the limit (ClipSettings.video_memory_mb); send a smaller clip",
                          "kind": "too_large"}, []
    answer["shapes"] = [[f.shape[1], f.shape[0]] for f in frames]
    header = json.dumps(answer).encode()
    out = sys.stdout.buffer
    out.write(_HEADER.pack(len(header)) + header)
    for frame in frames:
        out.write(np.ascontiguousarray(frame).tobytes())
    out.flush()


def _decode(data: bytes, request: dict) -> tuple[dict, list[np.ndarray]]:
    """Gives (answer, frames) for one video, or raises ImageError (or MemoryError) saying why not."""
    import av

    fmt = request["format"]
    try:
        with av.open(io.BytesIO(data), format=_DEMUXERS[fmt]) as container:
            return _decode_open(container, request)
    except (av.error.MemoryError, MemoryError):
        raise MemoryError from None
    except av.FFmpegError as exc:
        if exc.errno in (errno.ENOMEM, errno.EAGAIN):  # EAGAIN: no memory left for a decoder thread's stack
            raise MemoryError from None
        raise ImageError(f"the {fmt} file is damaged or truncated, or decoding it needs more than "
                         f"{request['memory_mb']} MB (ClipSettings.video_memory_mb) ({exc}); re-export it and try "
                         "again", kind="invalid") from None


def _decode_open(container, request: dict) -> tuple[dict, list[np.ndarray]]:
    fmt, max_pixels = request["format"], request["max_pixels"]
    if not container.streams.video:
        raise ImageError(f"the {fmt} file holds no video track; send a clip with pictures", kind="unsupported")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec.name not in CODECS:
        raise ImageError(f"the {fmt} file's {codec.name} video is not accepted; send H.264, HEVC, VP8, VP9, AV1 "
                         "or MPEG-4 video", kind="unsupported")
    width, height = codec.width, codec.height
    if width <= 0 or height <= 0:
        raise ImageError(f"the {fmt} file does not say its frame size; re-export it and try again")
    if width * height > max_pixels:
        raise ImageError(f"the {fmt} video's frames are {width}x{height} pixels, over the limit of {max_pixels:,}; "
                         "send a smaller clip", kind="too_large")
    codec.thread_count = 1  # frame threads each hold frames: memory would grow with the machine's cores
    started = time.monotonic()
    deadline = started + request["time_budget_s"]
    base = stream.time_base
    start = stream.start_time or 0
    duration = _duration_s(container, stream)
    if duration is None:  # e.g. a WebM recorded by a browser: the last packet's end, demuxed, not decoded
        duration = _demuxed_duration_s(container, stream, start)
        container.seek(0)
    if duration > request["max_duration_s"]:
        raise ImageError(f"the {fmt} video is {duration:,.0f} s long, over the limit of {request['max_duration_s']:g} s "
                         "(ClipSettings.max_duration_s); send a shorter clip", kind="too_large")
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    frame_count = stream.frames or max(1, round(duration * rate))
    n = request["max_frames"]
    targets = [(k + 0.5) * duration / n for k in range(n)]
    size = _scaled_size(width, height, request["min_side"])
    if stream.frames and stream.frames <= n:  # each frame is chosen, weighted by how long it is shown
        picked, truncated = _every_frame(container, stream, duration, float(base), start, deadline,
                                         lambda frame: _rgb(frame, size))
    else:
        picked, truncated = _pick(container, stream, targets, float(base), start, deadline,
                                  lambda frame: _rgb(frame, size))
    times, weights, frames = [], [], []
    for time_s, array, share in picked:
        times.append(round(time_s * 1000))
        weights.append(share)
        frames.append(array)
    answer = {"times_ms": times, "weights": weights, "duration_ms": round(duration * 1000),
              "frame_count": int(frame_count), "size": [width, height], "truncated": truncated}
    return answer, frames


def _duration_s(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # in av.time_base
    return None


def _demuxed_duration_s(container, stream, start: int) -> float:
    end = 0
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = max(end, packet.pts + (packet.duration or 0))
    return max(float((end - start) * stream.time_base), 0.001)


def _pick(container, stream, targets: list[float], base: float, start: int, deadline: float, convert):
    """Gives ([(time_s, converted frame, share)], truncated): for each target time, the frame shown at it (the
    last one starting at or before it), seeking when it lies ahead; targets on one frame share it. Frames are
    converted (scaled down) as soon as they are chosen, so full-size frames are not held."""
    picked: dict = {}  # pts -> [time_s, converted frame, share]

    def choose(frame, share: float) -> None:
        if frame.pts not in picked:
            picked[frame.pts] = [_time(frame, base, start), convert(frame), 0.0]
        picked[frame.pts][2] += share

    frames = None
    shown = ahead = None  # the last decoded frame at or before the target; one decoded past it
    for target in targets:
        last = ahead if ahead is not None else shown
        if frames is None or _time(last, base, start) + _SEEK_AHEAD_S < target:
            container.seek(start + int(target / base), stream=stream, backward=True, any_frame=False)
            frames, shown, ahead = container.decode(stream), None, None
        if ahead is not None and _time(ahead, base, start) <= target:
            shown, ahead = ahead, None
        while ahead is None:
            frame = next(frames, None)
            if frame is None:
                break  # the end: the last frame is shown until then
            if time.monotonic() > deadline and (picked or shown is not None):
                if not picked:  # the budget ran out before the first chosen time: the frame reached stands in
                    choose(shown, 1.0)
                return list(picked.values()), True
            if _time(frame, base, start) <= target:
                shown = frame
            else:
                ahead = frame
        chosen = shown if shown is not None else ahead
        if chosen is not None:
            choose(chosen, 1.0 / len(targets))
        if time.monotonic() > deadline and target != targets[-1] and picked:
            return list(picked.values()), True
    if not picked:
        raise ImageError("the video holds no frame that decodes; re-export it and try again")
    return list(picked.values()), False


def _every_frame(container, stream, duration: float, base: float, start: int, deadline: float, convert):
    """Gives ([(time_s, converted frame, share)], truncated) for a video of few frames: all of them, each
    weighted by the time until the next one (the last: until the end)."""
    picked = []
    truncated = False
    for frame in container.decode(stream):
        picked.append([_time(frame, base, start), convert(frame), 0.0])
        if time.monotonic() > deadline and len(picked) < stream.frames:
            truncated = True
            break
    if not picked:
        raise ImageError("the video holds no frame that decodes; re-export it and try again")
    ends = [entry[0] for entry in picked[1:]] + [max(duration, picked[-1][0])]
    shown = [max(end - entry[0], 0.0) for end, entry in zip(ends, picked)]
    total = sum(shown)
    for entry, seconds in zip(picked, shown):
        entry[2] = seconds / total if total else 1.0 / len(picked)
    return picked, truncated


def _time(frame, base: float, start: int) -> float:
    return -1.0 if frame is None or frame.pts is None else (frame.pts - start) * base


def _scaled_size(width: int, height: int, min_side: int | None) -> tuple[int, int]:
    if not min_side or min(width, height) <= min_side:
        return width, height
    scale = min_side / min(width, height)
    return max(min_side, round(width * scale)), max(min_side, round(height * scale))


def _rgb(frame, size: tuple[int, int]) -> np.ndarray:
    """Gives the frame as (H, W, 3) uint8 RGB at `size`, turned upright by its display matrix."""
    array = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="BICUBIC")
    turns = round((frame.rotation or 0) / 90) % 4  # counterclockwise, as numpy turns
    return np.rot90(array, turns) if turns else array


if __name__ == "__main__":
    _child_main(json.loads(sys.argv[1]))
