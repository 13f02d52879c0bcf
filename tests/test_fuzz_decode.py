"""Property-based fuzzing of the decode path: generated and mutated inputs, only ImageError escapes."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emoreact.embed import ImageError, decode_image

SEEDS = []
for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("GIF", "P"), ("WEBP", "RGB"), ("PNG", "I;16")):
    buffer = io.BytesIO()
    image = Image.new("RGB", (24, 16), (10, 200, 90)).convert(mode) if mode != "I;16" else \
        Image.fromarray(np.arange(384, dtype=np.uint16).reshape(16, 24) * 150)
    image.save(buffer, fmt)
    SEEDS.append(buffer.getvalue())


def check(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=4_000_000)
    except ImageError as exc:
        assert str(exc) and exc.kind in ("invalid", "unsupported", "too_large")
    else:
        assert image.mode == "RGB" and image.width * image.height <= 4_000_000


@pytest.mark.long
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                   max_size=12), cut=st.integers(0, 10_000))
def test_mutated_images_decode_or_raise_image_error(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    check(bytes(data[: max(1, len(data) - cut % len(data))]))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_escape_as_other_errors(data):
    check(data)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP"]),
       rest=st.binary(max_size=512))
def test_valid_magic_with_garbage_body_is_refused_cleanly(prefix, rest):
    check(prefix + rest)
