"""Head training: our linear head vs scikit-learn's one-vs-rest logistic regression."""
from __future__ import annotations

import numpy as np
import torch

from emoreact.heads import HeadConfig, fit_head, load_label_config
from emoreact.heads.metrics import macro_f1, tune_thresholds

from .common import environment, timed


def make_data(count: int, dim: int = 512, labels: int = 8, seed: int = 0):
    """Gives unit-norm CLIP-like vectors (a shared direction plus label directions and noise), multi-label."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    directions = rng.normal(size=(labels, dim))
    y = (rng.random((count, labels)) < np.linspace(0.3, 0.03, labels)).astype(np.float32)
    y[y.sum(1) == 0, -1] = 1
    # Signal and noise set so that neither head is near a perfect score (macro-F1 about 0.95).
    x = 4 * common + y @ directions * 0.35 + rng.normal(size=(count, dim)) * 2.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def run(count: int = 100_000, device: str = "auto") -> dict:
    """Gives seconds and test macro-F1 of both heads on the same split, tuned thresholds for both."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    x, y = make_data(count + count // 5)
    train, val, test = slice(0, count * 8 // 10), slice(count * 8 // 10, count), slice(count, None)
    labels = load_label_config()
    config = HeadConfig(batch_size=4096, epochs=40, patience=5, lr=1e-2)
    ours_s, (head, history) = timed(lambda: fit_head(config, labels, "bench/none", x[train], y[train],
                                                     x[val], y[val], device=str(dev)))
    ours_f1 = macro_f1(head.predict_proba(x[test]), y[test], head.thresholds_)

    def sklearn_fit():
        return OneVsRestClassifier(LogisticRegression(max_iter=300, class_weight="balanced"), n_jobs=1).fit(
            x[train], y[train])

    base_s, clf = timed(sklearn_fit)
    thresholds = tune_thresholds(clf.predict_proba(x[val]), y[val])
    base_f1 = macro_f1(clf.predict_proba(x[test]), y[test], thresholds)
    return {"bench": "head", **environment(dev), "vectors": count, "dim": x.shape[1], "labels": y.shape[1],
            "ours_seconds": round(ours_s, 2), "ours_epochs": len(history), "ours_macro_f1": round(ours_f1, 4),
            "baseline_sklearn_ovr_logreg_seconds": round(base_s, 2), "baseline_macro_f1": round(base_f1, 4),
            "speedup": round(base_s / ours_s, 2), "macro_f1_gap": round(ours_f1 - base_f1, 4)}
