"""Soak test: many clients send valid and hostile uploads to a real `cli.py serve` for a while.

    python -m emoreact.bench.soak --seconds 60 --clients 16

Passes (exit 0) only with zero 5xx answers, zero dropped connections, every valid image answered
exactly as when it was sent alone, and every hostile upload answered with a JSON 4xx. Prints the
server's resident memory at the start and the end.
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


def hostile_payloads(limit_bytes: int) -> dict[str, tuple[list[tuple[str, str, bytes]], int | None]]:
    """Gives name -> (multipart parts, expected status or None for any 4xx)."""
    def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    good = encoded(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
    frames = [Image.new("P", (32, 32), n % 256) for n in range(1000)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    return {
        "html named .jpg": ([("image", "a.jpg", b"<html><body>hello</body></html>")], 400),
        "random bytes": ([("image", "r.png", random.Random(1).randbytes(4096))], 400),
        "empty file": ([("image", "e.jpg", b"")], 400),
        "missing field": ([("other", "x.jpg", good)], 400),
        "truncated jpeg": ([("image", "t.jpg", good[: len(good) // 2])], 400),
        "tiff": ([("image", "t.tif", encoded(Image.new("RGB", (8, 8)), "TIFF"))], 415),
        "decompression bomb": ([("image", "b.png", encoded(Image.new("1", (20000, 20000)), "PNG"))], None),
        "body over the limit": ([("image", "big.jpg", b"\xff\xd8\xff" + bytes(limit_bytes + 1024))], 413),
        "1000-frame gif": ([("image", "anim.gif", animated.getvalue())], 200),
    }


def multipart(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for field, name, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(port: int, parts) -> tuple[int, dict]:
    body, content_type = multipart(parts)
    connection = HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, head = build(Path(tmp))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--store", str(store), "--head",
                                   str(head), "--port", str(port), "--threads", str(args.clients),
                                   "--max-upload-mb", str(args.max_upload_mb), "--device", "cpu"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            return _soak(server, port, args)
        finally:
            server.terminate()
            server.wait(timeout=30)


def _soak(server: subprocess.Popen, port: int, args) -> int:
    deadline = time.time() + 120
    while True:
        try:
            HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/healthz")
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    valid = sorted((ROOT / "demo" / "images").glob("*/*.png"))[::37]
    payloads = {f"valid {p.parent.name}/{p.name}": ([("image", p.name, p.read_bytes())], 200) for p in valid}
    payloads |= hostile_payloads(int(args.max_upload_mb * 1024 * 1024))
    reference = {name: post(port, parts)[1] for name, (parts, _) in payloads.items() if name.startswith("valid")}
    rss_start = rss_mib(server.pid)
    counts, problems, lock = Counter(), [], threading.Lock()
    stop = time.perf_counter() + args.seconds
    names = list(payloads)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            name = rng.choice(names)
            parts, expected = payloads[name]
            try:
                status, body = post(port, parts)
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

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    healthy = post(port, payloads[names[0]][0])[0] == 200
    result = {"seconds": args.seconds, "clients": args.clients, "requests": sum(counts.values()),
              "by_status": dict(counts), "server_errors_5xx": sum(v for k, v in counts.items() if k.startswith("5")),
              "dropped_connections": counts["dropped"], "mismatches_or_unexpected": len(problems),
              "first_problems": problems[:5], "rss_mib_start": rss_start, "rss_mib_end": rss_mib(server.pid),
              "answers_after_soak": healthy}
    print(json.dumps(result, indent=2))
    return 0 if not problems and healthy else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
