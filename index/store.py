"""The embedding store: one folder holding vectors, SQLite metadata and a FAISS index.

    STORE/manifest.json        format, version, model id, preprocessing, dim, count (vector rows),
                               labels, vector sets, and "index": its kind, file and tuned search settings
    STORE/metadata.sqlite      images (id = vector row), skipped files with reasons, shards,
                               removed images (tombstones by content hash, who/when/why)
    STORE/vectors/NNNNNN.npy   the `image` vector set: (n, D) float16 unit-norm shards, rows in id order
                               (removed rows zeroed)
    STORE/vectors-text/        the `text` vector set (format 3): a post's words through the text tower, shards
                               only where images have words (rows without are zero); the words in `texts`
    STORE/index-NNNNNN.faiss   the index the manifest names (see index/ann.py for the kinds)

`Store` is made of parts, each with its own state and tests: `Metadata` (every query), a `VectorSet`
per named vector set (vectors.py), the `IndexFile` (indexfile.py) and, for a store opened for
writing, a `Writer` (writing.py) holding the write lock. Reading is `with Store.open(root) as store`;
writing is `with Store.open_for_writing(root)` or `Store.create_or_resume(...)`. One writer at a time
holds STORE/.writer.lock; readers take no lock and write nothing, whatever the format version they
read (see migrations.py). Nothing reads the whole store into memory: readers go through
memory-mapped shards (`blocks()`, `vector()`) and an index that, when approximate, is memory-mapped.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from . import building, migrations, opening
from .ann import IndexSettings
from .errors import StoreError
from .grouping import Grouping
from .indexfile import IndexFile
from .items import Block, Item, item
from .manifest import ManifestFile
from .metadata import Metadata
from .relabel import Relabel
from .schema import IMAGE, TEXT
from .shards import Shard
from .vectors import BLOCK_ROWS, VectorSet
from .writelock import lock_for_writing
from .writing import Writer


class Store:
    """An open store: `with Store.open(root) as store` to read and search, `Store.open_for_writing` or
    `Store.create_or_resume` to write (add, finish, remove, relabel, reindex)."""

    def __init__(self, root: Path, manifest: ManifestFile, metadata: Metadata, overrides: dict | None = None) -> None:
        # Files read later (shards, a lazily read index) come from the folder `root` named at open, even
        # if a symlink at `root` is re-pointed to another store meanwhile (how a server switches stores).
        folder = Path(root).resolve()
        self.root = root
        self._manifest = manifest
        self._metadata = metadata
        self._sets = {name: VectorSet(name, folder / spec["folder"], int(spec["dim"]), metadata)
                      for name, spec in migrations.vector_sets(manifest.data).items()}
        self._index_file = IndexFile(folder, manifest, self.dim, overrides)
        self._writer: Writer | None = None  # a store opened for writing holds one
        self._live = 0  # images not removed, counted at open and at finish()
        self._pending: set[int] = set()  # removed in SQLite, still in the index (a removal was killed)
        self._close_lock = threading.Lock()  # not closed under a search running on another thread
        self._closed = False

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | Path, model_id: str | None = None, dim: int | None = None, *,
             with_index: bool = True, nprobe: int | None = None, candidates: int | None = None) -> "Store":
        """Gives a store for reading (a context manager), after checking manifest, metadata, vectors and
        index agree. `with_index=False` (training, scoring) leaves the index unread; `nprobe`/`candidates`
        override the approximate index's tuned search settings. Reads older format versions as they are."""
        root = Path(root)
        manifest = opening.manifest_for_reading(root, model_id, dim)
        db = root / "metadata.sqlite"
        if not db.exists():
            raise StoreError(f"{db} is missing; rebuild the store with `cli.py embed`")
        overrides = {k: int(v) for k, v in (("nprobe", nprobe), ("candidates", candidates)) if v}
        metadata = Metadata(db, readonly=True)
        try:
            store = cls(root, manifest, metadata, overrides)
        except BaseException:
            metadata.close()
            raise
        try:
            store._count()
            held = store._live + len(store._metadata.removed_ids())
            if held != store.rows:
                raise StoreError(f"{manifest.path}: manifest counts {store.rows} images but {db} holds "
                                 f"{held}; an embed job did not finish: run it again to complete the store")
            if with_index:
                store._load_index()
        except StoreError:
            store.close()
            raise
        return store

    @classmethod
    def create_or_resume(cls, root: str | Path, model_id: str, dim: int, preprocess: dict,
                         labels: list[str], wait: bool = False) -> "Store":
        """Gives a writable store (a context manager), new or resumed and migrated to this format version,
        holding its write lock until `close()`; refuses one built for another model or labels, or one
        another process is writing (unless `wait`)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        lock = lock_for_writing(root, wait, StoreError)
        metadata = None
        try:
            # The manifest is rewritten at each publish: through the folder the link names now, so that a
            # symlink re-pointed meanwhile (how a server switches stores) never gets this job's manifest.
            manifest = opening.manifest_for_writing(root.resolve() / "manifest.json", model_id, dim, preprocess,
                                                    labels)
            metadata = Metadata(root / "metadata.sqlite", readonly=False)
            migrations.migrate(metadata, manifest, written=manifest.path.exists())
            store = cls(root, manifest, metadata)
            store._writer = Writer(metadata, store._sets[IMAGE], store._index_file, manifest, lock,
                                   store._build_with(None), store.live_blocks, store._sets.get(TEXT))
            store._writer.resume()
            store._count()
            return store
        except BaseException:
            if metadata is not None:
                metadata.close()
            lock.release()
            raise

    @classmethod
    def open_for_writing(cls, root: str | Path, wait: bool = False) -> "Store":
        """Gives an existing store opened for writing (removal, relabelling, reindexing), with its lock."""
        root = Path(root)
        manifest = opening.read_store_manifest(root / "manifest.json")
        return cls.create_or_resume(root, manifest["model_id"], int(manifest["dim"]), manifest.get("preprocess", {}),
                                    list(manifest["labels"]), wait)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------

    @property
    def manifest(self) -> dict:
        """Gives the manifest as this process holds it (a writer's changes are written at `finish()`)."""
        return self._manifest.data

    @manifest.setter
    def manifest(self, data: dict) -> None:
        self._manifest.data = data

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
        return self._metadata.rows_written(IMAGE)

    def shards(self) -> list[Shard]:
        """Gives the committed image shards (name, first_id, count) in id order; files in STORE/vectors/."""
        return self._sets[IMAGE].shards()

    def vectors(self) -> np.ndarray:
        """Gives all (rows, D) float32 vectors in id order (removed rows are zero). Small stores only:
        anything that may meet a large store reads `blocks()`."""
        return self._sets[IMAGE].all()

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Gives the (len(ids), D) float32 stored vectors of `ids` (any order), read where they lie."""
        return self._sets[IMAGE].rows_of(ids)

    def vector(self, image_id: int) -> np.ndarray:
        """Gives one stored (D,) float32 vector by id (read from its shard)."""
        image_id = int(image_id)
        if not self._metadata.present([image_id]):
            raise KeyError(image_id)
        return self.vectors_of(np.array([image_id]))[0]

    def blocks(self, block_rows: int = BLOCK_ROWS, split: str | None = None, first: int = 0) -> Iterator[Block]:
        """Gives the live images (of `split`, or all; with id >= `first`) in id order, a block of at most
        `block_rows` at a time, each block's vectors read from one memory-mapped shard."""
        return self._sets[IMAGE].blocks(block_rows, split, first)

    # ---- a post's words -------------------------------------------------------------------------

    @property
    def has_texts(self) -> bool:
        """Tells whether this store can hold words (format 3 on); `text_count()` says how many images have."""
        return TEXT in self._sets

    def text_count(self) -> int:
        """Gives the number of live images with words (a caption or text read in the image)."""
        return self._metadata.text_count()

    def text_vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Gives the (len(ids), D) float32 text vectors of `ids`: unit-norm, or zero for an image without words."""
        ids = np.asarray(ids, np.int64)
        if TEXT not in self._sets:
            return np.zeros((len(ids), self.dim), np.float32)
        return self._sets[TEXT].rows_of(ids)

    def texts(self, ids: list[int]) -> list[dict | None]:
        """Gives, per id, {"caption", "ocr": [{"text", "score", "box"}]} or None (no words stored)."""
        found = self._metadata.texts([int(i) for i in ids])
        return [None if int(i) not in found else
                {"caption": found[int(i)][0], "ocr": json.loads(found[int(i)][1]) if found[int(i)][1] else []}
                for i in ids]

    def shards_without_texts(self) -> list[Shard]:
        """Gives the image shards none of whose images has words stored (what a backfill may add words to)."""
        covered = self._sets[TEXT].covered() if TEXT in self._sets else set()
        return [s for s in self.shards() if s.first_id not in covered]

    def add_texts(self, first_id: int, texts: dict[int, tuple[str | None, str | None]],
                  text_vectors: np.ndarray) -> None:
        """Adds words (id -> (caption, OCR lines as JSON)) and their (count, D) text vectors to the images of
        the image shard starting at `first_id` (see `shards_without_texts`), in one commit."""
        self._writing().add_texts(first_id, texts, text_vectors)

    # ---- clips ---------------------------------------------------------------------------------

    def clips(self, ids: list[int]) -> list[dict | None]:
        """Gives, per id, {"format", "duration_ms", "frame_count", "frames_used"} for a clip (an animation or
        video, whose vector pools its frames'), None for a still image."""
        found = self._metadata.clips([int(i) for i in ids])
        return [found.get(int(i)) for i in ids]

    def clip_count(self) -> int:
        """Gives the number of live images that are clips."""
        return self._metadata.clip_count()

    def rewrite_as_clips(self, vectors: dict[int, np.ndarray], clips: dict[int, dict]) -> None:
        """Replaces stored images' vectors (id -> (D,) unit-norm) by their clips' pooled vectors and records
        the clips (id -> as `clips` gives): the same ids, labels and words; see `Writer.rewrite_as_clips`."""
        self._writing().rewrite_as_clips(vectors, clips)

    def live_ids(self) -> np.ndarray:
        """Gives the (N,) int64 ids of the live images, ascending."""
        return np.asarray(self._metadata.live_ids(), np.int64)

    def live_blocks(self, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Gives (ids (n,) int64, vectors (n, D) float32) blocks of the live images with id >= `first`."""
        for block in self.blocks(first=first):
            yield block.ids, block.vectors

    def items(self, ids: list[int] | None = None) -> list[Item]:
        """Gives metadata for `ids` (in that order), or for every image in id order; raises KeyError
        for an id that is not (or no longer) in the store."""
        if ids is None:
            return [item(r) for r in self._metadata.item_rows()]
        ids = [int(i) for i in ids]
        found = {r[0]: item(r) for r in self._metadata.item_rows(ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return [found[i] for i in ids]

    def skipped(self) -> list[tuple[str, str]]:
        """Gives (path, reason) for every file the embed jobs could not use."""
        return [(path, reason) for path, _, reason in self._metadata.skipped()]

    def skipped_hashes(self) -> list[tuple[str, str | None, str]]:
        """Gives (path, sha256 or None, reason) for every file the embed jobs could not use."""
        return self._metadata.skipped()

    def file_sizes(self) -> dict[str, int]:
        """Gives each embedded image's size in bytes, by path."""
        return self._metadata.file_sizes()

    def known_hashes(self, tombstones: bool = True) -> set[str]:
        """Gives the content hashes an embed job must not add: already embedded, already refused for their
        own content, and (unless `tombstones` is False: embed --allow-readd) removed from the store."""
        return self._metadata.known_hashes(tombstones)

    def find(self, sha256: str) -> int | None:
        """Gives the id of the stored image with this content hash, or None."""
        return self._metadata.find(sha256)

    def lookup(self, column: str, values: list) -> list[tuple]:
        """Gives (value, id) for the live images whose `column` (id, sha256 or path) is one of `values`."""
        return self._metadata.ids_by(column, values)

    def removed(self) -> list[dict]:
        """Gives the removal log: id, sha256, removed_at (UTC, ISO 8601), removed_by, reason."""
        return self._metadata.removed_log()

    def grouping(self) -> Grouping | None:
        """Gives what the last near-duplicate grouping did (None: never grouped, or before 0.4)."""
        record = self.manifest.get("near_duplicates")
        found = record.get("grouping") if isinstance(record, dict) else None
        return Grouping.from_json({"threshold": record.get("threshold"), **found}) if found else None

    # ---- search ----------------------------------------------------------------------------

    @property
    def search_overrides(self) -> dict:
        """Gives the search settings given to `Store.open` (nprobe, candidates), to open it again alike."""
        return dict(self._index_file.overrides)

    @property
    def index_settings(self) -> IndexSettings:
        """Gives the index kind, file and search settings the manifest records (with open's overrides)."""
        return self._index_file.settings

    @property
    def index(self) -> "faiss.Index | None":
        """Gives the index as loaded for search (None until the first search, or when not loaded)."""
        return self._index_file.index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gives (scores, ids), each (Q, min(k, live images)), best first, for (Q, D) unit-norm queries;
        the scores are exact cosines, whatever the index kind. Only live images answer; a row with
        fewer hits (an approximate index, or removals since it was read) ends in id -1, score -inf."""
        if self._index_file.index is None:
            self._load_index()
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        # Over-fetch a little: images removed by another process since this index was read are
        # dropped below (their rows left SQLite at once; the index file follows at its next publish).
        return self._index_file.search(queries, k, len(self._pending) + 8, self.vectors_of, self._metadata.present)

    # ---- writing (a store opened for writing) ------------------------------------------------

    def add(self, rows: list[dict], vectors: np.ndarray, skipped: list[tuple[str, str | None, str]] = (),
            text_vectors: np.ndarray | None = None) -> None:
        """Appends images (dicts with path, sha256, labels, split, width, height, bytes, and split_fixed: False
        when the split came from the hash; optionally caption and ocr, the OCR lines as JSON) and their
        vectors, with `skipped` entries in the same transaction (how a duplicate is never recorded without
        its original). `text_vectors`: the rows' (n, D) text vectors, zero for a row without words."""
        if not rows:
            self.add_skipped(list(skipped))
            return
        self._writing().add(rows, vectors, skipped, text_vectors)

    def add_skipped(self, entries: list[tuple[str, str | None, str]]) -> None:
        """Records (path, sha256 or None, reason) for files that could not be embedded."""
        self._writing().metadata.add_skipped(entries)

    def finish(self, near_duplicate_threshold: float | None = None, index: str | None = None) -> tuple[int, int]:
        """Publishes the index with the new rows (`index`: auto, flat, ivf or a FAISS factory string; None keeps
        the store's choice) so that readers see them, then groups near-duplicates (cosine >= the threshold;
        None: skip) into one split each (Writer.finish); gives (groups, images) moved; `grouping()` tells more."""
        report = self._writing().finish(near_duplicate_threshold, index)
        self._count()
        return report.groups_moved, report.images_moved

    def reindex(self, index: str | None = None, builder: "building.Builder | None" = None) -> IndexSettings:
        """Builds the index anew (kind `index`, or the store's choice), re-trained and re-tuned; gives its
        settings. `builder(store, factory) -> (index, settings)` replaces the single-process build
        (`building.build_for_store`), e.g. to add vectors on a cluster."""
        self._writing().update_index(index, force=True, build=self._build_with(builder))
        self._count()
        return self.index_settings

    def remove(self, ids: list[int], reason: str, by: str) -> list[int]:
        """Removes images for good: gone from search, metadata, scoring and training, vector rows zeroed,
        content hashes kept as tombstones (with `by`, the time and `reason`) so that a later embed does not
        add them again. Gives the ids removed; raises KeyError for an unknown id."""
        ids = sorted({int(i) for i in ids})
        items = self.items(ids)
        self._writing().remove(items, reason, by)
        self._count()
        return ids

    def relabel(self, entries: list[Relabel]) -> dict:
        """Sets labels (and splits) of the images `entries` name, in one transaction, nothing re-embedded; gives
        {"changed", "unchanged", "unknown"} counts; ValueError, changing nothing, for an unknown label or split."""
        return self._writing().relabel(entries)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Closes the database and drops the index; a writer first leaves WAL mode (so that readers need
        no -wal/-shm files and the store opens from read-only media), then gives up the write lock."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._metadata.close()
        self._index_file.close()
        for vector_set in self._sets.values():
            vector_set.close()
        if self._writer is not None:
            self._writer.release()

    # ---- private ----------------------------------------------------------------------------

    def _writing(self) -> Writer:
        if self._writer is None:
            raise StoreError(f"store {self.root} is open for reading; open it with Store.open_for_writing to change it")
        return self._writer

    def _count(self) -> None:
        self._live = self._metadata.live_count()
        self._pending = set(self._metadata.removed_ids(applied=False))

    def _load_index(self) -> None:
        self._index_file.load(expected=self._live + len(self._pending))

    def _build_with(self, builder: "building.Builder | None"):
        return lambda factory: (builder or building.build_for_store)(self, factory)
