"""Which codes the store's IVF index should hold: RaBitQ (the default) against 8-bit PQ, on the same lists.

`python cli.py bench codes --size N [--keep DIR]` writes a synthetic store of N x 512 (or measures the
store in DIR, e.g. one `bench index --keep DIR` left), trains
one coarse quantizer (the lists `auto` chooses for N), and builds two indexes over the same lists:
`...,RaBitQ` (1 bit a dimension, 4-bit queries) and `...,PQ{D/8}` (64-byte codes, the kind up to 0.2.0).
Each is tuned to the recall target as a store build tunes it, then both answer the same held-out
queries one at a time, taking turns query by query so that both see the same machine: search, exact
re-rank of the tuned candidates and, as the server does, the hits' metadata. Prints, for each:
train and add seconds, tuned nprobe/candidates, recall@10 against exact search, p50/p95 ms, codes
scanned a query and the size of the codes and ids.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from emoreact.index import Store, ann
from emoreact.index.building import train_empty, tune_on_store

from .common import environment
from .synthetic_store import Mixture, held_out_queries, write_store

QUERIES = 1_000


def run(size: int = 1_000_000, dim: int = 512, keep: str | Path | None = None, lists: int | None = None) -> dict:
    """Gives the figures above as a dict (see the module docstring); `lists` overrides the lists `auto`
    chooses (a small test store)."""
    import torch

    reuse = keep is not None and (Path(keep) / "manifest.json").exists()
    folder = Path(keep) if reuse else Path(tempfile.mkdtemp(prefix="emoreact-bench-codes-"))
    try:
        if reuse:  # a store `bench index --keep` left, say
            store = Store.open(folder, with_index=False)
            mixture = Mixture.of_store(store)
        else:  # written and read, never finished: it has no index of its own, and is deleted after
            mixture = Mixture.for_rows(size, dim)
            store = write_store(folder, size, mixture, index=None)
        size, dim = store.rows_written(), store.dim
        rabitq = (f"IVF{lists}_HNSW32,RaBitQ" if lists else ann.choose_factory(max(size, ann.FLAT_MAX_ROWS + 1), dim))
        pq = rabitq.replace("RaBitQ", f"PQ{dim // 8}")
        live_ids, rows_of = store.live_ids(), store.vectors_of

        start = time.perf_counter()
        pq_index = train_empty(pq, dim, live_ids, rows_of)  # the coarse quantizer both share, and PQ's codebooks
        pq_train = time.perf_counter() - start
        ivf = faiss.extract_index_ivf(pq_index)
        rabitq_index = faiss.IndexIVFRaBitQ(ivf.quantizer, dim, ivf.nlist, faiss.METRIC_INNER_PRODUCT, True, 1)
        start = time.perf_counter()
        rabitq_index.train(rows_of(live_ids[:min(len(live_ids), 65_536)]))  # RaBitQ itself learns nothing
        rabitq_train = time.perf_counter() - start
        indexes = {"rabitq": (rabitq, rabitq_index, rabitq_train), "pq": (pq, pq_index, pq_train)}

        queries = held_out_queries(QUERIES, mixture)
        _, truth = ann.exact_neighbours(queries, ((b.ids, b.vectors) for b in store.blocks()), 10)
        built, result = {}, {}
        for name, (factory, index, train_s) in indexes.items():
            start = time.perf_counter()
            ann.add_blocks(index, store.live_blocks())
            add_s = time.perf_counter() - start
            settings = ann.IndexSettings(factory=factory, file="", indexed_rows=size, trained_rows=size)
            settings = tune_on_store(index, settings, live_ids, store.live_blocks, rows_of)
            built[name] = (index, settings)
            ivf = faiss.extract_index_ivf(index)
            result[name] = {"index": factory, "train_seconds": round(train_s, 1), "add_seconds": round(add_s, 1),
                            "nprobe": settings.nprobe, "candidates": settings.candidates,
                            "bytes_per_vector": ivf.code_size + 8,  # its code and its id in the lists
                            "codes_mib": round(index.ntotal * (ivf.code_size + 8) / 2**20, 1),
                            "codes_scanned": int(ann.codes_scanned(ivf, ann.list_sizes(ivf), queries, settings.nprobe))}
        for name, figures in _take_turns(built, queries, truth, store).items():
            result[name].update(figures)
        store.close()
        return {"bench": "codes", **environment(torch.device("cpu")), "vectors": size, "dim": dim,
                "queries": QUERIES, **result,
                "speedup_p95": round(result["pq"]["p95_ms"] / result["rabitq"]["p95_ms"], 2)}
    finally:
        if not reuse:
            shutil.rmtree(folder, ignore_errors=True)


def _take_turns(built: dict, queries: np.ndarray, truth: np.ndarray, store: Store) -> dict:
    """Gives each index's recall@10 and p50/p95 ms: every query is answered by each index in turn."""
    times = {name: [] for name in built}
    hits = dict.fromkeys(built, 0)
    for query, want in zip(queries, truth):
        for name, (index, settings) in built.items():
            ann.configure(index, settings)
            start = time.perf_counter()
            _, ids = ann.search(index, settings, query[None, :], 10, store.vectors_of)
            store.items([int(i) for i in ids[0] if i >= 0])
            times[name].append(1000 * (time.perf_counter() - start))
            hits[name] += len(set(ids[0].tolist()) & set(want.tolist()))
    return {name: {"recall_at_10": round(hits[name] / (10 * len(queries)), 4),
                   "p50_ms": round(float(np.percentile(times[name], 50)), 3),
                   "p95_ms": round(float(np.percentile(times[name], 95)), 3)} for name in built}
