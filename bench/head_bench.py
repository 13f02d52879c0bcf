"""Head training: our linear head against scikit-learn's LogisticRegression, C searched on validation.

Both sides follow the linear-probe protocol of the CLIP paper: an L2-regularised logistic
regression whose strength is chosen on a validation split from a grid of 8 values, 10x apart.
Both see the same vectors and splits (80/10/10), both standardise them first (scikit-learn's
advice for lbfgs; our head does it too), both use balanced class weights (our default loss),
and both times include the whole search and, for multi-label sets, the threshold tuning.
scikit-learn fits every C from scratch with max_iter=1000, as the protocol does.

The generated sets (100k x 512, 8 labels) look like CLIP vectors: unit-norm, with a shared
direction (mean pairwise cosine about 0.5), a low-rank nuisance part (32 correlated directions,
like lighting or style) and isotropic noise. They are built so that not every label can be cut
off from the rest by one hyperplane (one-vs-rest):
- single-label: classes follow FI's 8 class frequencies (DATASETS.md). Classes 0-5 each have a
  random direction; classes 6 and 7 sit halfway between classes 0 and 1, and 2 and 3. A class in
  the middle of two others lies in their convex hull, so no single hyperplane separates it from
  the rest; a softmax over all classes can still carve it out (it wins where neither side does).
- multi-label: each label is present with its own frequency (30% down to 5%), at least one per
  image; the signal is the sum of the present labels' directions. Labels 6 and 7 have the
  midpoints of labels 0 and 1, and 2 and 3, as directions, so an image with both 0 and 1 shows
  twice label 6's signal: a linear score that fires on label 6 fires harder on {0, 1}.
"""
from __future__ import annotations

import numpy as np
import torch

from emoreact.heads import HeadConfig, fit_head, load_label_config
from emoreact.heads.metrics import choose_fallback, macro_f1, top1_macro_f1, tune_thresholds

from .common import environment, timed

FI_COUNTS = (4942, 1266, 3151, 5374, 1658, 2963, 1032, 2922)  # FI's 8 Mikels classes
MULTI_RATES = (0.30, 0.25, 0.20, 0.15, 0.12, 0.10, 0.07, 0.05)
# 8 values, 10x apart; C is the inverse L2 strength on standardised vectors (C = 1 / (l2 * N_train)).
SKLEARN_C_GRID = tuple(10.0 ** np.arange(-5, 3))


