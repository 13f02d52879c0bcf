"""Exact k-NN search: the store's FAISS index vs numpy brute force, on the same vectors."""
from __future__ import annotations

import time

import numpy as np

from emoreact.index import brute_force_search, build_index, search

from .common import environment, timed


def run(count: int = 1_000_000, dim: int = 512, k: int = 10, queries: int = 256) -> dict:
    """Gives build time, single-query latency and batch throughput of both searches."""
    import torch

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = vectors[rng.choice(count, queries)] + 0.1 * rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    build_s, index = timed(lambda: build_index(vectors))
    single = _latency(lambda row: search(index, row, k), q[:20])
    batch_s, (scores, ids) = timed(lambda: search(index, q, k))
    base_single = _latency(lambda row: brute_force_search(vectors, row, k), q[:5])
    base_batch_s, (ref_scores, ref_ids) = timed(lambda: brute_force_search(vectors, q[:32], k))
    agree = float((ids[:32] == ref_ids).mean())
    return {"bench": "index", **environment(torch.device("cpu")), "vectors": count, "dim": dim, "k": k,
            "build_seconds": round(build_s, 2),
            "ours_faiss_single_query_ms": single, "ours_faiss_queries_per_s": round(queries / batch_s, 1),
            "baseline_numpy_single_query_ms": base_single,
            "baseline_numpy_queries_per_s": round(32 / base_batch_s, 1),
            "speedup_single_query": round(base_single / single, 2),
            "speedup_throughput": round((queries / batch_s) / (32 / base_batch_s), 2),
            "neighbours_identical_to_brute_force": agree}


def _latency(fn, rows: np.ndarray) -> float:
    times = []
    for row in rows:
        start = time.perf_counter()
        fn(row[None, :])
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)
