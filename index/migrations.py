"""The store format's versions, and the steps that bring an older store up to this one.

Readers read every version from `OLDEST` to `VERSION` as it is, writing nothing (a store on read-only
media, or one a server shares with an older job, stays as it is). A writer migrates the store first,
one step per version, in order. Each step only adds (a column with a default, a manifest key), so
readers that opened the store before keep working, and each may run again: a step killed half-way
is redone by the next writer, since the manifest records the version only after its step.

    1  0.3.0: one vector set, the images' (STORE/vectors/)
    2  shards belong to a named vector set (`shards.vector_set`, the manifest's `vector_sets`), so that
       later sets (captions, another model's vectors) sit beside the images' own
    3  a post's words: the `texts` table (caption, OCR lines) and the `text` vector set (STORE/vectors-text/),
       whose shards cover the image shards' id ranges where any row of one has words (rows without are zero)
    4  clips: the `clips` table (format, duration, frames) of images that are animations or videos, whose
       vector pools their frames' vectors (0.3.x stored an animation by its first frame: `embed --backfill`)
"""
from __future__ import annotations

import logging
from typing import Callable

from .manifest import ManifestFile
from .metadata import Metadata
from .schema import CLIPS, IMAGE, TEXT, TEXTS

log = logging.getLogger(__name__)

FORMAT = "emoreact-store"
VERSION = 4  # what this EmoReact writes
OLDEST = 1  # the oldest version it reads (and migrates when writing)


def vector_sets(manifest: dict) -> dict[str, dict]:
    """Gives the manifest's vector sets, name -> {"dim", "folder"} (a version 1 store has the image set only)."""
    return manifest.get("vector_sets") or {IMAGE: {"dim": int(manifest["dim"]), "folder": "vectors"}}


def _named_vector_sets(metadata: Metadata, manifest: dict) -> dict:
    # Stores written before near-duplicate grouping lack split_fixed; their splits count as the source's.
    metadata.add_column("images", "split_fixed", "INTEGER NOT NULL DEFAULT 1")
    metadata.add_column("shards", "vector_set", f"TEXT NOT NULL DEFAULT '{IMAGE}'")
    return {**manifest, "vector_sets": vector_sets(manifest)}


def _texts(metadata: Metadata, manifest: dict) -> dict:
    metadata.add_table(TEXTS)
    sets = vector_sets(manifest)
    return {**manifest, "vector_sets": {**sets, TEXT: {"dim": int(manifest["dim"]), "folder": "vectors-text"}}}


def _clips(metadata: Metadata, manifest: dict) -> dict:
    metadata.add_table(CLIPS)
    return dict(manifest)


STEPS: dict[int, Callable[[Metadata, dict], dict]] = {  # version reached -> its step (metadata, manifest) -> manifest
    2: _named_vector_sets,
    3: _texts,
    4: _clips,
}


def migrate(metadata: Metadata, manifest: ManifestFile, written: bool) -> None:
    """Brings the store to `VERSION`, step by step; `written`: the manifest is on disk (else a new store's,
    or a killed first job's, whose database may still be of any version: every step runs, harmlessly)."""
    found = int(manifest.data.get("format_version", OLDEST)) if written else OLDEST
    for version in range(found + 1, VERSION + 1):
        data = {**STEPS[version](metadata, manifest.data), "format_version": version}
        if written:
            log.info("%s: store format %d -> %d", manifest.path, version - 1, version)
            manifest.write(data)
        else:
            manifest.data = data
