"""The embed job's writer: results in input order -> store rows, shard by shard. Both engines use it.

An engine hands over each record's item (a dict from `read_item`: the content hash and either
`known`, an `error`, or the decoded image's `size` and `bytes`) in the order of the input; the
writer decides which are new originals, which are duplicates and which are skipped, and commits
them exactly as a single process would, so the local and Ray engines write the same store.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np

from emoreact.index import Store

from .readers import Record
from .texts import ocr_text, text_vectors

log = logging.getLogger(__name__)


def split_for(sha256: str) -> str:
    """Gives a deterministic 80/10/10 train/val/test split from a content hash."""
    bucket = int(sha256[:8], 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


class ShardWriter:
    """Commits a job's results to `store`: skips at once, images and their duplicates a shard at a time.

    A duplicate's skip row is committed with the shard holding its original: committed earlier,
    a kill in between would leave the original's hash looking stored when it is not.
    """

    def __init__(self, store: Store, records: Sequence[Record], report, shard_size: int) -> None:
        self.store, self.records, self.report, self.shard_size = store, records, report, shard_size
        self._rows: list[dict] = []
        self._vectors: list[np.ndarray] = []
        self._texts: list[np.ndarray | None] = []  # per added batch: its text vectors, None when it has no words
        self._duplicates: list[tuple[str, str, str]] = []  # copies of images in self._rows
        self._pending: set[str] = set()  # hashes in self._rows
        self._seen: dict[str, str] = {}  # hash -> path of the original, over the whole job
        self._recorded: set[str] | None = None  # paths the store has a row for; read at the first known file
        self._reasons: dict[str, str] = {}  # hash -> reason, of files refused for their own content

    def sort(self, items: list[dict]) -> list[tuple[Record, dict]]:
        """Gives the batch's new originals, in order, as (record, item); records its skips and counts
        what the store already held."""
        good, skipped = [], []
        for item in items:
            record = self.records[item["i"]]
            if item.get("known"):
                missing = self._missing_row(str(record.path), item["sha"])
                if missing:
                    skipped.append(missing)
                else:
                    self.report.already_present += 1
            elif "error" in item:
                skipped.append((str(record.path), item["sha"], item["error"]))
            elif item["sha"] in self._seen:
                duplicate = (str(record.path), item["sha"], f"duplicate of {self._seen[item['sha']]}")
                (self._duplicates if item["sha"] in self._pending else skipped).append(duplicate)
            else:
                self._seen[item["sha"]] = str(record.path)
                self._pending.add(item["sha"])
                good.append((record, item))
        if skipped:
            self.store.add_skipped(skipped)
            count_skipped(self.report, skipped)
        return good

    def _missing_row(self, path: str, sha: str) -> tuple[str, str, str] | None:
        """Gives the skip row that a file whose hash the store knows still lacks, or None.

        A job killed after committing an original (or a file refused for its content) and before the
        skip row of a later copy leaves that copy with a known hash and no row: the rerun writes the
        row the uninterrupted job would have written.
        """
        if self._recorded is None:
            skipped = self.store.skipped_hashes()
            self._recorded = set(self.store.file_sizes()) | {p for p, _, _ in skipped}
            self._reasons = {h: reason for _, h, reason in skipped if h and not reason.startswith("duplicate of ")}
        if path in self._recorded:
            return None
        image_id = self.store.find(sha)
        if image_id is not None:
            return path, sha, f"duplicate of {self.store.items([image_id])[0].path}"
        reason = self._reasons.get(sha)
        return (path, sha, reason) if reason else None  # no reason: a removed image's tombstone

    def add(self, good: list[tuple[Record, dict]], vectors: np.ndarray, text_vectors: np.ndarray | None = None) -> None:
        """Queues the originals `sort` gave with their (n, D) vectors and, for posts with words, their (n, D)
        text vectors (zero rows for those without); commits a shard once it is full."""
        if good:
            self._vectors.append(np.asarray(vectors, dtype=np.float16))
            self._texts.append(None if text_vectors is None else np.asarray(text_vectors, dtype=np.float16))
            self._rows += [_row(record, item) for record, item in good]
            self.report.added += len(good)
        if len(self._rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Commits the queued rows and vectors together with the skip rows of their duplicates."""
        if self._rows:
            texts = None
            if any(t is not None for t in self._texts):
                texts = np.concatenate([t if t is not None else np.zeros_like(v)
                                        for t, v in zip(self._texts, self._vectors)])
            self.store.add(self._rows, np.concatenate(self._vectors), self._duplicates, texts)
            count_skipped(self.report, self._duplicates)
        self._rows, self._vectors, self._texts, self._duplicates, self._pending = [], [], [], [], set()


def count_skipped(report, skipped: list[tuple[str, str | None, str]]) -> None:
    """Counts (path, sha256, reason) skips in the report by kind, and logs each."""
    report.skipped.update(reason_kind(reason) for _, _, reason in skipped)
    for path, _, reason in skipped:
        log.info("skipped %s: %s", path, reason)


def reason_kind(reason: str) -> str:
    """Gives a short category for counting skip reasons."""
    if reason.startswith("duplicate"):
        return "duplicate"
    if reason.startswith("unreadable"):
        return "unreadable"
    if "not an image" in reason or "empty" in reason:
        return "not an image"
    if "not accepted" in reason:
        return "unsupported format"
    if "pixels" in reason or "too large" in reason:
        return "too large"
    return "damaged"


def _row(record: Record, item: dict) -> dict:
    return {"path": str(record.path), "sha256": item["sha"], "labels": record.labels,
            "split": record.split or split_for(item["sha"]), "split_fixed": bool(record.split),
            "width": item["size"][0], "height": item["size"][1], "bytes": item["bytes"],
            "caption": record.caption, "ocr": json.dumps(item["ocr"]) if item.get("ocr") is not None else None,
            "clip": item.get("clip")}


def post_text_vectors(backbone, good: list[tuple[Record, dict]]) -> np.ndarray | None:
    """Gives the (n, D) text vectors of a batch's originals (zero rows for posts without words), or None when
    none has words: each post's caption and the text read in its image, through the backbone's text tower."""
    captions = [record.caption for record, _ in good]
    read = [ocr_text(item.get("ocr")) for _, item in good]
    if not any(captions) and not any(read):
        return None
    return text_vectors(backbone.encode_texts, backbone.dim, captions, read)
