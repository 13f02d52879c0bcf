"""Training a head on stored vectors.

The task (single-label softmax or multi-label sigmoid) is detected from the labels; a linear head
is solved by L-BFGS over an L2 path (heads/linear.py), an MLP by AdamW over a small width/dropout
grid (heads/mlp.py), each chosen on validation. Validation then sets, in order: the blend weight
of the optional zero-shot prior (CLAP-style init + L2 pull, WiSE-FT-style blend), the calibration
(heads/calibration.py) and the decision thresholds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from emoreact.labels import LabelConfig
from .calibration import fit_temperature
from .config import head_kind
from .fusion import MIN_POSTS, fit_fusion
from .losses import resolve_task, soft_targets
from .metrics import THRESHOLD_GRID, choose_fallback, f1_per_threshold, top1_macro_f1, tune, tune_thresholds
from .model import EmotionHead, HeadConfig, ZeroShotPrior

log = logging.getLogger(__name__)


@dataclass
class FitInputs:
    """What a head kind's `fit` gets: standardised vectors and their targets on the training device, the
    {0, 1} labels they came from, and the validation scores that choose among candidates."""

    zt: torch.Tensor  # (N, D) float32 training vectors, standardised
    tt: torch.Tensor  # (N, L) float32 training targets of the loss
    zv: torch.Tensor  # (M, D) validation vectors, standardised
    tv: torch.Tensor  # (M, L) validation targets
    y_train: np.ndarray  # (N, L) {0, 1}
    y_val: np.ndarray  # (M, L) {0, 1}
    label_scores: Callable[[torch.Tensor], np.ndarray]  # validation logits -> per-label F1 ((L,) or (1,))
    mean_score: Callable[[torch.Tensor], float]  # validation logits -> macro-F1
ZERO_SHOT_THRESHOLD = 0.3  # softmax share at which a zero-shot label counts, when no labels tune it
_ALPHAS = np.round(np.arange(0.0, 1.001, 0.1), 2)


def zero_shot_head(labels: LabelConfig, model_id: str, text: np.ndarray, logit_scale: float,
                   x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> EmotionHead:
    """Gives a head that needs no labels: softmax over CLIP's scaled cosine to each label's prompts.

    With labelled validation vectors, thresholds are tuned on them; otherwise each is 0.3.
    """
    dim = text.shape[1]
    head = EmotionHead(HeadConfig(kind="zeroshot"), labels, model_id, dim)
    count = len(labels.names)
    head.prior_ = ZeroShotPrior(text.astype(np.float32), np.full(count, logit_scale, np.float32),
                                np.zeros(count, np.float32))
    head.activation_ = "softmax"
    head.fitted_ = True
    head.thresholds_ = np.full(count, ZERO_SHOT_THRESHOLD, np.float32)
    if x_val is not None and len(x_val):
        head.thresholds_ = tune_thresholds(head.predict_proba(x_val), y_val)
    return head


def fit_head(config: HeadConfig, labels: LabelConfig, model_id: str,
             x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             text: np.ndarray | None = None, logit_scale: float = 100.0,
             device: str = "cpu", *, moments: tuple[np.ndarray, np.ndarray] | None = None,
             copy: bool = True) -> tuple[EmotionHead, list[dict]]:
    """Gives a trained head and its history (MLP: per epoch of the chosen width/dropout; linear:
    per L2 strength of the path).

    x_*: (N, D) float32 unit-norm vectors; y_*: (N, L) {0, 1}; text: (L, D) prompt embeddings,
    needed when `config.zero_shot_prior` is set. Validation data chooses the regularisation, the
    blend weight, the calibration and the thresholds.

    moments: ((D,), (D,)) mean and std to standardise with (streamed over a whole store), instead
    of those of x_train. copy=False lets a float32 x_train be standardised in place (it is
    overwritten), which saves a second copy of the training vectors (scikit-learn's `copy_X`).
    """
    kind = head_kind(config.kind)
    if not kind.trained:
        raise ValueError(f"a {config.kind} head learns nothing from labels; make it with zero_shot_head(...)")
    if config.zero_shot_prior and text is None:
        raise ValueError("zero_shot_prior needs the label text embeddings (text=...)")
    torch.manual_seed(config.seed)
    dev = torch.device(device)
    task = resolve_task(config.task, y_train, y_val)
    head = EmotionHead(config, labels, model_id, x_train.shape[1])
    head.task_, head.activation_ = task, ("softmax" if task == "single" else "sigmoid")
    targets = soft_targets(y_train) if task == "single" else y_train.astype(np.float32)
    val_targets = soft_targets(y_val) if task == "single" else y_val.astype(np.float32)
    xt, tt, xv, tv = (_tensor(a, dev) for a in (x_train, targets, x_val, val_targets))
    if config.zero_shot_prior:
        head.prior_ = calibrate_prior(text, x_train, y_train, logit_scale, task)
    standardize = head.net_[0].to(dev)
    with torch.no_grad():
        # Layer 0 is a fixed standardisation: apply it once, then train the layers after it.
        if moments is not None:
            standardize.mean.copy_(torch.as_tensor(moments[0], dtype=torch.float32))
            standardize.std.copy_(torch.as_tensor(moments[1], dtype=torch.float32))
        else:
            standardize.fit(xt)
        zv = standardize(xv)
        # In place only when x_val is not the same memory: validation is tuned on raw vectors later.
        in_place = not copy and not np.may_share_memory(x_train, x_val)
        zt = xt.sub_(standardize.mean).div_(standardize.std) if in_place else standardize(xt)
    start = time.perf_counter()
    history = kind.fit(head, FitInputs(zt, tt, zv, tv, y_train, y_val, _label_scores(task, y_val),
                                       _mean_score(task, y_val)))
    head.net_ = head.net_.eval().cpu()
    head.fitted_ = True
    _tune_on_validation(head, x_val, y_val)
    log.info("trained %s %s-label head in %.2fs (%s), alpha %.1f", config.kind, task,
             time.perf_counter() - start, head.search_[-1] if head.search_ else "", head.alpha_)
    return head, history


def add_text_channel(head: EmotionHead, t_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                     t_val: np.ndarray, y_val: np.ndarray, text: np.ndarray | None = None, logit_scale: float = 100.0,
                     device: str = "cpu") -> bool:
    """Makes a trained image head a post head (heads/fusion.py): trains a text head of its kind and settings
    on the (N, D) text vectors of the training posts with words, then fits the fusion on the validation
    posts with words (x_val: their image vectors). Rows of zeros are posts without words. Gives False,
    changing nothing, when fewer than MIN_POSTS posts of either split have words."""
    train, val = np.any(t_train != 0, axis=1), np.any(t_val != 0, axis=1)
    if train.sum() < MIN_POSTS or val.sum() < MIN_POSTS or len(np.unique(y_train[train], axis=0)) < 2:
        log.info("no text channel: %d training and %d validation posts have words (%d of each needed)",
                 int(train.sum()), int(val.sum()), MIN_POSTS)
        return False
    reader, _ = fit_head(replace(head.config, task=head.task_), head.label_config, head.model_id, t_train[train],
                         y_train[train], t_val[val], y_val[val], text=text, logit_scale=logit_scale, device=device)
    head.text_head_ = reader
    head.fusion_ = fit_fusion(head.channel_logits(x_val[val]), reader.channel_logits(t_val[val]), y_val[val],
                              head.task_)
    log.info("text channel: trained on %d posts with words, fused on %d", int(train.sum()), int(val.sum()))
    return True


def _tune_on_validation(head: EmotionHead, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """Chooses the prior's blend weight, then fits the calibration, then tunes the thresholds."""
    x = torch.from_numpy(x_val.astype(np.float32))
    score = _mean_score(head.task_, y_val)
    with torch.inference_mode():
        head_logits = head.net_(x).float()
        best = (-1.0, 0.0)
        for alpha in (_ALPHAS if head.prior_ is not None else [0.0]):
            head.alpha_ = float(alpha)
            best = max(best, (score(head.logits(x, head_logits)), float(alpha)))
        head.alpha_ = best[1]
        logits = head.logits(x, head_logits)
    if head.task_ == "multi":
        # Thresholds are tuned on the uncalibrated scores and carried through each label's
        # increasing calibration map, so calibrating changes no decision (tuning on the calibrated
        # scale would snap them to a different grid).
        with torch.inference_mode():
            thresholds = tune(head.logits_to_proba(logits).numpy(), y_val, "multi")
    if head.config.calibrate and len(x_val):
        targets = soft_targets(y_val) if head.task_ == "single" else y_val.astype(np.float32)
        head.temperature_, head.offset_ = fit_temperature(logits, torch.from_numpy(targets), head.task_)
    if head.task_ == "multi":
        raw = np.log(thresholds) - np.log1p(-thresholds)
        head.thresholds_ = (1 / (1 + np.exp(-(raw / head.temperature_ + head.offset_)))).astype(np.float32)
        with torch.inference_mode():
            probs = head.logits_to_proba(head.calibrate(logits)).numpy()
        head.fallback_ = choose_fallback(probs, y_val, head.thresholds_)
    else:
        # Softmax: one temperature keeps the top label; the second-label thresholds apply to the
        # calibrated shares, so they are tuned on them.
        with torch.inference_mode():
            probs = head.logits_to_proba(head.calibrate(logits)).numpy()
        head.thresholds_ = tune(probs, y_val, "single")


def calibrate_prior(text: np.ndarray, x: np.ndarray, y: np.ndarray, logit_scale: float, task: str = "multi",
                    steps: int = 200) -> ZeroShotPrior:
    """Gives the prior with a per-label affine map of cosine scores fitted on the training labels.

    Raw CLIP cosines are tuned for a softmax over classes at CLIP's own scale; a head needs each
    label's scores shifted and scaled on its own (the recalibration DATASETS.md warns about):
    logistic regression per label for a sigmoid head, one softmax regression for a softmax head.
    """
    cos = torch.from_numpy(np.asarray(x, np.float32)) @ torch.from_numpy(text.astype(np.float32)).T
    target = torch.from_numpy(soft_targets(y) if task == "single" else y.astype(np.float32))
    scale = torch.full((text.shape[0],), float(logit_scale), requires_grad=True)
    bias = (-cos.mean(0) * logit_scale).detach().requires_grad_(True)
    optimiser = torch.optim.LBFGS([scale, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = cos * scale + bias
        if task == "single":
            loss = -(target * torch.log_softmax(logits, dim=-1)).sum(1).mean()
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        return loss

    optimiser.step(closure)
    return ZeroShotPrior(text.astype(np.float32), scale.detach().numpy(), bias.detach().numpy())


def _label_scores(task: str, y_val: np.ndarray):
    """Gives score(val_logits) -> validation F1: single, the top label's macro-F1 (1 value);
    multi, each label's F1 at its best threshold ((L,), NaN where validation has no positives)."""
    present = y_val.sum(axis=0) > 0
    if task == "single":
        return lambda logits: np.array([top1_macro_f1(logits.cpu().numpy(), y_val)])

    def per_label(logits: torch.Tensor) -> np.ndarray:
        f1 = f1_per_threshold(torch.sigmoid(logits).cpu().numpy(), y_val, THRESHOLD_GRID).max(axis=0)
        return np.where(present, f1, np.nan)

    return per_label


def _mean_score(task: str, y_val: np.ndarray):
    """Gives score(val_logits) -> one validation macro-F1 (mean over labels with positives)."""
    scores = _label_scores(task, y_val)

    def mean(logits: torch.Tensor) -> float:
        values = scores(logits)
        return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0

    return mean


def _tensor(array: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(dev)
