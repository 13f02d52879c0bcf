"""The serving side of `bench index`, run as its own process:
`python -m emoreact.bench.index_serve STORE QUERIES.npy [WARMUP.npy]`.

Opens the store as the server does (memory-mapped index), answers each query alone (search, exact
re-rank, metadata of the hits), and prints JSON: latency percentiles and each query's latency, the
ids found and their similarities, the time to open and the process's peak resident memory. With WARMUP, it first answers those (other)
queries, as a server has answered others before any given one, and reports their latency apart: the
first queries of a fresh process also wait for index pages, metadata pages and shard rows that are
not yet in memory or the page cache.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch  # noqa: F401  a server holds torch (its model) beside the store: its memory counts here too

from emoreact.index import Store

from .common import peak_rss_mib, rss_mib


def main(store_path: str, queries_path: str, warmup_path: str | None = None) -> None:
    queries = np.load(queries_path)
    start = time.perf_counter()
    with Store.open(store_path) as store:
        open_s = time.perf_counter() - start
        open_rss = rss_mib()
        warmup = {}
        if warmup_path:
            times, _, _ = _answer(store, np.load(warmup_path))
            warmup = {"warmup_queries": len(times), "warmup_p50_ms": _percentile(times, 50),
                      "warmup_p95_ms": _percentile(times, 95)}
        times, found, scores = _answer(store, queries)
    print(json.dumps({"p50_ms": _percentile(times, 50), "p95_ms": _percentile(times, 95), **warmup,
                      "open_seconds": round(open_s, 2), "peak_rss_mib": peak_rss_mib(),
                      "open_rss_mib": open_rss, "end_rss_mib": rss_mib(),
                      "ids": found, "scores": scores, "times_ms": [round(t, 4) for t in times]}))


def _answer(store: Store, queries: np.ndarray) -> tuple[list[float], list[list[int]], list[list[float | None]]]:
    """Gives each query's latency in ms (search, re-rank, metadata of the hits), the ids found and their
    similarities (None where a row has no hit)."""
    times, found, similarities = [], [], []
    for query in queries:
        start = time.perf_counter()
        scores, ids = store.search(query[None, :], 10)
        store.items([int(i) for i in ids[0] if i >= 0])
        times.append(1000 * (time.perf_counter() - start))
        found.append([int(i) for i in ids[0]])
        similarities.append([round(float(s), 6) if i >= 0 else None for s, i in zip(scores[0], ids[0])])
    return times, found, similarities


def _percentile(times: list[float], q: int) -> float:
    return round(float(np.percentile(times, q)), 3)


if __name__ == "__main__":
    main(*sys.argv[1:4])
