"""Relabelling stored images without re-embedding them: labels (and splits) set by path or content hash.

The store writer runs a relabelling as one SQLite transaction (`Metadata.relabel`): every entry is
checked first (`check`), so a bad label changes nothing, then the images are looked up through a
temporary table (one join per key kind, not one query per entry) and only the rows whose labels or
split differ (`planned`) are updated. A split given here counts as fixed: near-duplicate grouping no
longer moves the image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from emoreact.manifests import read_rows

from .schema import SPLITS

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


def planned(entries: list[Relabel], known: list[str], matches: dict[int, list[int]],
            state: dict[int, tuple[str | None, str, int]]) -> tuple[dict, dict[int, tuple[str | None, str, int]]]:
    """Gives ({"changed", "unchanged", "unknown"} entry counts, {id: (labels, split, split_fixed)} to write)
    for `entries`, given the ids each entry number `matches` and the images' current `state`.

    An entry naming several rows (one path embedded with two contents) sets them all and counts once:
    changed if any row changed. Entries are applied in order, so a later entry for the same image wins."""
    state = dict(state)
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
            if (labels, split, fixed) != tuple(state[image_id]):
                state[image_id], changed = (labels, split, fixed), True
                updated.add(image_id)
        counts["changed" if changed else "unchanged"] += 1
    return counts, {i: state[i] for i in updated}


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
