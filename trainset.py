"""A store's labelled images for training and evaluation, read block by block: nothing holds the whole store.

Training reads the store in one pass over its memory-mapped shards (`Store.blocks`). It keeps a
bounded sample of the labelled training and validation images as float16 (see
`emoreact.heads.sampling`: at most `max_train_rows` training images, capped per label, and at most
`max_val_rows` validation images, uniformly), and streams the standardisation statistics over every
labelled training image. Evaluation makes one more pass, scoring each block with the head and keeping
only the (N, L) scores and targets. A store whose labelled images fit under the caps gives exactly
the rows, in id order, that an in-memory read would.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from emoreact.heads import EmotionHead
from emoreact.heads.sampling import Moments, RowSample
from emoreact.index import SPLITS, Store, StoreError
from emoreact.prefetch import prefetched

BLOCK_ROWS = 65_536  # rows per block read: 128 MiB as float32 at D = 512


@dataclass
class TrainingData:
    """What training keeps of a store: sampled rows (x (n, D) float32, y (n, L) float32 {0, 1}) of the
    train and val splits, and what was seen of the whole store."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    moments: tuple[np.ndarray, np.ndarray] | None  # (D,) mean and std over every labelled training image,
    #                                                 when the sample left some out (else None: fit on x_train)
    labelled: dict[str, int] = field(default_factory=dict)  # labelled images per split in the store
    multi: bool = False  # some labelled image has two or more labels
    overridden: int = 0  # images whose override names other labels than the stored ones
    ids_train: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) the sampled rows' ids
    ids_val: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def text(self, store: Store, split: str) -> np.ndarray:
        """Gives the (n, D) float32 text vectors of the sampled rows of `split` (zero rows: no words)."""
        return store.text_vectors_of(self.ids_train if split == "train" else self.ids_val)

    def rows_note(self) -> dict:
        """Gives {"train_rows": {"labelled", "used"}, "val_rows": ...} for the metrics."""
        return {f"{split}_rows": {"labelled": self.labelled[split], "used": len(x)}
                for split, x in (("train", self.x_train), ("val", self.x_val))}


@dataclass
class SplitScores:
    """A head's scores on one split's labelled images: (N, L) float32 each."""

    probs: np.ndarray  # calibrated
    uncalibrated: np.ndarray
    targets: np.ndarray  # {0, 1}
    chosen: np.ndarray  # (N, L) bool: the head's decisions (a post head's by the fusion, for posts with words)


def row_labels(block, overrides: dict[int, tuple[str, ...]] | None = None) -> list:
    """Gives each row's labels (a tuple, or None when unlabelled): the stored ones, or the override for
    its id (moderators' corrections). The one place labels are read per row."""
    if not overrides:
        return block.labels
    return [tuple(overrides[i]) if i in overrides else stored for i, stored in zip(block.ids.tolist(), block.labels)]


def read_training_data(store: Store, label_names: list[str], *, max_train_rows: int | None = None,
                       max_val_rows: int | None = None, seed: int = 0,
                       overrides: dict[int, tuple[str, ...]] | None = None,
                       block_rows: int = BLOCK_ROWS) -> TrainingData:
    """Gives the sampled labelled train and val rows in id order, with the statistics of the whole store,
    from one pass over its blocks (unlabelled and test images are counted, not kept)."""
    targets = _Targets(label_names)
    dim, count = store.dim, len(label_names)
    samples = {"train": RowSample(max_train_rows, dim, count, seed), "val": RowSample(max_val_rows, dim, count, seed)}
    moments = Moments(dim)
    labelled, multi, overridden = dict.fromkeys(SPLITS, 0), False, 0
    override_ids = np.fromiter(overrides, np.int64, len(overrides)) if overrides else None
    for block in prefetched(batches(store, block_rows)):
        labels = row_labels(block, overrides)
        y, has_labels = targets(labels)
        if override_ids is not None:
            overridden += _changed(block, labels, override_ids)
        multi |= bool((y[has_labels].sum(axis=1) > 1).any())
        splits = np.asarray(block.splits)
        for split in SPLITS:
            rows = np.flatnonzero(has_labels & (splits == split))
            labelled[split] += len(rows)
            if split == "test" or not len(rows):
                continue
            x = block.vectors[rows]
            if split == "train":
                moments.add(x)
            # Training rows are capped per label (their first); validation rows uniformly, so that the
            # calibration and the thresholds see the labels as often as the store has them.
            strata = y[rows].argmax(axis=1) if split == "train" else None
            samples[split].add(block.ids[rows], x, y[rows], strata)
    # A sample that kept every training row standardises on those rows, as an in-memory read does
    # (the same head, to the last bit); a capped one on the statistics of all of them.
    stats = moments.mean_std() if samples["train"].sampled else None
    ids_train, x_train, y_train = samples["train"].result()
    ids_val, x_val, y_val = samples["val"].result()
    return TrainingData(x_train, y_train, x_val, y_val, stats, labelled, multi, overridden,
                        np.asarray(ids_train, np.int64), np.asarray(ids_val, np.int64))


