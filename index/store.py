"""The embedding store: one folder holding vectors, SQLite metadata and a FAISS index.

    STORE/manifest.json        format, version, model id, preprocessing, dim, count (vector rows),
                               labels, and "index": its kind, file and tuned search settings
    STORE/metadata.sqlite      images (id = vector row), skipped files with reasons, shards,
                               removed images (tombstones by content hash, who/when/why)
    STORE/vectors/NNNNNN.npy   (n, D) float16 unit-norm shards, rows in id order (removed rows zeroed)
    STORE/index-NNNNNN.faiss   the index the manifest names (see index/ann.py for the kinds)

A shard file is written (atomically) before the rows that point at it are committed, so a
killed job leaves at worst an orphan shard or a temporary file, which the next writer deletes.
A new index is written under a new name and published by rewriting the manifest (one atomic
rename), so readers see the old index or the new one, never a mix. A removal is committed in
SQLite first (readers stop answering with the image at once) and rolled forward into the shard
and the index by the same call or, if that is killed, by the next writer. One writer at a time
holds STORE/.writer.lock; readers take no lock. Nothing reads the whole store into memory:
readers go through memory-mapped shards (`blocks()`, `vector()`) and an index that, when
approximate, is memory-mapped for serving.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from emoreact import __version__

from . import metadata
from .atomic import atomic_path
from .faults import fault_point
from .indexing import IndexMaintenance
from .removal import Removal
from .manifest import read_manifest
from .relabel import Relabel, apply_relabels
from .shards import Shard, ShardReader
from .writelock import lock_for_writing

log = logging.getLogger(__name__)

STORE_FORMAT = "emoreact-store"
STORE_VERSION = 1
BLOCK_ROWS = 65_536  # rows per block read from the shards: 128 MiB as float32 at D = 512


class StoreError(RuntimeError):
    """The store is missing, damaged or built for another model; the message names the file."""


@dataclass(frozen=True)
class Item:
    """Metadata of one embedded image."""

    id: int
    path: str
    sha256: str
    labels: tuple[str, ...] | None
    split: str
    width: int
    height: int

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.path, "labels": list(self.labels or []), "split": self.split}


@dataclass(frozen=True)
class Block:
    """Up to BLOCK_ROWS live images of one shard, in id order, with their vectors."""

    ids: np.ndarray        # (n,) int64
    vectors: np.ndarray    # (n, D) float32 unit-norm
    labels: list           # tuple[str, ...] or None (unlabelled), per row
    splits: list[str]
    paths: list[str]


class Store(IndexMaintenance, Removal):
    """An open store. Use `Store.open` to read and search, `Store.create_or_resume` to add."""

    def __init__(self, root: Path, manifest: dict, conn: sqlite3.Connection) -> None:
        # Files read later (shards, a lazily read index) come from the folder `root` named at open, even
        # if a symlink at `root` is re-pointed to another store meanwhile (how a server switches stores).
        self._folder = Path(root).resolve()
        self.root = root
        self.manifest = manifest
        self._conn = conn
        self._lock = threading.Lock()  # one connection shared by server threads
        self._index: faiss.Index | None = None
        self._reader: ShardReader | None = None
        self._live = 0  # images not removed, counted at open and at finish()
        self._pending: set[int] = set()  # removed in SQLite, still in the index (a removal was killed)
        self._overrides: dict = {}  # search settings given at open
        self._writer = None  # held by a store opened for writing
        self._closed = False

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def create_or_resume(cls, root: str | Path, model_id: str, dim: int, preprocess: dict,
                         labels: list[str], wait: bool = False) -> "Store":
        """Gives a writable store, new or resumed, holding its write lock until `close()`; refuses one
        built for another model or labels, or one another process is writing (unless `wait`)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        writer = lock_for_writing(root, wait, StoreError)
        try:
            return cls._resume(root, model_id, dim, preprocess, labels, writer)
        except BaseException:
            writer.release()
            raise

    @classmethod
    def open_for_writing(cls, root: str | Path, wait: bool = False) -> "Store":
        """Gives an existing store opened for writing (removal, relabelling, reindexing), with its lock."""
        root = Path(root)
        manifest = _read_manifest(root / "manifest.json")
        return cls.create_or_resume(root, manifest["model_id"], int(manifest["dim"]), manifest.get("preprocess", {}),
                                    list(manifest["labels"]), wait)

    @classmethod
    def _resume(cls, root: Path, model_id: str, dim: int, preprocess: dict, labels: list[str],
                writer) -> "Store":
        manifest_path = root / "manifest.json"
        expected = {"model_id": model_id, "dim": dim, "labels": list(labels)}
        if manifest_path.exists():
            manifest = _read_manifest(manifest_path)
            for key, want in expected.items():
                if manifest[key] != want:
                    raise StoreError(f"{manifest_path}: store holds {key}={manifest[key]!r} but this job uses "
                                     f"{want!r}; embed into a new --store folder")
        else:
            manifest = {"format": STORE_FORMAT, "format_version": STORE_VERSION, **expected,
                        "preprocess": preprocess, "count": 0, "package_version": __version__}
        store = cls(root, manifest, _connect(root / "metadata.sqlite"))
        store._writer = writer
        metadata.add_split_fixed(store._conn)
        store._drop_orphan_shards()
        store._drop_temporary_files()
        store._live = store._scalar("SELECT COUNT(*) FROM images")
        if store._scalar("SELECT COUNT(*) FROM removed WHERE applied = 0"):
            store._apply_removals()  # a removal was killed after its commit: finish it
        return store

    @classmethod
    def open(cls, root: str | Path, model_id: str | None = None, dim: int | None = None, *,
             with_index: bool = True, nprobe: int | None = None, candidates: int | None = None) -> "Store":
        """Gives a store for reading, after checking manifest, metadata, vectors and index agree.
        `with_index=False` (training, scoring) leaves the index unread; `nprobe`/`candidates` override
        the approximate index's tuned search settings."""
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.exists():
            raise StoreError(f"{root} is not an EmoReact store (no manifest.json); build one with `cli.py embed`")
        manifest = _read_manifest(manifest_path)
        if model_id is not None and manifest["model_id"] != model_id:
            raise StoreError(f"{manifest_path}: store was built with model {manifest['model_id']!r}, "
                             f"not {model_id!r}; use the same --model/--pretrained or another store")
        if dim is not None and manifest["dim"] != dim:
            raise StoreError(f"{manifest_path}: store vectors have dim {manifest['dim']}, expected {dim}")
        db = root / "metadata.sqlite"
        if not db.exists():
            raise StoreError(f"{db} is missing; rebuild the store with `cli.py embed`")
        store = cls(root, manifest, _connect(db, readonly=True))
        store._overrides = {k: int(v) for k, v in (("nprobe", nprobe), ("candidates", candidates)) if v}
        try:
            store._live = store._scalar("SELECT COUNT(*) FROM images")
            removed = store._removed_ids(applied=None)
            if store._live + len(removed) != manifest["count"]:
                raise StoreError(f"{manifest_path}: manifest counts {manifest['count']} images but {db} holds "
                                 f"{store._live + len(removed)}; an embed job did not finish: run it again to "
                                 "complete the store")
            store._pending = set(store._removed_ids(applied=0))
            if with_index:
                store._load_index()
        except StoreError:
            store.close()
            raise
        return store

    # ---- reading -------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def rows(self) -> int:
        """Gives the number of vector rows (ids 0 .. rows-1), removed ones included."""
        return int(self.manifest["count"])

    def __len__(self) -> int:
        """Gives the number of images readers see (removed ones not counted), as counted at open or at the
        last `finish()`: no query, since predict and /healthz ask often."""
        return self._live

    def rows_written(self) -> int:
        """Gives the number of vector rows committed so far (a writer's new rows included)."""
        return self._scalar("SELECT COALESCE(MAX(first_id + count), 0) FROM shards")

    def shards(self) -> list[Shard]:
        """Gives the committed vector shards (name, first_id, count) in id order; files in STORE/vectors/."""
        return list(self._shards().shards)

    def vectors(self) -> np.ndarray:
        """Gives all (rows, D) float32 vectors in id order (removed rows are zero). Small stores only:
        anything that may meet a large store reads `blocks()`."""
        reader = self._shards()
        if not reader.shards:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([np.asarray(reader.block(s), dtype=np.float32) for s in reader.shards])

    def blocks(self, block_rows: int = BLOCK_ROWS, split: str | None = None, first: int = 0) -> Iterator[Block]:
        """Gives the live images (of `split`, or all; with id >= `first`) in id order, a block of at most
        `block_rows` at a time, each block's vectors read from one memory-mapped shard."""
        reader = self._shards()
        for shard in reader.shards:
            if shard.first_id + shard.count <= first:
                continue  # e.g. an incremental index update reads only the shards it has not indexed
            mapped = reader.scan(shard)  # dropped at the next shard: a pass keeps one shard mapped, not the store
            for start in range(max(shard.first_id, first), shard.first_id + shard.count, block_rows):
                stop = min(start + block_rows, shard.first_id + shard.count)
                sql = "SELECT id, path, labels, split FROM images WHERE id >= ? AND id < ?"
                params: list = [start, stop]
                if split is not None:
                    sql, params = sql + " AND split = ?", params + [split]
                rows = self._query(sql + " ORDER BY id", params)
                if not rows:
                    continue
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                lo = int(ids[0]) - shard.first_id
                rows_read = (mapped[lo:lo + len(ids)] if int(ids[-1]) - int(ids[0]) + 1 == len(ids)  # no gaps: a slice
                             else mapped[ids - shard.first_id])
                vectors = np.asarray(rows_read, dtype=np.float32)
                yield Block(ids, vectors, [tuple(r[2].split("|")) if r[2] else None for r in rows],
                            [r[3] for r in rows], [r[1] for r in rows])

    def items(self, ids: list[int] | None = None) -> list[Item]:
        """Gives metadata for `ids` (in that order), or for every image in id order; raises KeyError
        for an id that is not (or no longer) in the store."""
        sql = "SELECT id, path, sha256, labels, split, width, height FROM images"
        if ids is None:
            rows = self._query(sql + " ORDER BY id")
            return [_item(r) for r in rows]
        ids = [int(i) for i in ids]
        found = {}
        for start in range(0, len(ids), 10_000):  # SQLite caps the number of bound parameters
            part = ids[start:start + 10_000]
            found.update({r[0]: _item(r) for r in self._query(sql + f" WHERE id IN ({','.join('?' * len(part))})",
                                                              part)})
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return [found[i] for i in ids]

    def skipped(self) -> list[tuple[str, str]]:
        """Gives (path, reason) for every file the embed jobs could not use."""
        return self._query("SELECT path, reason FROM skipped ORDER BY path")

    def skipped_hashes(self) -> list[tuple[str, str | None, str]]:
        """Gives (path, sha256 or None, reason) for every file the embed jobs could not use."""
        return self._query("SELECT path, sha256, reason FROM skipped ORDER BY path")

    def file_sizes(self) -> dict[str, int]:
        """Gives each embedded image's size in bytes, by path."""
        return dict(self._query("SELECT path, bytes FROM images"))

    def known_hashes(self, tombstones: bool = True) -> set[str]:
        """Gives the content hashes an embed job must not add: already embedded, already refused for their
        own content, and (unless `tombstones` is False: embed --allow-readd) removed from the store."""
        # A "duplicate of" row vouches for a hash only through its original, which a killed job
        # may never have written: counting it would lose that image for good.
        sql = ("SELECT sha256 FROM images UNION SELECT sha256 FROM skipped "
               "WHERE sha256 IS NOT NULL AND reason NOT LIKE 'duplicate of %'")
        if tombstones and self._has_table("removed"):
            sql += " UNION SELECT sha256 FROM removed"
        return {r[0] for r in self._query(sql)}

    def find(self, sha256: str) -> int | None:
        """Gives the id of the stored image with this content hash, or None."""
        rows = self._query("SELECT id FROM images WHERE sha256 = ?", (sha256,))
        return int(rows[0][0]) if rows else None

    def vector(self, image_id: int) -> np.ndarray:
        """Gives one stored (D,) float32 vector by id (read from its shard)."""
        image_id = int(image_id)
        if not self._query("SELECT 1 FROM images WHERE id = ?", (image_id,)):
            raise KeyError(image_id)
        return self._shards().rows_of(np.array([image_id]))[0]

    # ---- writing -------------------------------------------------------------------------

    def add(self, rows: list[dict], vectors: np.ndarray, skipped: list[tuple[str, str | None, str]] = ()) -> None:
        """Appends images (dicts with path, sha256, labels, split, width, height, bytes, and split_fixed:
        False when the split came from the hash) and their vectors; commits `skipped` entries (see
        `add_skipped`) in the same transaction, which is how a duplicate is never recorded without its original."""
        if not rows:
            self.add_skipped(list(skipped))
            return
        if vectors.shape != (len(rows), self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(rows)}, {self.dim})")
        first_id = self._scalar("SELECT COALESCE(MAX(first_id + count), 0) FROM shards")  # removed ids stay used
        name = f"{first_id:09d}.npy"
        with atomic_path(self.root / "vectors" / name) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, vectors.astype(np.float16), allow_pickle=False)
            fault_point("during_shard_write")
        fault_point("after_shard_file")
        with self._lock, self._conn:
            self._conn.execute("INSERT INTO shards VALUES (?, ?, ?)", (name, first_id, len(rows)))
            self._conn.executemany(
                "INSERT INTO images (id, path, sha256, labels, split, split_fixed, width, height, bytes, shard) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(first_id + i, r["path"], r["sha256"], "|".join(r["labels"]) if r["labels"] else None,
                  r["split"], int(r.get("split_fixed", True)), r["width"], r["height"], r["bytes"], name)
                 for i, r in enumerate(rows)])
            self._conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", skipped)
        self._reader = None  # a new shard
        fault_point("after_shard_rows")

    def add_skipped(self, entries: list[tuple[str, str | None, str]]) -> None:
        """Records (path, sha256 or None, reason) for files that could not be embedded."""
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", entries)

    def relabel(self, entries: list[Relabel]) -> dict:
        """Sets the labels (and splits, where given) of the images `entries` name by path or SHA-256, in one
        transaction, nothing re-embedded; gives {"changed", "unchanged", "unknown"} entry counts. Raises
        ValueError, changing nothing, for a label or split the store does not know (index/relabel.py)."""
        with self._lock, self._conn:
            return apply_relabels(self._conn, self.labels, entries)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Closes the database and drops the index; a writer first leaves WAL mode (so that readers need
        no -wal/-shm files and the store opens from read-only media), then gives up the write lock."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            metadata.leave_wal(self._conn)
        with self._lock:  # not under a search or query still running on another thread
            self._conn.close()
            self._index = None
            if self._reader is not None:
                self._reader.close()
        if self._writer is not None:
            self._writer.release()

    # ---- private: the index ----------------------------------------------------------------

    def _shards(self) -> ShardReader:
        if self._reader is None:
            shards = [Shard(*row) for row in self._query("SELECT name, first_id, count FROM shards ORDER BY first_id")]
            self._reader = ShardReader(self._folder / "vectors", shards, self.dim, StoreError)
        return self._reader

    # ---- private: files and queries -----------------------------------------------------------

    def _drop_temporary_files(self) -> None:
        # Left by a job killed inside an atomic write; at scale a temporary index is gigabytes.
        for path in [*self.root.glob(".*.tmp"), *self.root.glob("vectors/.*.tmp")]:
            log.info("removing %s, left by an interrupted job", path)
            path.unlink(missing_ok=True)
        self._drop_unused_index_files()

    def _drop_orphan_shards(self) -> None:
        folder = self.root / "vectors"
        known = {r[0] for r in self._query("SELECT name FROM shards")}
        for path in folder.glob("*.npy") if folder.exists() else []:
            if path.name not in known:
                log.info("removing %s, left by an interrupted job", path)
                path.unlink()

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.root / 'metadata.sqlite'} is damaged ({exc}); rebuild the store") from exc

    def _scalar(self, sql: str) -> int:
        return int(self._query(sql)[0][0])



def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    try:
        return metadata.connect(path, readonly)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable SQLite database ({exc}); rebuild the store") from exc


def _read_manifest(path: Path) -> dict:
    return read_manifest(path, "store", STORE_FORMAT, STORE_VERSION, ("model_id", "dim", "count", "labels"), StoreError,
                         "rebuild the store with `cli.py embed`")


def _item(row: tuple) -> Item:
    labels = tuple(row[3].split("|")) if row[3] else None
    return Item(row[0], row[1], row[2], labels, row[4], row[5], row[6])

