"""The store's index at scale: build time, recall@10 against exact search, latency, memory, disk.

`python cli.py bench index --size N` writes a synthetic store of N x 512 (bench/synthetic_store.py),
builds the index the store chooses for N (or `--index KIND`), then
- recall@10 of the store's search (index + exact re-rank) against exact search, on 1,000 held-out queries;
- single-query latency (p50/p95) in a separate serving process that opens the store as `serve` does
  (memory-mapped index) and answers each query with search, re-rank and metadata lookup; its peak RSS.
  It first answers 1,000 other held-out queries, reported apart (`warmup_p50_ms`, `warmup_p95_ms`): a
  fresh process's first queries also wait for pages not yet in memory (index lists, SQLite pages,
  shard rows; at 10M, 34 ms p50 with the shards' rows on disk against 11 ms in the page cache);
- the exact baseline in the same run: a flat inner-product index over the same vectors (fp16 codes beyond
  4M vectors, so that it fits in RAM; still exact on the stored values), single queries;
- adding 1% more images: the incremental index update against the full build.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from emoreact.index import Store
from emoreact.index import ann

from .common import environment
from .synthetic_store import Mixture, held_out_queries, write_store

QUERIES = 1_000
WARMUP_QUERIES = 1_000
EXACT_QUERIES = 100


def run(size: int = 1_000_000, dim: int = 512, index: str = "auto", keep: str | Path | None = None,
        exact_baseline: bool = True, device: str = "cpu") -> dict:
    """Gives the figures above as a dict (see the module docstring). With a CUDA `device`, also exact search
    on the GPU (torch, as a GPU server does where faiss-gpu cannot run), single queries, same data."""
    import torch

    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="emoreact-bench-index-"))
    mixture = Mixture.for_rows(size, dim)
    try:
        reuse = keep is not None and (folder / "manifest.json").exists()
        if reuse:  # measure again on a store an earlier run kept: no generation, no build, no growth
            store = Store.open(folder, with_index=False)
            settings, generate_s, build_s = store.index_settings, None, store.index_settings.build_seconds
            size, dim, mixture = len(store), store.dim, Mixture.of_store(store)
        else:
            start = time.perf_counter()
            store = write_store(folder, size, mixture, index=None)
            generate_s = time.perf_counter() - start
            start = time.perf_counter()
            settings = store.reindex(index)
            build_s = time.perf_counter() - start
        store.close()

        queries = held_out_queries(QUERIES, mixture)
        with Store.open(folder, with_index=False) as reader:
            _, truth = ann.exact_neighbours(queries, ((b.ids, b.vectors) for b in reader.blocks()), 10)
            served = _serve_queries(folder, queries, held_out_queries(WARMUP_QUERIES, mixture, stream=2_000_000))
            recall = float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(served["ids"], truth.tolist())]))
            exact = _exact_latency(reader, queries[:EXACT_QUERIES]) if exact_baseline else None
            gpu = _gpu_exact_latency(reader, queries, device) if device.startswith("cuda") else None

        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        index_size = (folder / settings.file).stat().st_size
        add_s, grown = (None, None) if reuse else _add_one_percent(folder, size, mixture)
        result = {
            "bench": "index", **environment(torch.device("cpu")), "vectors": size, "dim": dim,
            "index": settings.factory, "nprobe": settings.nprobe, "candidates": settings.candidates,
            "tuned_recall_at_10": settings.recall_at_10, "generate_seconds": generate_s and round(generate_s, 1), "reused_store": reuse,
            "build_seconds": build_s and round(build_s, 1), "recall_at_10": round(recall, 4), "queries": QUERIES,
            "p50_ms": served["p50_ms"], "p95_ms": served["p95_ms"],
            "warmup_p50_ms": served["warmup_p50_ms"], "warmup_p95_ms": served["warmup_p95_ms"],
            "exact_p50_ms": exact and exact["p50_ms"], "exact_p95_ms": exact and exact["p95_ms"],
            "exact_baseline": exact and exact["kind"],
            "speedup_p95": round(exact["p95_ms"] / served["p95_ms"], 2) if exact and served["p95_ms"] > 0 else None,
            "server_rss_mib": served["peak_rss_mib"], "server_open_seconds": served["open_seconds"],
            "disk_mib": round(disk / 2**20), "index_mib": round(index_size / 2**20),
            "add_1pct_seconds": None if add_s is None else round(add_s, 3), "add_1pct_vs_build": None if add_s is None else round(add_s / build_s, 4),
            "index_after_add": grown}
        if gpu:
            result["gpu_exact"] = gpu
        return result
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _serve_queries(folder: Path, queries: np.ndarray, warmup: np.ndarray) -> dict:
    """Runs bench/index_serve.py in a fresh process (its RSS is the server's) on `warmup`, then `queries`."""
    with tempfile.TemporaryDirectory() as tmp:
        path, warmup_path = Path(tmp) / "queries.npy", Path(tmp) / "warmup.npy"
        np.save(path, queries)
        np.save(warmup_path, warmup)
        out = subprocess.run([sys.executable, "-m", "emoreact.bench.index_serve", str(folder), str(path),
                              str(warmup_path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _exact_latency(store: Store, queries: np.ndarray) -> dict:
    fp16 = store.rows > 4_000_000  # 4M x 512 float32 is 8 GiB: beyond, exact search over fp16 codes
    flat = (faiss.IndexScalarQuantizer(store.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            if fp16 else faiss.IndexFlatIP(store.dim))
    for block in store.blocks():
        flat.add(block.vectors)
    latency = _single_query_latency(flat, queries)
    del flat
    return {**latency, "kind": "Flat (fp16 codes)" if fp16 else "Flat"}


def _single_query_latency(index, queries: np.ndarray) -> dict:
    """Gives p50/p95 ms of `index.search` on each query alone, top 10."""
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None, :], 10)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}


def _gpu_exact_latency(store: Store, queries: np.ndarray, device: str) -> dict:
    """Single-query latency of exact search on the GPU (fp32 products, top 10), with the copy of the answer back."""
    import torch

    from emoreact.index.search import TorchFlatIndex

    flat = TorchFlatIndex(np.concatenate([block.vectors for block in store.blocks()]), device)
    for query in queries[:20]:
        flat.search(query[None, :], 10)  # warm-up
    latency = _single_query_latency(flat, queries)
    del flat
    torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(device), **latency, "queries": len(queries)}


def _add_one_percent(folder: Path, size: int, mixture: Mixture) -> tuple[float, str]:
    """Adds 1% more images (new RNG streams) and times the index update that `finish()` does."""
    store = write_store(folder, max(1, size // 100), mixture, first_stream=10_000, index=None)
    start = time.perf_counter()
    store.finish()
    seconds = time.perf_counter() - start
    factory = store.index_settings.factory
    store.close()
    return seconds, factory
