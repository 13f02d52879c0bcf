"""Safe decoding: allow-listed formats by content, pixel limits before decoding, correct RGB."""
import io

import numpy as np
import pytest
from PIL import Image

from emoreact.embed import ImageError, decode_image


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


def test_reduced_jpeg_decode_keeps_at_least_the_model_size_and_reports_the_full_size():
    from emoreact.embed.images import decode_image_with_size

    data = encode(Image.new("RGB", (640, 480), (200, 40, 40)), "JPEG")
    image, size = decode_image_with_size(data, min_side=224)
    assert size == (640, 480)
    assert image.size == (320, 240)  # 1/2 scale: 1/4 would give 120 < 224 rows
    assert decode_image(data, min_side=100).size == (160, 120)
    assert decode_image(data, min_side=480).size == (640, 480)  # never below what was asked
    assert decode_image(data).size == (640, 480)  # without min_side every pixel is decoded
    png = encode(Image.new("RGB", (640, 480)), "PNG")
    assert decode_image(png, min_side=100).size == (640, 480)  # only JPEG has DCT scaling


def test_reduced_jpeg_decode_reports_the_displayed_size_of_a_turned_photo():
    from emoreact.embed.images import decode_image_with_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image, size = decode_image_with_size(encode(Image.new("RGB", (640, 480)), "JPEG", exif=exif.tobytes()),
                                         min_side=224)
    assert size == (480, 640) and image.size == (240, 320)


def test_reduced_jpeg_decode_gives_the_model_the_same_input_as_a_full_decode(backbone, tmp_path):
    """What the model sees (the preprocessed tensor) hardly changes; only the decoder's work does.
    Compared on pixels, not embeddings: a random-weight model's embeddings are all alike anyway."""
    import torch

    from emoreact.bench.common import write_photos

    paths = write_photos(tmp_path, 16)
    size = max(backbone.preprocess.image_size)
    full = torch.stack([backbone.transform(decode_image(p.read_bytes())) for p in paths]).flatten(1)
    reduced = torch.stack([backbone.transform(decode_image(p.read_bytes(), min_side=size)) for p in paths]).flatten(1)
    assert decode_image(paths[0].read_bytes(), min_side=size).size[1] < 480  # the reduction did happen
    same = torch.corrcoef(torch.cat([full, reduced]))[:16, 16:]
    assert float(same.diagonal().min()) >= 0.99  # each photo against its own reduced decode
    assert float((full - reduced).abs().mean()) < 0.1 * float(full.std())
