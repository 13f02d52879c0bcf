"""The store's SQLite schema and the words it is written in: splits and vector set names.

`TEXTS` is created by the format-3 migration step (migrations.py), not with the other tables, so
that the version a store is at says which tables it has."""

SPLITS = ("train", "val", "test")  # the values of images.split
IMAGE = "image"  # the vector set every store has: one vector per image, row = image id
TEXT = "text"  # a post's words (caption and OCR text) through the same CLIP's text tower, row = image id (format 3)

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
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    vector_set TEXT NOT NULL DEFAULT 'image'  -- the named vector set (format 2; see migrations.py)
);
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

CLIPS = """
CREATE TABLE IF NOT EXISTS clips (       -- animations and videos (format 4): their vector pools their frames'
    id INTEGER PRIMARY KEY,              -- the image's id
    format TEXT NOT NULL,                -- GIF, WEBP, PNG (animated), MP4, MOV or WEBM
    duration_ms INTEGER NOT NULL,
    frame_count INTEGER NOT NULL,        -- frames in the file
    frames_used INTEGER NOT NULL,        -- frames pooled into the vector
    indexed INTEGER NOT NULL DEFAULT 1   -- 0: a backfill rewrote the vector and the index still holds the old one
);
"""

TEXTS = """
CREATE TABLE IF NOT EXISTS texts (       -- a post's words (format 3): a row for each image that has any
    id INTEGER PRIMARY KEY,              -- the image's id
    caption TEXT,                        -- the caption given with the image (NULL: none)
    ocr TEXT                             -- JSON list of {"text", "score", "box"} read in the image (NULL: not read)
);
"""
