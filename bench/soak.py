"""Soak test: many clients send valid and hostile uploads to a real `cli.py serve` for a while.

    python -m emoreact.bench.soak --seconds 60 --clients 16

Passes (exit 0) only with zero 5xx answers, zero dropped connections, every valid image answered
exactly as when it was sent alone, and every hostile upload answered with a JSON 4xx. Prints the
server's resident memory at the start and the end.

The server's output goes to a file (`--log`, default: a temporary one, shown on failure). A pipe that
nobody reads fills with access log lines (one per request) within seconds, and then every server
thread blocks on its next line: the soak would measure a hung server, not a loaded one.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.client import HTTPConnection
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


PREDICT = "/api/predict"
# A request for a valid image with a long query string: answered as usual, and its access log line is as
# long as its URL, so a few of them log as much as hundreds of short requests.
LONG_QUERY = f"{PREDICT}?pad={'x' * 8192}"


def hostile_payloads(limit_bytes: int) -> dict[str, tuple[list[tuple[str, str, bytes]], int | None, str]]:
    """Gives name -> (multipart parts, expected status or None for any 4xx, URL path)."""
    def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    good = encoded(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
    frames = [Image.new("P", (32, 32), n % 256) for n in range(1000)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    return {
        "html named .jpg": ([("image", "a.jpg", b"<html><body>hello</body></html>")], 400, PREDICT),
        "random bytes": ([("image", "r.png", random.Random(1).randbytes(4096))], 400, PREDICT),
        "empty file": ([("image", "e.jpg", b"")], 400, PREDICT),
        "missing field": ([("other", "x.jpg", good)], 400, PREDICT),
        "truncated jpeg": ([("image", "t.jpg", good[: len(good) // 2])], 400, PREDICT),
        "tiff": ([("image", "t.tif", encoded(Image.new("RGB", (8, 8)), "TIFF"))], 415, PREDICT),
        "decompression bomb": ([("image", "b.png", encoded(Image.new("1", (20000, 20000)), "PNG"))], None, PREDICT),
        "body over the limit": ([("image", "big.jpg", b"\xff\xd8\xff" + bytes(limit_bytes + 1024))], 413, PREDICT),
        "1000-frame gif": ([("image", "anim.gif", animated.getvalue())], 200, PREDICT),
        "8 KiB query string": ([("image", "q.jpg", good)], 200, LONG_QUERY),
    }


def multipart(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for field, name, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(port: int, parts, path: str = PREDICT, timeout: float = 120) -> tuple[int, dict]:
    body, content_type = multipart(parts)
    connection = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {"not_json": data[:200].decode(errors="replace")}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def build(tmp: Path) -> tuple[Path, Path]:
    """Gives (store, head) of the offline demo set with the bundled model."""
    from emoreact.offline_demo import DEMO_MODEL, demo_records
    from emoreact.embed import EmbedConfig, load_backbone
    from emoreact.heads import HeadConfig, load_label_config
    from emoreact.pipeline import embed_records, train_from_store

    labels = load_label_config()
    embed_records(demo_records(), tmp / "store", load_backbone(DEMO_MODEL, "cpu"), labels,
                  EmbedConfig(workers=0, progress=False))
    train_from_store(tmp / "store", tmp / "head", HeadConfig(), labels, "cpu")
    return tmp / "store", tmp / "head"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-upload-mb", type=float, default=4)
    parser.add_argument("--log", type=Path, default=None, help="file for the server's output (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, head = build(Path(tmp))
        result = soak(store, head, args.log or Path(tmp) / "serve.log", seconds=args.seconds, clients=args.clients,
                      max_upload_mb=args.max_upload_mb)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


def soak(store: Path, head: Path, log: Path, seconds: float = 60, clients: int = 16, max_upload_mb: float = 4,
         timeout: float = 120) -> dict:
    """Serves `store` and `head` with `cli.py serve` (its output to `log`) and soaks it; gives the figures.

    `passed` is true with no 5xx, no dropped connection, no unexpected answer, and the server still
    answering afterwards; `timeout` bounds each request, so a stuck server fails the soak instead of hanging it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--store", str(store), "--head",
                                   str(head), "--port", str(port), "--threads", str(clients),
                                   "--max-upload-mb", str(max_upload_mb), "--device", "cpu"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(server, port, log)
        return send_load(port, server.pid, seconds, clients, max_upload_mb, timeout)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_up(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.time() + 120
    while True:
        try:
            HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/healthz")
            return
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start (its output: {log}):\n{log.read_text()[-2000:]}")
            time.sleep(0.5)


def send_load(port: int, pid: int, seconds: float, clients: int, max_upload_mb: float, timeout: float) -> dict:
    """Sends `clients` concurrent clients' mix of valid and hostile uploads to the server on `port` (process
    `pid`, whose memory is read) for `seconds`; gives the figures and whether the server `passed`."""
    valid = sorted((ROOT / "demo" / "images").glob("*/*.png"))[::37]
    payloads = {f"valid {p.parent.name}/{p.name}": ([("image", p.name, p.read_bytes())], 200, PREDICT)
                for p in valid}
    payloads |= hostile_payloads(int(max_upload_mb * 1024 * 1024))
    reference = {name: post(port, parts, path, timeout)[1]
                 for name, (parts, _, path) in payloads.items() if name.startswith("valid")}
    rss_start = rss_mib(pid)
    counts, problems, lock = Counter(), [], threading.Lock()
    stop = time.perf_counter() + seconds
    names = list(payloads)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            name = rng.choice(names)
            parts, expected, path = payloads[name]
            try:
                status, body = post(port, parts, path, timeout)
            except OSError as exc:
                with lock:
                    counts["dropped"] += 1
                    problems.append(f"{name}: connection error {exc!r}")
                continue
            ok = (status == expected if expected else 400 <= status < 500) and "not_json" not in body
            if name in reference and status == 200:
                ok = ok and body == reference[name]
            with lock:
                counts[f"{status}"] += 1
                if not ok:
                    problems.append(f"{name}: status {status}, body {str(body)[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        healthy = post(port, payloads[names[0]][0], timeout=timeout)[0] == 200
    except OSError:
        healthy = False
    result = {"seconds": seconds, "clients": clients, "requests": sum(counts.values()),
              "by_status": dict(counts), "server_errors_5xx": sum(v for k, v in counts.items() if k.startswith("5")),
              "dropped_connections": counts["dropped"], "mismatches_or_unexpected": len(problems),
              "first_problems": problems[:5], "rss_mib_start": rss_start, "rss_mib_end": rss_mib(pid),
              "answers_after_soak": healthy}
    return result | {"passed": not problems and healthy}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
