"""Naming the images to remove: ids, content hashes or paths, given on the command line or in a file."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from .store import Store

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_targets(store: Store, ids=(), hashes=(), manifest: str | Path | None = None) -> list[int]:
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
    ids, hashes, paths = [], [], []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = [{"value": line.strip()} for line in text.splitlines() if line.strip()]
    for number, row in enumerate(rows, start=1):
        if "id" in row and str(row["id"]).strip():
            ids.append(_int(row["id"], path, number))
        elif row.get("sha256"):
            hashes.append(str(row["sha256"]).lower())
        elif row.get("path"):
            paths.append(str(row["path"]))
        elif "value" in row:
            value = row["value"]
            if value.isdigit():
                ids.append(int(value))
            elif _SHA256.match(value.lower()):
                hashes.append(value.lower())
            else:
                paths.append(value)
        else:
            raise ValueError(f"{path}, entry {number}: needs an id, sha256 or path column")
    return ids, hashes, paths


def _int(value, path: Path, number: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}, entry {number}: id {value!r} is not a whole number") from None
