"""Near-duplicate split grouping: each group of near-duplicates put in one split, and a report of what moved.

A dataset concern, kept apart from the store: it reads the store's vectors (through its index when
approximate) and splits, and gives the moves, which the store's writer commits. The pure search
functions live in index/dedup.py. It says what it did (`Grouping`), and warns when it put most of
the store in one split: a model that finds every image alike (random weights, a wrong checkpoint)
joins them all into one group, which leaves training or evaluation without images.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .dedup import EXACT_UP_TO, groups_from, near_duplicate_groups, range_search_index, split_moves, \
    store_index_neighbours
from .search import build_index

log = logging.getLogger(__name__)

Finder = Callable[[bool], list[np.ndarray]]  # walk_older -> groups holding a new row (see dedup.groups_from)
Splits = Callable[[list[int]], list[tuple[int, str, bool]]]  # ids -> (id, split, fixed) of the live ones


@dataclass(frozen=True)
class Grouping:
    """What one grouping did: groups and images moved, and the split its groups hold most images of."""

    groups_moved: int = 0
    images_moved: int = 0
    largest_split: str | None = None  # the split that the groups' images went to most
    largest_images: int = 0  # how many images the groups put there
    images: int = 0  # live images in the store
    threshold: float | None = None  # the cosine at which images count as near-duplicates

    @property
    def lopsided(self) -> bool:
        """Tells whether grouping put most of the store (over half, of 10 or more images) in one split."""
        return self.images >= 10 and 2 * self.largest_images > self.images

    def to_json(self) -> dict:
        return {"groups_moved": self.groups_moved, "images_moved": self.images_moved,
                "largest_split": self.largest_split, "largest_images": self.largest_images, "images": self.images,
                "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: dict | None) -> "Grouping":
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def cause(self) -> str:
        """Gives the sentence naming a lopsided grouping as the cause of an empty split, and its fix."""
        alike = f" (cosine >= {self.threshold:g})" if self.threshold is not None else ""
        return (f"near-duplicate grouping put {self.largest_images} of {self.images} images into split "
                f"{self.largest_split!r}: the model finds them alike{alike}, as a random-weight or wrong model does; "
                "embed into a new store with --near-duplicate-threshold off (or a higher threshold), or with the "
                "model's real weights")


def exact_finder(vectors: np.ndarray, threshold: float, first_new: int) -> Finder:
    """Gives the finder over (N, D) float32 unit-norm `vectors` held in memory: exact up to EXACT_UP_TO
    rows, else an IVF over the same rows (built once, for both searches)."""
    searched = range_search_index(build_index(vectors) if len(vectors) <= EXACT_UP_TO else None, vectors)
    return lambda walk_older: near_duplicate_groups(searched, vectors, threshold, first_new=first_new,
                                                    exact_up_to=len(vectors), walk_older=walk_older)


def index_finder(index, rows_of: Callable[[np.ndarray], np.ndarray], threshold: float, rows: int,
                 first_new: int) -> Finder:
    """Gives the finder through a store's own approximate index (its ids are store ids), verified on
    `rows_of`: nothing reads the whole store."""
    neighbours = store_index_neighbours(index, rows_of, threshold)
    return lambda walk_older: groups_from(neighbours, rows, first_new, walk_older=walk_older)


def group(find: Finder, splits_of: Splits, first_new: int, images: int,
          threshold: float) -> tuple[dict[int, str], Grouping]:
    """Gives ({id: new split}, the report) that put each near-duplicate group holding a row >= `first_new`
    in one split; `images` (the store's live count) and `threshold` are for the report."""
    # Older rows were grouped by earlier jobs, so an older group already sits in one split: first
    # search from the new rows only. Only where that would move an older row (a new image joins
    # older groups in different splits) must the older groups move whole: then walk them too.
    moves, moved, groups, now = _moves(find(False), splits_of)
    if any(i < first_new for i in moves):
        moves, moved, groups, now = _moves(find(True), splits_of)
    after = now | moves
    per_split = Counter()
    for members in groups:
        per_split[after[int(members[0])]] += len(members)
    split, most = per_split.most_common(1)[0] if per_split else (None, 0)
    report = Grouping(moved, len(moves), split, most, images, threshold)
    if moves:
        log.info("moved %d near-duplicate images (%d groups) into their group's split", len(moves), moved)
    if report.lopsided:
        log.warning("%s", report.cause())
    return moves, report


def _moves(groups: list[np.ndarray], splits_of: Splits) -> tuple[dict[int, str], int, list[np.ndarray], dict]:
    """Gives `split_moves` of `groups` with the splits stored now, the groups (removed rows left out) and
    {id: split now} of their members."""
    rows = splits_of([int(i) for g in groups for i in g])
    present = {r[0] for r in rows}  # removed rows (zero vectors) join no group; this is a safeguard
    groups = [g for g in (np.array([i for i in g if i in present], np.int64) for g in groups) if len(g) > 1]
    now = {r[0]: r[1] for r in rows}
    moves, moved = split_moves(groups, now, {r[0]: r[2] for r in rows})
    return moves, moved, groups, now
