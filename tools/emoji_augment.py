"""Augmentations that show an emoji the way it reaches a feed (second-edition emoji CLIP; development tool).

An emoji in a post is rarely a clean 64 px drawing on white: it is drawn at 16-160 px, sits on a
coloured or photo-like background, somewhere inside a larger picture, maybe as a sticker with a white
rim, slightly turned, and the picture went through JPEG. ``feed_augment`` makes one such picture from
a (64, 64, 4) RGBA drawing and gives what the model sees: (64, 64, 3) uint8 RGB. Colours of the
artwork are never changed (a red face means anger). All randomness comes from the numpy Generator
passed in, so a run that restores its state repeats itself exactly.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

SIZE = 64


@dataclass(frozen=True)
class FeedAug:
    size_min: int = 16          # smallest displayed emoji, px (detail lost when drawn this small)
    size_max: int = 160         # largest displayed emoji, px
    p_scene: float = 0.4        # placed inside a larger picture (else it fills the frame)
    scene_min: float = 0.35     # in a picture, the emoji's share of the picture's side: scene_min..0.9
    max_canvas: int = 320       # picture side cap, px (bounds the cost per image)
    p_noise: float = 0.3        # background: photo-like noise (else white, a flat colour or a gradient)
    p_sticker: float = 0.25     # white sticker rim around the drawing
    rotate: float = 12.0        # max rotation, degrees
    p_flip: float = 0.5         # horizontal mirror, only where the caller allows it
    p_jpeg: float = 0.5         # JPEG re-compression of the picture
    jpeg_min: int = 20          # JPEG quality range jpeg_min..90


def on_white(rgba: np.ndarray) -> np.ndarray:
    """Gives (64, 64, 3) uint8: the drawing composited on white (the evaluation view)."""
    im = Image.fromarray(rgba, "RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB"))


def background(side: int, rng: np.random.Generator, cfg: FeedAug) -> Image.Image:
    """Gives an RGB picture `side` px square: white, a flat colour, a gradient or photo-like noise."""
    kind = rng.random()
    if kind < cfg.p_noise:  # smooth random colour field + grain, like an out-of-focus photo
        cells = int(rng.integers(2, 9))
        base = rng.uniform(30, 225, 3)  # one dominant colour, cells vary around it as a scene does
        field = np.clip(base + rng.normal(0, rng.uniform(15, 60), (cells, cells, 3)), 0, 255).astype(np.uint8)
        field = Image.fromarray(field, "RGB")
        field = field.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        grain = rng.normal(0, rng.uniform(2, 18), (SIZE, SIZE, 1))
        field = Image.fromarray(np.clip(np.asarray(field, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")
        return field.resize((side, side), Image.Resampling.BILINEAR)
    if kind < cfg.p_noise + 0.3:
        return Image.new("RGB", (side, side), "white")
    if kind < cfg.p_noise + 0.5:
        return Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
    a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
    t = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    ramp = Image.fromarray((a * (1 - t) + b * t).repeat(SIZE, axis=1).astype(np.uint8), "RGB")
    return ramp.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR,
                       fillcolor=tuple(int(c) for c in a)).resize((side, side), Image.Resampling.BILINEAR)


def sticker(im: Image.Image, width: int) -> Image.Image:
    """Gives the RGBA drawing with a white rim `width` px wide around its opaque part."""
    alpha = im.getchannel("A").filter(ImageFilter.MaxFilter(2 * width + 1))
    rim = Image.new("RGBA", im.size, "white")
    rim.putalpha(alpha)
    return Image.alpha_composite(rim, im)


def feed_augment(rgba: np.ndarray, rng: np.random.Generator, cfg: FeedAug, flip_ok: bool = True) -> np.ndarray:
    """Gives (64, 64, 3) uint8 RGB: the (64, 64, 4) uint8 drawing shown as in a feed picture."""
    im = Image.fromarray(rgba, "RGBA")
    if flip_ok and rng.random() < cfg.p_flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < cfg.p_sticker:
        im = sticker(im, int(rng.integers(1, 4)))
    im = im.rotate(float(rng.uniform(-cfg.rotate, cfg.rotate)), resample=Image.Resampling.BICUBIC)
    shown = int(round(math.exp(rng.uniform(math.log(cfg.size_min), math.log(cfg.size_max)))))
    share = rng.uniform(cfg.scene_min, 0.9) if rng.random() < cfg.p_scene else rng.uniform(0.85, 1.0)
    side = min(cfg.max_canvas, max(shown, int(round(shown / share))))
    shown = min(shown, side)
    im = im.convert("RGBa").resize((shown, shown), Image.Resampling.LANCZOS).convert("RGBA")
    canvas = background(side, rng, cfg).convert("RGBA")
    x, y = (int(rng.integers(0, side - shown + 1)) for _ in range(2))
    canvas.alpha_composite(im, (x, y))
    picture = canvas.convert("RGB")
    if rng.random() < cfg.p_jpeg:
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=int(rng.integers(cfg.jpeg_min, 91)))
        buf.seek(0)
        picture = Image.open(buf).convert("RGB")
    if side != SIZE:
        picture = picture.resize((SIZE, SIZE), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(picture, dtype=np.uint8)
