"""The store's index: reading it for serving, searching it, and keeping it up to date.

A mixin of `Store` (index/store.py), kept apart so that each file reads in one sitting. A new index
is written under a new name (`index-NNNNNN.faiss`) and published by rewriting the manifest in one
atomic rename, so readers see the old index or the new one, never a mix; the file it replaces is
deleted after (a reader that still maps it keeps its data until it closes it). See index/ann.py for
the kinds and index/building.py for how they are built.
"""
from __future__ import annotations

import json
import logging
from typing import Iterator

import faiss
import numpy as np

from emoreact import __version__

from . import ann, building
from .ann import IndexSettings
from .atomic import atomic_path, atomic_write_text
from .dedup import (EXACT_UP_TO, groups_from, near_duplicate_groups, range_search_index, split_moves,
                    store_index_neighbours)
from .faults import fault_point
from .search import build_index, search, to_gpu_if_available

log = logging.getLogger(__name__)


class IndexMaintenance:
    """The index half of `Store`: its settings, search, and updates by `finish()` and `reindex()`."""

    @property
    def search_overrides(self) -> dict:
        """Gives the search settings given to `Store.open` (nprobe, candidates), to open it again alike."""
        return dict(self._overrides)

    @property
    def index_settings(self) -> IndexSettings:
        """Gives the index kind, file and search settings the manifest records (with open's overrides)."""
        data = self.manifest.get("index")
        settings = (IndexSettings.from_json(data) if data else
                    IndexSettings("Flat", "index.faiss", indexed_rows=self.rows))  # stores before 0.3
        return settings.with_(**self._overrides) if self._overrides else settings

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gives (scores, ids), each (Q, min(k, live images)), best first, for (Q, D) unit-norm queries;
        the scores are exact cosines, whatever the index kind. Only live images answer; a row with
        fewer hits (an approximate index, or removals since it was read) ends in id -1, score -inf."""
        if self._index is None:
            self._load_index()
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        # Over-fetch a little: images removed by another process since this index was read are
        # dropped below (their rows left SQLite at once; the index file follows at its next publish).
        settings, extra = self.index_settings, len(self._pending) + 8
        if settings.approximate:
            scores, ids = ann.search(self._index, settings, queries, k + extra, self._shards().rows_of)
        else:
            scores, ids = search(self._index, queries, k + extra)
        live = self._present(ids)
        out_scores = np.full((len(ids), k), -np.inf, np.float32)
        out_ids = np.full((len(ids), k), -1, np.int64)
        for row, (s, i) in enumerate(zip(scores, ids)):
            keep = np.isin(i, live)
            kept = i[keep][:k]
            out_scores[row, :len(kept)], out_ids[row, :len(kept)] = s[keep][:k], kept
        return out_scores, out_ids

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Gives those of `ids` that are live images now (one indexed lookup per id)."""
        wanted = sorted({int(i) for i in np.asarray(ids).ravel() if i >= 0})
        found = []
        for start in range(0, len(wanted), 10_000):  # SQLite caps the number of bound parameters
            part = wanted[start:start + 10_000]
            found += [r[0] for r in self._query(f"SELECT id FROM images WHERE id IN ({','.join('?' * len(part))})", part)]
        return np.asarray(found, np.int64)

    def finish(self, near_duplicate_threshold: float | None = None, index: str | None = None) -> tuple[int, int]:
        """Brings the index up to date and rewrites the manifest so that readers see the new rows; then puts
        each group of near-duplicates (cosine >= the threshold; None: skip) in one split. The index gets
        only the new rows, unless its kind changes (`index`: auto, flat, ivf or a FAISS factory string;
        None keeps the store's choice) or it has outgrown its training (see index/building.py). Gives the
        number of (groups, images) moved.

        Grouping comes after the index because an approximate index is what finds the near-duplicates
        of a large store; a kill in between leaves the rows unchecked in the manifest, and the next
        `finish` groups them."""
        rows = self._scalar("SELECT COALESCE(MAX(first_id + count), 0) FROM shards")
        self._update_index(rows, index or self.manifest.get("index_choice", "auto"), force=False)
        checked = self.manifest.get("near_duplicates")
        if near_duplicate_threshold is None:
            return 0, 0
        # Rows up to rows_checked were grouped by an earlier job at this threshold: only newer rows search.
        same = isinstance(checked, dict) and checked.get("threshold") == near_duplicate_threshold
        done = int(checked.get("rows_checked", 0)) if same else 0
        if done >= rows:
            return 0, 0
        moved = self._unite_near_duplicates(near_duplicate_threshold, done, rows)
        fault_point("before_near_duplicates_recorded")
        self._write_manifest({**self.manifest,
                              "near_duplicates": {"threshold": near_duplicate_threshold, "rows_checked": rows}})
        return moved

    def reindex(self, index: str | None = None, builder: "building.Builder | None" = None) -> IndexSettings:
        """Builds the index anew (kind `index`, or the store's choice), re-trained and re-tuned; gives its
        settings. `builder(store, factory) -> (index, settings)` replaces the single-process build
        (`building.build_for_store`), e.g. to add vectors on a cluster (embed/ray_engine.py)."""
        rows = self._scalar("SELECT COALESCE(MAX(first_id + count), 0) FROM shards")
        self._update_index(rows, index or self.manifest.get("index_choice", "auto"), force=True, builder=builder)
        return self.index_settings

    def live_ids(self) -> np.ndarray:
        """Gives the (N,) int64 ids of the live images, ascending."""
        rows = self._query("SELECT id FROM images ORDER BY id")
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def live_blocks(self, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Gives (ids (n,) int64, vectors (n, D) float32) blocks of the live images with id >= `first`."""
        for block in self.blocks(first=first):
            yield block.ids, block.vectors

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Gives the (len(ids), D) float32 stored vectors of `ids` (any order), read where they lie."""
        return self._shards().rows_of(ids)

    def _update_index(self, rows: int, choice: str, force: bool,
                      builder: "building.Builder | None" = None) -> None:
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
            settings = building.add_new_rows(index, settings, rows, self.live_blocks(settings.indexed_rows))
        else:
            log.info("building a %s index over %d images (%s)", factory, self._live, why)
            index, settings = (builder or building.build_for_store)(self, factory)
            settings = settings.with_(removed_applied=self._scalar("SELECT COUNT(*) FROM removed"))
        self._publish(index, settings, rows, {"index_choice": choice})

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
        self._write_manifest({**self.manifest, **extra, "count": int(rows), "package_version": __version__,
                              "index": settings.with_(file=name).to_json()})
        self._live = self._scalar("SELECT COUNT(*) FROM images")
        self._pending = set()
        self._index = None  # read again, as readers do, on the next search
        self._drop_unused_index_files()

    def _write_manifest(self, manifest: dict) -> None:
        self.manifest = manifest
        atomic_write_text(self.root / "manifest.json", json.dumps(manifest, indent=2) + "\n")

    def _load_index(self) -> None:
        settings = self.index_settings
        path = self._folder / settings.file
        if not path.exists():
            raise _store_error()(f"{path} is missing; run `cli.py reindex --store {self.root}` to rebuild it")
        try:
            index = ann.read(str(path), settings, for_serving=True)
        except RuntimeError as exc:
            raise _store_error()(f"{path} is truncated or corrupt; run `cli.py reindex --store {self.root}` "
                             f"to rebuild it ({str(exc).splitlines()[0]})") from exc
        expected = self._live + len(self._pending)
        if index.ntotal != expected or index.d != self.dim:
            raise _store_error()(f"{path} holds {index.ntotal} vectors of dim {index.d}, but the store has "
                             f"{expected} of dim {self.dim}; run `cli.py reindex --store {self.root}` to rebuild it")
        self._index = index if settings.approximate else to_gpu_if_available(index)

    def _unite_near_duplicates(self, threshold: float, first_new: int, rows: int) -> tuple[int, int]:
        find = self._near_duplicate_finder(threshold, rows, first_new)
        # Older rows were grouped by earlier jobs, so an older group already sits in one split: first
        # search from the new rows only. Only where that would move an older row (a new image joins
        # older groups in different splits) must the older groups move whole: then walk them too.
        moves, moved_groups = self._split_moves(find(False))
        if any(i < first_new for i in moves):
            moves, moved_groups = self._split_moves(find(True))
        with self._lock, self._conn:
            self._conn.executemany("UPDATE images SET split = ? WHERE id = ?", [(s, i) for i, s in moves.items()])
        if moves:
            log.info("moved %d near-duplicate images (%d groups) into their group's split", len(moves), moved_groups)
        return moved_groups, len(moves)

    def _near_duplicate_finder(self, threshold: float, rows: int, first_new: int):
        """Gives find(walk_older) -> the near-duplicate groups holding a row >= first_new (see dedup.py)."""
        settings = self.index_settings
        if settings.approximate:
            # The store's own index proposes, the shards verify: nothing reads the whole store. This is
            # the job's own copy of the index (its nprobe changes), memory-mapped as a server maps it.
            index = ann.read(str(self._folder / settings.file), settings, for_serving=True)
            neighbours = store_index_neighbours(index, self.vectors_of, threshold)
            return lambda walk_older: groups_from(neighbours, rows, first_new, walk_older=walk_older)
        vectors = self.vectors()  # a Flat index holds every vector in memory anyway (up to 200,000 unless asked for)
        # built once, for both searches: exact up to EXACT_UP_TO rows, else an IVF over the same rows
        searched = range_search_index(build_index(vectors) if len(vectors) <= EXACT_UP_TO else None, vectors)
        return lambda walk_older: near_duplicate_groups(searched, vectors, threshold, first_new=first_new,
                                                        exact_up_to=len(vectors), walk_older=walk_older)

    def _split_moves(self, groups: list[np.ndarray]) -> tuple[dict[int, str], int]:
        """Gives `split_moves` of `groups`, with the splits stored now (removed rows left out)."""
        members = [int(i) for group in groups for i in group]
        rows = []
        for start in range(0, len(members), 10_000):  # SQLite caps the number of bound parameters
            part = members[start:start + 10_000]
            rows += self._query(f"SELECT id, split, split_fixed FROM images WHERE id IN ({','.join('?' * len(part))})",
                                part)
        present = {r[0] for r in rows}  # removed rows (zero vectors) join no group; this is a safeguard
        groups = [g for g in (np.array([i for i in group if i in present]) for group in groups) if len(g) > 1]
        return split_moves(groups, {r[0]: r[1] for r in rows}, {r[0]: bool(r[2]) for r in rows})

    def _drop_unused_index_files(self) -> None:
        # Readers that opened an older index keep it mapped: on POSIX the data lives until they close it.
        current = self.index_settings.file if (self.manifest.get("index") or self.rows) else None
        for path in [*self.root.glob("index-*.faiss"), self.root / "index.faiss"]:
            if path.exists() and path.name != current:
                log.info("removing %s, an index no longer in use", path)
                path.unlink(missing_ok=True)

def _next_index_name(current: str | None) -> str:
    generation = 0
    if current and current.startswith("index-") and current.endswith(".faiss"):
        generation = int(current[len("index-"):-len(".faiss")])
    return f"index-{generation + 1:06d}.faiss"


def _store_error():
    from .store import StoreError

    return StoreError
