"""Multi-label decisions, threshold tuning, metrics and plots. Pure functions over arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def decide(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Gives (N, L) bool predictions: scores at or over each label's threshold, else the top label.

    An image always gets at least one emotion, so it always gets some reactions.
    """
    chosen = probs >= thresholds[None, :]
    empty = ~chosen.any(axis=1)
    chosen[empty, probs[empty].argmax(axis=1)] = True
    return chosen


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


def macro_f1(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> float:
    """Gives macro-F1 over labels that have positives, with the `decide` rule."""
    pred = decide(probs, thresholds)
    present = targets.sum(axis=0) > 0
    _, _, f1, _ = precision_recall_fscore_support(targets[:, present], pred[:, present], average=None,
                                                  zero_division=0)
    return float(f1.mean()) if len(f1) else 0.0


def report(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> dict:
    """Gives a JSON-ready dict: macro/micro F1, mAP, and per-label precision/recall/F1/AP/support."""
    pred = decide(probs, thresholds)
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
    return {
        "count": int(len(targets)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "micro_f1": float(micro[2]),
        "macro_precision": float(p[present].mean()) if present.any() else 0.0,
        "macro_recall": float(r[present].mean()) if present.any() else 0.0,
        "mAP": float(np.mean(aps)) if aps else 0.0,
        "per_label": per_label,
        "note": "macro averages cover labels with at least one positive",
    }


def write_plots(out_dir: Path, labels: list[str], metrics: dict, probs: np.ndarray | None = None,
                targets: np.ndarray | None = None, history: list[dict] | None = None) -> list[Path]:
    """Writes PNG plots (training curves, per-label F1, PR curves) and gives their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        epochs = [h["epoch"] for h in history]
        ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
        ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
        ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
        ax1.legend()
        ax2.plot(epochs, [h["val_macro_f1"] for h in history], color="tab:green")
        ax2.set(xlabel="epoch", ylabel="macro-F1", title="Validation macro-F1 (tuned thresholds)", ylim=(0, 1))
        fig.tight_layout()
        written.append(_save(fig, out_dir / "training_curves.png"))
    per = metrics["per_label"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    scores = [per[n]["f1"] for n in labels]
    bars = ax.bar(labels, scores, color=["tab:blue" if per[n]["support"] else "lightgray" for n in labels])
    ax.bar_label(bars, labels=[f"{s:.2f}\nn={per[n]['support']}" for s, n in zip(scores, labels)], fontsize=8)
    ax.axhline(metrics["macro_f1"], color="tab:red", linestyle="--", label=f"macro-F1 {metrics['macro_f1']:.3f}")
    ax.set(ylim=(0, 1.15), ylabel="F1", title="F1 per emotion")
    ax.legend(loc="upper right")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "per_label_f1.png"))
    if probs is not None and targets is not None:
        fig, ax = plt.subplots(figsize=(6, 5))
        for j, name in enumerate(labels):
            if targets[:, j].any():
                precision, recall, _ = precision_recall_curve(targets[:, j], probs[:, j])
                ax.plot(recall, precision, label=f"{name} (AP {per[name]['average_precision']:.2f})")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall per emotion", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "pr_curves.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
