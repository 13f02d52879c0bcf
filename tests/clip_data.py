"""Clips the tests make: videos through PyAV, animations written block by block (hostile sizes Pillow would
take minutes to write), a zip bomb, and the video worker's decoding called in this process. Shared by the
clip tests (tests/test_clips.py, tests/test_hostile_clips.py, tests/test_hardening_uploads.py)."""
from __future__ import annotations

import functools
import io
import itertools
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest


def video(fmt: str = "mp4", codec: str = "libx264", n: int = 50, fps=10, size=(64, 48), **options) -> bytes:
    """Gives a video of n solid frames whose red is 5 * index (H.264 rounds it a little), made with PyAV."""
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p" if codec != "png" else "rgb24"
        for i in range(n):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[..., 0] = 5 * i % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def child_request(fmt="MP4", **changes) -> dict:
    """Gives what `decode_video` sends its child for ClipSettings() with `changes`."""
    request = {"format": fmt, "max_pixels": 40_000_000, "min_side": None, "max_frames": 8, "time_budget_s": 2.0,
               "max_duration_s": 600.0, "memory_mb": 1024, "cpu_s": 15.0}
    return {**request, **changes}


def decode_in_process(data: bytes, fmt="MP4", **changes):
    from emoreact.embed import video as video_module

    return video_module._decode(data, child_request(fmt, **changes))


def raw_gif(width: int, height: int, frames: int) -> bytes:
    """Gives a GIF of `frames` frames, each one pixel drawn at a moving place on a width x height canvas: made
    block by block, since Pillow would take minutes to write 100,000 frames."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    for i in range(frames):
        x, y = (7 * i) % max(1, width - 1), (13 * i) % max(1, height - 1)
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 100 ms
        out += b"\x2c" + struct.pack("<HHHHB", x, y, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # one pixel, LZW
    return bytes(out + b"\x3b")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_apng(width: int, height: int, frames: int) -> bytes:
    """Gives an APNG's chunks: a header claiming width x height and `frames` frame controls."""
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    out += _png_chunk(b"acTL", struct.pack(">II", frames, 0))
    for i in range(frames):
        out += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", i, 1, 1, 0, 0, 1, 10, 0, 0))
        if i == 0:
            out += _png_chunk(b"IDAT", zlib.compress(bytes(4)))
    return out + _png_chunk(b"IEND", b"")


def raw_webp(width: int, height: int, frames: int) -> bytes:
    """Gives an animated WebP's chunks: a canvas of width x height and `frames` empty frames of 100 ms."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)

    body = b"WEBP" + chunk(b"VP8X", b"\x02\x00\x00\x00" + (width - 1).to_bytes(3, "little")
                           + (height - 1).to_bytes(3, "little")) + chunk(b"ANIM", bytes(6))
    body += chunk(b"ANMF", bytes(12) + (100).to_bytes(3, "little") + b"\x00") * frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


@functools.lru_cache(maxsize=1)
def zip_bomb() -> bytes:
    """Gives 200 MB of zeros compressed by zlib into about 200 kB."""
    return zlib.compress(bytes(200_000_000), 9)


def counting_clock(step: float = 1.0):
    ticks = itertools.count()
    return lambda: next(ticks) * step


def hours_long_video() -> bytes:
    """Gives a 3 h 20 min MP4 of 10 frames of 16x16, one every 20 minutes: long, yet a few kilobytes."""
    return video(n=10, fps=Fraction(1, 1200), size=(16, 16))
