"""Label decisions, threshold tuning and metrics. Pure functions over arrays."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from .calibration import ECE_BINS, expected_calibration_error

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


FALLBACKS = ("top", "nearest")


def decide(probs: np.ndarray, thresholds: np.ndarray, task: str = "multi", fallback: str = "top") -> np.ndarray:
    """Gives (N, L) bool predictions.

    multi: the labels scoring at or over their threshold; an image with none gets one label anyway,
    so that it always gets some reactions: the top-scoring label ("top") or the one nearest to its
    threshold, highest score / threshold ("nearest", which favours rare labels, whose thresholds
    are low). Heads choose between the two on validation (`choose_fallback`).
    single: the top label, plus any other label at or over its threshold (softmax scores, so a
    second label needs a real share of the probability; this lets the emoji policy combine two
    emotions).
    """
    chosen = probs >= thresholds[None, :]
    rows = np.arange(len(probs))
    if task == "single":
        chosen[rows, probs.argmax(axis=1)] = True
        return chosen
    empty = ~chosen.any(axis=1)
    key = probs[empty] / np.maximum(thresholds, 1e-6)[None, :] if fallback == "nearest" else probs[empty]
    chosen[empty, key.argmax(axis=1)] = True
    return chosen


def choose_fallback(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> str:
    """Gives the multi-label fallback ("top" or "nearest") with the higher macro-F1 on (probs,
    targets); "top", the plainer rule, on a tie. Neither wins everywhere: "nearest" scores higher
    on the benchmark's multi-label set, "top" on the demo's styles (docs/usage.md, "Train and evaluate a head")."""
    scores = {rule: macro_f1(probs, targets, thresholds, "multi", rule) for rule in FALLBACKS}
    return "nearest" if scores["nearest"] > scores["top"] + 1e-9 else "top"


def f1_per_threshold(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Gives (T, L) F1 of each label at each threshold of `grid` (labels decided independently)."""
    truth = targets.astype(bool)
    f1 = np.zeros((len(grid), probs.shape[1]))
    for j in range(probs.shape[1]):
        # Counting scores at or over each threshold in sorted arrays: O(N log N), no (T, N) matrices.
        pos, neg = np.sort(probs[truth[:, j], j]), np.sort(probs[~truth[:, j], j])
        tp = len(pos) - np.searchsorted(pos, grid, side="left")
        fp = len(neg) - np.searchsorted(neg, grid, side="left")
        fn = len(pos) - tp
        denom = 2 * tp + fp + fn
        f1[:, j] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Gives (L,) float32 per-label thresholds that maximise each label's F1 on (probs, targets).

    Ties go to the threshold nearest 0.5; a label with no positives keeps 0.5.
    """
    f1 = f1_per_threshold(probs, targets, grid)
    closeness = -np.abs(grid - 0.5)[:, None] * 1e-6  # tie-break only
    best = grid[np.argmax(f1 + closeness, axis=0)]
    best[targets.sum(axis=0) == 0] = 0.5
    return best.astype(np.float32)


def tune_secondary_thresholds(probs: np.ndarray, targets: np.ndarray,
                              grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Gives (L,) float32 thresholds for the single-label rule (top label, plus others over threshold).

    The top label is always chosen, so label j's threshold changes only label j's counts: each is
    tuned alone for its own F1, exactly. Ties go to the highest threshold (fewest second labels);
    a softmax score under the top one is at most 0.5, so a threshold over 0.5 means "never second".
    """
    truth = targets.astype(bool)
    top = np.zeros_like(truth)
    top[np.arange(len(probs)), probs.argmax(axis=1)] = True
    thresholds = np.full(probs.shape[1], grid[-1], np.float32)
    for j in range(probs.shape[1]):
        fixed_tp, fixed_fp = int((top[:, j] & truth[:, j]).sum()), int((top[:, j] & ~truth[:, j]).sum())
        rest = ~top[:, j]
        pos, neg = np.sort(probs[rest & truth[:, j], j]), np.sort(probs[rest & ~truth[:, j], j])
        tp = fixed_tp + len(pos) - np.searchsorted(pos, grid, side="left")
        fp = fixed_fp + len(neg) - np.searchsorted(neg, grid, side="left")
        fn = int(truth[:, j].sum()) - tp
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        thresholds[j] = grid[len(grid) - 1 - np.argmax(f1[::-1])]
    return thresholds


