"""Safe decoding: allow-listed formats by content, pixel limits before decoding, correct RGB."""
import io

import numpy as np
import pytest
from PIL import Image

from embed import ImageError, decode_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_allowed_formats_decode_to_rgb(fmt):
    image = decode_image(encode(Image.new("RGB", (20, 10), (200, 30, 30)), fmt))
    assert image.mode == "RGB" and image.size == (20, 10)


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"<html><body>hi</body></html>", "not an image"),
    (b"%PDF-1.4 ...", "not accepted"),
])
def test_non_images_are_refused_with_a_reason(data, words):
    with pytest.raises(ImageError, match=words):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP"])
def test_other_decoders_are_never_used(fmt):
    with pytest.raises(ImageError) as info:
        decode_image(encode(Image.new("RGB", (8, 8)), fmt))
    assert info.value.kind == "unsupported"


def test_truncated_files_are_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.kind == "too_large" and "too large" in str(info.value)


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageError, match="300x200 pixels, over the limit of 50,000"):
        decode_image(data, max_pixels=50_000)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    assert grey.mode.startswith("I;16")
    value = np.asarray(decode_image(encode(grey, "PNG")))[0, 0]
    assert tuple(value) == (156, 156, 156)  # 40000 / 65535 * 255


def test_transparent_pixels_become_white_and_cmyk_converts():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert tuple(np.asarray(decode_image(encode(rgba, "PNG")))[0, 0]) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    red = np.asarray(decode_image(encode(cmyk, "JPEG")))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_animation_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    pixel = np.asarray(decode_image(buffer.getvalue()))[0, 0]
    assert pixel[0] > 200 and pixel[2] < 60
