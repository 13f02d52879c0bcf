"""API latency and throughput: real HTTP uploads against waitress at concurrency 1, 4 and 16,
with and without micro-batching of concurrent model calls (the baseline is one call per request)."""
from __future__ import annotations

import mimetypes
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

from .common import environment, write_photos


def run(model: str = "ViT-B-32", seconds: float = 10.0, device: str = "auto",
        levels: tuple[int, ...] = (1, 4, 16), warmup: float = 2.0) -> dict:
    """Gives p50/p95 latency and requests/s per concurrency level, micro-batching off and on (after `warmup`
    seconds of single requests)."""
    import torch

    from emoreact.embed import EmbedConfig, ModelSpec
    from emoreact.heads import HeadConfig, load_label_config
    from emoreact.pipeline import embed_source, train_from_store
    from emoreact.predictor import load
    from emoreact.web import WebConfig, create_app
    from emoreact.web.batching import MicroBatcher
    from emoreact.web.server import background_server

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_photos(root / "photos", 48)
        manifest = root / "m.csv"
        names = load_label_config().names
        manifest.write_text("path,labels\n" + "".join(f"{p},{names[i % 8]}\n" for i, p in enumerate(photos)))
        embed_source(manifest, root / "store", ModelSpec(model, "none"), labels=load_label_config(),
                     # random weights make every image a near-duplicate of every other: keep the hash splits
                     device=device, config=EmbedConfig(workers=0, progress=False, near_duplicate_threshold=None))
        train_from_store(root / "store", root / "head", HeadConfig(epochs=5), load_label_config(), "cpu")
        uploads = [p.read_bytes() for p in photos[:16]]
        figures = {}
        for micro in (False, True):
            predictor = load(root / "store", root / "head", device=device)
            predictor = predictor.batch_calls(MicroBatcher) if micro else predictor
            config = WebConfig(store=root / "store", head=root / "head", device=device,
                               loader=lambda _config, p=predictor: p)
            with background_server(create_app(config), threads=max(levels)) as url:
                host, port = url.removeprefix("http://").split(":")
                _load(host, int(port), uploads, 1, warmup)
                figures["micro_batching" if micro else "one_call_per_request"] = {
                    f"concurrency_{c}": _load(host, int(port), uploads, c, seconds) for c in levels}
        dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    ours, base = figures["micro_batching"], figures["one_call_per_request"]
    top = f"concurrency_{max(levels)}"
    return {"bench": "api", **environment(dev), "model": model, "image": "640x480 JPEG, k=5 neighbours",
            "seconds_per_level": seconds, **figures,
            "micro_batching_rps_ratio_at_top_concurrency": round(ours[top]["requests_per_s"] / base[top]["requests_per_s"], 2),
            "rps_top_vs_concurrency_1_with_micro_batching": round(
                ours[top]["requests_per_s"] / ours["concurrency_1"]["requests_per_s"], 2)}


def _load(host: str, port: int, uploads: list[bytes], concurrency: int, seconds: float) -> dict:
    """Sends uploads from `concurrency` clients for `seconds`; gives latency percentiles and rate."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = []
    lock = threading.Lock()

    def client(n: int) -> None:
        connection = HTTPConnection(host, port, timeout=60)
        i = n
        while time.perf_counter() < stop:
            body, content_type = _multipart(uploads[i % len(uploads)])
            start = time.perf_counter()
            connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            with lock:
                (latencies.append(elapsed) if response.status == 200 else errors.append(response.status))
            i += concurrency
        connection.close()

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def alternating(app, uploads: dict[str, list[tuple[str, bytes]]], requests: int, warmup: int = 2) -> dict:
    """Gives {kind: p50/p95 ms} of `/api/predict` (one upload, k=5, through waitress) for each kind of
    upload ((file name, bytes) pairs, taken in turn), the kinds alternating in one run, so each sees
    the same machine; the first `warmup` rounds are not counted. Any answer but 200 raises, naming it."""
    from emoreact.web.server import background_server

    times: dict[str, list[float]] = {kind: [] for kind in uploads}
    with background_server(app, threads=2) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = HTTPConnection(host, int(port), timeout=120)
        for n in range(requests + warmup):
            for kind, files in uploads.items():
                name, data = files[n % len(files)]
                body, content_type = _multipart(data, name)
                start = time.perf_counter()
                connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    raise RuntimeError(f"/api/predict answered {response.status} for {kind} ({name}): {answer[:300]!r}")
                if n >= warmup:
                    times[kind].append((time.perf_counter() - start) * 1000)
        connection.close()
    return {kind: {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
                   "requests": len(ms)} for kind, ms in times.items()}


def _multipart(data: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