def require_training_images(store: Store, data: TrainingData) -> None:
    """Raises StoreError when the store has no labelled training images, naming the cause: near-duplicate
    grouping that put most of the store in another split (a model that finds every image alike), or a
    source without labels."""
    if len(data.x_train):
        return
    grouping = store.grouping()
    if grouping is not None and grouping.lopsided and grouping.largest_split != "train":
        raise StoreError(f"store {store.root} has no labelled training images: {grouping.cause()}")
    raise StoreError(f"store {store.root} has no labelled training images; embed a labelled source "
                     "(label sub-folders or a manifest with labels), or use --head zeroshot")


def score_splits(store: Store, head: EmotionHead, splits: tuple[str, ...], *,
                 overrides: dict[int, tuple[str, ...]] | None = None,
                 block_rows: int = BLOCK_ROWS) -> dict[str, SplitScores]:
    """Gives the head's scores on the labelled images of each split, from one pass over the store."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}; choose train, val or test")
    targets = _Targets(head.labels)
    parts: dict[str, list] = {s: [] for s in splits}
    for block in prefetched(batches(store, block_rows, splits[0] if len(splits) == 1 else None)):
        y, has_labels = targets(row_labels(block, overrides))
        block_splits = np.asarray(block.splits)
        for split in splits:
            rows = np.flatnonzero(has_labels & (block_splits == split))
            if len(rows):
                text = store.text_vectors_of(block.ids[rows]) if head.reads_text else None
                probs, raw = head_scores(head, block.vectors[rows], text)
                parts[split].append((probs, raw, y[rows], head.decide(probs, text)))
    out = {}
    for split, chunks in parts.items():
        empty = np.zeros((0, len(head.labels)), np.float32)
        out[split] = SplitScores(*(np.concatenate([c[k] for c in chunks]) if chunks else empty for k in range(3)),
                                 np.concatenate([c[3] for c in chunks]) if chunks else empty.astype(bool))
    return out


def batches(store: Store, rows: int = BLOCK_ROWS, split: str | None = None) -> Iterator:
    """Gives the store's live images (of `split`, or all) in id order as `Store.blocks` does, but `rows` at
    a time (the last batch may be smaller): blocks never span shards, and a store of small shards would
    otherwise come in small pieces."""
    pending, held = [], 0
    for block in store.blocks(rows, split):
        pending.append(block)
        held += len(block.ids)
        while held >= rows:
            joined = _join(pending)
            yield _part(joined, slice(0, rows))
            rest = _part(joined, slice(rows, None))
            pending, held = ([rest] if len(rest.ids) else []), len(rest.ids)
    if held:
        yield _join(pending)


def _join(blocks: list):
    if len(blocks) == 1:
        return blocks[0]
    return replace(blocks[0], ids=np.concatenate([b.ids for b in blocks]),
                   vectors=np.concatenate([b.vectors for b in blocks]), labels=[x for b in blocks for x in b.labels],
                   splits=[x for b in blocks for x in b.splits], paths=[x for b in blocks for x in b.paths])


def _part(block, rows: slice):
    return replace(block, ids=block.ids[rows], vectors=block.vectors[rows], labels=block.labels[rows],
                   splits=block.splits[rows], paths=block.paths[rows])


@torch.inference_mode()
def head_scores(head: EmotionHead, x: np.ndarray, text: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gives ((N, L) calibrated, (N, L) uncalibrated) scores of (N, D) float32 vectors from one forward pass
    (a post head fuses the posts whose (N, D) `text` vectors hold words; their scores are the fusion's)."""
    logits = head.logits(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    calibrated, raw = head.logits_to_proba(head.calibrate(logits)).numpy(), head.logits_to_proba(logits).numpy()
    words = head.words(text, len(x))
    if words.any():
        calibrated[words] = raw[words] = head.predict_proba(x[words], text=text[words])
    return calibrated, raw


def _changed(block, labels: list, override_ids: np.ndarray) -> int:
    """Gives how many rows of the block have an override naming other labels than the stored ones."""
    rows = np.flatnonzero(np.isin(block.ids, override_ids))
    return sum(1 for r in rows.tolist() if tuple(labels[r] or ()) != tuple(block.labels[r] or ()))


class _Targets:
    """Turns per-row label tuples into (N, L) {0, 1} targets, one table row per distinct tuple."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self._codes: dict = {None: 0, (): 0}  # code 0: unlabelled
        self._rows = [np.zeros(len(names), np.float32)]
        self._table = np.stack(self._rows)

    def __call__(self, labels: list) -> tuple[np.ndarray, np.ndarray]:
        """Gives (y (N, L) float32, labelled (N,) bool)."""
        codes = self._codes
        for value in set(labels) - codes.keys():
            self._add(value)
        index = np.fromiter((codes[value] for value in labels), np.int64, len(labels))
        return self._table[index], index > 0

    def _add(self, value: tuple[str, ...]) -> None:
        row = np.zeros(len(self.names), np.float32)
        for name in value:
            if name not in self.names:
                raise StoreError(f"store label {name!r} is not in the label config {self.names}; "
                                 "use the label config the store was built with")
            row[self.names.index(name)] = 1.0
        self._codes[value] = len(self._rows)
        self._rows.append(row)
        self._table = np.stack(self._rows)
