"""Reading the store's vector shards without loading them: memory-mapped blocks and single rows.

Each shard `vectors/NNNNNNNNN.npy` holds rows `first_id .. first_id + count - 1` as (count, D) float16.
Nothing here reads a whole store into memory: blocks are views of memory-mapped files, converted
to float32 one block at a time by the caller, and single rows (for the exact re-rank of approximate
search results) are read where they lie.
"""
from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Shard:
    name: str
    first_id: int
    count: int


class ShardReader:
    """Gives stored vectors by id or by block from memory-mapped shards; safe to share between threads.

    `shards` are in id order, each starting where the previous one ends (with `gaps`, at or after it:
    rows in no shard read as zeros, as in the text set, which has no shard where no image has words);
    `error` is the exception type raised (naming the file) for a missing, truncated or misshapen shard."""

    def __init__(self, folder: Path, shards: list[Shard], dim: int, error: type[Exception],
                 gaps: bool = False) -> None:
        self.folder, self.dim, self._error = folder, dim, error
        self.shards = list(shards)
        self._starts = [s.first_id for s in self.shards]
        self._maps: dict[str, np.ndarray] = {}
        self._files: dict[str, tuple[int, int]] = {}  # shard name -> (open descriptor, offset of row 0)
        self._lock = threading.Lock()
        expected = 0
        for shard in self.shards:
            if shard.first_id != expected and not (gaps and shard.first_id > expected):
                raise error(f"{folder / shard.name}: starts at id {shard.first_id}, expected {expected}; "
                            "the store is damaged")
            expected += shard.count
        self.rows = expected

    def block(self, shard: Shard) -> np.ndarray:
        """Gives the shard's (count, D) float16 rows, memory-mapped (read-only)."""
        with self._lock:
            array = self._maps.get(shard.name)
            if array is None:
                array = self._maps[shard.name] = self._open(shard)
            return array

    def scan(self, shard: Shard) -> np.ndarray:
        """Gives the shard's (count, D) float16 rows memory-mapped afresh and not kept, for one pass over a
        store: its pages leave this process's resident memory with the array. (Kept maps, as `block` keeps
        them for random reads, would leave every page a pass touched resident: the whole store.)"""
        return self._open(shard)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Gives the (len(ids), D) float32 vectors of `ids` (int64, any order, all < self.rows).

        Rows are read with pread, not through a memory map: the exact re-rank of a search reads a few
        hundred scattered rows, and page faults on a map would read ahead around each one, pulling
        gigabytes of a large store into the server's resident memory for nothing. Each row is read
        straight into one shared buffer, converted to float32 once: the loop does a system call a row
        and little else (~1.5 µs a row from the page cache)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if not self.shards:
            return np.zeros((len(ids), self.dim), np.float32)
        where = np.searchsorted(self._starts, ids, side="right") - 1
        ends = np.array([s.first_id + s.count for s in self.shards], np.int64)
        held = (where >= 0) & (ids < ends[np.maximum(where, 0)])
        if not held.all():  # rows in a gap (a set with gaps) are zero
            out = np.zeros((len(ids), self.dim), np.float32)
            out[held] = self.rows_of(ids[held]) if held.any() else out[held]
            return out
        row_bytes = 2 * self.dim
        fd_of = np.zeros(len(self.shards), np.int64)
        row0_of = np.zeros(len(self.shards), np.int64)  # file offset where id 0 would lie, per shard
        for n in np.unique(where).tolist():
            fd_of[n], offset = self._file(self.shards[n])
            row0_of[n] = offset - self.shards[n].first_id * row_bytes
        fds, offsets = fd_of[where], row0_of[where] + ids * row_bytes
        buffer = bytearray(len(ids) * row_bytes)
        view = memoryview(buffer)
        for k, (fd, offset) in enumerate(zip(fds.tolist(), offsets.tolist())):
            if os.preadv(fd, [view[k * row_bytes:(k + 1) * row_bytes]], offset) != row_bytes:
                shard = self.shards[where[k]]
                raise self._error(f"{self.folder / shard.name} is truncated (row {ids[k]}); rebuild the store")
        return np.frombuffer(buffer, dtype="<f2").reshape(len(ids), self.dim).astype(np.float32)

    def shard_of(self, image_id: int) -> Shard:
        """Gives the shard holding row `image_id`."""
        return self.shards[bisect.bisect_right(self._starts, int(image_id)) - 1]

    def close(self) -> None:
        with self._lock:
            self._maps.clear()
            for fd, _ in self._files.values():
                os.close(fd)
            self._files.clear()

    def _file(self, shard: Shard) -> tuple[int, int]:
        with self._lock:
            found = self._files.get(shard.name)
            if found is None:
                array = self._open(shard)  # checks header, shape and dtype
                if array.dtype != np.dtype("<f2") or not array.flags.c_contiguous:
                    raise self._error(f"{self.folder / shard.name} is not a C-ordered float16 array; rebuild the store")
                found = self._files[shard.name] = (os.open(self.folder / shard.name, os.O_RDONLY), array.offset)
            return found

    def _open(self, shard: Shard) -> np.ndarray:
        path = self.folder / shard.name
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise self._error(f"{path} is unreadable or truncated ({exc}); rebuild the store") from exc
        if array.shape != (shard.count, self.dim):
            raise self._error(f"{path} has shape {array.shape}, metadata says ({shard.count}, {self.dim})")
        return array


def overwrite_rows(path: Path, first_id: int, ids: list[int], values: np.ndarray | float = 0) -> None:
    """Overwrites the rows `ids` of the shard at `path` (starting at `first_id`) with `values` ((len(ids), D),
    or zeros: what removal leaves of an image's vector), in place and flushed to disk."""
    array = np.load(path, mmap_mode="r+", allow_pickle=False)
    array[np.asarray(ids, dtype=np.int64) - first_id] = values
    array.flush()
    del array
