"""What opening a store checks: its manifest's format and version, and the model, dim and labels asked for."""
from __future__ import annotations

from pathlib import Path

from emoreact import __version__

from .errors import StoreError
from .manifest import ManifestFile, read_manifest
from .migrations import FORMAT, OLDEST, VERSION


def manifest_for_reading(root: Path, model_id: str | None, dim: int | None) -> ManifestFile:
    """Gives the manifest of the store at `root`, checked against the model and dim a reader expects
    (None: any); raises StoreError naming the file and the fix."""
    path = root / "manifest.json"
    if not path.exists():
        raise StoreError(f"{root} is not an EmoReact store (no manifest.json); build one with `cli.py embed`")
    manifest = read_store_manifest(path)
    if model_id is not None and manifest["model_id"] != model_id:
        raise StoreError(f"{path}: store was built with model {manifest['model_id']!r}, "
                         f"not {model_id!r}; use the same --model/--pretrained or another store")
    if dim is not None and manifest["dim"] != dim:
        raise StoreError(f"{path}: store vectors have dim {manifest['dim']}, expected {dim}")
    return ManifestFile(path, manifest)


def manifest_for_writing(path: Path, model_id: str, dim: int, preprocess: dict, labels: list[str]) -> ManifestFile:
    """Gives the manifest of the store a writer opens (a new store's when there is none), checked against
    the job's model and labels."""
    expected = {"model_id": model_id, "dim": dim, "labels": list(labels)}
    if not path.exists():
        return ManifestFile(path, {"format": FORMAT, "format_version": VERSION, **expected,
                                   "preprocess": preprocess, "count": 0, "package_version": __version__})
    manifest = read_store_manifest(path)
    for key, want in expected.items():
        if manifest[key] != want:
            raise StoreError(f"{path}: store holds {key}={manifest[key]!r} but this job uses "
                             f"{want!r}; embed into a new --store folder")
    return ManifestFile(path, manifest)


def read_store_manifest(path: Path) -> dict:
    """Gives the store manifest at `path`, of any version from OLDEST to VERSION; raises StoreError."""
    return read_manifest(path, "store", FORMAT, VERSION, ("model_id", "dim", "count", "labels"), StoreError,
                         "rebuild the store with `cli.py embed`", oldest=OLDEST)