def tune(probs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """Gives (L,) thresholds for `decide` with this task, tuned on (probs, targets)."""
    return tune_secondary_thresholds(probs, targets) if task == "single" else tune_thresholds(probs, targets)


def macro_f1(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, task: str = "multi",
             fallback: str = "top") -> float:
    """Gives macro-F1 over labels that have positives, with the `decide` rule."""
    pred = decide(probs, thresholds, task, fallback)
    present = targets.sum(axis=0) > 0
    _, _, f1, _ = precision_recall_fscore_support(targets[:, present], pred[:, present], average=None,
                                                  zero_division=0)
    return float(f1.mean()) if len(f1) else 0.0


def top1_macro_f1(probs: np.ndarray, targets: np.ndarray) -> float:
    """Gives macro-F1 of the top label alone (single-label), over labels with positives."""
    pred = np.zeros(targets.shape, bool)
    pred[np.arange(len(probs)), probs.argmax(axis=1)] = True
    present = targets.sum(axis=0) > 0
    _, _, f1, _ = precision_recall_fscore_support(targets[:, present], pred[:, present], average=None,
                                                  zero_division=0)
    return float(f1.mean()) if len(f1) else 0.0


def confusion(pred: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Gives (L, L) int counts: row i, column j = images labelled i that were given label j.

    For a single-label set and top-1 predictions this is the usual confusion matrix; for
    multi-label sets an image counts once in each of its label rows."""
    return (targets.T.astype(np.int64) @ pred.astype(np.int64))


def report(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str],
           task: str = "multi", uncalibrated: np.ndarray | None = None, fallback: str = "top",
           pred: np.ndarray | None = None) -> dict:
    """Gives a JSON-ready dict: top-1 accuracy (single-label), macro/micro F1, mAP, ECE (before and
    after calibration when `uncalibrated` scores are given), a confusion matrix, and per-label
    precision/recall/F1/AP/support/threshold. `pred`: the (N, L) decisions when they were made otherwise
    than by `thresholds` alone (a post head decides posts with words by its fusion's thresholds)."""
    pred = decide(probs, thresholds, task, fallback) if pred is None else pred
    p, r, f1, support = precision_recall_fscore_support(targets, pred, average=None, zero_division=0)
    micro = precision_recall_fscore_support(targets, pred, average="micro", zero_division=0)
    present = support > 0
    per_label = {}
    for j, name in enumerate(labels):
        ap = float(average_precision_score(targets[:, j], probs[:, j])) if present[j] else None
        per_label[name] = {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f1[j]),
                           "average_precision": ap, "support": int(support[j]),
                           "threshold": float(thresholds[j])}
    aps = [v["average_precision"] for v in per_label.values() if v["average_precision"] is not None]
    out = {"count": int(len(targets)), "task": task}
    top = probs.argmax(axis=1)
    if task == "single":
        out["top1_accuracy"] = float((targets[np.arange(len(top)), top] > 0).mean()) if len(top) else 0.0
        out["top1_macro_f1"] = top1_macro_f1(probs, targets)
        shown = np.zeros(pred.shape, bool)
        shown[np.arange(len(top)), top] = True
    else:
        shown = pred
    out.update({
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "micro_f1": float(micro[2]),
        "macro_precision": float(p[present].mean()) if present.any() else 0.0,
        "macro_recall": float(r[present].mean()) if present.any() else 0.0,
        "mAP": float(np.mean(aps)) if aps else 0.0,
        "ece": expected_calibration_error(probs, targets, task),
        "ece_bins": ECE_BINS,
    })
    if uncalibrated is not None:
        out["ece_before_calibration"] = expected_calibration_error(uncalibrated, targets, task)
    out["confusion_matrix"] = {"rows": "true label", "columns": "top label" if task == "single" else "predicted labels",
                               "counts": confusion(shown, targets).tolist()}
    out["per_label"] = per_label
    out["averaging"] = "macro averages cover labels with at least one positive"
    return out
