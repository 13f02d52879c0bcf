"""Decoding videos (MP4, MOV, WebM, Matroska) into frames chosen by time: PyAV, in a child process.

FFmpeg's allocations cannot be bounded from Python, and a hostile stream may make a decoder ask for
gigabytes or spin; so videos are decoded by a worker process, `python -m emoreact.embed.video`, that first
caps its own address space (RLIMIT_AS = `ClipSettings.video_memory_mb`) and lets itself write no file,
then answers requests on its stdin (a video and what to choose) with the chosen frames on its stdout (RGB,
scaled down to `min_side`), each under a CPU-time limit. The parent waits at most
`ClipSettings.video_timeout_s` for an answer and kills the worker after that; a worker that died or was
killed is replaced by a fresh one for the next clip, and every clip after a failed one gets a fresh worker.

Workers are reused (a few kept idle, each replaced after `_CLIPS_PER_WORKER` clips): starting one costs
about 0.2 s on a shared 2-core machine, against 0.01-0.03 s for decoding a short clip's frames
(docs/design.md, "Clips"). Concurrent requests each take their own worker. The workers are plain
subprocesses, not multiprocessing: `spawn` and `forkserver` would re-import the parent's `__main__` (the CLI).

The worker checks the header first: the demuxer is the one the content was sniffed as (FFmpeg never
probes, so no playlist or concat demuxer opens other files), the codec is one of `CODECS`, the frame
size is at most `max_pixels`, the duration at most `max_duration_s`. It then seeks to each chosen time
(the middle of each of `max_frames` equal slices of the duration) rather than decoding every frame.
"""
from __future__ import annotations

import atexit
import errno
import importlib.util
import io
import json
import logging
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
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
_LENGTH = struct.Struct("<Q")  # messages both ways: a length-prefixed JSON header, then bytes (the video; frames)
_KEEP_IDLE = 2            # idle workers kept per memory limit
_CLIPS_PER_WORKER = 100   # then the worker is replaced: what a long-lived heap may have kept is let go


def decode_video(data: bytes, fmt: str, max_pixels: int, min_side: int | None,
                 settings) -> tuple[list[Image.Image], dict]:
    """Gives a video's chosen frames (RGB, in time order) and what the worker says of them: `times_ms`,
    `weights`, `duration_ms`, `frame_count`, `size` and `truncated`. `fmt` is as sniffed (MP4, MOV, WEBM, MKV);
    `settings` a ClipSettings. Raises ImageError saying why not."""
    if importlib.util.find_spec("av") is None:  # found, not imported: FFmpeg's libraries stay out of this process
        raise ImageError(f"{fmt} videos need PyAV, which is not installed: {VIDEO_EXTRA}; or send an image "
                         "or an animated GIF, WebP or PNG", kind="unsupported")
    request = {"format": fmt, "max_pixels": max_pixels, "min_side": min_side, "max_frames": settings.max_frames,
               "time_budget_s": settings.time_budget_s, "max_duration_s": settings.max_duration_s,
               "memory_mb": settings.video_memory_mb, "cpu_s": settings.video_timeout_s}
    answer, frames = _ask_worker(data, request, settings)
    if "error" in answer:
        raise ImageError(answer["error"], kind=answer.get("kind", "invalid"))
    return [Image.fromarray(array, "RGB") for array in frames], answer


class _WorkerDied(Exception):
    """The worker ended while decoding a clip (killed by a limit, or crashed)."""


class _WorkerGone(Exception):
    """The worker had ended before the request reached it (it died idle)."""


