"""The upload page in a real browser (headless Chromium via Playwright) against `cli.py serve` (waitress)."""
from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from synthetic import draw

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; `./run test` does it)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(store_path, trained, tmp_path_factory):
    """`cli.py serve` in a subprocess on a free port; gives its base URL once /healthz answers."""
    yield from start_server(store_path, trained[0], tmp_path_factory.mktemp("serve") / "serve.log")


def start_server(store, head, log: Path, options: list[str] = ()):
    """Runs `cli.py serve` on a free port until the generator is closed; yields (base URL, /healthz)."""
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "serve", "--store", str(store), "--head", str(head),
             "--device", "cpu", "--port", str(port), "--threads", "4", "--k", "6", *options],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"`cli.py serve` exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"`cli.py serve` did not answer within 180 s:\n{log.read_text()}")
                time.sleep(0.3)
        yield base, health
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


def launch_browser():
    """Yields headless Debian Chromium driven by Playwright (skips the test where either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
