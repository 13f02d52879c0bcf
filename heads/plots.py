"""PNG plots of a head's training and metrics: curves or the L2 path, per-label F1, PR curves,
the confusion matrix. Files are written here; the numbers come from `metrics.report`."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_plots(out_dir: Path, labels: list[str], metrics: dict, probs: np.ndarray | None = None,
                targets: np.ndarray | None = None, history: list[dict] | None = None) -> list[Path]:
    """Writes the PNG plots and gives their paths.

    `history` holds per-epoch records (MLP: training_curves.png) or per-strength records of the
    L2 path (linear: l2_path.png); `probs`/`targets` (N, L) add pr_curves.png.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history and "epoch" in history[0]:
        written.append(_training_curves(plt, history, out_dir / "training_curves.png"))
    elif history and "l2" in history[0]:
        written.append(_l2_path(plt, history, out_dir / "l2_path.png"))
    written.append(_per_label_f1(plt, labels, metrics, out_dir / "per_label_f1.png"))
    if probs is not None and targets is not None:
        written.append(_pr_curves(plt, labels, metrics, probs, targets, out_dir / "pr_curves.png"))
    if "confusion_matrix" in metrics:
        written.append(_confusion(plt, labels, metrics, out_dir / "confusion_matrix.png"))
    return written


def _training_curves(plt, history: list[dict], path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_macro_f1"] for h in history], color="tab:green")
    ax2.set(xlabel="epoch", ylabel="macro-F1", title="Validation macro-F1", ylim=(0, 1))
    fig.tight_layout()
    return _save(plt, fig, path)


def _l2_path(plt, history: list[dict], path: Path) -> Path:
    # The grid's solves only: the refinement (per-label strengths) and the final solve are not on the grid.
    history = [h for h in history if "l2_per_label" not in h and not h.get("final")] or history
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    strengths = [max(h["l2"], 1e-12) for h in history]
    ax1.semilogx(strengths, [h["train_loss"] for h in history], marker="o")
    ax1.set(xlabel="L2 strength", ylabel="training objective", title="L-BFGS solve per strength")
    ax1.invert_xaxis()
    ax2.semilogx(strengths, [h["val_macro_f1"] for h in history], marker="o", color="tab:green")
    ax2.set(xlabel="L2 strength (strong to weak)", ylabel="macro-F1", title="Validation macro-F1", ylim=(0, 1))
    ax2.invert_xaxis()
    fig.tight_layout()
    return _save(plt, fig, path)


def _per_label_f1(plt, labels: list[str], metrics: dict, path: Path) -> Path:
    per = metrics["per_label"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    scores = [per[n]["f1"] for n in labels]
    bars = ax.bar(labels, scores, color=["tab:blue" if per[n]["support"] else "lightgray" for n in labels])
    ax.bar_label(bars, labels=[f"{s:.2f}\nn={per[n]['support']}" for s, n in zip(scores, labels)], fontsize=8)
    ax.axhline(metrics["macro_f1"], color="tab:red", linestyle="--", label=f"macro-F1 {metrics['macro_f1']:.3f}")
    title = "F1 per emotion"
    if "top1_accuracy" in metrics:
        title += f" (top-1 accuracy {metrics['top1_accuracy']:.3f})"
    ax.set(ylim=(0, 1.15), ylabel="F1", title=title)
    ax.tick_params(axis="x", labelrotation=30 if len(labels) > 8 else 0)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return _save(plt, fig, path)


def _pr_curves(plt, labels, metrics, probs, targets, path: Path) -> Path:
    from sklearn.metrics import precision_recall_curve

    per = metrics["per_label"]
    fig, ax = plt.subplots(figsize=(6, 5))
    for j, name in enumerate(labels):
        if targets[:, j].any():
            precision, recall, _ = precision_recall_curve(targets[:, j], probs[:, j])
            ax.plot(recall, precision, label=f"{name} (AP {per[name]['average_precision']:.2f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall per emotion", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def _confusion(plt, labels: list[str], metrics: dict, path: Path) -> Path:
    matrix = metrics["confusion_matrix"]
    counts = np.asarray(matrix["counts"], dtype=float)
    # Rows divided by each label's image count: the diagonal is that label's recall.
    support = np.array([metrics["per_label"][n]["support"] for n in labels], dtype=float)
    shares = counts / np.maximum(support, 1)[:, None]
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel=matrix["columns"], ylabel=matrix["rows"], title="Confusion (counts; colour: share of row)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
