"""How unlike the indexed images a new image is, calibrated on the store itself.

An image's novelty is the fraction of indexed images whose nearest other indexed image is more
similar to them than the new image's nearest indexed image is to it: an empirical CDF over the
store's own nearest-neighbour similarities, 0 (as close as anything indexed) to 1 (farther than
every sampled indexed image is from its neighbour).

For an image drawn like the indexed ones, its top-1 similarity is distributed like an indexed
image's nearest-neighbour similarity, so `novelty >= u` flags about `1 - u` of such images: the
default level 0.99 is a 1% false-alarm rate on in-distribution images, while an image from
elsewhere (a temple photo against an index of emoji art: top-1 0.60 where indexed images sit at
0.95-1.0 from their neighbours) scores 1.0.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from emoreact.index import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 2_000  # indexed images whose nearest neighbour is looked up at load
DEFAULT_UNSURE_ABOVE = 0.99
CACHE_FILE = "novelty.json"  # in the store folder: the calibration, for as long as the store is unchanged
CACHE_FORMAT, CACHE_VERSION = "emoreact-novelty", 1


class NoveltyCalibration:
    """The sorted nearest-neighbour similarities of a seeded sample of indexed images."""

    def __init__(self, neighbour_similarities: np.ndarray) -> None:
        self.similarities_ = np.sort(np.asarray(neighbour_similarities, dtype=np.float32))
        if self.similarities_.ndim != 1 or len(self.similarities_) == 0:
            raise ValueError("a novelty calibration needs at least one nearest-neighbour similarity")

    @classmethod
    def from_store(cls, store, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> "NoveltyCalibration | None":
        """Gives the calibration of a store (None when it holds fewer than two images): each sampled
        image's nearest OTHER indexed image, from a k=2 search skipping the image itself.

        2,000 exact searches over a large flat index take seconds, so the result is kept in
        STORE/novelty.json and used again while the store's rows and index are the ones it was
        measured on (where the folder cannot be written, it is measured at each load)."""
        if len(store) < 2:
            return None
        stamp = {"format": CACHE_FORMAT, "format_version": CACHE_VERSION, "rows": int(getattr(store, "rows", len(store))),
                 "live": len(store), "index": store.manifest.get("index"), "sample": sample, "seed": seed}
        cached = _read_cache(store.root / CACHE_FILE, stamp)
        if cached is not None:
            return cls(cached)
        started = time.perf_counter()
        calibration = cls._measure(store, sample, seed)
        if calibration is not None:
            log.info("novelty calibrated on %d indexed images in %.1f s", len(calibration.similarities_),
                     time.perf_counter() - started)
            try:
                atomic_write_text(store.root / CACHE_FILE, json.dumps(
                    {**stamp, "similarities": [round(float(v), 6) for v in calibration.similarities_]}) + "\n")
            except OSError as exc:  # a read-only store: measured again at the next load
                log.info("novelty calibration not cached in %s (%s)", store.root, exc)
        return calibration

    @classmethod
    def _measure(cls, store, sample: int, seed: int) -> "NoveltyCalibration | None":
        rows = int(getattr(store, "rows", len(store)))  # ids run to `rows`; removed images leave gaps
        drawn = np.sort(np.random.default_rng(seed).choice(rows, min(sample, rows), replace=False))
        ids, vectors = [], []
        for i in drawn.tolist():
            try:
                vectors.append(store.vector(i))
            except KeyError:  # removed from the store
                continue
            ids.append(i)
        if not ids:
            return None
        ids = np.asarray(ids)
        scores, found = store.search(np.stack(vectors).astype(np.float32), 2)
        # The image itself is usually first; an exact duplicate may come first instead, which is also
        # the right answer (its nearest other image is at similarity 1).
        other = np.where(found[:, 0] == ids, scores[:, 1], scores[:, 0])
        return cls(other)

    def novelty(self, top1: np.ndarray) -> np.ndarray:
        """Gives (N,) float novelty in [0, 1] for (N,) top-1 similarities to the store."""
        top1 = np.asarray(top1, dtype=np.float32)
        not_higher = np.searchsorted(self.similarities_, top1, side="right")
        return (len(self.similarities_) - not_higher) / len(self.similarities_)

    def to_json(self) -> dict:
        """Gives a summary: sample size and the 1st, 50th and 99th percentile similarity."""
        p1, p50, p99 = np.percentile(self.similarities_, [1, 50, 99])
        return {"sample": int(len(self.similarities_)), "p1": round(float(p1), 4), "median": round(float(p50), 4),
                "p99": round(float(p99), 4)}


def _read_cache(path, stamp: dict) -> list[float] | None:
    """Gives the cached similarities when the file was measured on this very store state, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in stamp.items()):
        return None
    values = data.get("similarities")
    return values if isinstance(values, list) and values else None