def make_data(count: int, task: str = "single", dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gives ((N, D) float32 unit-norm vectors, (N, 8) float32 {0, 1} labels) as the module docstring says."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(8, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions[6] = (directions[0] + directions[1]) / 2
    directions[7] = (directions[2] + directions[3]) / 2
    if task == "single":
        y = np.eye(8, dtype=np.float32)[rng.choice(8, size=count, p=np.array(FI_COUNTS) / sum(FI_COUNTS))]
        strength = 0.11
    else:
        y = (rng.random((count, 8)) < np.array(MULTI_RATES)).astype(np.float32)
        empty = np.flatnonzero(y.sum(axis=1) == 0)
        y[empty, rng.integers(0, 8, size=len(empty))] = 1
        strength = 0.14
    common = rng.normal(size=dim)
    nuisance = rng.normal(size=(32, dim)) / np.sqrt(dim)
    x = (1.05 * common / np.linalg.norm(common) + strength * y @ directions
         + 0.15 * rng.normal(size=(count, 32)) @ nuisance + 0.6 * rng.normal(size=(count, dim)) / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def run(count: int = 100_000, device: str = "auto", tasks: tuple[str, ...] = ("single", "multi"),
        c_grid: tuple[float, ...] = SKLEARN_C_GRID) -> dict:
    """Gives, per generated set, both sides' test macro-F1 (and top-1 accuracy for single-label),
    seconds including the search, and the ratios. (Tests pass a shorter `c_grid`.)"""
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    result = {"bench": "head", **environment(dev), "vectors": count, "dim": 512, "labels": 8,
              "split": "80/10/10 train/val/test", "sklearn_C_grid": list(c_grid)}
    for task in tasks:
        result[task] = _compare(task, count, dev, c_grid)
    return result


def _compare(task: str, count: int, dev: torch.device, c_grid: tuple[float, ...]) -> dict:
    _warm_up()
    x, y = make_data(count, task)
    train, val, test = slice(0, count * 8 // 10), slice(count * 8 // 10, count * 9 // 10), slice(count * 9 // 10, None)
    labels = load_label_config()
    ours_s, (head, history) = timed(lambda: fit_head(HeadConfig(), labels, "bench/none", x[train], y[train],
                                                     x[val], y[val], device=str(dev)))
    probs = head.predict_proba(x[test])
    ours = {"seconds": round(ours_s, 2), "task_detected": head.task_,
            "l2_tried": [h["l2"] for h in history], "l2_chosen": sorted(set(head.l2_)),
            "macro_f1": round(macro_f1(probs, y[test], head.thresholds_, head.task_, head.fallback_), 4)}
    search = _sklearn_single if task == "single" else _sklearn_multi
    base_s, base = timed(lambda: search(x[train], y[train], x[val], y[val], x[test], y[test], c_grid))
    base["seconds"] = round(base_s, 2)
    if task == "single":
        truth = y[test].argmax(axis=1)
        ours["top1_accuracy"] = round(float((probs.argmax(axis=1) == truth).mean()), 4)
        ours["top1_macro_f1"] = round(top1_macro_f1(probs, y[test]), 4)
    return {"ours": ours, "sklearn": base, "speedup": round(base_s / ours_s, 2),
            "macro_f1_gap": round(ours["macro_f1"] - base["macro_f1"], 4)}


def _sklearn_single(xt, yt, xv, yv, xs, ys, c_grid) -> dict:
    """Multinomial LogisticRegression (lbfgs) per C; the best validation macro-F1 wins."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = (-1.0, None, None)
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, class_weight="balanced"))
        model.fit(xt, yt.argmax(axis=1))
        probs = _full_proba(model, xv, yv.shape[1])
        best = max(best, (top1_macro_f1(probs, yv), c, model), key=lambda b: b[0])
    probs = _full_proba(best[2], xs, ys.shape[1])
    return {"C": best[1], "macro_f1": round(top1_macro_f1(probs, ys), 4),
            "top1_accuracy": round(float((probs.argmax(axis=1) == ys.argmax(axis=1)).mean()), 4)}


def _sklearn_multi(xt, yt, xv, yv, xs, ys, c_grid) -> dict:
    """One-vs-rest LogisticRegression per C, thresholds tuned on validation; the best macro-F1 wins."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = (-1.0, None, None, None)
    for c in c_grid:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(
            LogisticRegression(C=c, max_iter=1000, class_weight="balanced"))).fit(xt, yt)
        probs = model.predict_proba(xv)
        thresholds = tune_thresholds(probs, yv)
        best = max(best, (macro_f1(probs, yv, thresholds), c, model, thresholds), key=lambda b: b[0])
    # The same decision rule as ours: the fallback for images with no label over threshold is
    # chosen on validation.
    fallback = choose_fallback(best[2].predict_proba(xv), yv, best[3])
    return {"C": best[1], "fallback": fallback,
            "macro_f1": round(macro_f1(best[2].predict_proba(xs), ys, best[3], "multi", fallback), 4)}


def _warm_up() -> None:
    """Pays one-off import costs of both sides before timing: torch's first optimizer pulls in
    torch._dynamo (seconds), scikit-learn its solvers."""
    import sklearn.linear_model  # noqa: F401
    import sklearn.multiclass  # noqa: F401

    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])


def _full_proba(model, x: np.ndarray, count: int) -> np.ndarray:
    """Gives (N, count) probabilities even when a class was missing from the training split."""
    probs = np.zeros((len(x), count), np.float32)
    probs[:, model[-1].classes_] = model.predict_proba(x)
    return probs
