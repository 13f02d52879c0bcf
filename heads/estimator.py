"""The heads as scikit-learn estimators: `LinearHead` and `MLPHead`.

They follow the estimator contract (`__init__` stores hyperparameters only, `fit(X, y)` returns
self, learned state ends in `_`), so `cross_val_score`, `GridSearchCV` and `Pipeline` work on
them. `y` is either class labels (N,) — a single-label task, `predict` gives labels — or an (N, L)
{0, 1} indicator matrix — multi-label, `predict` gives an indicator matrix.

The regularisation search, calibration and thresholds need validation data: `fit` holds out
`validation_fraction` of the images (per class, seeded) for them, as scikit-learn's
early-stopping estimators do; with too few images it tunes on the training images. The fitted
`head_` is an ordinary `EmotionHead` (`head_.save(folder)` persists it).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from emoreact.labels import parse_label_config
from .model import HeadConfig
from .train import fit_head

MIN_VALIDATION = 20  # fewer held-out images than this cannot tune anything: tune on training images


class _HeadEstimator(ClassifierMixin, BaseEstimator):
    """Shared fit/predict; subclasses give `_config()`."""

    def fit(self, X, y):
        """Trains the head on (X (N, D), y (N,) labels or (N, L) indicators); gives self."""
        X, y = validate_data(self, X, y, multi_output=True, dtype=np.float32, y_numeric=False)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected; it is read as "
                          "class labels", DataConversionWarning, stacklevel=2)
            y = y.ravel()
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind in ("multilabel-indicator",):
            self.multilabel_ = True
            self.classes_ = np.arange(y.shape[1])
            targets = y.astype(np.float32)
        else:
            if y.ndim == 2:
                raise ValueError(f"y of shape {y.shape} is neither class labels (N,) nor a {{0, 1}} "
                                 "indicator matrix (N, L); give one of those")
            self.multilabel_ = False
            self.classes_, codes = np.unique(y, return_inverse=True)
            targets = np.eye(len(self.classes_), dtype=np.float32)[codes]
        if len(self.classes_) < 2:
            raise ValueError(f"y has only one class ({self.classes_[0]!r}); a head needs at least 2 classes")
        train, val = _holdout(targets, self.validation_fraction, self.random_state)
        x_val, y_val = (X[val], targets[val]) if len(val) else (X[train], targets[train])
        self.head_, self.history_ = fit_head(self._config(), _generic_labels(len(self.classes_)), "sklearn/none",
                                             X[train], targets[train], x_val, y_val, device=self.device)
        self.task_ = self.head_.task_
        self.n_iter_ = len(self.history_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Gives (N, L) float32 calibrated scores; rows sum to 1 for a single-label head."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return self.head_.predict_proba(X)

    def decision_function(self, X) -> np.ndarray:
        """Gives calibrated logits: (N, L), or (N,) (second minus first class) with two classes
        and one label per image, as scikit-learn's binary classifiers do."""
        import torch

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with torch.inference_mode():
            logits = self.head_.calibrate(self.head_.logits(torch.from_numpy(X))).numpy()
        if not self.multilabel_ and logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict(self, X) -> np.ndarray:
        """Gives (N,) class labels (the top class), or an (N, L) int indicator matrix for multi-label y."""
        probs = self.predict_proba(X)
        if self.multilabel_:
            return self.head_.decide(probs).astype(np.int64)
        return self.classes_[probs.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.classifier_tags.multi_label = True
        tags.non_deterministic = False
        return tags


class LinearHead(_HeadEstimator):
    """The linear head: L-BFGS logistic (softmax or sigmoid) regression over standardised vectors.

    l2=None searches `l2_grid` on the held-out images; a number fixes the strength. The defaults are
    `HeadConfig`'s (`LinearSettings` in heads/config.py).
    """

    def __init__(self, task=HeadConfig.task, loss=HeadConfig.loss, l2=None, l2_grid=HeadConfig.l2_grid,
                 max_iter=HeadConfig.max_iter, calibrate=HeadConfig.calibrate, validation_fraction=0.15,
                 device="cpu", random_state=HeadConfig.seed):
        self.task = task
        self.loss = loss
        self.l2 = l2
        self.l2_grid = l2_grid
        self.max_iter = max_iter
        self.calibrate = calibrate
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _config(self) -> HeadConfig:
        return HeadConfig(kind="linear", task=self.task, loss=self.loss, search=self.l2 is None,
                          l2=HeadConfig.l2 if self.l2 is None else float(self.l2), l2_grid=tuple(self.l2_grid),
                          max_iter=self.max_iter, calibrate=self.calibrate, seed=_seed(self.random_state))


class MLPHead(_HeadEstimator):
    """The MLP head: one hidden layer trained with AdamW and early stopping on the held-out images.

    hidden=None or dropout=None searches `grid` ((hidden, dropout) pairs) on them. The defaults are
    `HeadConfig`'s (`MLPSettings` in heads/config.py).
    """

    def __init__(self, task=HeadConfig.task, loss=HeadConfig.loss, hidden=None, dropout=None,
                 grid=HeadConfig.mlp_grid, lr=HeadConfig.lr, weight_decay=HeadConfig.weight_decay,
                 epochs=HeadConfig.epochs, batch_size=HeadConfig.batch_size, patience=HeadConfig.patience,
                 calibrate=HeadConfig.calibrate, validation_fraction=0.15, device="cpu",
                 random_state=HeadConfig.seed):
        self.task = task
        self.loss = loss
        self.hidden = hidden
        self.dropout = dropout
        self.grid = grid
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.calibrate = calibrate
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _config(self) -> HeadConfig:
        search = self.hidden is None or self.dropout is None
        return HeadConfig(kind="mlp", task=self.task, loss=self.loss, search=search,
                          hidden=HeadConfig.hidden if self.hidden is None else int(self.hidden),
                          dropout=HeadConfig.dropout if self.dropout is None else float(self.dropout),
                          mlp_grid=tuple(self.grid),
                          lr=self.lr, weight_decay=self.weight_decay, epochs=self.epochs,
                          batch_size=self.batch_size, patience=self.patience, calibrate=self.calibrate,
                          seed=_seed(self.random_state))


def _holdout(targets: np.ndarray, fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """Gives (train rows, validation rows): `fraction` of each label's images (by first label),
    at least one where a label has 3 or more; no validation rows when fewer than MIN_VALIDATION."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction={fraction!r} must be in [0, 1)")
    rng = np.random.default_rng(_seed(seed))
    first = targets.argmax(axis=1)
    val = []
    for label in np.unique(first):
        rows = rng.permutation(np.flatnonzero(first == label))
        take = int(round(fraction * len(rows)))
        val.extend(rows[:max(take, 1 if len(rows) >= 3 and fraction > 0 else 0)])
    val = np.sort(np.asarray(val, dtype=np.int64))
    if len(val) < MIN_VALIDATION:
        return np.arange(len(targets)), np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(targets)), val), val


def _generic_labels(count: int):
    """Gives a label config naming the outputs label_0, label_1, ... (the estimator knows no
    emotions; `head_.with_policy` cannot rename them, train with `fit_head` for a real config)."""
    tables = "\n".join(f'[labels.label_{j}]\nallowed = ["👀"]\n' for j in range(count))
    return parse_label_config(tables, origin="<estimator labels>")


def _seed(random_state) -> int:
    if random_state is None:
        return 0
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    return int(random_state.randint(0, 2**31 - 1))
