"""Batch scoring: every stored vector through a head, nothing re-embedded, written to Parquet or JSONL.

The store is read block by block from its memory-mapped shards (its index is not loaded). Each block
is scored by the head, decided by its thresholds and answered by the emoji policy for the whole block
at once (`emoreact.heads.policy.reactions`: the policy runs once per distinct list of predicted
labels, not once per image), then written as one Parquet row group built column by column, or as
JSON lines. Memory stays flat whatever the size of the store. The answers are those `predict` gives
for the same vectors: the same decisions, the same emojis in the same order.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emoreact.heads import EmotionHead
from emoreact.heads.policy import Reactions, reactions
from emoreact.index import Store
from emoreact.labels import LabelConfig, load_label_config
from emoreact.outputs import ResultWriter, output_format
from emoreact.prefetch import prefetched
from emoreact.results import SCORED_ROW
from emoreact.trainset import BLOCK_ROWS, SPLITS, batches

log = logging.getLogger(__name__)


def score(store: str | Path, head: str | Path, out: str | Path, split: str | None = None, *,
          labels: str | Path | LabelConfig | None = None, batch_rows: int = BLOCK_ROWS,
          progress: bool = False) -> dict:
    """Writes one row per stored image (of `split`, or every one) to `out` and gives a summary
    {"rows", "out", "format", "seconds", "rows_per_s"}.

    `out` ends in .parquet or .jsonl. A row holds id, path (as stored), split, emotion_scores
    (calibrated, per label), predicted_emotions (best first), allowed_emojis (best fit first),
    reaction_scores (each allowed emoji's fit) and blocked_emojis. `labels` swaps in another emoji
    policy (same label names), as for `predict`.
    """
    fmt = output_format(out)  # before any work: a wrong name fails at once
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    start = time.perf_counter()
    with Store.open(store, with_index=False) as opened:
        trained = EmotionHead.load(head, opened.model_id, opened.dim)
        if labels is not None:
            trained.with_policy(labels if isinstance(labels, LabelConfig) else load_label_config(labels))
        schema = SCORED_ROW.arrow_schema(trained.labels) if fmt == "parquet" else None
        with ResultWriter(out, schema, _STRING_LEAVES) as writer, tqdm(total=len(opened) if split is None else None, unit="img",
                                                       desc="score", disable=not progress) as bar:
            for block in prefetched(batches(opened, batch_rows, split)):
                # A post head reads each post's stored words too; the block is ours, so it may be overwritten.
                text = opened.text_vectors_of(block.ids) if trained.reads_text else None
                probs = trained.predict_proba(block.vectors, overwrite_x=True, text=text)
                answer = reactions(probs, trained.decide(probs, text), trained.label_config)
                if fmt == "parquet":
                    writer.write_table(_table(block, probs, answer, trained.labels, schema))
                else:
                    writer.write_rows(_rows(block, probs, answer, trained.labels))
                bar.update(len(block.ids))
    seconds = time.perf_counter() - start
    log.info("scored %d images in %.1f s into %s", writer.rows, seconds, out)
    return {"rows": writer.rows, "out": str(out), "format": fmt, "seconds": round(seconds, 2),
            "rows_per_s": round(writer.rows / seconds, 1) if seconds > 0 else None}


# The Parquet leaves that repeat a few strings (dictionary-encoded); the scores are written plain.
_STRING_LEAVES = ["split", "predicted_emotions.list.element", "allowed_emojis.list.element",
                  "blocked_emojis.list.element", "reaction_scores.key_value.key"]


def _table(block, probs: np.ndarray, answer: Reactions, labels: list[str], schema):
    """Gives one block's rows as a pyarrow table, built column by column (no per-row Python objects) and
    put in the order of the schema, which `SCORED_ROW` gives."""
    import pyarrow as pa

    def strings(vocabulary: list[str], values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(vocabulary).take(pa.array(values)))

    emojis = pa.array(answer.emojis).take(pa.array(answer.allowed))
    columns = {"id": pa.array(block.ids, pa.int64()), "path": pa.array(block.paths, pa.string()),
               "split": pa.array(block.splits, pa.string()),
               "emotion_scores": pa.StructArray.from_arrays([pa.array(probs[:, j], pa.float32())
                                                             for j in range(len(labels))], labels),
               "predicted_emotions": strings(labels, answer.predicted, answer.predicted_offsets),
               "allowed_emojis": pa.ListArray.from_arrays(pa.array(answer.allowed_offsets, pa.int32()), emojis),
               "reaction_scores": pa.MapArray.from_arrays(pa.array(answer.allowed_offsets, pa.int32()), emojis,
                                                          pa.array(answer.fit, pa.float32())),
               "blocked_emojis": strings(answer.emojis, answer.blocked, answer.blocked_offsets)}
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _rows(block, probs: np.ndarray, answer: Reactions, labels: list[str]) -> list[dict]:
    """Gives one block's rows as result dicts, scores rounded as `predict` rounds them."""
    rows = []
    for i, (image_id, path, split) in enumerate(zip(block.ids.tolist(), block.paths, block.splits)):
        predicted, allowed, fit, blocked = answer.row(i, labels)
        rows.append(SCORED_ROW.answer(id=image_id, path=path, split=split, emotion_scores=dict(zip(labels, probs[i])),
                                      predicted_emotions=predicted, allowed_emojis=allowed,
                                      reaction_scores=dict(zip(allowed, fit)), blocked_emojis=blocked))
    return rows
