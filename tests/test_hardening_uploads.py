"""Hostile uploads: every one answers a JSON 4xx, no decoder outside the allow-list runs, memory and
time stay bounded, and the next good request is still answered.

Cases already covered elsewhere are not repeated here (see tests/test_web.py, tests/test_images.py).
"""
from __future__ import annotations

import builtins
import io
import json
import mmap
import os
import pathlib
import select
import socket
import struct
import sys
import time
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageDraw, WebPImagePlugin

from emoreact.embed.images import ALLOWED_FORMATS
from helpers import assert_error, encoded, multipart_body, png_claiming, upload
from synthetic import draw

MiB = 1024 * 1024
LIMIT = 1 * MiB  # the real-server app's body limit: room for thousands of tiny form parts under it


@pytest.fixture
def client(make_app):  # make_app: tests/conftest.py
    return make_app().test_client()


def answer(client, name: str, data: bytes) -> dict:
    response = client.post("/api/predict", data=upload((name, data)))
    assert response.status_code == 200, response.get_data(as_text=True)
    [result] = response.get_json()["results"]
    assert "error" not in result, result
    return result


def scores(client, name: str, data: bytes) -> dict:
    return answer(client, name, data)["emotion_scores"]


def assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) <= 1e-4 for k in a), (a, b)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# ---- a real waitress server: body size, chunked bodies, many parts ---------------------------

def exchange(base: str, head: str, body=(), timeout: float = 30) -> tuple[int, dict, dict, float]:
    """Sends a raw HTTP request (its body in pieces); gives (status, headers, JSON body, seconds).

    Stops sending as soon as the server answers, as a client would that watches for an early
    refusal, so that no unread bytes make the server's close a reset that loses its answer.
    """
    host, port = base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        for piece in body:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    seconds = time.monotonic() - started
    header_block, _, content = raw.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(content), seconds


