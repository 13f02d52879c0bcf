"""The tensor input path: JPEGs decoded in batches (nvJPEG on a GPU) and preprocessed as tensors.

`preprocess_tensors` reproduces open_clip's evaluation transform (resize the shortest side with
the model's interpolation and antialiasing, centre crop, scale to [0, 1], normalise with the
tag's mean/std) on uint8 CHW tensors on any device, so the GPU never waits for PIL.
Files the fast path cannot take (other formats, CMYK, odd EXIF, damaged data) go back to
the safe PIL path in `images.py`.
"""
from __future__ import annotations

import io
import logging

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from .models import Preprocess

log = logging.getLogger(__name__)
_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}


def fast_path_eligible(data: bytes, max_pixels: int) -> bool:
    """Tells whether a file is a plain RGB/greyscale JPEG, upright, within the pixel limit."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:  # reads the header only
            upright = image.getexif().get(0x0112, 1) == 1
            return image.mode in ("RGB", "L") and upright and image.width * image.height <= max_pixels
    except Exception:  # noqa: BLE001 - anything odd takes the safe path, which reports it
        return False


def decode_jpegs(datas: list[bytes | torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Gives uint8 (3, H, W) tensors on `device` per JPEG (bytes, or a 1-D uint8 CPU tensor of them);
    None where decoding failed."""
    inputs = [d if isinstance(d, torch.Tensor) else torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        # One bad file fails the whole batch: decode one by one to find it.
        out = []
        for tensor in inputs:
            try:
                out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def preprocess_tensors(images: list[torch.Tensor], pre: Preprocess) -> torch.Tensor:
    """Gives a (N, 3, H, W) float32 batch from uint8 (3, h, w) images, as open_clip's eval transform.

    Images of one size are resized, cropped and normalised together, a few kernels per size instead of
    per image: a feed of same-size photos costs as much to prepare as one large image."""
    if pre.resize_mode != "shortest":
        raise ValueError(f"the tensor path supports resize_mode 'shortest', not {pre.resize_mode!r}")
    height, width = pre.image_size
    device = images[0].device
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    interpolation = _INTERPOLATION.get(pre.interpolation, InterpolationMode.BICUBIC)
    out = torch.empty((len(images), 3, height, width), dtype=torch.float32, device=device)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for n, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(n)
    for rows in by_size.values():
        group = torch.stack([images[n] for n in rows]) if len(rows) > 1 else images[rows[0]][None]
        # Resize on float values so bicubic overshoot is clipped once, like PIL's 8-bit result.
        resized = F.resize(group.float(), [min(height, width)], interpolation=interpolation, antialias=True)
        cropped = F.center_crop(resized.clamp_(0, 255).round_(), [height, width])
        normalised = (cropped / 255.0 - mean) / std
        if len(rows) == len(images):
            return normalised  # the common case: one size, already in order
        out[torch.tensor(rows, device=device)] = normalised
    return out
