"""The serving side of `bench index`, run as its own process: `python -m emoreact.bench.index_serve STORE QUERIES.npy`.

Opens the store as the server does (memory-mapped index), answers each query alone (search, exact
re-rank, metadata of the hits), and prints JSON: per-query latency percentiles, the ids found, the
time to open and the process's peak resident memory.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch  # noqa: F401  a server holds torch (its model) beside the store: its memory counts here too

from emoreact.index import Store

from .common import peak_rss_mib, rss_mib


def main(store_path: str, queries_path: str) -> None:
    queries = np.load(queries_path)
    start = time.perf_counter()
    store = Store.open(store_path)
    open_s = time.perf_counter() - start
    open_rss = rss_mib()
    times, found = [], []
    for query in queries:
        start = time.perf_counter()
        _, ids = store.search(query[None, :], 10)
        store.items([int(i) for i in ids[0] if i >= 0])
        times.append(1000 * (time.perf_counter() - start))
        found.append([int(i) for i in ids[0]])
    print(json.dumps({"p50_ms": round(float(np.percentile(times, 50)), 3),
                      "p95_ms": round(float(np.percentile(times, 95)), 3),
                      "open_seconds": round(open_s, 2), "peak_rss_mib": peak_rss_mib(),
                      "open_rss_mib": open_rss, "end_rss_mib": rss_mib(),
                      "ids": found}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
