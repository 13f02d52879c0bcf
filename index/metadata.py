"""The store's SQLite metadata: its schema and how writers and readers connect to it.

Writers use WAL (concurrent readers while a job runs) and leave it at close, so that readers need
no -wal/-shm files; readers open read-only, as immutable where those files cannot be created.
"""
from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,          -- row of the vector in the store and id in the FAISS index
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,     -- content hash: the resume key
    labels TEXT,                     -- our labels joined by '|', NULL when unlabeled
    split TEXT NOT NULL,
    split_fixed INTEGER NOT NULL DEFAULT 1,  -- 1: the source gave the split; 0: the hash did, near-duplicates move it
    width INTEGER, height INTEGER, bytes INTEGER,
    shard TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    sha256 TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, first_id INTEGER NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS removed (      -- removed images: the log, and tombstones by content hash
    id INTEGER PRIMARY KEY,              -- the image's id (never reused)
    sha256 TEXT NOT NULL,                -- stops a later embed from adding the same file again
    removed_at TEXT NOT NULL,            -- UTC, ISO 8601
    removed_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0   -- 1 once the vector row is zeroed and the index no longer holds it
);
CREATE INDEX IF NOT EXISTS removed_sha256 ON removed (sha256);
"""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Gives a connection usable from several threads (the store serialises them); raises
    sqlite3.DatabaseError when the file is not a readable store database."""
    if readonly:
        conn = _connect_readonly(path)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
    conn.execute("SELECT COUNT(*) FROM images").fetchone()
    return conn


def add_split_fixed(conn: sqlite3.Connection) -> None:
    # Stores written before near-duplicate grouping lack the column; their splits are left as they are.
    if "split_fixed" not in {row[1] for row in conn.execute("PRAGMA table_info(images)")}:
        with conn:
            conn.execute("ALTER TABLE images ADD COLUMN split_fixed INTEGER NOT NULL DEFAULT 1")


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """Opens the database for reading, creating no file. A store still in WAL mode (its writer was killed,
    or predates leaving WAL at close) needs -wal/-shm files; where they cannot be created (read-only
    media) it is opened as immutable, which is safe there because nothing can change it."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.execute("SELECT COUNT(*) FROM images").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        try:
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
            conn.execute("SELECT COUNT(*) FROM images").fetchone()
        except sqlite3.DatabaseError:
            raise exc from None
    log.info("%s opened as immutable: its -wal/-shm files cannot be created (read-only folder?)", path)
    return conn


def leave_wal(conn: sqlite3.Connection) -> None:
    # Readers of a WAL database must create -wal/-shm beside it; in rollback mode they need nothing.
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.DatabaseError as exc:  # e.g. a reader holds it open: it stays in WAL, readers still work
        log.info("metadata.sqlite stays in WAL mode (%s)", exc)