def assert_predicts(base: str) -> None:
    body, content_type = multipart_body([("good.png", encoded(("happy",), 3, size=64))])
    request = urllib.request.Request(f"{base}/api/predict", body, {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert "predicted_emotions" in json.loads(response.read())["results"][0]


def post_head(content_type: str | None = None, length: int | None = None, chunked: bool = False) -> str:
    lines = ["POST /api/predict HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"Content-Type: {content_type}"] if content_type else []
    lines += [f"Content-Length: {length}"] if length is not None else []
    lines += ["Transfer-Encoding: chunked"] if chunked else []
    return "\r\n".join(lines) + "\r\n\r\n"


def chunked(body: bytes, size: int = 16_384):
    for start in range(0, len(body), size):
        piece = body[start:start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def cut(pieces, total: int):
    """Gives the first `total` bytes of a stream of pieces, still in pieces."""
    for piece in pieces:
        if total <= 0:
            return
        yield piece[:total]
        total -= len(piece)


def many_parts(count: int) -> tuple[bytes, str]:
    boundary = "b"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\nx\r\n'
    return (part * count + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def hostile_requests():
    """(name, head, body pieces, status, words): requests a client may send to hurt the server."""
    image, image_type = multipart_body([("a.png", encoded(size=64))])
    over, over_type = multipart_body([("big.png", encoded(size=64) + b"\0" * (LIMIT + 1000))])
    far, far_type = multipart_body([("huge.png", b"\0" * (3 * LIMIT))])
    parts, parts_type = many_parts(5000)
    empty, empty_type = multipart_body([("empty.png", b"")])
    k_only = b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n'
    assert len(parts) < LIMIT  # refused for its parts, not its size
    return [
        ("no body", post_head(length=0), [], 400, ["no image"]),
        ("no file field", post_head("multipart/form-data; boundary=b", len(k_only)), [k_only], 400, ["no image"]),
        ("empty file", post_head(empty_type, len(empty)), [empty], 400, ["empty"]),
        ("body over the limit", post_head(over_type, len(over)), [over], 413, ["1 MiB"]),
        ("10 GB declared", post_head(image_type, 10 * 1024 * MiB), [], 413, ["1 MiB"]),
        ("chunked over the limit", post_head(over_type, chunked=True), chunked(over), 413, ["1 MiB"]),
        # waitress reads a chunked body up to twice the limit, then answers and closes; bytes sent past
        # that point would make the close a reset, so this client stops right at it.
        ("chunked far over the limit", post_head(far_type, chunked=True), cut(chunked(far), 2 * LIMIT), 413,
         ["1 MiB"]),
        ("5000 form parts", post_head(parts_type, len(parts)), [parts], 413, ["parts", "at most 4 images"]),
        ("garbage chunk size", post_head(image_type, chunked=True), [b"zz\r\n" + image], 400, ["chunk"]),
        ("cut multipart", post_head(image_type, len(image) // 2), [image[:len(image) // 2]], 400, []),
    ]


def test_hostile_bodies_get_a_json_4xx_and_the_next_request_is_answered(make_app):
    from emoreact.web import background_server

    app = make_app(max_upload_bytes=LIMIT, max_files=4)
    with background_server(app, threads=2) as base:
        for name, head, body, status, words in hostile_requests():
            got, headers, answer, seconds = exchange(base, head, body)
            assert got == status, (name, answer)
            assert headers["content-type"].startswith("application/json"), name
            assert all(word in answer["error"] for word in words), (name, answer)
            assert seconds < 10, (name, seconds)  # refused, not chewed on
            assert_predicts(base)  # the next request, on a fresh connection, is still answered
        assert json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=10).read())["status"] == "ok"


def test_form_parts_are_capped_near_max_files(make_app):
    app = make_app(max_files=4)
    assert 4 < app.config["MAX_FORM_PARTS"] <= 4 + 16
    data = encoded(size=32)
    full = app.test_client().post("/api/predict", data=upload(*[(f"{i}.png", data) for i in range(4)], k="1"))
    assert full.status_code == 200 and len(full.get_json()["results"]) == 4
    assert_error(app.test_client().post("/api/predict", data=upload(*[(f"{i}.png", data) for i in range(40)])),
                 413, "at most 4 images")


# ---- content decides the decoder: nothing outside the allow-list ever runs --------------------

def psd_bytes() -> bytes:
    """A minimal valid 8x8 RGB Photoshop file (Pillow cannot write PSD)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3)
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + bytes(8 * 8 * 3)


DISGUISED = {  # name claimed by the upload -> (content, status)
    "page.jpg": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 400),
    "paper.jpg": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", 415),
    "noise.jpg": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), 400),
    "scan.jpg": (saved(Image.new("RGB", (8, 8)), "TIFF"), 415),
    "print.png": (saved(Image.new("RGB", (8, 8)), "EPS"), 415),
    "layers.jpg": (psd_bytes(), 415),
    "bitmap.gif": (saved(Image.new("RGB", (8, 8)), "BMP"), 415),
    "favicon.webp": (saved(Image.new("RGB", (16, 16)), "ICO"), 415),
}


@pytest.fixture
def decoder_spy(monkeypatch):
    """Records every Pillow decoder that opens a file, and the formats each Image.open allowed."""
    Image.init()
    opened, allowed = [], []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        def spy(*args, _fmt=fmt, _factory=factory, **kwargs):
            opened.append(_fmt)
            return _factory(*args, **kwargs)
        monkeypatch.setitem(Image.OPEN, fmt, (spy, accept))
    real_open = Image.open

    def open_spy(fp, mode="r", formats=None):
        allowed.append(tuple(formats) if formats is not None else None)
        return real_open(fp, mode, formats)
    monkeypatch.setattr(Image, "open", open_spy)
    return opened, allowed


def test_the_decoder_spy_sees_a_decoder_at_work(decoder_spy):
    opened, _ = decoder_spy
    Image.open(io.BytesIO(DISGUISED["scan.jpg"][0]))
    Image.open(io.BytesIO(DISGUISED["layers.jpg"][0]))
    assert "TIFF" in opened and "PSD" in opened  # so the empty lists below mean something


@pytest.mark.parametrize("name", DISGUISED)
def test_disguised_files_never_reach_a_decoder(client, decoder_spy, name):
    opened, allowed = decoder_spy
    content, status = DISGUISED[name]
    response = client.post("/api/predict", data={"image": [(io.BytesIO(content), name, "image/jpeg")]})
    assert_error(response, status, name)
    assert opened == [] and allowed == []
    assert client.post("/api/predict", data=upload(("ok.png", encoded()))).status_code == 200


def test_allowed_images_open_with_their_sniffed_format_only(client, decoder_spy):
    opened, allowed = decoder_spy
    for fmt in ALLOWED_FORMATS:
        assert client.post("/api/predict", data=upload((f"a.{fmt}", encoded(fmt=fmt)))).status_code == 200
    assert allowed == [(fmt,) for fmt in ALLOWED_FORMATS] and opened == list(ALLOWED_FORMATS)


# ---- damaged files and broken EXIF ---------------------------------------------------------

def _bad_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 8
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("fmt, damage", [
    ("JPEG", lambda d: d[: len(d) // 2]), ("JPEG", lambda d: d[:300]), ("PNG", lambda d: d[: len(d) - 40]),
    ("PNG", _bad_crc), ("GIF", lambda d: d[: len(d) // 2]), ("WEBP", lambda d: d[: len(d) // 2]),
])
def test_damaged_files_are_400_and_the_next_request_is_answered(client, fmt, damage):
    data = saved(Image.effect_noise((96, 96), 60).convert("RGB"), fmt)
    assert_error(client.post("/api/predict", data=upload((f"cut.{fmt.lower()}", damage(data)))), 400, "cut.")
    assert client.post("/api/predict", data=upload(("ok.png", encoded()))).status_code == 200


def exif_block(entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0) -> bytes:
    """Gives raw APP1/eXIf bytes: one little-endian IFD of (tag, type, count, 4 value bytes)."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in entries)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", next_ifd)


ORIENTATION, EXIF_IFD, SHORT, LONG = 0x0112, 0x8769, 3, 4
BROKEN_EXIF = {
    "orientation 0": exif_block([(ORIENTATION, SHORT, 1, struct.pack("<HH", 0, 0))]),
    "orientation 9": exif_block([(ORIENTATION, SHORT, 1, struct.pack("<HH", 9, 0))]),
    "orientation 65535": exif_block([(ORIENTATION, SHORT, 1, struct.pack("<HH", 65535, 0))]),
    "orientation past the end": exif_block([(ORIENTATION, SHORT, 1000, struct.pack("<I", 0xFFFF))]),
    "sub-IFD past the end": exif_block([(EXIF_IFD, LONG, 1, struct.pack("<I", 0x7FFFFFFF))]),
    "IFD loop": exif_block([(EXIF_IFD, LONG, 1, struct.pack("<I", 8))], next_ifd=8),
    "65535 entries": b"Exif\0\0II*\0" + struct.pack("<IH", 8, 65535) + bytes(12),
    "first IFD past the end": b"Exif\0\0II*\0" + struct.pack("<I", 0xFFFFFFF0),
    "not TIFF": b"Exif\0\0XX*\0\x08\0\0\0",
    "bad type": exif_block([(ORIENTATION, 99, 1, struct.pack("<HH", 6, 0))]),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF it skips
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_broken_exif_leaves_the_picture_as_it_is(client, fmt):
    image = draw(("angry",), 41, 96).crop((0, 0, 96, 64))
    plain = scores(client, f"plain.{fmt}", saved(image, fmt))
    for name, block in BROKEN_EXIF.items():
        assert_same_scores(scores(client, f"{name}.{fmt}", saved(image, fmt, exif=block)), plain)


def test_exif_orientation_6_scores_as_the_picture_turned_by_hand(client):
    image = draw(("fear", "happy"), 42, 96).crop((0, 0, 96, 60))  # wide, and not symmetric
    camera = saved(image, "JPEG", quality=95, exif=exif_block([(ORIENTATION, SHORT, 1, struct.pack("<HH", 6, 0))]))
    # The same JPEG pixels, turned as orientation 6 says (90 degrees clockwise), saved losslessly.
    as_shot = Image.open(io.BytesIO(saved(image, "JPEG", quality=95))).convert("RGB")
    turned = scores(client, "turned.png", png(as_shot.transpose(Image.Transpose.ROTATE_270)))
    assert_same_scores(scores(client, "camera.jpg", camera), turned)
    assert scores(client, "as_shot.png", png(as_shot)) != turned  # the turn matters to the model


# ---- pixel formats, end to end -------------------------------------------------------------

def _over_white(rgba: Image.Image) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _with_holes(image: Image.Image) -> Image.Image:
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).rectangle((10, 10, 50, 40), fill=0)
    ImageDraw.Draw(alpha).rectangle((60, 50, 90, 90), fill=128)
    rgba = image.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def pixel_cases() -> dict[str, tuple[bytes, Image.Image]]:
    """name -> (uploaded bytes, the RGB picture it must give)."""
    picture = draw(("surprise",), 43, 96)
    rgba = _with_holes(picture)
    la = _with_holes(picture.convert("L")).convert("LA")
    palette = picture.quantize(32)
    def keyed() -> Image.Image:  # a fresh copy per save: saving a PNG leaves Pillow's palette RGBA
        image = palette.copy()
        image.info["transparency"] = palette.getpixel((0, 0))  # one palette entry is see-through
        return image
    alphas = palette.copy()
    alphas.info["transparency"] = bytes(range(0, 256, 8))  # a tRNS alpha per palette entry
    cmyk = saved(picture.convert("CMYK"), "JPEG", quality=95)
    ramp = (np.arange(96 * 96, dtype=np.uint32).reshape(96, 96) * 65535 // (96 * 96 - 1)).astype(np.uint16)
    return {
        "RGBA PNG": (saved(rgba, "PNG"), _over_white(rgba)),
        "LA PNG": (saved(la, "PNG"), _over_white(la.convert("RGBA"))),
        "P PNG, one transparent entry": (saved(keyed(), "PNG"), _over_white(keyed().convert("RGBA"))),
        "P PNG, alpha per entry": (saved(alphas, "PNG"), _over_white(alphas.convert("RGBA"))),
        "P GIF, transparent index": (saved(keyed(), "GIF"), _over_white(keyed().convert("RGBA"))),
        "RGBA WebP": (saved(rgba, "WEBP", lossless=True), _over_white(rgba)),
        "CMYK JPEG": (cmyk, Image.open(io.BytesIO(cmyk)).convert("RGB")),
        "16-bit grey PNG": (saved(Image.fromarray(ramp), "PNG"),
                            Image.fromarray(np.rint(ramp / 65535 * 255).astype(np.uint8)).convert("RGB")),
    }


PIXEL_CASES = pixel_cases()


@pytest.mark.parametrize("name", PIXEL_CASES)
def test_every_pixel_format_decodes_to_the_rgb_a_viewer_shows(client, name):
    from emoreact.embed import decode_image

    data, expected = PIXEL_CASES[name]
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, np.int16) - np.asarray(expected, np.int16)).max() <= 1
    assert_same_scores(scores(client, "upload", data), scores(client, "expected.png", png(expected)))


def test_sixteen_bit_grey_keeps_its_whole_range():
    from emoreact.embed import decode_image

    data, _ = PIXEL_CASES["16-bit grey PNG"]
    grey = np.asarray(decode_image(data))[..., 0]
    assert grey.min() == 0 and grey.max() == 255
    assert len(np.unique(grey)) == 256  # clipping at 255 would leave a handful of values


# ---- animations: a clip of a few frames chosen by time, however many it has ------------------

FRAMES = 1000


@pytest.fixture(scope="module")
def animations() -> dict[str, tuple[bytes, Image.Image, Image.Image]]:
    """format -> (a 1,000-frame animation, its first and second frames as RGB); no two frames alike."""
    first = draw(("sad",), 44, 96).quantize(64)
    palette = first.getpalette()
    brightness = {i: sum(palette[3 * i:3 * i + 3]) for i in range(len(palette) // 3)}
    dark, light = min(brightness, key=brightness.get), max(brightness, key=brightness.get)
    frames = [first]
    for n in range(1, FRAMES):
        frame = first.copy()
        ImageDraw.Draw(frame).rectangle((0, 40, 95, 95), fill=dark)  # later frames look unlike the first
        for bit in range(10):  # a binary counter, so that no two frames are alike and none is merged
            frame.putpixel((bit, 0), light if n >> bit & 1 else dark)
        frames.append(frame)
    gif = saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20, loop=0)
    rgb = [frame.convert("RGB") for frame in frames]
    webp = saved(rgb[0], "WEBP", save_all=True, append_images=rgb[1:], duration=20, lossless=True, method=0)
    for data in (gif, webp):
        assert Image.open(io.BytesIO(data)).n_frames == FRAMES
    return {"GIF": (gif, rgb[0], rgb[1]), "WEBP": (webp, rgb[0], rgb[1])}


@pytest.fixture
def frame_spy(monkeypatch):
    """Records each GIF frame seeked to and each animated WebP frame decoded."""
    seen = {"GIF": [], "WEBP": []}
    gif_seek, webp_next = GifImagePlugin.GifImageFile._seek, WebPImagePlugin.WebPImageFile._get_next

    def seek(self, frame, *args, **kwargs):
        seen["GIF"].append(frame)
        return gif_seek(self, frame, *args, **kwargs)

    def next_frame(self):
        seen["WEBP"].append(len(seen["WEBP"]))
        return webp_next(self)
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek", seek)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_get_next", next_frame)
    return seen


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_a_1000_frame_animation_is_judged_by_at_most_8_frames_spread_over_its_time(client, animations, frame_spy, fmt):
    data, first, second = animations[fmt]
    answered = answer(client, f"anim.{fmt.lower()}", data)
    assert len(frame_spy[fmt]) <= FRAMES  # each frame decoded once at most, in one pass
    clip, timeline = answered["clip"], answered["timeline"]
    assert clip["format"] == fmt and clip["frame_count"] == FRAMES and clip["duration_ms"] == FRAMES * 20
    # Every frame after the first differs from the next by a few pixels only: near-duplicates, one frame used,
    # chosen by time (the middle of the first of 8 slices of its time), so never the odd first frame.
    assert clip["frames_used"] == len(timeline) == 1 and timeline[0]["t_ms"] > 0
    later = answer(client, "second.png", png(second))
    assert max(abs(answered["emotion_scores"][k] - later["emotion_scores"][k]) for k in later["emotion_scores"]) < 0.02
    assert [n["id"] for n in answered["neighbours"]] == [n["id"] for n in later["neighbours"]]
    still = answer(client, "first.png", png(first))
    assert "clip" not in still and "timeline" not in still  # a still answers as before clips existed


# ---- decompression bombs: refused from the header, memory flat ------------------------------

def real_png_bomb(side: int) -> bytes:
    """Gives a genuine 1-bit side x side PNG of zeros (decodable, about 1 byte per pixel once open)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    packer, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def gif_claiming(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, *frame, 0)
            + b"\x02\x02\x44\x01\x00;")


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(saved(Image.new("RGB", (8, 8)), "JPEG"))
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(saved(Image.new("RGB", (8, 8)), "WEBP", exif=b"Exif\0\0II*\0\x08\0\0\0\0\0"))  # makes VP8X
    at = data.index(b"VP8X") + 12
    data[at:at + 6] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


BOMBS = {
    "png-20000.png": real_png_bomb(20_000),
    "png-header-100000.png": png_claiming(100_000, 100_000),
    "gif-screen.gif": gif_claiming((65_535, 65_535), (1, 1)),
    "gif-frame.gif": gif_claiming((1, 1), (65_535, 65_535)),
    "jpeg-sof.jpg": jpeg_claiming(65_500, 65_500),
    "webp-canvas.webp": webp_claiming(16_384, 16_384),
}


def touch_fresh_pages(size: int) -> None:
    """Maps `size` bytes of new anonymous memory, writes a byte in each page, and unmaps it."""
    area = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, mmap.PAGESIZE):
            area[offset] = 1
    finally:
        area.close()


def peak_rss_growth(action) -> int:
    """Gives how far the process's peak resident memory rose above its size before `action`, in bytes."""
    def status(key: str) -> int:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak (VmHWM) to the current size
    before = status("VmRSS:")
    action()
    return status("VmHWM:") - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc")
def test_decompression_bombs_are_refused_before_decoding_with_flat_memory(make_app):
    from emoreact.web import background_server

    assert all(len(data) < 100_000 for data in BOMBS.values())
    # the measure sees a transient allocation of new pages: a fresh anonymous mapping, every page written,
    # unmapped before the peak is read. (Not a Python object: the allocator may hand back pages it already
    # holds resident, which raises no peak; a zeroed bytearray may even stay untouched mapped pages.)
    assert peak_rss_growth(lambda: touch_fresh_pages(150 * MiB)) > 100 * MiB
    with background_server(make_app(), threads=2) as base:
        for name, data in BOMBS.items():
            body, content_type = multipart_body([(name, data)])
            answers = []
            growth = peak_rss_growth(lambda: answers.append(exchange(base, post_head(content_type, len(body)),
                                                                     [body])))
            [(status, headers, answer, seconds)] = answers
            assert status == 413 and name in answer["error"] and seconds < 10, (name, answer)
            assert growth < 64 * MiB, f"{name}: peak memory rose {growth / MiB:.0f} MiB"
            assert_predicts(base)


# ---- thumbnails: ids only, never a path ----------------------------------------------------

@pytest.fixture
def cold_client_and_spy(make_app, monkeypatch):
    """A fresh app (no thumbnail cached), then a record of every file opened, read or stat-ed and every
    thumbnail made from here on."""
    from emoreact import web
    import emoreact.web.thumbnails  # noqa: F401 - the module the spy wraps

    client = make_app().test_client()
    touched = []

    def spy(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            touched.append((name, str(args[0]) if args else ""))
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)
    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (pathlib.Path, "read_bytes"),
                        (pathlib.Path, "open"), (pathlib.Path, "stat"), (web.thumbnails, "make_thumbnail")):
        spy(owner, name)
    return client, touched


HOSTILE_IDS = ["../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
               "%252e%252e%252fetc%252fpasswd", "..%252F..%252Fetc%252Fpasswd", "%2Fetc%2Fpasswd",
               "/etc/passwd", "%2F%2Fserver%2Fshare", "C:%5Cwindows%5Cwin.ini", "..%5C..%5Cwin.ini",
               "1%2F..%2F..%2Fetc%2Fpasswd", "3%00.jpg", "3;cat", "999999", "99999999999999999999999", "-1"]


@pytest.mark.parametrize("image_id", HOSTILE_IDS)
def test_thumbnail_ids_never_reach_the_filesystem(cold_client_and_spy, image_id):
    client, touched = cold_client_and_spy
    response = client.get(f"/api/images/{image_id}/thumbnail")
    assert response.status_code in (400, 404) and response.mimetype == "application/json", response.data
    assert touched == []


def test_the_filesystem_spy_sees_a_real_thumbnail_being_made(cold_client_and_spy):
    client, touched = cold_client_and_spy
    assert client.get("/api/images/3/thumbnail").status_code == 200
    assert {"read_bytes", "make_thumbnail"} <= {name for name, _ in touched}  # so [] above means something


# ---- hostile clips through the API: each answered with the limit it hit, the server still up ----

def _hostile_clips() -> list:
    from clip_data import hours_long_video, raw_apng, raw_gif, video, zip_bomb

    truncated = video("mp4", "libx264", n=30)
    return [
        ("100000-frames.gif", lambda: raw_gif(16, 16, 100_000), 413, "10,000 frames"),
        ("huge-canvas.gif", lambda: raw_gif(30_000, 30_000, 1000), 413, "30000x30000"),
        ("huge-canvas.png", lambda: raw_apng(30_000, 30_000, 1000), 413, "30000x30000"),
        ("canvas-times-frames.gif", lambda: raw_gif(6000, 6000, 200), 413, "max_decoded_pixels"),
        ("hours.mp4", hours_long_video, 413, "max_duration_s"),
        ("truncated.mp4", lambda: truncated[: len(truncated) // 2], 400, "damaged or truncated"),
        ("bomb.mp4", zip_bomb, 400, "not an image"),
    ]


@pytest.mark.parametrize("name, make, status, says", _hostile_clips(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_hostile_clip_is_answered_with_the_limit_it_hit_and_the_server_stays_up(client, name, make, status, says):
    pytest.importorskip("av")
    refused = client.post("/api/predict", data=upload((name, make())))
    assert refused.status_code == status, refused.get_data(as_text=True)
    assert says in refused.get_json()["error"]
    answer(client, "after.png", png(draw(("happy",), 3)))  # the next upload is served as ever
