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

import datetime
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from emoreact import __version__

from . import ann, building, metadata
from .ann import IndexSettings
from .atomic import atomic_path, atomic_write_text
from .dedup import EXACT_UP_TO, near_duplicate_groups, split_moves
from .faults import fault_point
from .manifest import read_manifest
from .relabel import Relabel, apply_relabels
from .search import build_index, search, to_gpu_if_available
from .shards import Shard, ShardReader, overwrite_rows
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


class Store:
    """An open store. Use `Store.open` to read and search, `Store.create_or_resume` to add."""

    def __init__(self, root: Path, manifest: dict, conn: sqlite3.Connection) -> None:
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

    @property
    def index_settings(self) -> IndexSettings:
        """Gives the index kind, file and search settings the manifest records (with open's overrides)."""
        data = self.manifest.get("index")
        settings = (IndexSettings.from_json(data) if data else
                    IndexSettings("Flat", "index.faiss", indexed_rows=self.rows))  # stores before 0.3
        return settings.with_(**self._overrides) if self._overrides else settings

    def vectors(self) -> np.ndarray:
        """Gives all (rows, D) float32 vectors in id order (removed rows are zero). Small stores only:
        anything that may meet a large store reads `blocks()`."""
        reader = self._shards()
        if not reader.shards:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([np.asarray(reader.block(s), dtype=np.float32) for s in reader.shards])

    def blocks(self, block_rows: int = BLOCK_ROWS, split: str | None = None) -> Iterator[Block]:
        """Gives the live images (of `split`, or all) in id order, a block of at most `block_rows` at a time,
        each block's vectors read from one memory-mapped shard."""
        reader = self._shards()
        for shard in reader.shards:
            mapped = reader.scan(shard)  # dropped at the next shard: a pass keeps one shard mapped, not the store
            for start in range(shard.first_id, shard.first_id + shard.count, block_rows):
                stop = min(start + block_rows, shard.first_id + shard.count)
                sql = "SELECT id, path, labels, split FROM images WHERE id >= ? AND id < ?"
                params: list = [start, stop]
                if split is not None:
                    sql, params = sql + " AND split = ?", params + [split]
                rows = self._query(sql + " ORDER BY id", params)
                if not rows:
                    continue
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                vectors = np.asarray(mapped[ids - shard.first_id], dtype=np.float32)
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

    def removed(self) -> list[dict]:
        """Gives the removal log: id, sha256, removed_at (UTC, ISO 8601), removed_by, reason."""
        if not self._has_table("removed"):
            return []
        keys = ("id", "sha256", "removed_at", "removed_by", "reason")
        return [dict(zip(keys, row)) for row in
                self._query(f"SELECT {', '.join(keys)} FROM removed ORDER BY removed_at, id")]

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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gives (scores, ids), each (Q, min(k, live images)), best first, for (Q, D) unit-norm queries;
        the scores are exact cosines, whatever the index kind."""
        if self._index is None:
            self._load_index()
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        settings, extra = self.index_settings, len(self._pending)
        if settings.approximate:
            scores, ids = ann.search(self._index, settings, queries, k + extra, self._shards().rows_of)
        else:
            scores, ids = search(self._index, queries, k + extra)
        if extra:  # a killed removal not yet rolled forward: its images are gone for readers already
            keep = ~np.isin(ids, list(self._pending))
            scores = np.stack([s[m][:k] for s, m in zip(scores, keep)])
            ids = np.stack([i[m][:k] for i, m in zip(ids, keep)])
        return scores[:, :k], ids[:, :k]

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

    def finish(self, near_duplicate_threshold: float | None = None, index: str | None = None) -> tuple[int, int]:
        """Brings the index up to date and rewrites the manifest so that readers see the new rows; first puts
        each group of near-duplicates (cosine >= the threshold; None: skip) in one split. The index gets
        only the new rows, unless its kind changes (`index`: auto, flat, ivf or a FAISS factory string;
        None keeps the store's choice) or it has outgrown its training (see index/building.py). Gives the
        number of (groups, images) moved."""
        rows = self._scalar("SELECT COALESCE(MAX(first_id + count), 0) FROM shards")
        moved, checked = (0, 0), self.manifest.get("near_duplicates")
        if near_duplicate_threshold is not None:
            # Rows up to rows_checked were grouped by an earlier job at this threshold: only newer rows search.
            same = isinstance(checked, dict) and checked.get("threshold") == near_duplicate_threshold
            done = int(checked.get("rows_checked", 0)) if same else 0
            if done < rows:
                moved = self._unite_near_duplicates(near_duplicate_threshold, done)
            checked = {"threshold": near_duplicate_threshold, "rows_checked": rows}
        self._update_index(rows, index or self.manifest.get("index_choice", "auto"), force=False,
                           extra={"near_duplicates": checked} if checked else {})
        return moved

    def reindex(self, index: str | None = None) -> IndexSettings:
        """Builds the index anew (kind `index`, or the store's choice), re-trained and re-tuned; gives its settings."""
        rows = self._scalar("SELECT COALESCE(MAX(first_id + count), 0) FROM shards")
        self._update_index(rows, index or self.manifest.get("index_choice", "auto"), force=True)
        return self.index_settings

    def remove(self, ids: list[int], reason: str, by: str) -> list[int]:
        """Removes images for good: gone from search, metadata, scoring and training, their vector rows
        zeroed, their content hashes kept as tombstones (with `by`, the time and `reason`) so that a
        later embed does not add them again. Gives the ids removed; raises KeyError for an unknown id."""
        ids = sorted({int(i) for i in ids})
        items = self.items(ids)
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        hashes = [(it.sha256,) for it in items]
        with self._lock, self._conn:
            self._conn.executemany("INSERT INTO removed (id, sha256, removed_at, removed_by, reason, applied) "
                                   "VALUES (?, ?, ?, ?, ?, 0)", [(it.id, it.sha256, when, by, reason) for it in items])
            self._conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])
            # other paths with the same content were recorded as its duplicates: no trace of them either
            self._conn.executemany("DELETE FROM skipped WHERE sha256 = ?", hashes)
        self._live -= len(ids)
        fault_point("after_remove_commit")
        self._apply_removals()
        return ids

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

    def _update_index(self, rows: int, choice: str, force: bool, extra: dict | None = None) -> None:
        self._live = self._scalar("SELECT COUNT(*) FROM images")
        target = ann.factory_for(choice, self._live, self.dim)
        settings, index = self._current_index_for_update()
        # auto keeps an approximate index's list count until it must be re-trained anyway
        keep = settings is not None and choice == "auto" and settings.approximate and not ann.is_flat(target)
        factory = settings.factory if keep else target
        why = "reindex" if force else building.needs_full_build(settings, index, factory, rows)
        if why is not None:
            factory = target
        if why is None and settings.indexed_rows == rows:
            pass  # nothing new: the index stays as it is
        elif why is None:
            settings = building.add_new_rows(index, settings, rows, self._live_blocks(settings.indexed_rows))
        else:
            log.info("building a %s index over %d images (%s)", factory, self._live, why)
            index, settings = building.build(factory, self.dim, rows, self._live_ids(), self._live_blocks,
                                             self._shards().rows_of)
            settings = settings.with_(removed_applied=self._scalar("SELECT COUNT(*) FROM removed"))
        self._publish(index, settings, rows, {"index_choice": choice, **(extra or {})})

    def _current_index_for_update(self) -> tuple[IndexSettings | None, faiss.Index | None]:
        settings = self.index_settings if self.rows or self.manifest.get("index") else None
        if settings is None or not (self.root / settings.file).exists():
            return None, None
        try:  # in memory (not mapped): it is about to change
            return settings, faiss.read_index(str(self.root / settings.file))
        except RuntimeError:
            log.warning("%s is unreadable; building the index anew", self.root / settings.file)
            return None, None

    def _publish(self, index: faiss.Index, settings: IndexSettings, rows: int, extra: dict) -> None:
        old = self.index_settings.file if self.manifest.get("index") or self.rows else None
        name = _next_index_name(old)
        with atomic_path(self.root / name) as tmp:
            faiss.write_index(index, str(tmp))
            fault_point("during_index_write")
        fault_point("before_manifest")
        self.manifest = {**self.manifest, **extra, "count": int(rows), "package_version": __version__,
                         "index": settings.with_(file=name).to_json()}
        atomic_write_text(self.root / "manifest.json", json.dumps(self.manifest, indent=2) + "\n")
        self._live = self._scalar("SELECT COUNT(*) FROM images")
        self._pending = set()
        self._index = None  # read again, as readers do, on the next search
        self._drop_unused_index_files()

    def _apply_removals(self) -> None:
        """Zeroes the vector rows of committed removals and takes them out of the index (idempotent)."""
        pending = self._removed_ids(applied=0)
        if not pending:
            return
        reader = self._shards()
        for shard in reader.shards:
            mine = [i for i in pending if shard.first_id <= i < shard.first_id + shard.count]
            if mine:
                overwrite_rows(self.root / "vectors" / shard.name, shard.first_id, mine)
        self._reader = None
        settings, index = self._current_index_for_update()
        rows = self.rows
        if index is not None and isinstance(index, faiss.IndexFlatIP) and not isinstance(index, faiss.IndexIDMap2):
            self._update_index(rows, self.manifest.get("index_choice", "auto"), force=True)  # ids were positions
        elif index is not None:
            index.remove_ids(np.asarray(pending, np.int64))
            fault_point("during_remove")
            self._publish(index, settings.with_(removed_applied=settings.removed_applied + len(pending)), rows, {})
        with self._lock, self._conn:
            self._conn.executemany("UPDATE removed SET applied = 1 WHERE id = ?", [(i,) for i in pending])

    def _load_index(self) -> None:
        settings = self.index_settings
        path = self.root / settings.file
        if not path.exists():
            raise StoreError(f"{path} is missing; run `cli.py reindex --store {self.root}` to rebuild it")
        try:
            index = ann.read(str(path), settings, for_serving=True)
        except RuntimeError as exc:
            raise StoreError(f"{path} is truncated or corrupt; run `cli.py reindex --store {self.root}` "
                             f"to rebuild it ({str(exc).splitlines()[0]})") from exc
        expected = self._live + len(self._pending)
        if index.ntotal != expected or index.d != self.dim:
            raise StoreError(f"{path} holds {index.ntotal} vectors of dim {index.d}, but the store has "
                             f"{expected} of dim {self.dim}; run `cli.py reindex --store {self.root}` to rebuild it")
        self._index = index if settings.approximate else to_gpu_if_available(index)

    def _live_ids(self) -> np.ndarray:
        rows = self._query("SELECT id FROM images ORDER BY id")
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def _live_blocks(self, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in self.blocks():
            if block.ids[-1] >= first:
                keep = block.ids >= first
                yield block.ids[keep], block.vectors[keep]

    def _shards(self) -> ShardReader:
        if self._reader is None:
            shards = [Shard(*row) for row in self._query("SELECT name, first_id, count FROM shards ORDER BY first_id")]
            self._reader = ShardReader(self.root / "vectors", shards, self.dim, StoreError)
        return self._reader

    def _unite_near_duplicates(self, threshold: float, first_new: int) -> tuple[int, int]:
        vectors = self.vectors()  # near-duplicate grouping still needs every vector in memory (see README)
        exact = build_index(vectors) if len(vectors) <= EXACT_UP_TO else None
        groups = near_duplicate_groups(exact, vectors, threshold, first_new=first_new)
        members = [int(i) for group in groups for i in group]
        rows = []
        for start in range(0, len(members), 10_000):  # SQLite caps the number of bound parameters
            part = members[start:start + 10_000]
            rows += self._query(f"SELECT id, split, split_fixed FROM images WHERE id IN ({','.join('?' * len(part))})",
                                part)
        present = {r[0] for r in rows}  # removed rows (zero vectors) join no group; this is a safeguard
        groups = [g for g in (np.array([i for i in group if i in present]) for group in groups) if len(g) > 1]
        moves, moved_groups = split_moves(groups, {r[0]: r[1] for r in rows}, {r[0]: bool(r[2]) for r in rows})
        with self._lock, self._conn:
            self._conn.executemany("UPDATE images SET split = ? WHERE id = ?", [(s, i) for i, s in moves.items()])
        if moves:
            log.info("moved %d near-duplicate images (%d groups) into their group's split", len(moves), moved_groups)
        return moved_groups, len(moves)

    # ---- private: files and queries -----------------------------------------------------------

    def _drop_temporary_files(self) -> None:
        # Left by a job killed inside an atomic write; at scale a temporary index is gigabytes.
        for path in [*self.root.glob(".*.tmp"), *self.root.glob("vectors/.*.tmp")]:
            log.info("removing %s, left by an interrupted job", path)
            path.unlink(missing_ok=True)
        self._drop_unused_index_files()

    def _drop_unused_index_files(self) -> None:
        # Readers that opened an older index keep it mapped: on POSIX the data lives until they close it.
        current = self.index_settings.file if (self.manifest.get("index") or self.rows) else None
        for path in [*self.root.glob("index-*.faiss"), self.root / "index.faiss"]:
            if path.exists() and path.name != current:
                log.info("removing %s, an index no longer in use", path)
                path.unlink(missing_ok=True)

    def _drop_orphan_shards(self) -> None:
        folder = self.root / "vectors"
        known = {r[0] for r in self._query("SELECT name FROM shards")}
        for path in folder.glob("*.npy") if folder.exists() else []:
            if path.name not in known:
                log.info("removing %s, left by an interrupted job", path)
                path.unlink()

    def _removed_ids(self, applied: int | None) -> list[int]:
        if not self._has_table("removed"):
            return []
        where = "" if applied is None else f" WHERE applied = {int(applied)}"
        return [r[0] for r in self._query("SELECT id FROM removed" + where + " ORDER BY id")]

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


def _next_index_name(current: str | None) -> str:
    generation = 0
    if current and current.startswith("index-") and current.endswith(".faiss"):
        generation = int(current[len("index-"):-len(".faiss")])
    return f"index-{generation + 1:06d}.faiss"


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

