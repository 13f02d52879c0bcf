"""Relabelling stored images without re-embedding them: labels (and splits) set by path or content hash.

`apply_relabels` runs inside the store writer's one SQLite transaction (`Store.relabel`): every entry
is checked first, so a bad label changes nothing, then the images are looked up through a temporary
table (one join per key kind, not one query per entry) and only the rows whose labels or split differ
are updated. A split given here counts as fixed: near-duplicate grouping no longer moves the image.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from emoreact.manifests import read_rows

SPLITS = ("train", "val", "test")
KEYS = ("path", "sha256")


@dataclass(frozen=True)
class Relabel:
    """One entry of a relabelling: which image (by its stored path or its SHA-256) and what to set."""

    key: str  # the image's path as stored (absolute), or its content hash
    by: str = "path"  # path | sha256
    labels: tuple[str, ...] | None = None  # None leaves the labels as they are; () makes the image unlabelled
    split: str | None = None  # None leaves the split as it is


def check(entries: list[Relabel], known: list[str]) -> None:
    """Raises ValueError naming the first entry whose key kind, label or split is not known."""
    for number, entry in enumerate(entries, 1):
        if entry.by not in KEYS:
            raise ValueError(f"entry {number} ({entry.key!r}): key kind {entry.by!r} is neither path nor sha256")
        for label in entry.labels or ():
            if label not in known:
                raise ValueError(f"entry {number} ({entry.key!r}): unknown label {label!r}; the store's labels are "
                                 f"{known} (separate several with |)")
        if entry.split is not None and entry.split not in SPLITS:
            raise ValueError(f"entry {number} ({entry.key!r}): split {entry.split!r} is not one of {SPLITS}")


def apply_relabels(conn: sqlite3.Connection, known: list[str], entries: list[Relabel]) -> dict:
    """Gives {"changed", "unchanged", "unknown"} entry counts after updating the images `entries` name.

    Runs on the caller's connection and transaction (commit or roll back is theirs). An entry naming
    several rows (one path embedded with two contents) sets them all and counts once: changed if any
    row changed. Entries are applied in order, so a later entry for the same image wins."""
    check(entries, known)
    matches = _lookup(conn, entries)
    state: dict[int, tuple[str | None, str, int]] = {}  # id -> (labels, split, split_fixed) as now set
    for image_id, labels, split, fixed in _rows(conn, {i for ids in matches.values() for i in ids}):
        state[image_id] = (labels, split, fixed)
    counts = {"changed": 0, "unchanged": 0, "unknown": 0}
    updated: set[int] = set()
    for number, entry in enumerate(entries):
        ids = matches.get(number, [])
        if not ids:
            counts["unknown"] += 1
            continue
        changed = False
        for image_id in ids:
            labels, split, fixed = state[image_id]
            if entry.labels is not None:
                # Stored in the label config's order, as the embed readers store them.
                labels = "|".join(name for name in known if name in entry.labels) or None
            if entry.split is not None:
                split, fixed = entry.split, 1
            if (labels, split, fixed) != state[image_id]:
                state[image_id], changed = (labels, split, fixed), True
                updated.add(image_id)
        counts["changed" if changed else "unchanged"] += 1
    conn.executemany("UPDATE images SET labels = ?, split = ?, split_fixed = ? WHERE id = ?",
                     [(*state[i], i) for i in sorted(updated)])
    return counts


def _lookup(conn: sqlite3.Connection, entries: list[Relabel]) -> dict[int, list[int]]:
    """Gives entry number -> the ids of the live images it names."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS relabel_keys (n INTEGER PRIMARY KEY, by TEXT, key TEXT)")
    conn.execute("DELETE FROM temp.relabel_keys")
    conn.executemany("INSERT INTO temp.relabel_keys VALUES (?, ?, ?)",
                     [(n, e.by, e.key) for n, e in enumerate(entries)])
    found: dict[int, list[int]] = {}
    for by in KEYS:  # one join per key kind, so that each can use its own index
        rows = conn.execute(f"SELECT k.n, i.id FROM temp.relabel_keys k JOIN images i ON i.{by} = k.key "
                            "WHERE k.by = ? ORDER BY k.n, i.id", (by,)).fetchall()
        for n, image_id in rows:
            found.setdefault(n, []).append(image_id)
    conn.execute("DROP TABLE temp.relabel_keys")
    return found


def _rows(conn: sqlite3.Connection, ids: set[int]) -> list[tuple]:
    """Gives (id, labels, split, split_fixed) of `ids`, 10,000 at a time (SQLite caps bound parameters)."""
    ordered, rows = sorted(ids), []
    for start in range(0, len(ordered), 10_000):
        part = ordered[start:start + 10_000]
        rows += conn.execute(f"SELECT id, labels, split, split_fixed FROM images WHERE id IN "
                             f"({','.join('?' * len(part))})", part).fetchall()
    return rows


def read_relabel_manifest(path: str | Path) -> list[Relabel]:
    """Gives the entries of a relabelling manifest: CSV with a header, or JSONL, one image per row.

    Each row names its image by `sha256` or by `path` (relative paths are taken from the manifest's
    folder, as `embed` reads them) and may give `labels` (several separated by |, or a JSON list) and
    `split`. A missing labels column or key leaves the image's labels alone; an empty value makes the
    image unlabelled. Raises ValueError naming the file and line of a row it cannot read."""
    path = Path(path).absolute()
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{path} is not a .csv or .jsonl manifest; write one row per image with path or "
                         "sha256, labels and optionally split")
    rows = read_rows(path, ValueError, columns=("path", "sha256"))
    entries = []
    for number, row in rows:
        where = f"{path}, line {number}"
        sha, file = str(row.get("sha256") or "").strip(), str(row.get("path") or "").strip()
        if not sha and not file:
            raise ValueError(f"{where}: no `path` or `sha256`; each row names its image by one of them")
        labels = None if "labels" not in row else _labels(row["labels"], where)
        split = str(row.get("split") or "").strip() or None
        if sha:
            entries.append(Relabel(sha.lower(), "sha256", labels, split))
        else:
            # normpath, not resolve(): `..` is folded as embed's absolute paths have none, links are kept as it keeps them
            entries.append(Relabel(os.path.normpath(path.parent / file), "path", labels, split))
    return entries


def _labels(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else str(raw).split("|")
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{where}: labels must be names (a list of strings, or one string with |), got {raw!r}")
    return tuple(item.strip() for item in items if item.strip())
