"""Removing images for good (takedowns, privacy requests), and naming them: ids, hashes or paths.

`Removal` is a mixin of `Store` (index/store.py). A removal is committed in SQLite first (readers
stop answering with the image at once) and rolled forward into the shard (the vector row zeroed)
and the index (rewritten without it) by the same call or, if that is killed, by the next writer.
"""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from emoreact.manifests import read_rows

from .faults import fault_point
from .shards import overwrite_rows

if TYPE_CHECKING:
    from .store import Store


class Removal:
    """The removal half of `Store`: `remove()`, the removal log and its roll-forward."""

    def removed(self) -> list[dict]:
        """Gives the removal log: id, sha256, removed_at (UTC, ISO 8601), removed_by, reason."""
        if not self._has_table("removed"):
            return []
        keys = ("id", "sha256", "removed_at", "removed_by", "reason")
        return [dict(zip(keys, row)) for row in
                self._query(f"SELECT {', '.join(keys)} FROM removed ORDER BY removed_at, id")]

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

    def _removed_ids(self, applied: int | None) -> list[int]:
        if not self._has_table("removed"):
            return []
        where = "" if applied is None else f" WHERE applied = {int(applied)}"
        return [r[0] for r in self._query("SELECT id FROM removed" + where + " ORDER BY id")]


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_targets(store: "Store", ids=(), hashes=(), manifest: str | Path | None = None) -> list[int]:
    """Gives the store ids named by `ids`, `hashes` and the entries of `manifest` (CSV/JSONL with a column
    id, sha256 or path; or plain text, one id, hash or path per line); raises KeyError naming every entry
    that matches no image in the store."""
    wanted_ids, wanted_hashes, wanted_paths = [int(i) for i in ids], [h.lower() for h in hashes], []
    if manifest is not None:
        more_ids, more_hashes, wanted_paths = _read_entries(Path(manifest))
        wanted_ids += more_ids
        wanted_hashes += more_hashes
    found: dict[str, int] = {}
    for column, values in (("id", wanted_ids), ("sha256", wanted_hashes), ("path", wanted_paths)):
        for start in range(0, len(values), 10_000):  # SQLite caps the number of bound parameters
            part = values[start:start + 10_000]
            rows = store._query(f"SELECT {column}, id FROM images WHERE {column} IN ({','.join('?' * len(part))})", part)
            found.update({f"{column}:{key}": image_id for key, image_id in rows})
    unknown = [f"{c}:{v}" for c, values in (("id", wanted_ids), ("sha256", wanted_hashes), ("path", wanted_paths))
               for v in values if f"{c}:{v}" not in found]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise KeyError(f"no image in {store.root} matches {shown} (already removed, or never embedded?); "
                       f"nothing was removed. `cli.py removed --store {store.root}` lists removals")
    return sorted(set(found.values()))


def _read_entries(path: Path) -> tuple[list[int], list[str], list[str]]:
    """Gives (ids, hashes, paths) a removal manifest names: CSV or JSONL rows with an id, sha256 or path
    column (relative paths taken from the manifest's folder, as `embed` reads them), or any other file
    as plain text, one id, hash or path per line."""
    ids, hashes, paths = [], [], []
    if path.suffix.lower() in (".csv", ".jsonl"):
        rows = read_rows(path, ValueError, columns=("id", "sha256", "path"))
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path} as UTF-8 text ({exc}); check the path") from exc
        rows = [(number, {"value": line.strip()}) for number, line in enumerate(lines, 1) if line.strip()]
    for number, row in rows:
        if str(row.get("id") or "").strip():
            ids.append(_int(row["id"], path, number))
        elif row.get("sha256"):
            hashes.append(str(row["sha256"]).strip().lower())
        elif row.get("path"):
            paths.append(_absolute(str(row["path"]).strip(), path))
        elif "value" in row:
            value = row["value"]
            if value.isdigit():
                ids.append(int(value))
            elif _SHA256.match(value.lower()):
                hashes.append(value.lower())
            else:
                paths.append(_absolute(value, path))
        else:
            raise ValueError(f"{path}, line {number}: needs an id, sha256 or path; write one of them per row")
    return ids, hashes, paths


def _absolute(file: str, manifest: Path) -> str:
    # normpath, not resolve(): `..` is folded as embed's absolute paths have none, links are kept as it keeps them
    return os.path.normpath(manifest.absolute().parent / file)


def _int(value, path: Path, number: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}, line {number}: id {value!r} is not a whole number") from None