class _Worker:
    """One decoding process and the pipes to it; used by one request at a time."""

    def __init__(self, memory_mb: int) -> None:
        import emoreact

        root = str(Path(emoreact.__file__).parent.parent)  # where this process found `emoreact`
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.memory_mb, self.clips, self.owner = memory_mb, 0, os.getpid()
        self.process = subprocess.Popen([sys.executable, "-m", "emoreact.embed.video", str(memory_mb)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env)

    def ask(self, request: dict, data: bytes, deadline: float) -> tuple[dict, bytes]:
        """Gives the worker's answer header and frame bytes; raises TimeoutError or _WorkerDied."""
        header = json.dumps(request).encode()
        try:
            self.process.stdin.write(_LENGTH.pack(len(header)) + header + _LENGTH.pack(len(data)))
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise _WorkerGone from None
        self.clips += 1
        answer = json.loads(self._read(_LENGTH.unpack(self._read(_LENGTH.size, deadline))[0], deadline))
        return answer, self._read(sum(w * h * 3 for w, h in answer.get("shapes", [])), deadline)

    def _read(self, size: int, deadline: float) -> bytes:
        fd, out = self.process.stdout.fileno(), bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while len(out) < size:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise TimeoutError
                chunk = os.read(fd, min(size - len(out), 1 << 20))
                if not chunk:
                    raise _WorkerDied
                out += chunk
        return bytes(out)

    def usable(self) -> bool:
        return self.owner == os.getpid() and self.process.poll() is None and self.clips < _CLIPS_PER_WORKER

    def close(self) -> int:
        """Ends the worker; gives its exit status (negative: the signal that ended it)."""
        if self.owner == os.getpid():  # a forked copy of this module must not end its parent's workers
            self.process.kill()
            for pipe in (self.process.stdin, self.process.stdout):
                pipe.close()
        return self.process.wait()


_IDLE: dict[int, list[_Worker]] = {}  # memory limit -> idle workers
_LOCK = threading.Lock()


def _take_worker(memory_mb: int) -> _Worker:
    with _LOCK:
        idle = _IDLE.setdefault(memory_mb, [])
        while idle:
            worker = idle.pop()
            if worker.usable():
                return worker
            if worker.owner == os.getpid():
                worker.close()
    return _Worker(memory_mb)


def _give_back(worker: _Worker) -> None:
    with _LOCK:
        idle = _IDLE.setdefault(worker.memory_mb, [])
        if worker.usable() and len(idle) < _KEEP_IDLE:
            idle.append(worker)
            return
    worker.close()


@atexit.register
def _close_idle_workers() -> None:
    with _LOCK:
        workers = [w for idle in _IDLE.values() for w in idle if w.owner == os.getpid()]
        _IDLE.clear()
    for worker in workers:
        worker.close()


def _ask_worker(data: bytes, request: dict, settings) -> tuple[dict, list[np.ndarray]]:
    """Gives a worker's answer and frames; a worker killed or past the time limit gives an ImageError."""
    deadline = time.monotonic() + settings.video_timeout_s
    fmt, limit = request["format"], settings.video_memory_mb
    for attempt in range(2):  # an idle worker may have died since its last clip: then once more, with a fresh one
        worker = _take_worker(limit)
        try:
            answer, raw = worker.ask(request, data, deadline)
        except TimeoutError:
            worker.close()
            raise ImageError(f"decoding the {fmt} video took longer than {settings.video_timeout_s:g} s, the "
                             "limit (ClipSettings.video_timeout_s); send a shorter or smaller clip",
                             kind="too_large") from None
        except (_WorkerDied, _WorkerGone) as exc:
            status = worker.close()
            if isinstance(exc, _WorkerGone) and not attempt:
                continue
            how = (f"was stopped by signal {signal.Signals(-status).name}" if status < 0
                   else f"failed (exit status {status})")
            raise ImageError(f"the video decoder {how}: the {fmt} file is damaged, or decoding it needs more than "
                             f"{limit} MB (ClipSettings.video_memory_mb)", kind="invalid") from None
        if "error" in answer:
            worker.close()  # a failed clip may have left the worker's heap in any state: the next one starts fresh
        else:
            _give_back(worker)
        frames, pos = [], 0
        for width, height in answer.get("shapes", []):
            frames.append(np.frombuffer(raw, np.uint8, width * height * 3, pos).reshape(height, width, 3))
            pos += width * height * 3
        return answer, frames
    raise AssertionError("unreachable")


# -- the worker process -----------------------------------------------------------------------------------------


def _serve(memory_mb: int) -> None:
    """Answers requests from stdin on stdout until stdin closes: each a video in, its chosen frames out."""
    import resource

    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return  # the parent closed the pipe (or exited)
        request = json.loads(stdin.read(_LENGTH.unpack(head)[0]))
        data = stdin.read(_LENGTH.unpack(stdin.read(_LENGTH.size))[0])
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime + request["cpu_s"]) + 1  # CPU time counts over the process's life
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        answer, frames = _answer(data, request)
        answer["shapes"] = [[f.shape[1], f.shape[0]] for f in frames]
        header = json.dumps(answer).encode()
        stdout.write(_LENGTH.pack(len(header)) + header)
        for frame in frames:
            stdout.write(np.ascontiguousarray(frame).tobytes())
        stdout.flush()


