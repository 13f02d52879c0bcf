"""Helpers several test files share: uploads and error checks for the web tests, API keys, a `cli.py serve`
in a subprocess, a headless browser, and the brute-force reference of near-duplicate grouping.

Test files import these from here, never from one another: a test module is a list of tests, and
importing one from another runs (and couples) its module-level code."""
from __future__ import annotations

import io
import json
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from synthetic import draw

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots of the browser tests, kept for a person to look at
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODERATOR, ADMIN_KEY = "moderator-key-0123456789", "admin-key-0123456789abc"


# ---- uploads and answers ------------------------------------------------------------------

def encoded(labels=("sad",), seed=999_001, fmt="PNG", size=96) -> bytes:
    """Gives a synthetic image showing `labels`, encoded as `fmt`."""
    buffer = io.BytesIO()
    image = draw(labels, seed, size)
    image.save(buffer, fmt)
    return buffer.getvalue()


def upload(*files, **fields) -> dict:
    """Gives multipart `data` for the test client: files are (name, bytes), each in the field 'image'."""
    return {"image": [(io.BytesIO(data), name) for name, data in files], **fields}


def png_claiming(width: int, height: int) -> bytes:
    """Gives a tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def multipart_body(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """Gives (body, content type) of a multipart form sending `files` (name, bytes) in the field 'image'."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def assert_error(response, status: int, *words: str) -> str:
    """Gives the error message of a JSON error answer, checking its status and that it names `words`."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    message = response.get_json()["error"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    return message


# ---- moderation ---------------------------------------------------------------------------

def shuffled_train_labels(store: Path, seed: int = 0) -> int:
    """Records corrections that give every training image another image's labels; gives how many."""
    from emoreact.index import Store
    from emoreact.index.feedback import FeedbackLog

    opened = Store.open(store)
    train = [it for it in opened.items() if it.split == "train" and it.labels]
    opened.close()
    labels = [list(it.labels) for it in train]
    random.Random(seed).shuffle(labels)
    log = FeedbackLog(store)
    for it, wrong in zip(train, labels):
        log.add(key_name="test", image_id=it.id, sha256=it.sha256, labels=wrong, predicted=[], source="indexed")
    log.close()
    return len(train)


# ---- a real server and a real browser -----------------------------------------------------

def free_port() -> int:
    """Gives a TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(store, head, log: Path, options: list[str] = ()):
    """Runs `cli.py serve` on a free port until the generator is closed; yields (base URL, /healthz).

    The server's output goes to `log`, a file: a pipe nobody reads fills with access log lines and then
    blocks every server thread on its next one."""
    port = free_port()
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


def launch_browser():
    """Yields headless Debian Chromium driven by Playwright (skips the test where either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; `./run test` does it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# ---- references ---------------------------------------------------------------------------

def brute_force_groups(vectors: np.ndarray, threshold: float) -> set[tuple[int, ...]]:
    """The reference of near-duplicate grouping: the full similarity matrix and a plain union-find."""
    parent = list(range(len(vectors)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(vectors @ vectors.T >= threshold, k=1))):
        parent[root(i)] = root(j)
    members = {}
    for i in range(len(vectors)):
        members.setdefault(root(i), []).append(i)
    return {tuple(m) for m in members.values() if len(m) > 1}


class InProcessPool:
    """Stands in for the process pool: each device's part is embedded here, in turn. The parts, the resume
    and the merge are the same; only the processes are not started (the `processes` case starts them)."""

    def __init__(self, workers: int, mp_context=None):
        self.workers = workers

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def map(self, fn, jobs):
        return [fn(job) for job in jobs]
