"""Bounded, seeded samples of labelled rows gathered from a stream of blocks, and streaming
standardisation statistics: how a head trains on a store too large to hold in memory.

`RowSample` keeps at most `cap` rows. Each row belongs to a stratum (for training rows, its first
label). While the rows seen fit under the cap every row is kept; past it, each stratum keeps at most
`level` rows, the largest level that keeps the total within the cap (water-filling: a small stratum
keeps all its rows, the largest ones are cut to the same size). Which rows a stratum keeps is
decided by a seeded 64-bit hash of the row id (the rows with the smallest hashes, "bottom-k"
sampling), so the sample is the same whatever the block size or order, and the same seed gives the
same sample on every run. The level only falls as rows arrive, and a stratum's bottom-k rows for a
lower level are a subset of those for a higher one, so pruning early loses nothing: memory never
holds more than `cap` rows plus one block.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """Gives (n,) uint64 pseudo-random keys for (n,) int64 row ids: splitmix64 of id + seed, a bijection,
    so distinct ids never tie."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.uint64) + np.uint64(seed % 2**64) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def water_level(counts: np.ndarray, cap: int) -> int | None:
    """Gives the largest per-stratum count q with sum(min(counts, q)) <= cap, or None when all rows fit."""
    counts = np.sort(np.asarray(counts, np.int64))
    if counts.sum() <= cap:
        return None
    # Strata below q keep everything; the rest share what is left equally.
    below = 0
    for i, count in enumerate(counts):
        share = (cap - below) // (len(counts) - i)
        if count > share:
            return int(share)
        below += int(count)
    return int(counts[-1])  # not reached: the sum exceeds the cap


class _Stratum:
    """The rows one stratum keeps: keys, ids, vectors and targets in growable arrays (slots, not id order)."""

    def __init__(self, dim: int, labels: int, dtype) -> None:
        self.size = 0
        self.keys = np.empty(0, np.uint64)
        self.ids = np.empty(0, np.int64)
        self.x = np.empty((0, dim), dtype)
        self.y = np.empty((0, labels), np.float32)

    def append(self, keys, ids, x, y) -> None:
        need = self.size + len(ids)
        if need > len(self.ids):
            # 1.25x, not 2x: the buffers are most of what training holds, and growth stops at the cap.
            grown = max(need, len(self.ids) + len(self.ids) // 4, 1024)
            for name in ("keys", "ids", "x", "y"):
                old = getattr(self, name)
                new = np.empty((grown, *old.shape[1:]), old.dtype)
                new[:self.size] = old[:self.size]
                setattr(self, name, new)
        end = self.size + len(ids)
        self.keys[self.size:end], self.ids[self.size:end] = keys, ids
        self.x[self.size:end], self.y[self.size:end] = x, y
        self.size = end

    def prune(self, level: int) -> None:
        """Keeps the `level` rows with the smallest keys, moving only the survivors that lie past slot `level`."""
        if self.size <= level:
            return
        threshold = np.partition(self.keys[:self.size], level - 1)[level - 1] if level else np.uint64(0)
        keep = self.keys[:self.size] <= threshold if level else np.zeros(self.size, bool)
        holes = np.flatnonzero(~keep[:level])
        movers = level + np.flatnonzero(keep[level:])
        for array in (self.keys, self.ids, self.x, self.y):
            array[holes] = array[movers]
        self.size = level


class RowSample:
    """A bounded, seeded sample of (id, vector, targets) rows fed block by block (see the module docstring).

    cap: the most rows kept (None: keep every row); dim: vector width; labels: target columns;
    dtype: how kept vectors are held until `result()` (float16 loses nothing for a store's vectors).
    """

    def __init__(self, cap: int | None, dim: int, labels: int, seed: int = 0, dtype=np.float16) -> None:
        if cap is not None and cap < 1:
            raise ValueError(f"a row cap must be at least 1, got {cap}; pass None for no cap")
        self.cap, self.dim, self.labels, self.seed, self.dtype = cap, dim, labels, seed, dtype
        self.counts: dict[int, int] = {}  # rows offered per stratum
        self._strata: dict[int, _Stratum] = {}
        self.level: int | None = None

    @property
    def seen(self) -> int:
        """Gives the number of rows offered so far."""
        return sum(self.counts.values())

    @property
    def sampled(self) -> bool:
        """Gives whether rows were left out (more rows were offered than the cap)."""
        return self.level is not None

    def add(self, ids: np.ndarray, x: np.ndarray, y: np.ndarray, strata: np.ndarray | None = None) -> None:
        """Offers rows: ids (n,) int64, x (n, D), y (n, L), strata (n,) int (None: one stratum)."""
        if len(ids) == 0:
            return
        strata = np.zeros(len(ids), np.int64) if strata is None else np.asarray(strata)
        keys = row_keys(ids, self.seed)
        for s in np.unique(strata):
            rows = np.flatnonzero(strata == s)
            stratum = self._strata.setdefault(int(s), _Stratum(self.dim, self.labels, self.dtype))
            self.counts[int(s)] = self.counts.get(int(s), 0) + len(rows)
            if self.level is not None:
                # Rows over the stratum's current bottom-level cut can never come back: skip them now.
                rows = rows[keys[rows] < self._cut(stratum)] if stratum.size >= self.level else rows
            stratum.append(keys[rows], ids[rows], x[rows], y[rows])
        if self.cap is not None:
            self.level = water_level(np.fromiter(self.counts.values(), np.int64), self.cap)
            if self.level is not None:
                for stratum in self._strata.values():
                    stratum.prune(self.level)

    def _cut(self, stratum: _Stratum) -> np.uint64:
        """Gives the largest key a full stratum keeps (a new row needs a smaller one to get in)."""
        return stratum.keys[:stratum.size].max() if stratum.size else np.uint64(2**64 - 1)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gives (ids (n,) int64, x (n, D) float32, y (n, L) float32) of the kept rows in id order, and
        releases the buffers."""
        strata = [s for s in self._strata.values() if s.size]
        ids = np.concatenate([s.ids[:s.size] for s in strata]) if strata else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        x = np.empty((len(ids), self.dim), np.float32)
        y = np.empty((len(ids), self.labels), np.float32)
        self._strata = {}
        start = 0
        while strata:
            stratum = strata.pop(0)  # released as soon as copied: float16 buffers and float32 rows overlap less
            where = position[start:start + stratum.size]
            x[where], y[where] = stratum.x[:stratum.size], stratum.y[:stratum.size]
            start += stratum.size
            del stratum
        return ids[order], x, y


class Moments:
    """Per-dimension mean and standard deviation of rows fed block by block (float64 sums)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.squares = np.zeros(dim, np.float64)

    def add(self, x: np.ndarray, chunk: int = 8192) -> None:
        """Adds (n, D) rows; converts `chunk` rows at a time, so the float64 copy stays small."""
        for start in range(0, len(x), chunk):
            part = np.asarray(x[start:start + chunk], np.float64)
            self.total += part.sum(axis=0)
            self.squares += np.einsum("ij,ij->j", part, part)
        self.count += len(x)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Gives ((D,) float32 mean, (D,) float32 std) as `Standardize.fit` computes them: the unbiased
        variance, the std floored at 1e-6."""
        if self.count == 0:
            raise ValueError("no rows were added; standardisation needs at least one training vector")
        mean = self.total / self.count
        variance = np.maximum(self.squares / self.count - mean * mean, 0) * (self.count / max(1, self.count - 1))
        return mean.astype(np.float32), np.maximum(np.sqrt(variance), 1e-6).astype(np.float32)