def _answer(data: bytes, request: dict) -> tuple[dict, list[np.ndarray]]:
    """Gives (answer, frames) for one request; errors become an answer that says why."""
    try:
        return _decode(data, request)
    except ImageError as exc:
        return {"error": str(exc), "kind": exc.kind}, []
    except (MemoryError, ImportError):  # ImportError: PyAV's libraries could not even be mapped under the limit
        return {"error": f"decoding the {request['format']} video needs more than {request['memory_mb']} MB, the "
                         "limit (ClipSettings.video_memory_mb); send a smaller clip", "kind": "too_large"}, []
    except Exception as exc:  # noqa: BLE001 - any other failure is this file's, and the worker answers the next
        return {"error": f"the {request['format']} file could not be decoded ({type(exc).__name__}: {exc}); "
                         "re-export it and try again", "kind": "invalid"}, []


def _decode(data: bytes, request: dict) -> tuple[dict, list[np.ndarray]]:
    """Gives (answer, frames) for one video, or raises ImageError (or MemoryError) saying why not."""
    import av

    fmt, memory_mb = request["format"], request["memory_mb"]
    limit = f"{memory_mb} MB (ClipSettings.video_memory_mb)"
    try:
        container = av.open(io.BytesIO(data), format=_DEMUXERS[fmt], metadata_errors="replace")
    except av.FFmpegError as exc:
        _raise_if_out_of_memory(exc)
        cause = f", or opening it needs more than {limit}" if exc.errno == errno.EAGAIN else ""  # a thread's stack
        raise ImageError(f"the {fmt} file is damaged or truncated{cause} ({exc}); re-export it and try again") from None
    with container:
        try:
            return _decode_open(container, request)
        except av.FFmpegError as exc:  # decoders report a failed allocation as invalid data too
            _raise_if_out_of_memory(exc)
            raise ImageError(f"the {fmt} video is damaged, or decoding it needs more than {limit} ({exc}); "
                             "re-export it and try again") from None


def _raise_if_out_of_memory(exc: Exception) -> None:
    """Raises MemoryError for an FFmpeg error that says memory ran out (ENOMEM: also a corrupt size that asks for
    more than FFmpeg allocates at once)."""
    if isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM:
        raise MemoryError from None


def _decode_open(container, request: dict) -> tuple[dict, list[np.ndarray]]:
    fmt, max_pixels = request["format"], request["max_pixels"]
    if not container.streams.video:
        raise ImageError(f"the {fmt} file holds no video track; send a clip with pictures", kind="unsupported")
    stream = container.streams.video[0]
    codec = stream.codec_context  # None when FFmpeg has no decoder for the track's codec
    if codec is None or codec.name not in CODECS:
        name = codec.name if codec is not None else "unknown"
        raise ImageError(f"the {fmt} file's {name} video is not accepted; send H.264, HEVC, VP8, VP9, AV1 "
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
        raise ImageError(f"the {fmt} video is {duration:,.0f} s long, over the limit of "
                         f"{request['max_duration_s']:g} s (ClipSettings.max_duration_s); send a shorter clip",
                         kind="too_large")
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    frame_count = stream.frames or max(1, round(duration * rate))
    n = request["max_frames"]
    targets = [(k + 0.5) * duration / n for k in range(n)]

    def convert(frame) -> np.ndarray:
        return _rgb(frame, fmt, max_pixels, request["min_side"])

    if stream.frames and stream.frames <= n:  # each frame is chosen, weighted by how long it is shown
        picked, truncated = _every_frame(container, stream, duration, float(base), start, deadline, convert)
    else:
        picked, truncated = _pick(container, stream, targets, float(base), start, deadline, convert)
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


def _rgb(frame, fmt: str, max_pixels: int, min_side: int | None) -> np.ndarray:
    """Gives the frame as (H, W, 3) uint8 RGB scaled to `min_side`, turned upright by its display matrix."""
    if frame.width * frame.height > max_pixels:  # a stream may change its size at a keyframe, past the header
        raise ImageError(f"the {fmt} video has frames of {frame.width}x{frame.height} pixels, over the limit of "
                         f"{max_pixels:,}; send a smaller clip", kind="too_large")
    width, height = _scaled_size(frame.width, frame.height, min_side)
    array = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
    turns = round((frame.rotation or 0) / 90) % 4  # counterclockwise, as numpy turns
    return np.rot90(array, turns) if turns else array


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
