"""The embedding store: one folder holding vectors, SQLite metadata and a FAISS index.

    STORE/manifest.json       format, version, model id, preprocessing, dim, count, labels
    STORE/metadata.sqlite     images (id = vector row), skipped files with reasons, shards
    STORE/vectors/NNNNNN.npy  (n, D) float16 unit-norm shards, rows in id order
    STORE/index.faiss         exact inner-product index over all rows

A shard file is written (atomically) before the rows that point at it are committed, so a
killed job leaves at worst an orphan shard or a temporary file, which the next writer deletes.
The manifest and the index are rewritten only by `finish()`; a store whose rows and manifest
disagree is refused. One writer at a time holds STORE/.writer.lock; readers take no lock.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from emoreact import __version__

from . import metadata
from .atomic import atomic_path, atomic_write_text
from .dedup import near_duplicate_groups, split_moves
from .faults import fault_point
from .manifest import read_manifest
from .search import build_index, search, to_gpu_if_available
from .writelock import lock_for_writing

log = logging.getLogger(__name__)

STORE_FORMAT = "emoreact-store"
STORE_VERSION = 1
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


class Store:
    """An open store. Use `Store.open` to read and search, `Store.create_or_resume` to add."""

    def __init__(self, root: Path, manifest: dict, conn: sqlite3.Connection) -> None:
        self.root = root
        self.manifest = manifest
        self._conn = conn
        self._lock = threading.Lock()  # one connection shared by server threads
        self._index: faiss.Index | None = None
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
        return store

    @classmethod
    def open(cls, root: str | Path, model_id: str | None = None, dim: int | None = None) -> "Store":
        """Gives a store for reading, after checking manifest, metadata, vectors and index agree."""
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
        try:
            rows = store._scalar("SELECT COUNT(*) FROM images")
            if rows != manifest["count"]:
                raise StoreError(f"{manifest_path}: manifest counts {manifest['count']} images but {db} holds "
                                 f"{rows}; an embed job did not finish: run it again to complete the store")
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

    def __len__(self) -> int:
        """Gives the number of images readers see: the manifest's count (checked against the rows at open;
        a writer's new rows count from its next `finish()`). No query: predict and /healthz ask often."""
        return int(self.manifest["count"])

    def vectors(self) -> np.ndarray:
        """Gives all (N, D) float32 unit-norm vectors in id order."""
        shards = self._query("SELECT name, first_id, count FROM shards ORDER BY first_id")
        parts, expected = [], 0
        for name, first_id, count in shards:
            path = self.root / "vectors" / name
            if first_id != expected:
                raise StoreError(f"{path}: starts at id {first_id}, expected {expected}; the store is damaged")
            try:
                block = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path} is unreadable or truncated ({exc}); rebuild the store") from exc
            if block.shape != (count, self.dim):
                raise StoreError(f"{path} has shape {block.shape}, metadata says ({count}, {self.dim})")
            parts.append(np.asarray(block, dtype=np.float32))
            expected += count
        if not parts:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(parts)

    def items(self, ids: list[int] | None = None) -> list[Item]:
        """Gives metadata for `ids` (in that order), or for every image in id order."""
        sql = "SELECT id, path, sha256, labels, split, width, height FROM images"
        if ids is None:
            rows = self._query(sql + " ORDER BY id")
            return [_item(r) for r in rows]
        ids = [int(i) for i in ids]
        found = {r[0]: _item(r) for r in self._query(
            sql + f" WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else {}
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

    def known_hashes(self) -> set[str]:
        """Gives the content hashes already embedded or already refused for their own content."""
        # A "duplicate of" row vouches for a hash only through its original, which a killed job
        # may never have written: counting it would lose that image for good.
        rows = self._query("SELECT sha256 FROM images UNION SELECT sha256 FROM skipped "
                           "WHERE sha256 IS NOT NULL AND reason NOT LIKE 'duplicate of %'")
        return {r[0] for r in rows}

    def vector(self, image_id: int) -> np.ndarray:
        """Gives one stored (D,) float32 vector by id."""
        if self._index is None:
            self._load_index()
        return self._index.reconstruct(int(image_id))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gives (scores, ids), each (Q, min(k, N)), for (Q, D) unit-norm queries."""
        if self._index is None:
            self._load_index()
        return search(self._index, queries, k)

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
        first_id = self._scalar("SELECT COALESCE(MAX(id) + 1, 0) FROM images")
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
        fault_point("after_shard_rows")

    def add_skipped(self, entries: list[tuple[str, str | None, str]]) -> None:
        """Records (path, sha256 or None, reason) for files that could not be embedded."""
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", entries)

    def finish(self, near_duplicate_threshold: float | None = None) -> tuple[int, int]:
        """Rebuilds the FAISS index and rewrites the manifest so that readers see the new rows; first puts
        each group of near-duplicates (cosine >= the threshold; None: skip) in one split. Gives the
        number of (groups, images) moved."""
        vectors = self.vectors()
        index = build_index(vectors)
        moved, checked = (0, 0), self.manifest.get("near_duplicates")
        if near_duplicate_threshold is not None:
            # Rows up to rows_checked were grouped by an earlier job at this threshold: only newer rows search.
            same = isinstance(checked, dict) and checked.get("threshold") == near_duplicate_threshold
            done = int(checked.get("rows_checked", 0)) if same else 0
            moved = self._unite_near_duplicates(index, vectors, near_duplicate_threshold, done)
            checked = {"threshold": near_duplicate_threshold, "rows_checked": len(vectors)}
        with atomic_path(self.root / "index.faiss") as tmp:
            faiss.write_index(index, str(tmp))
            fault_point("during_index_write")
        fault_point("before_manifest")
        self.manifest = {**self.manifest, "count": int(len(vectors)), "package_version": __version__,
                         **({"near_duplicates": checked} if checked else {})}
        atomic_write_text(self.root / "manifest.json", json.dumps(self.manifest, indent=2) + "\n")
        self._index = index
        return moved

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
        if self._writer is not None:
            self._writer.release()

    # ---- private -------------------------------------------------------------------------

    def _load_index(self) -> None:
        path = self.root / "index.faiss"
        if not path.exists():
            raise StoreError(f"{path} is missing; run `cli.py embed` again to rebuild it")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise StoreError(f"{path} is truncated or corrupt; delete it and run `cli.py embed` again "
                             f"to rebuild it ({str(exc).splitlines()[0]})") from exc
        if index.ntotal != self.manifest["count"] or index.d != self.dim:
            raise StoreError(f"{path} holds {index.ntotal} vectors of dim {index.d}, but the manifest says "
                             f"{self.manifest['count']} of dim {self.dim}; run `cli.py embed` again to rebuild it")
        self._index = to_gpu_if_available(index)

    def _unite_near_duplicates(self, index: faiss.Index, vectors: np.ndarray, threshold: float,
                               first_new: int) -> tuple[int, int]:
        groups = near_duplicate_groups(index, vectors, threshold, first_new=first_new)
        members = [int(i) for group in groups for i in group]
        rows = []
        for start in range(0, len(members), 10_000):  # SQLite caps the number of bound parameters
            part = members[start:start + 10_000]
            rows += self._query(f"SELECT id, split, split_fixed FROM images WHERE id IN ({','.join('?' * len(part))})",
                                part)
        moves, moved_groups = split_moves(groups, {r[0]: r[1] for r in rows}, {r[0]: bool(r[2]) for r in rows})
        with self._lock, self._conn:
            self._conn.executemany("UPDATE images SET split = ? WHERE id = ?", [(s, i) for i, s in moves.items()])
        if moves:
            log.info("moved %d near-duplicate images (%d groups) into their group's split", len(moves), moved_groups)
        return moved_groups, len(moves)

    def _drop_temporary_files(self) -> None:
        # Left by a job killed inside an atomic write; at scale a temporary index is gigabytes.
        for path in [*self.root.glob(".*.tmp"), *self.root.glob("vectors/.*.tmp")]:
            log.info("removing %s, left by an interrupted job", path)
            path.unlink(missing_ok=True)

    def _drop_orphan_shards(self) -> None:
        folder = self.root / "vectors"
        known = {r[0] for r in self._query("SELECT name FROM shards")}
        for path in folder.glob("*.npy") if folder.exists() else []:
            if path.name not in known:
                log.info("removing %s, left by an interrupted job", path)
                path.unlink()

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

