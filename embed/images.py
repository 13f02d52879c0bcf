"""Decoding untrusted image bytes into RGB, safely and the same way everywhere.

Only JPEG, PNG, WebP and GIF decoders are ever invoked (chosen by content, not by file name);
the pixel count is checked from the header before any pixel is decoded; EXIF orientation is
applied; palette, alpha, CMYK and 16-bit images become correct 8-bit RGB; animations give
their first frame (`decode_media` in clips.py gives them, and videos, as clips).
"""
from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; larger is refused before decoding
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as on most feeds


class ImageError(ValueError):
    """An input that is not a usable image. `kind` tells the web layer which status to answer."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind  # "invalid" | "unsupported" | "too_large"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Gives an 8-bit RGB PIL image from encoded bytes, or raises ImageError saying why not.

    With `min_side`, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's
    `draft`) as long as its shorter side stays at least `min_side`: a model that looks at 224 pixels
    gains nothing from decoding a 640x480 photo in full, and the decoder does half the work or less.
    """
    return decode_image_with_size(data, max_pixels, min_side)[0]


def decode_image_with_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                           min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Like `decode_image`, and also gives the image's full (width, height) as stored in the file."""
    if not data:
        raise ImageError("the file is empty; send a JPEG, PNG, WebP or GIF image")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("the file is not an image (its content is not JPEG, PNG, WebP or GIF)")
    if fmt not in ALLOWED_FORMATS:
        raise ImageError(f"{fmt} images are not accepted; send JPEG, PNG, WebP or GIF", kind="unsupported")
    with _decode_errors(fmt):
        return _normalise(Image.open(io.BytesIO(data), formats=[fmt]), fmt, max_pixels, min_side)


def decode_pil(image: Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Like `decode_image_with_size`, for a PIL image the caller opened: the same steps, so an image from
    `Image.open(path)` gives the same pixels as the file's bytes. (An image whose pixels were already
    loaded cannot be decoded at reduced scale any more; it is used at full size.)"""
    fmt = image.format or "image"
    with _decode_errors(fmt):
        return _normalise(image, fmt, max_pixels, min_side)


def _normalise(image: Image.Image, fmt: str, max_pixels: int,
               min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Gives the opened image decoded (first frame, reduced-scale JPEG), upright and 8-bit RGB, with its
    full size: the one path every image takes, whichever way it came in."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height} pixels, over the limit of {max_pixels:,}; "
                         "send a smaller image", kind="too_large")
    image.seek(0)  # first frame of an animation
    if min_side and fmt == "JPEG" and min(width, height) > min_side:
        scale = min(width, height) / min_side  # ask for the size whose shorter side is min_side
        image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))  # a no-op once loaded
    image.load()
    decoded = image.size
    image = _apply_orientation(image)
    if image.size != decoded:  # turned by 90 degrees: report the size the way it is shown
        width, height = height, width
    return to_rgb(image), (width, height)


@contextlib.contextmanager
def _decode_errors(fmt: str) -> Iterator[None]:
    """Turns whatever a decoder raises on a hostile or damaged file into an ImageError that says why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"the image is too large to decode safely ({exc}); send a smaller image", kind="too_large") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError,
            struct.error, ZeroDivisionError) as exc:
        raise ImageError(f"the {fmt} file is damaged or truncated ({exc}); re-export it and try again") from exc


def sniff_format(data: bytes) -> str | None:
    """Gives the image format named by the file's magic bytes (e.g. "JPEG", "TIFF"), or None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[4:8] == b"ftyp" and head[8:12] in _STILL_BRANDS:
        return _STILL_BRANDS[head[8:12]]
    return None


def sniff_video(data: bytes) -> str | None:
    """Gives the video container named by the file's content ("MP4", "MOV", "WEBM" or "MKV"), or None.

    ISO-BMFF starts with an `ftyp` box whose major brand says what it holds (`qt  ` is QuickTime; AVIF and
    HEIC are still images, not videos); old QuickTime files start with a `moov`, `mdat` or `wide` atom;
    WebM and Matroska start with the EBML magic and name their DocType in the header that follows.
    """
    head = data[:64]
    if head[4:8] == b"ftyp" and len(head) >= 12:
        brand = head[8:12]
        if brand in _STILL_BRANDS:
            return None
        return "MOV" if brand == b"qt  " else "MP4"
    if head[4:8] in (b"moov", b"mdat", b"wide") and int.from_bytes(head[:4], "big") >= 8:
        return "MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WEBM" if b"webm" in head else "MKV"
    return None


_OTHER_FORMATS = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"8BPS", "PSD"),
    (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"), (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x00\x00\x00\x1cftypavif", "AVIF"), (b"\x00\x00\x00\x18ftypheic", "HEIC"), (b"%PDF", "PDF"),
    (b"FLV\x01", "FLV"), (b"OggS", "OGG"), (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF"),
)
_STILL_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC",
                 b"heis": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}  # ISO-BMFF brands of still images


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Gives the image turned upright by its EXIF orientation; broken EXIF leaves it as it is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF must not make a good picture unreadable
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Gives an 8-bit RGB copy: alpha over white, palette expanded, CMYK converted, 16-bit rescaled."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        # Scale rather than clip: a 16-bit grey of 40000 must stay light grey, not become white.
        gray = np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(array * 255.0 if array.max() <= 1.0 else array), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")
