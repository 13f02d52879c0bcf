"""The writing role of a store: adding images, finishing (index and split grouping), removing, relabelling.

`Writer` holds the store's write lock and the parts it changes; `Store.create_or_resume` and
`Store.open_for_writing` give a store with one. A removal is committed in SQLite first (readers stop
answering with the image at once) and rolled forward into the shard (the vector row zeroed) and the
index (rewritten without it) by the same call or, if that is killed, by the next writer (`resume`).
"""
from __future__ import annotations

import logging

import faiss
import numpy as np

from . import ann, grouping
from .faults import fault_point
from .grouping import Grouping
from .indexfile import Blocks, Build, IndexFile
from .manifest import ManifestFile
from .metadata import Metadata
from .relabel import Relabel
from .vectors import VectorSet
from .writelock import WriterLock

log = logging.getLogger(__name__)


class Writer:
    """Writes one store through its parts: `metadata`, the image `vectors`, the `index_file` and the `manifest`,
    and the `texts` vector set (a post's words; None for a store that has none, which is then read-only).

    `build(factory)` builds a new index over the live images and `blocks(first)` gives the live
    (ids, vectors) from an id on: the store's reading side, lent so that the index can be made."""

    def __init__(self, metadata: Metadata, vectors: VectorSet, index_file: IndexFile, manifest: ManifestFile,
                 lock: WriterLock, build: Build, blocks: Blocks, texts: VectorSet | None = None) -> None:
        self.metadata, self.vectors, self.index_file, self.manifest = metadata, vectors, index_file, manifest
        self.texts = texts
        self._lock = lock
        self._build, self._blocks = build, blocks

    def resume(self) -> None:
        """Clears what a killed job left (orphan shards, temporary and unused files) and finishes a removal,
        or a backfill's re-embedded clips, killed after its commit."""
        self.vectors.drop_leftovers()
        if self.texts is not None:
            self.texts.drop_leftovers()
        for path in self.index_file.folder.glob(".*.tmp"):  # at scale a temporary index is gigabytes
            log.info("removing %s, left by an interrupted job", path)
            path.unlink(missing_ok=True)
        self.index_file.drop_unused()
        if self.metadata.removed_ids(applied=False):
            self.apply_removals()
        self.index_clips()

    def add(self, rows: list[dict], vectors: np.ndarray, skipped: list[tuple],
            text_vectors: np.ndarray | None = None) -> None:
        """Appends images and their vectors as one shard (file first, then its rows and `skipped`, committed).
        With `text_vectors` (rows of zeros for images without words) their words go in the same commit."""
        if vectors.shape != (len(rows), self.vectors.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(rows)}, {self.vectors.dim})")
        first = self.metadata.rows_written(self.vectors.name)
        text_shard = None
        if text_vectors is not None and np.any(text_vectors):
            if text_vectors.shape != vectors.shape:
                raise ValueError(f"text vectors have shape {text_vectors.shape}, expected {vectors.shape}")
            text_shard = self._text_set().write(first, text_vectors)
        shard = self.vectors.write(first, vectors)
        self.metadata.add(shard, rows, list(skipped), self.vectors.name, text_shard)
        self.vectors.changed()
        if text_shard is not None:
            self.texts.changed()
        fault_point("after_shard_rows")

    def add_texts(self, first_id: int, texts: dict[int, tuple[str | None, str | None]],
                  text_vectors: np.ndarray) -> None:
        """Adds words to the images of the image shard starting at `first_id`, which has none yet: its text
        shard (rows of zeros where an image has no words) first, then the words, committed together."""
        if first_id in self._text_set().covered():
            raise ValueError(f"the images from id {first_id} on have words already")
        shard = self._text_set().write(first_id, text_vectors)
        self.metadata.add_texts(shard, texts)
        self.texts.changed()

    def _text_set(self) -> VectorSet:
        if self.texts is None:
            raise ValueError("this store has no text vector set; open it with Store.open_for_writing, "
                             "which migrates it to the current format")
        return self.texts

    def relabel(self, entries: list[Relabel]) -> dict:
        return self.metadata.relabel(list(self.manifest.data["labels"]), entries)

    def update_index(self, choice: str | None, force: bool, build: Build | None = None) -> None:
        """Brings the index up to date with every committed row (anew when `force`) and publishes it."""
        choice = choice or self.manifest.data.get("index_choice", "auto")
        rows = self.metadata.rows_written(self.vectors.name)
        index, settings = self.index_file.update(rows, self.metadata.live_count(), choice, force,
                                                 build or self._build, self._blocks,
                                                 len(self.metadata.removed_ids()))
        self.index_file.publish(index, settings, rows, {"index_choice": choice})

    def finish(self, threshold: float | None, choice: str | None) -> Grouping:
        """Updates and publishes the index, then groups near-duplicates of the rows not yet grouped at
        `threshold` (None: no grouping) into one split each; gives what the grouping did.

        Grouping comes after the index because an approximate index is what finds the near-duplicates
        of a large store; a kill in between leaves the rows unchecked in the manifest, and the next
        `finish` groups them."""
        self.update_index(choice, force=False)
        if threshold is None:
            return Grouping()
        rows = self.metadata.rows_written(self.vectors.name)
        checked = self.manifest.data.get("near_duplicates")
        # Rows up to rows_checked were grouped by an earlier job at this threshold: only newer rows search.
        same = isinstance(checked, dict) and checked.get("threshold") == threshold
        done = int(checked.get("rows_checked", 0)) if same else 0
        if done >= rows:
            return Grouping()
        if self.index_file.settings.approximate:  # the store's own index proposes, the shards verify
            find = grouping.index_finder(self.index_file.serving_copy(), self.vectors.rows_of, threshold, rows, done)
        else:  # a Flat index holds every vector in memory anyway (up to 200,000 unless asked for)
            find = grouping.exact_finder(self.vectors.all(), threshold, done)
        moves, report = grouping.group(find, self.metadata.splits_of, done, self.metadata.live_count(), threshold)
        self.metadata.set_splits(moves)
        fault_point("before_near_duplicates_recorded")
        self.manifest.write({**self.manifest.data, "near_duplicates": {
            "threshold": threshold, "rows_checked": rows, "grouping": report.to_json()}})
        return report

    def remove(self, items: list, reason: str, by: str) -> None:
        """Commits the removal of `items` (Item), then applies it to the shards and the index."""
        self.metadata.remove(items, reason, by)
        fault_point("after_remove_commit")
        self.apply_removals()

    def apply_removals(self) -> None:
        """Zeroes the vector rows of committed removals and takes them out of the index (idempotent)."""
        pending = self.metadata.removed_ids(applied=False)
        if not pending:
            return
        self.vectors.zero_rows(pending)
        if self.texts is not None:
            self.texts.zero_rows(pending)
        settings, index = self.index_file.for_update()
        if index is not None and isinstance(index, faiss.IndexFlatIP) and not isinstance(index, faiss.IndexIDMap2):
            self.update_index(None, force=True)  # ids were positions
        elif index is not None:
            index.remove_ids(np.asarray(pending, np.int64))
            fault_point("during_remove")
            settings = settings.with_(removed_applied=settings.removed_applied + len(pending))
            self.index_file.publish(index, settings, int(self.manifest.data["count"]), {})
        self.metadata.mark_applied(pending)

    def rewrite_as_clips(self, vectors: dict[int, np.ndarray], clips: dict[int, dict]) -> None:
        """Overwrites stored images' vectors with their clips' pooled vectors (id -> (D,)), records the clips
        (id -> format, duration_ms, frame_count, frames_used) and puts the new vectors in the index.

        Each step may be redone: a run killed after the rows are written but before the commit writes the
        same rows again; one killed after the commit finds the clips marked not indexed (`index_clips`)."""
        ids = sorted(vectors)
        self.vectors.set_rows(ids, np.stack([vectors[i] for i in ids]))
        fault_point("after_clip_vectors")
        self.metadata.set_clips({i: clips[i] for i in ids})
        fault_point("after_clip_commit")
        self.index_clips()

    def index_clips(self) -> None:
        """Puts the rewritten vectors of clips the index does not hold yet into it (idempotent)."""
        pending = self.metadata.clips_not_indexed()
        if not pending:
            return
        settings, index = self.index_file.for_update()
        if index is not None and isinstance(index, faiss.IndexFlatIP) and not isinstance(index, faiss.IndexIDMap2):
            self.update_index(None, force=True)  # ids are positions: the flat index is built again
        elif index is not None:
            ids = np.asarray(pending, np.int64)
            index.remove_ids(ids)
            ann.add_blocks(index, [(ids, self.vectors.rows_of(ids))])
            self.index_file.publish(index, settings, int(self.manifest.data["count"]), {})
        self.metadata.mark_clips_indexed(pending)

    def release(self) -> None:
        """Gives up the write lock (after the metadata is closed)."""
        self._lock.release()
