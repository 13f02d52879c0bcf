"""Reading the `manifest.json` every artifact folder starts with: format, version, required keys."""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text


def read_manifest(path: Path, kind: str, fmt: str, version: int, keys: tuple[str, ...],
                  error: type[Exception], fix: str, oldest: int | None = None) -> dict:
    """Gives the manifest at `path` of a `kind` ("store", "head") artifact of format version `version`
    (or any from `oldest` to `version`), or raises `error` naming the file, what is wrong and `fix`."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{path.parent} is not an EmoReact {kind} (no manifest.json); {fix}") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is unreadable ({exc}); {fix}") from exc
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found != fmt:
        raise error(f"{path} is not an EmoReact {kind} manifest (format {found!r}); {fix}")
    readable = range(oldest or version, version + 1)
    if manifest.get("format_version") not in readable:
        reads = f"version {version}" if len(readable) == 1 else f"versions {readable[0]} to {version}"
        raise error(f"{path}: {kind} format version {manifest.get('format_version')} is not supported "
                    f"(this EmoReact reads {reads}); {fix}")
    missing = [key for key in keys if key not in manifest]
    if missing:
        raise error(f"{path} lacks {missing[0]!r}; {fix}")
    return manifest


class ManifestFile:
    """A manifest as this process holds it (`data`), written back whole and atomically by `write`."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data

    def write(self, data: dict) -> None:
        """Replaces the manifest with `data`: readers see the old file or the new one, never a mix."""
        self.data = data
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")
