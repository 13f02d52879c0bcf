"""Moderators' corrections: STORE/feedback.sqlite, its label overrides for training, and its manifest export.

The log is a SQLite file of its own beside the store's metadata, in WAL mode with a busy timeout,
so that a server records corrections while an embed job holds the store's single-writer lock.
Each row keeps who corrected what and what the model said at the time:

    id, time (ISO 8601 UTC), key_name, image_id, sha256, labels, note, predicted, head_id, source

`source` is "indexed" (a correction of an image already in the store) or "upload" (a new image,
added to the store under STORE/feedback/images/ by `add_upload`). Labels are joined by "|", as in
the store. The latest correction of an image wins.
"""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import StoreError
from .store import Store

FEEDBACK_FILE = "feedback.sqlite"
UPLOADS = Path("feedback") / "images"  # inside the store folder
BUSY_TIMEOUT_MS = 5_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,        -- ISO 8601 UTC with milliseconds: sorts as text
    key_name TEXT NOT NULL,    -- the API key's name, never the key
    image_id INTEGER NOT NULL, -- id (vector row) in the store
    sha256 TEXT NOT NULL,      -- content hash of the image: survives a rebuilt store
    labels TEXT NOT NULL,      -- the corrected labels, joined by '|'
    note TEXT,
    predicted TEXT NOT NULL,   -- the labels the served head predicted at the time, joined by '|'
    head_id TEXT,              -- content hash of the served head (see web/feedback.py)
    source TEXT NOT NULL       -- 'indexed' or 'upload'
);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback(time);
"""
_COLUMNS = ("id", "time", "key_name", "image_id", "sha256", "labels", "note", "predicted", "head_id", "source")


def feedback_path(store_root: str | Path) -> Path:
    """Gives where a store keeps its corrections."""
    return Path(store_root) / FEEDBACK_FILE


def utc_time(moment: datetime | None = None) -> str:
    """Gives `moment` (default now; naive means UTC) as the log's sortable ISO 8601 UTC text."""
    moment = moment or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


class FeedbackLog:
    """The corrections of one store; safe to share between threads."""

    def __init__(self, store_root: str | Path, readonly: bool = False) -> None:
        self.path = feedback_path(store_root)
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            else:
                self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot {'read' if readonly else 'open for writing'} the corrections in {self.path} "
                             f"({exc}); check that the store folder exists and may be written") from exc
        self._lock = threading.Lock()

    def add(self, *, key_name: str, image_id: int, sha256: str, labels: list[str], predicted: list[str],
            source: str, note: str | None = None, head_id: str | None = None) -> dict:
        """Records one correction; gives it as stored (with its id and time)."""
        row = (utc_time(), key_name, int(image_id), sha256, "|".join(labels), note, "|".join(predicted), head_id,
               source)
        with self._lock, self._conn:
            cursor = self._conn.execute(
                f"INSERT INTO feedback ({', '.join(_COLUMNS[1:])}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        return _entry((cursor.lastrowid, *row))

    def entries(self, since: str | None = None, limit: int | None = None) -> list[dict]:
        """Gives corrections recorded after `since` (log time text, see `utc_time`), oldest first."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM feedback"
        params: list = []
        if since is not None:
            sql += " WHERE time > ?"
            params.append(since)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._lock:
            return [_entry(r) for r in self._conn.execute(sql, params).fetchall()]

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _entry(row: tuple) -> dict:
    entry = dict(zip(_COLUMNS, row))
    entry["labels"] = entry["labels"].split("|") if entry["labels"] else []
    entry["predicted"] = entry["predicted"].split("|") if entry["predicted"] else []
    return entry


def latest_corrections(store_root: str | Path) -> list[dict]:
    """Gives the latest correction of each corrected image, by image id (none when there is no log)."""
    if not feedback_path(store_root).exists():
        return []
    log = FeedbackLog(store_root, readonly=True)
    try:
        latest = {e["image_id"]: e for e in log.entries()}  # ordered by id: later rows win
    finally:
        log.close()
    return [latest[i] for i in sorted(latest)]


def label_overrides(store_root: str | Path) -> dict[int, tuple[str, ...]]:
    """Gives image id -> corrected labels (the latest correction per image wins); {} without feedback."""
    return {e["image_id"]: tuple(e["labels"]) for e in latest_corrections(store_root)}


def add_upload(store_root: str | Path, data: bytes, sha256: str, vector: np.ndarray, size: tuple[int, int],
               labels: list[str], suffix: str, clip: dict | None = None) -> int:
    """Adds an uploaded image to the store under the `feedback` source (its file under STORE/feedback/images,
    split train, the corrected labels) and gives its id; an image already stored gives its existing id. A
    clip's `vector` is its pooled one and `clip` its record (format, duration_ms, frame_count, frames_used).

    Goes through the store's writer (its single-writer lock, not waited for: a running embed job
    makes this raise StoreError naming the job) and rebuilds the index, so readers that re-open the
    store see the new image.
    """
    root = Path(store_root)
    Store.open(root).close()  # checks the store is complete and readable before taking its lock
    with Store.open_for_writing(root) as store:
        existing = store.find(sha256)
        if existing is not None:
            return existing
        path = (root / UPLOADS / f"{sha256}{suffix}").absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            atomic_write_bytes(path, data)
        roots = store.manifest.get("source_roots", [])
        if str(path.parent) not in roots:  # first, so that the latest root stays the last embedded source
            store.manifest = {**store.manifest, "source_roots": [str(path.parent), *roots]}
        row = {"path": str(path), "sha256": sha256, "labels": list(labels), "split": "train", "split_fixed": True,
               "width": size[0], "height": size[1], "bytes": len(data), "clip": clip}
        store.add([row], np.asarray(vector, np.float32).reshape(1, -1))
        store.finish()
        return store.find(sha256)


def export_manifest(store_root: str | Path, fmt: str = "csv") -> tuple[str, int]:
    """Gives (manifest text, rows): the latest correction of each image as path,labels,split,sha256 rows
    in CSV or JSONL, which `cli.py embed` reads back (labels joined by "|")."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown manifest format {fmt!r}; choose csv or jsonl")
    corrections = latest_corrections(store_root)
    with Store.open(store_root) as store:
        try:
            items = store.items([e["image_id"] for e in corrections]) if corrections else []
        except KeyError as exc:
            raise StoreError(f"{feedback_path(store_root)} corrects image id {exc.args[0]}, which {store_root} does "
                             "not hold; was the store rebuilt? export from the store the corrections were made on") from exc
    for e, item in zip(corrections, items):
        if item.sha256 != e["sha256"]:
            raise StoreError(f"{feedback_path(store_root)}: image id {item.id} was corrected as content {e['sha256'][:12]}, "
                             f"but {store_root} holds other content there; was the store rebuilt? export from the store "
                             "the corrections were made on")
    rows = [{"path": item.path, "labels": "|".join(e["labels"]), "split": item.split, "sha256": e["sha256"]}
            for e, item in zip(corrections, items)]
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), len(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["path", "labels", "split", "sha256"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue(), len(rows)
