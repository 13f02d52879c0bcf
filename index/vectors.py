"""One named vector set of the store: its shard files, written atomically, read memory-mapped.

A store keeps one vector per image in the set named `image` (STORE/vectors/); a later set (captions,
another model) keeps its own shards under its own folder, rows keyed by the same image ids. A shard
file is written (atomically) before the rows that point at it are committed, so a killed job leaves
at worst an orphan shard or a temporary file, which the next writer deletes (`drop_leftovers`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from .atomic import atomic_path
from .errors import StoreError
from .faults import fault_point
from .items import Block, labels_of
from .metadata import Metadata
from .schema import IMAGE
from .shards import Shard, ShardReader, overwrite_rows

log = logging.getLogger(__name__)

BLOCK_ROWS = 65_536  # rows per block read from the shards: 128 MiB as float32 at D = 512


class VectorSet:
    """The shards of the vector set `name`: (rows, dim) float16 unit-norm files in `folder`, rows in id order.

    Which shards exist is the metadata's word (a file it does not name is left by a killed job);
    the reader over them is made on first use and made again after a write."""

    def __init__(self, name: str, folder: Path, dim: int, metadata: Metadata) -> None:
        self.name, self.folder, self.dim = name, folder, dim
        self._metadata = metadata
        self._reader: ShardReader | None = None

    def reader(self) -> ShardReader:
        """Gives the reader over the committed shards (shared between threads)."""
        if self._reader is None:
            self._reader = ShardReader(self.folder, self._metadata.shards(self.name), self.dim, StoreError,
                                       gaps=self.name != IMAGE)
        return self._reader

    def shards(self) -> list[Shard]:
        return list(self.reader().shards)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Gives the (len(ids), D) float32 rows of `ids` (any order), read where they lie."""
        return self.reader().rows_of(ids)

    def all(self) -> np.ndarray:
        """Gives every (rows, D) float32 row in id order (removed rows are zero): small stores only."""
        reader = self.reader()
        if not reader.shards:
            return np.zeros((0, self.dim), np.float32)
        if self.name != IMAGE:  # a set with gaps: up to its last row
            return reader.rows_of(np.arange(reader.shards[-1].first_id + reader.shards[-1].count))
        return np.concatenate([np.asarray(reader.block(s), dtype=np.float32) for s in reader.shards])

    def covered(self) -> set[int]:
        """Gives the first ids of this set's shards (a text shard covers the image shard starting there)."""
        return {s.first_id for s in self.reader().shards}

    def blocks(self, block_rows: int = BLOCK_ROWS, split: str | None = None, first: int = 0) -> Iterator[Block]:
        """Gives the live images (of `split`, or all; with id >= `first`) in id order with their rows of this
        set, a block of at most `block_rows` at a time, each read from one memory-mapped shard."""
        reader = self.reader()
        for shard in reader.shards:
            if shard.first_id + shard.count <= first:
                continue  # e.g. an incremental index update reads only the shards it has not indexed
            mapped = reader.scan(shard)  # dropped at the next shard: a pass keeps one shard mapped, not the store
            for start in range(max(shard.first_id, first), shard.first_id + shard.count, block_rows):
                rows = self._metadata.block_rows(start, min(start + block_rows, shard.first_id + shard.count), split)
                if not rows:
                    continue
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                lo = int(ids[0]) - shard.first_id
                rows_read = (mapped[lo:lo + len(ids)] if int(ids[-1]) - int(ids[0]) + 1 == len(ids)  # no gaps: a slice
                             else mapped[ids - shard.first_id])
                yield Block(ids, np.asarray(rows_read, dtype=np.float32), [labels_of(r[2]) for r in rows],
                            [r[3] for r in rows], [r[1] for r in rows])

    def write(self, first_id: int, vectors: np.ndarray) -> Shard:
        """Writes rows `first_id ..` as a new shard file (float16) and gives it; the caller commits it."""
        # Shard names are unique across sets (the metadata's key): the image set's keep 0.3's plain form.
        prefix = "" if self.name == IMAGE else f"{self.name}-"
        shard = Shard(f"{prefix}{first_id:09d}.npy", first_id, len(vectors))
        with atomic_path(self.folder / shard.name) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, vectors.astype(np.float16), allow_pickle=False)
            fault_point("during_shard_write")
        fault_point("after_shard_file")
        return shard

    def changed(self) -> None:
        """Forgets the reader: shards were committed or rewritten since it was made. (Not closed: a search on
        another thread may still read through it.)"""
        self._reader = None

    def zero_rows(self, ids: list[int]) -> None:
        """Overwrites the rows `ids` with zeros in place, flushed to disk (what removal leaves of a vector)."""
        for shard in self.reader().shards:
            mine = [i for i in ids if shard.first_id <= i < shard.first_id + shard.count]
            if mine:
                overwrite_rows(self.folder / shard.name, shard.first_id, mine)
        self.changed()

    def set_rows(self, ids: list[int], vectors: np.ndarray) -> None:
        """Overwrites the rows `ids` with `vectors` ((len(ids), D)) in place, flushed to disk (a backfill that
        re-embeds stored images: the same rows, so no id changes). Rerunning it writes the same bytes."""
        position = {int(i): n for n, i in enumerate(ids)}
        for shard in self.reader().shards:
            mine = [i for i in position if shard.first_id <= i < shard.first_id + shard.count]
            if mine:
                overwrite_rows(self.folder / shard.name, shard.first_id, mine,
                               np.asarray(vectors, np.float32)[[position[i] for i in mine]])
        self.changed()

    def drop_leftovers(self) -> None:
        """Deletes shard files the metadata does not name, and temporary files: a killed job's leftovers."""
        known = {s.name for s in self._metadata.shards(self.name)}
        if not self.folder.exists():
            return
        for path in [*self.folder.glob("*.npy"), *self.folder.glob(".*.tmp")]:
            if path.name not in known:
                log.info("removing %s, left by an interrupted job", path)
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
