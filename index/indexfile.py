"""The store's FAISS index file: reading it for serving, searching it, updating and publishing it.

A new index is written under a new name (`index-NNNNNN.faiss`) and published by rewriting the
manifest in one atomic rename, so readers see the old index or the new one, never a mix; the file it
replaces is deleted after (a reader that still maps it keeps its data until it closes it). See
index/ann.py for the kinds and index/building.py for how they are built.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from emoreact import __version__

from . import adaptive, ann, building
from .ann import IndexSettings
from .atomic import atomic_path
from .errors import StoreError
from .faults import fault_point
from .manifest import ManifestFile
from .search import search, to_gpu_if_available

log = logging.getLogger(__name__)

Build = Callable[[str], tuple[faiss.Index, IndexSettings]]  # factory -> (index, settings), over the live images
Blocks = Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]  # first id -> (ids, vectors) blocks from it


class IndexFile:
    """The index the manifest names, in the store folder `folder`: read on first search, replaced by `publish`.

    `overrides` (nprobe, candidates) replace the tuned search settings of an approximate index for
    this process; `dim` is the store's. An index whose manifest record has the adaptive rule's settings
    (`far_below`, index/adaptive.py) searches again, wider, the queries unlike the stored rows."""

    def __init__(self, folder: Path, manifest: ManifestFile, dim: int, overrides: dict | None = None) -> None:
        self.folder, self.dim = folder, dim
        self._manifest = manifest
        self.overrides = dict(overrides or {})
        self.index: faiss.Index | None = None  # the served index, once loaded

    @property
    def settings(self) -> IndexSettings:
        """Gives the index kind, file and search settings the manifest records (with the overrides)."""
        manifest = self._manifest.data
        data = manifest.get("index")
        settings = (IndexSettings.from_json(data) if data else
                    IndexSettings("Flat", "index.faiss", indexed_rows=int(manifest["count"])))  # stores before 0.3
        return settings.with_(**self.overrides) if self.overrides else settings

    def load(self, expected: int) -> None:
        """Reads the index for serving (approximate ones memory-mapped), checking it holds `expected`
        vectors of the store's dim; raises StoreError naming the file and the fix."""
        settings = self.settings
        path = self.folder / settings.file
        fix = f"run `cli.py reindex --store {self._manifest.path.parent}` to rebuild it"
        if not path.exists():
            raise StoreError(f"{path} is missing; {fix}")
        try:
            index = ann.read(str(path), settings, for_serving=True)
        except RuntimeError as exc:
            raise StoreError(f"{path} is truncated or corrupt; {fix} ({str(exc).splitlines()[0]})") from exc
        if index.ntotal != expected or index.d != self.dim:
            raise StoreError(f"{path} holds {index.ntotal} vectors of dim {index.d}, but the store has "
                             f"{expected} of dim {self.dim}; {fix}")
        self.index = index if settings.approximate else to_gpu_if_available(index)

    def search(self, queries: np.ndarray, k: int, extra: int, rows_of: Callable[[np.ndarray], np.ndarray],
               present: Callable[[list[int]], list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Gives (scores, ids), each (Q, k), best first, from the loaded index, keeping only the ids that
        `present(ids)` says are live (a row with fewer ends in id -1, score -inf); `extra` more are fetched
        to make up for those dropped. An approximate index's candidates are re-ranked exactly on
        `rows_of(ids) -> (n, D) float32`."""
        settings = self.settings
        if adaptive.applies(self.index, settings):
            scores, ids = adaptive.search(self.index, settings, queries, k + extra, rows_of)
        elif settings.approximate:
            scores, ids = ann.search(self.index, settings, queries, k + extra, rows_of)
        else:
            scores, ids = search(self.index, queries, k + extra)
        live = np.asarray(present(sorted({int(i) for i in np.asarray(ids).ravel() if i >= 0})), np.int64)
        out_scores = np.full((len(ids), k), -np.inf, np.float32)
        out_ids = np.full((len(ids), k), -1, np.int64)
        for row, (s, i) in enumerate(zip(scores, ids)):
            keep = np.isin(i, live)
            kept = i[keep][:k]
            out_scores[row, :len(kept)], out_ids[row, :len(kept)] = s[keep][:k], kept
        return out_scores, out_ids

    def serving_copy(self) -> faiss.Index:
        """Gives a copy of the index of this process's own (memory-mapped as a server maps it), to search
        with other settings than the served one."""
        return ann.read(str(self.folder / self.settings.file), self.settings, for_serving=True)

    def for_update(self) -> tuple[IndexSettings | None, faiss.Index | None]:
        """Gives (settings, the index read into memory) to change, or (None, None) when there is none yet."""
        manifest = self._manifest.data
        settings = self.settings if manifest["count"] or manifest.get("index") else None
        if settings is None or not (self.folder / settings.file).exists():
            return None, None
        try:  # in memory (not mapped): it is about to change
            return settings, faiss.read_index(str(self.folder / settings.file))
        except RuntimeError:
            log.warning("%s is unreadable; building the index anew", self.folder / settings.file)
            return None, None

    def update(self, rows: int, live: int, choice: str, force: bool, build: Build, new_blocks: Blocks,
               removed: int) -> tuple[faiss.Index, IndexSettings]:
        """Gives (index, settings) over the store's `rows` rows (`live` of them not removed, `removed` removed):
        the current index with the new rows added, or one built anew by `build` (when `force`, when the
        kind `choice` asks for another, or when it has outgrown its training). Publishes nothing."""
        target = ann.factory_for(choice, live, self.dim)
        settings, index = self.for_update()
        # auto keeps an approximate index's list count until it must be re-trained anyway
        keep = settings is not None and choice == "auto" and settings.approximate and not ann.is_flat(target)
        factory = settings.factory if keep else target
        why = "reindex" if force else building.needs_full_build(settings, index, factory, rows)
        if why is None and settings.indexed_rows == rows:
            return index, settings  # nothing new: the index stays as it is
        if why is None:
            return index, building.add_new_rows(index, settings, rows, new_blocks(settings.indexed_rows))
        log.info("building a %s index over %d images (%s)", target, live, why)
        index, settings = build(target)
        return index, settings.with_(removed_applied=removed)

    def publish(self, index: faiss.Index, settings: IndexSettings, rows: int, extra: dict) -> None:
        """Writes `index` under a new name, then the manifest naming it (with `rows` and `extra`); the
        next search reads it again, as readers do."""
        manifest = self._manifest.data
        old = self.settings.file if manifest.get("index") or manifest["count"] else None
        name = _next_name(old)
        with atomic_path(self.folder / name) as tmp:
            faiss.write_index(index, str(tmp))
            fault_point("during_index_write")
        fault_point("before_manifest")
        self._manifest.write({**manifest, **extra, "count": int(rows), "package_version": __version__,
                              "index": settings.with_(file=name).to_json()})
        self.index = None
        self.drop_unused()

    def drop_unused(self) -> None:
        """Deletes index files the manifest does not name (left by a kill, or replaced). Readers that opened
        an older index keep it mapped: on POSIX its data lives until they close it."""
        manifest = self._manifest.data
        current = self.settings.file if (manifest.get("index") or manifest["count"]) else None
        for path in [*self.folder.glob("index-*.faiss"), self.folder / "index.faiss"]:
            if path.exists() and path.name != current:
                log.info("removing %s, an index no longer in use", path)
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self.index = None


def _next_name(current: str | None) -> str:
    generation = 0
    if current and current.startswith("index-") and current.endswith(".faiss"):
        generation = int(current[len("index-"):-len(".faiss")])
    return f"index-{generation + 1:06d}.faiss"
