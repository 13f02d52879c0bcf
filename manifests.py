"""Reading the manifests users hand to `embed`, `label` and `remove`: CSV with a header, or JSONL.

One reader for all three, so that every command numbers lines the same way (the line of the file,
header included) and names the file and line of anything it cannot read.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path


def read_rows(path: Path, error: type[Exception], columns: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """Gives (line number, row) for each row of `path`: a .jsonl file holds one JSON object per line
    (blank lines skipped), any other file is CSV whose first line names the columns. Raises `error`
    naming the file and line of a line that is not a JSON object, or, when `columns` is given, a CSV
    header naming none of them."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}; check the path") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path, text, error)
    reader = csv.DictReader(text.splitlines())
    if columns and not (reader.fieldnames and set(columns) & set(reader.fieldnames)):
        raise error(f"{path}, line 1: the header names none of {', '.join(columns)} (it has "
                    f"{reader.fieldnames}); the first line of a CSV manifest names its columns")
    return list(enumerate(reader, 2))


def _jsonl_rows(path: Path, text: str, error: type[Exception]) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise error(f"{path}, line {number}: expected a JSON object ({{...}}), found {type(row).__name__}")
        rows.append((number, row))
    return rows
