"""What the store gives back about its images: an `Item` per image, a `Block` of images with their vectors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Item:
    """Metadata of one embedded image."""

    id: int
    path: str
    sha256: str
    labels: tuple[str, ...] | None
    split: str
    width: int
    height: int

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.path, "labels": list(self.labels or []), "split": self.split}


@dataclass(frozen=True)
class Block:
    """Up to BLOCK_ROWS live images of one shard, in id order, with their vectors."""

    ids: np.ndarray        # (n,) int64
    vectors: np.ndarray    # (n, D) float32 unit-norm
    labels: list           # tuple[str, ...] or None (unlabelled), per row
    splits: list[str]
    paths: list[str]


def labels_of(joined: str | None) -> tuple[str, ...] | None:
    """Gives the labels stored joined by '|' as a tuple (None: unlabelled)."""
    return tuple(joined.split("|")) if joined else None


def item(row: tuple) -> Item:
    """Gives the Item of a (id, path, sha256, labels, split, width, height) row."""
    return Item(row[0], row[1], row[2], labels_of(row[3]), row[4], row[5], row[6])
