"""The store's SQLite metadata: its schema, how writers and readers connect, and every query the store runs.

Writers use WAL (concurrent readers while a job runs) and leave it at close, so that readers need
no -wal/-shm files; readers open read-only, as immutable where those files cannot be created.
`Metadata` holds the one connection a store shares between server threads, behind a lock.
"""
from __future__ import annotations

import datetime
import logging
import sqlite3
import threading
import urllib.parse
from pathlib import Path

from .errors import StoreError
from .relabel import KEYS, Relabel, check, planned
from .schema import IMAGE, SCHEMA, TEXT
from .shards import Shard

log = logging.getLogger(__name__)

_CHUNK = 10_000  # values per IN (...) query: SQLite caps the number of bound parameters
_ITEM = "id, path, sha256, labels, split, width, height"
_REMOVED = ("id", "sha256", "removed_at", "removed_by", "reason")


class Metadata:
    """The store's metadata.sqlite: every query and transaction of the store, one at a time across threads."""

    def __init__(self, path: Path, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        try:
            self._conn = connect(path, readonly)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a readable SQLite database ({exc}); rebuild the store") from exc
        self._lock = threading.RLock()  # one connection shared by server threads; a transaction may query
        self._has_removed = self._has_table("removed")  # stores before removal lack it
        self._sets = self.has_column("shards", "vector_set")  # format 1 stores: every shard is an image shard
        self._has_texts = self._has_table("texts")  # stores before format 3 hold no words
        self._has_clips = self._has_table("clips")  # stores before format 4 hold no clips

    # ---- images ---------------------------------------------------------------------------

    def live_count(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM images")

    def live_ids(self) -> list[int]:
        return [r[0] for r in self._query("SELECT id FROM images ORDER BY id")]

    def present(self, ids: list[int]) -> list[int]:
        """Gives those of `ids` that are live images."""
        return [r[0] for r in self._where("SELECT id FROM images", "id", ids)]

    def item_rows(self, ids: list[int] | None = None) -> list[tuple]:
        """Gives (id, path, sha256, labels, split, width, height) of `ids` (any order), or of all by id."""
        if ids is None:
            return self._query(f"SELECT {_ITEM} FROM images ORDER BY id")
        return self._where(f"SELECT {_ITEM} FROM images", "id", ids)

    def block_rows(self, start: int, stop: int, split: str | None) -> list[tuple]:
        """Gives (id, path, labels, split) of the live images with start <= id < stop (of `split`), by id."""
        sql, params = "SELECT id, path, labels, split FROM images WHERE id >= ? AND id < ?", [start, stop]
        if split is not None:
            sql, params = sql + " AND split = ?", params + [split]
        return self._query(sql + " ORDER BY id", params)

    def ids_by(self, column: str, values: list) -> list[tuple]:
        """Gives (value, id) for the live images whose `column` (id, sha256 or path) is one of `values`."""
        if column not in ("id", "sha256", "path"):
            raise ValueError(f"images cannot be looked up by {column!r}; use id, sha256 or path")
        return self._where(f"SELECT {column}, id FROM images", column, values)

    def splits_of(self, ids: list[int]) -> list[tuple[int, str, bool]]:
        """Gives (id, split, split fixed by the source) of those of `ids` that are live."""
        return [(r[0], r[1], bool(r[2])) for r in self._where("SELECT id, split, split_fixed FROM images", "id", ids)]

    def find(self, sha256: str) -> int | None:
        rows = self._query("SELECT id FROM images WHERE sha256 = ?", (sha256,))
        return int(rows[0][0]) if rows else None

    def file_sizes(self) -> dict[str, int]:
        return dict(self._query("SELECT path, bytes FROM images"))

    def skipped(self) -> list[tuple[str, str | None, str]]:
        return self._query("SELECT path, sha256, reason FROM skipped ORDER BY path")

    def known_hashes(self, tombstones: bool) -> set[str]:
        # A "duplicate of" row vouches for a hash only through its original, which a killed job
        # may never have written: counting it would lose that image for good.
        sql = ("SELECT sha256 FROM images UNION SELECT sha256 FROM skipped "
               "WHERE sha256 IS NOT NULL AND reason NOT LIKE 'duplicate of %'")
        if tombstones and self._has_removed:
            sql += " UNION SELECT sha256 FROM removed"
        return {r[0] for r in self._query(sql)}

    # ---- a post's words ---------------------------------------------------------------------

    def texts(self, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
        """Gives id -> (caption, OCR lines as JSON) for those of `ids` that have words stored."""
        if not self._has_texts:
            return {}
        return {r[0]: (r[1], r[2]) for r in self._where("SELECT id, caption, ocr FROM texts", "id", ids)}

    def text_count(self) -> int:
        """Gives the number of live images with words stored (a caption or OCR lines)."""
        if not self._has_texts:
            return 0
        return self._scalar("SELECT COUNT(*) FROM texts JOIN images USING (id)")

    # ---- clips ------------------------------------------------------------------------------

    def clips(self, ids: list[int]) -> dict[int, dict]:
        """Gives id -> {"format", "duration_ms", "frame_count", "frames_used"} for those of `ids` that are clips."""
        if not self._has_clips:
            return {}
        return {r[0]: {"format": r[1], "duration_ms": r[2], "frame_count": r[3], "frames_used": r[4]}
                for r in self._where("SELECT id, format, duration_ms, frame_count, frames_used FROM clips", "id", ids)}

    def clip_count(self) -> int:
        """Gives the number of live images that are clips."""
        if not self._has_clips:
            return 0
        return self._scalar("SELECT COUNT(*) FROM clips JOIN images USING (id)")

    def clips_not_indexed(self) -> list[int]:
        """Gives the ids of clips whose rewritten vector the index does not hold yet (a killed backfill's)."""
        if not self._has_clips:
            return []
        return [r[0] for r in self._query("SELECT id FROM clips WHERE indexed = 0 ORDER BY id")]

    def set_clips(self, clips: dict[int, dict]) -> None:
        """Commits stored images' clip records (id -> as `clips` gives, vectors already rewritten), not yet
        indexed: what a backfill records after rewriting first-frame vectors as pooled ones."""
        with self._lock, self._conn:
            self._insert_clips(clips, indexed=False)

    def mark_clips_indexed(self, ids: list[int]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("UPDATE clips SET indexed = 1 WHERE id = ?", [(i,) for i in ids])

    def _insert_clips(self, clips: dict[int, dict], indexed: bool) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO clips (id, format, duration_ms, frame_count, frames_used, indexed) "
            "VALUES (?, ?, ?, ?, ?, ?)", [(i, c["format"], int(c["duration_ms"]), int(c["frame_count"]),
                                           int(c["frames_used"]), int(indexed)) for i, c in clips.items()])

    # ---- shards ---------------------------------------------------------------------------

    def shards(self, vector_set: str = IMAGE) -> list[Shard]:
        """Gives the committed shards of a vector set, in id order."""
        where, params = (" WHERE vector_set = ?", (vector_set,)) if self._sets else ("", ())
        return [Shard(*r) for r in self._query(f"SELECT name, first_id, count FROM shards{where} ORDER BY first_id",
                                               params)]

    def rows_written(self, vector_set: str = IMAGE) -> int:
        """Gives the rows committed to a vector set: ids 0 .. rows-1 (removed ids stay used)."""
        shards = self.shards(vector_set)
        return shards[-1].first_id + shards[-1].count if shards else 0

    # ---- removals -------------------------------------------------------------------------

    def removed_log(self) -> list[dict]:
        if not self._has_removed:
            return []
        return [dict(zip(_REMOVED, row)) for row in
                self._query(f"SELECT {', '.join(_REMOVED)} FROM removed ORDER BY removed_at, id")]

    def removed_ids(self, applied: bool | None = None) -> list[int]:
        """Gives the removed ids (all, or those whose removal is or is not yet applied), ascending."""
        if not self._has_removed:
            return []
        where = "" if applied is None else f" WHERE applied = {int(applied)}"
        return [r[0] for r in self._query("SELECT id FROM removed" + where + " ORDER BY id")]

    # ---- writing ----------------------------------------------------------------------------

    def add(self, shard: Shard, rows: list[dict], skipped: list[tuple], vector_set: str = IMAGE,
            text_shard: Shard | None = None) -> None:
        """Commits a shard, the images whose vectors it holds, their words (rows' `caption`/`ocr`, with
        `text_shard` holding their text vectors), their clip records (rows' `clip`) and `skipped` entries in
        one transaction."""
        with self._lock, self._conn:
            self._conn.execute("INSERT INTO shards (name, first_id, count, vector_set) VALUES (?, ?, ?, ?)",
                               (shard.name, shard.first_id, shard.count, vector_set))
            if text_shard is not None:
                self._add_texts(text_shard, {shard.first_id + i: (r.get("caption"), r.get("ocr"))
                                             for i, r in enumerate(rows)})
            self._conn.executemany(
                "INSERT INTO images (id, path, sha256, labels, split, split_fixed, width, height, bytes, shard) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(shard.first_id + i, r["path"], r["sha256"], "|".join(r["labels"]) if r["labels"] else None,
                  r["split"], int(r.get("split_fixed", True)), r["width"], r["height"], r["bytes"], shard.name)
                 for i, r in enumerate(rows)])
            clips = {shard.first_id + i: r["clip"] for i, r in enumerate(rows) if r.get("clip")}
            if clips:
                if not self._has_clips:
                    raise StoreError(f"{self.path} is older than format 4 and holds no clips; open it for writing "
                                     "(any embed job) to migrate it")
                self._insert_clips(clips, indexed=True)
            self._conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", skipped)

    def add_texts(self, text_shard: Shard, texts: dict[int, tuple[str | None, str | None]]) -> None:
        """Commits a text shard and the words (id -> (caption, OCR JSON)) of the images it covers: what a
        backfill adds to images stored without words."""
        with self._lock, self._conn:
            self._add_texts(text_shard, texts)

    def _add_texts(self, text_shard: Shard, texts: dict[int, tuple[str | None, str | None]]) -> None:
        self._conn.execute("INSERT INTO shards (name, first_id, count, vector_set) VALUES (?, ?, ?, ?)",
                           (text_shard.name, text_shard.first_id, text_shard.count, TEXT))
        self._conn.executemany("INSERT OR REPLACE INTO texts (id, caption, ocr) VALUES (?, ?, ?)",
                               [(i, caption, ocr) for i, (caption, ocr) in texts.items() if caption or ocr])

    def add_skipped(self, entries: list[tuple[str, str | None, str]]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", entries)

    def remove(self, items: list, reason: str, by: str) -> None:
        """Commits the removal of `items` (Item): tombstones logged, rows and their duplicates' entries gone."""
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with self._lock, self._conn:
            self._conn.executemany("INSERT INTO removed (id, sha256, removed_at, removed_by, reason, applied) "
                                   "VALUES (?, ?, ?, ?, ?, 0)", [(it.id, it.sha256, when, by, reason) for it in items])
            self._conn.executemany("DELETE FROM images WHERE id = ?", [(it.id,) for it in items])
            if self._has_texts:
                self._conn.executemany("DELETE FROM texts WHERE id = ?", [(it.id,) for it in items])
            if self._has_clips:
                self._conn.executemany("DELETE FROM clips WHERE id = ?", [(it.id,) for it in items])
            # other paths with the same content were recorded as its duplicates: no trace of them either
            self._conn.executemany("DELETE FROM skipped WHERE sha256 = ?", [(it.sha256,) for it in items])

    def mark_applied(self, ids: list[int]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("UPDATE removed SET applied = 1 WHERE id = ?", [(i,) for i in ids])

    def set_splits(self, moves: dict[int, str]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("UPDATE images SET split = ? WHERE id = ?", [(s, i) for i, s in moves.items()])

    def relabel(self, known: list[str], entries: list[Relabel]) -> dict:
        """Sets labels and splits as `entries` say, in one transaction; gives the counts of `planned`."""
        check(entries, known)
        with self._lock, self._conn:
            matches = self._relabel_matches(entries)
            state = {r[0]: r[1:] for r in self._where("SELECT id, labels, split, split_fixed FROM images", "id",
                                                      sorted({i for ids in matches.values() for i in ids}))}
            counts, updated = planned(entries, known, matches, state)
            self._conn.executemany("UPDATE images SET labels = ?, split = ?, split_fixed = ? WHERE id = ?",
                                   [(*state, i) for i, state in sorted(updated.items())])
        return counts

    def _relabel_matches(self, entries: list[Relabel]) -> dict[int, list[int]]:
        """Gives entry number -> the ids of the live images it names, through a temporary table (one join
        per key kind, so that each uses its own index; not one query per entry)."""
        self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS relabel_keys (n INTEGER PRIMARY KEY, by TEXT, key TEXT)")
        self._conn.execute("DELETE FROM temp.relabel_keys")
        self._conn.executemany("INSERT INTO temp.relabel_keys VALUES (?, ?, ?)",
                               [(n, e.by, e.key) for n, e in enumerate(entries)])
        found: dict[int, list[int]] = {}
        for by in KEYS:
            rows = self._conn.execute(f"SELECT k.n, i.id FROM temp.relabel_keys k JOIN images i ON i.{by} = k.key "
                                      "WHERE k.by = ? ORDER BY k.n, i.id", (by,)).fetchall()
            for n, image_id in rows:
                found.setdefault(n, []).append(image_id)
        self._conn.execute("DROP TABLE temp.relabel_keys")
        return found

    def add_table(self, sql: str) -> None:
        """Creates a table unless it is there (a migration step)."""
        with self._lock, self._conn:
            self._conn.executescript(sql)
        self._has_texts = self._has_table("texts")
        self._has_clips = self._has_table("clips")

    def has_column(self, table: str, column: str) -> bool:
        return column in {row[1] for row in self._query(f"PRAGMA table_info({table})")}

    def add_column(self, table: str, column: str, declaration: str) -> None:
        """Adds a column unless it is there (a migration step: additive, and safe to run again)."""
        if not self.has_column(table, column):
            with self._lock, self._conn:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._sets = self.has_column("shards", "vector_set")

    def close(self) -> None:
        """Closes the connection, not under a query still running on another thread; a writer first
        leaves WAL mode, so that readers need no -wal/-shm files and the store opens from read-only media."""
        with self._lock:
            if not self.readonly:
                leave_wal(self._conn)
            self._conn.close()

    # ---- private ------------------------------------------------------------------------------

    def _where(self, select: str, column: str, values: list) -> list[tuple]:
        """Gives the rows of `select` WHERE `column` IN `values`, asked _CHUNK values at a time."""
        values, rows = list(values), []
        for start in range(0, len(values), _CHUNK):
            part = values[start:start + _CHUNK]
            rows += self._query(f"{select} WHERE {column} IN ({','.join('?' * len(part))})", part)
        return rows

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path} is damaged ({exc}); rebuild the store") from exc

    def _scalar(self, sql: str) -> int:
        return int(self._query(sql)[0][0])


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Gives a connection usable from several threads (Metadata serialises them); raises
    sqlite3.DatabaseError when the file is not a readable store database."""
    if readonly:
        conn = _connect_readonly(path)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)  # an older store keeps its tables as they are: migrations.py adds to them
    conn.execute("SELECT COUNT(*) FROM images").fetchone()
    return conn


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
