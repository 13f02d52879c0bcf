"""Decoding videos (MP4, MOV, WebM) into frames chosen by time: PyAV in a child process (next commit)."""
from __future__ import annotations

from .images import ImageError


def decode_video(data: bytes, fmt: str, max_pixels: int, min_side: int | None, settings) -> None:
    """Refuses videos until the PyAV child process lands (interim: a clear 415, never a 500)."""
    raise ImageError(f"{fmt} videos are not accepted yet; send an image or an animated GIF, WebP or PNG",
                     kind="unsupported")
