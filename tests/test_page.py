"""The upload page in a real browser (headless Chromium via Playwright) against `cli.py serve` (waitress)."""
from __future__ import annotations

import base64
import io

import pytest

from helpers import ARTIFACTS, launch_browser, start_server
from synthetic import draw

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(store_path, trained, tmp_path_factory):
    """`cli.py serve` in a subprocess on a free port; gives its base URL once /healthz answers."""
    yield from start_server(store_path, trained[0], tmp_path_factory.mktemp("serve") / "serve.log")


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


def _png(labels: tuple[str, ...], seed: int, size: int = 96) -> bytes:
    buffer = io.BytesIO()
    draw(labels, seed, size).save(buffer, "PNG")
    return buffer.getvalue()


def _drop(page, files: list[tuple[str, str, bytes]]) -> None:
    """Drops (name, mime type, bytes) files on the drop zone, as a drag from the desktop would."""
    payload = [{"name": n, "type": t, "data": base64.b64encode(d).decode()} for n, t, d in files]
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], f.name, { type: f.type }));
        }
        return transfer;
    }""", payload)
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def test_upload_shows_emotions_emojis_and_neighbours(server, browser, tmp_path):
    base, health = server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(
        (base, "blob:", "data:")) else None)
    failures = []
    page.on("console", lambda message: failures.append(message.text) if message.type == "error" else None)
    page.goto(base + "/")

    # The header names the model that /healthz reports.
    page.wait_for_function("(id) => document.getElementById('model-id').textContent === id", arg=health["model_id"])
    assert page.inner_text("#index-size") == f"{health['index_size']} images"

    # A text file dropped on the page is refused in plain words; images chosen with the picker are analysed.
    _drop(page, [("notes.txt", "text/plain", b"meeting notes, not a picture")])
    (tmp_path / "sad.png").write_bytes(_png(("sad",), 999_101))
    (tmp_path / "happy.png").write_bytes(_png(("happy",), 999_102))
    page.set_input_files("#file-input", [str(tmp_path / "sad.png"), str(tmp_path / "happy.png")])

    page.wait_for_selector(".card .bars", state="attached")
    page.wait_for_function("() => document.querySelectorAll('.card .bars').length === 2", timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('.card .error-box').length === 1", timeout=60_000)
    page.wait_for_function("""() => {
        const images = [...document.querySelectorAll('.neighbour img')];
        return images.length === 12 && images.every((img) => img.complete && img.naturalWidth > 0);
    }""", timeout=60_000)

    cards = page.query_selector_all(".card:not(.failed)")
    assert [c.query_selector(".filename").inner_text() for c in cards] == ["happy.png", "sad.png"]
    for card, label in zip(cards, ["happy", "sad"]):
        assert len(card.query_selector_all(".bar-track")) == 8
        assert label in [chip.text_content() for chip in card.query_selector_all(".emotions .chip")]
        assert card.query_selector_all(".allowed .emoji")
        blocked = card.query_selector_all(".blocked .emoji")
        assert blocked and all(b.evaluate("(e) => e.querySelector('s') !== null && "
                                          "getComputedStyle(e, '::after').backgroundColor !== 'rgba(0, 0, 0, 0)'")
                               for b in blocked)  # struck out: an <s> glyph under a red bar
        captions = [c.text_content() for c in card.query_selector_all(".neighbour .labels")]
        assert len(captions) == 6 and sum(label in c for c in captions) >= 4, captions
    sad_card = cards[1]
    assert "😢" in sad_card.query_selector(".allowed").text_content()
    assert "😂" in sad_card.query_selector(".blocked").text_content()
    error = page.inner_text(".card.failed")
    assert "notes.txt" in error and "not an image" in error.lower()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True, animations="disabled")
    assert outside == [], f"the page fetched from outside the server: {outside}"
    assert [f for f in failures if "status of 400" not in f] == [], failures  # 400: notes.txt, expected
    page.close()


def test_the_docs_page_renders_offline(server, browser):
    base, _ = server
    page = browser.new_page()
    outside = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(base) else None)
    page.goto(base + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    assert page.url.endswith("/docs/swagger")
    assert "EmoReact API" in page.inner_text("body")
    assert outside == []
    page.close()


def _gif(labels: list[str]) -> bytes:
    import io

    from synthetic import draw

    frames = [draw((label,), seed=800 + n) for n, label in enumerate(labels)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=150, loop=0)
    return out.getvalue()


def _webm(labels: list[str]) -> bytes:
    import io

    import numpy as np

    av = pytest.importorskip("av")
    from synthetic import draw

    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        for n, label in enumerate(labels):
            frame = av.VideoFrame.from_ndarray(np.asarray(draw((label,), seed=900 + n)), format="rgb24")
            for _ in range(5):  # a second per label
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


def test_a_clip_shows_its_frames_in_a_strip_with_what_each_shows(server, browser, tmp_path):
    base, _ = server
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    failures = []
    page.on("console", lambda message: failures.append(message.text) if message.type == "error" else None)
    page.goto(base + "/")
    (tmp_path / "sad.gif").write_bytes(_gif(["neutral", "sad", "sad", "sad", "sad"]))
    (tmp_path / "moving.webm").write_bytes(_webm(["neutral", "happy", "happy"]))
    page.set_input_files("#file-input", [str(tmp_path / "sad.gif"), str(tmp_path / "moving.webm")])
    page.wait_for_function("() => document.querySelectorAll('.card .frame-strip').length === 2", timeout=60_000)
    # The browser draws each frame from the file itself (ImageDecoder for the GIF, a seeked <video> for the WebM).
    page.wait_for_function("() => [...document.querySelectorAll('.moment')].every((m) => m.classList.contains('drawn'))",
                           timeout=30_000)
    gif_card, webm_card = sorted(page.query_selector_all(".card"),
                                 key=lambda card: card.query_selector(".filename").inner_text())[::-1][:2]
    assert gif_card.query_selector(".filename").inner_text() == "sad.gif"
    moments = gif_card.query_selector_all(".moment")
    assert 2 <= len(moments) <= 8 and "GIF clip" in gif_card.query_selector(".timeline h3").text_content()
    assert "sad" in gif_card.query_selector(".frame-strip").inner_text()
    assert "from the frames" in gif_card.query_selector(".emotions").inner_text()
    times = [float(m.get_attribute("data-t-ms")) for m in moments]
    assert times == sorted(times) and times[0] < 150 < times[-1]
    assert "WEBM clip" in webm_card.query_selector(".timeline h3").text_content()
    assert webm_card.query_selector(".frame video") is not None  # the upload plays in its preview
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-clips.png"), full_page=True, animations="disabled")
    assert failures == [], failures
    page.close()
