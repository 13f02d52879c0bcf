"""Reading the `manifest.json` every artifact folder starts with: format, version, required keys."""
from __future__ import annotations

import json
from pathlib import Path


def read_manifest(path: Path, kind: str, fmt: str, version: int, keys: tuple[str, ...],
                  error: type[Exception], fix: str) -> dict:
    """Gives the manifest at `path` of a `kind` ("store", "head") artifact, or raises `error`
    naming the file, what is wrong and `fix`."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{path.parent} is not an EmoReact {kind} (no manifest.json); {fix}") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is unreadable ({exc}); {fix}") from exc
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found != fmt:
        raise error(f"{path} is not an EmoReact {kind} manifest (format {found!r}); {fix}")
    if manifest.get("format_version") != version:
        raise error(f"{path}: {kind} format version {manifest.get('format_version')} is not supported "
                    f"(this EmoReact reads version {version}); {fix}")
    missing = [key for key in keys if key not in manifest]
    if missing:
        raise error(f"{path} lacks {missing[0]!r}; {fix}")
    return manifest
