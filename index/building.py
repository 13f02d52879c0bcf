"""Building and updating the store's FAISS index from its shards, a block at a time.

The store supplies `live_blocks()`, an iterator of (ids (n,) int64, vectors (n, D) float16) over the
images that are not removed, and `rows_of(ids) -> (n, D) float32`; nothing here holds more than one
block of vectors besides the index itself (and, for an approximate index, its training sample).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator, Protocol

import faiss
import numpy as np

from . import adaptive, ann
from .ann import IndexSettings

log = logging.getLogger(__name__)

Blocks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


class LiveRows(Protocol):
    """What building reads of a store (a `Store` is one): its live rows, by block or by id."""

    dim: int

    def rows_written(self) -> int: ...
    def live_ids(self) -> np.ndarray: ...
    def live_blocks(self, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
    def vectors_of(self, ids: np.ndarray) -> np.ndarray: ...


Builder = Callable[[LiveRows, str], tuple[faiss.Index, IndexSettings]]  # (store, factory) -> (index, settings)


def build_for_store(store: LiveRows, factory: str) -> tuple[faiss.Index, IndexSettings]:
    """Gives a new index of kind `factory` over the store's live images, built in this process."""
    rows = store.rows_written()
    return build(factory, store.dim, rows, store.live_ids(), store.live_blocks, store.vectors_of)


def train_empty(factory: str, dim: int, live_ids: np.ndarray, rows_of: Callable[[np.ndarray], np.ndarray],
                seed: int = 0) -> faiss.Index:
    """Gives an empty index of kind `factory`, trained (when approximate) on a seeded sample of `live_ids`."""
    index = ann.new_index(factory, dim)
    if not ann.is_flat(factory):
        sample = _sample(live_ids, ann.training_size(factory, len(live_ids)), seed)
        log.info("training %s on %d vectors", factory, len(sample))
        index.train(rows_of(sample))
    return index


def build(factory: str, dim: int, rows: int, live_ids: np.ndarray, live_blocks: Blocks,
          rows_of: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> tuple[faiss.Index, IndexSettings]:
    """Gives a new index of kind `factory` over all live rows (`live_ids`, sorted, of `rows` in all),
    trained on a seeded sample and tuned to the recall target when approximate."""
    start = time.perf_counter()
    index = train_empty(factory, dim, live_ids, rows_of, seed)
    settings = IndexSettings(factory=factory, file="", indexed_rows=rows, trained_rows=0 if ann.is_flat(factory) else rows)
    ann.add_blocks(index, live_blocks())
    if settings.approximate:
        settings = tune_on_store(index, settings, live_ids, live_blocks, rows_of, seed)
    return index, settings.with_(build_seconds=round(time.perf_counter() - start, 2))


def tune_on_store(index: faiss.Index, settings: IndexSettings, live_ids: np.ndarray, live_blocks: Blocks,
                  rows_of: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> IndexSettings:
    """Gives `settings` tuned on a seeded sample of stored rows as queries (their own entry excluded), then
    the adaptive rule's second pass on as many queries unlike them (index/adaptive.py)."""
    queries_ids = _sample(live_ids, min(ann.TUNING_QUERIES, len(live_ids)), seed + 1)
    queries = rows_of(queries_ids)
    far = adaptive.far_queries(queries, adaptive.FAR_QUERIES, seed) if len(queries) > 1 else queries[:0]
    exclude = np.concatenate([queries_ids, np.full(len(far), -1, np.int64)])  # one pass over the store for both
    _, truth = ann.exact_neighbours(np.concatenate([queries, far]), live_blocks(), 10, exclude=exclude)
    settings = ann.tune(index, settings, queries, queries_ids, truth[:len(queries)], rows_of)
    return adaptive.tune_far(index, settings, queries, queries_ids, far, truth[len(queries):], rows_of)


def add_new_rows(index: faiss.Index, settings: IndexSettings, rows: int,
                 new_blocks: Iterator[tuple[np.ndarray, np.ndarray]]) -> IndexSettings:
    """Adds the blocks of rows `settings.indexed_rows .. rows - 1` to `index` (no retraining); gives the
    settings that record them."""
    added = ann.add_blocks(index, new_blocks)
    log.info("added %d new vectors to the %s index", added, settings.factory)
    return settings.with_(indexed_rows=rows)


def needs_full_build(settings: IndexSettings | None, index: faiss.Index | None, factory: str, rows: int) -> str | None:
    """Gives why the index must be built anew (None: adding the new rows is enough)."""
    if settings is None or index is None:
        return "no index yet"
    if settings.factory != factory:
        return f"index kind changes from {settings.factory} to {factory}"
    if not settings.approximate and not isinstance(index, faiss.IndexIDMap2):
        return "the index predates store ids in the index"
    if settings.approximate and rows > ann.RETRAIN_GROWTH * max(settings.trained_rows, 1):
        return (f"the store grew from {settings.trained_rows} to {rows} rows since the quantizer was trained "
                f"(retrained past x{ann.RETRAIN_GROWTH:g})")
    return None


def _sample(ids: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size >= len(ids):
        return np.asarray(ids, np.int64)
    return np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False)).astype(np.int64)
