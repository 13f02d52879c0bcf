"""Naming the images to remove for good (takedowns, privacy requests): by id, content hash or path.

The removal itself is the store writer's (`Store.remove`, index/writing.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from emoreact.manifests import read_rows

if TYPE_CHECKING:
    from .store import Store

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
        found.update({f"{column}:{key}": image_id for key, image_id in store.lookup(column, values)})
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
