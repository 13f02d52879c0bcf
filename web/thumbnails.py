"""Small JPEG thumbnails of indexed images, made on first request and kept in memory."""
from __future__ import annotations

import functools
import io
import logging
from pathlib import Path

from PIL import Image

from emoreact.embed import ImageError
from emoreact.embed.clips import Clip, ClipSettings, decode_media
from emoreact.index import Item

log = logging.getLogger(__name__)


class ThumbnailMissing(LookupError):
    """The indexed image's original file cannot be read any more; the message says which and why."""


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """Gives JPEG bytes of the image scaled so that its longer side is at most `size` pixels; a clip's is its
    middle frame (one frame chosen by time is the one shown at half its length)."""
    image = decode_media(data, max_pixels, None, _ONE_FRAME)
    if isinstance(image, Clip):
        image = image.frames[0]
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue()


_ONE_FRAME = ClipSettings(max_frames=1)


class Thumbnails:
    """Thumbnails by indexed item; at most `cache_size` are kept (least recently used go first)."""

    def __init__(self, size: int, max_pixels: int, cache_size: int) -> None:
        self.size, self.max_pixels = size, max_pixels
        self._cached = functools.lru_cache(maxsize=cache_size)(self._make)

    def get(self, item: Item) -> bytes:
        """Gives the thumbnail of an indexed image, or raises ThumbnailMissing."""
        return self._cached(item)

    def etag(self, item: Item) -> str:
        """Gives a validator that changes when the image's content or the thumbnail size does."""
        return f"{item.sha256[:32]}-{self.size}"

    def _make(self, item: Item) -> bytes:
        # The path comes from the store, written at embed time; never from the request.
        path = Path(item.path)
        try:
            return make_thumbnail(path.read_bytes(), self.size, self.max_pixels)
        except OSError as exc:
            log.warning("thumbnail of image %d: cannot read %s (%s)", item.id, path, exc)
            raise ThumbnailMissing(f"the original file of image {item.id} is no longer readable on the "
                                   "server; restore it or rebuild the store") from exc
        except ImageError as exc:
            log.warning("thumbnail of image %d: %s no longer decodes (%s)", item.id, path, exc)
            raise ThumbnailMissing(f"the original file of image {item.id} has changed since it was "
                                   "indexed and cannot be shown; rebuild the store") from exc
