"""Task detection and the training losses of both tasks. Pure functions over arrays and tensors."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import LOSSES, TASKS  # noqa: F401 - named here too, beside the losses they choose
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossGradFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def detect_task(*targets: np.ndarray) -> str:
    """Gives "single" when every labelled row of the (N, L) {0, 1} targets has exactly one label, else "multi"."""
    rows = [t.sum(axis=1) for t in targets if len(t)]
    if rows and all(np.all(r == 1) for r in rows):
        return "single"
    return "multi"


def resolve_task(requested: str, *targets: np.ndarray) -> str:
    """Gives the task to train: `requested`, or the detected one for "auto"."""
    if requested not in TASKS:
        raise ValueError(f"unknown task {requested!r}; choose one of {TASKS}")
    return detect_task(*targets) if requested == "auto" else requested


def soft_targets(y: np.ndarray) -> np.ndarray:
    """Gives (N, L) rows that sum to 1: a single-label head forced onto multi-label rows spreads
    each row's mass over its labels (rows without labels stay uniform)."""
    counts = y.sum(axis=1, keepdims=True)
    return np.where(counts > 0, y / np.maximum(counts, 1), 1.0 / y.shape[1]).astype(np.float32)


def label_weights(task: str, y: np.ndarray) -> np.ndarray:
    """Gives (L,) float32 balancing weights.

    single: class weights N / (L * n_c) (scikit-learn's "balanced"), so rare classes count as much
    as common ones in the loss; multi: pos_weight = negatives / positives per label. Both are capped
    at 100 so that a near-empty label cannot dominate.
    """
    positives = y.sum(axis=0)
    if task == "single":
        weights = len(y) / (y.shape[1] * np.maximum(positives, 1))
    else:
        weights = (len(y) - positives) / np.maximum(positives, 1)
        weights = np.maximum(weights, 1.0)
    return np.clip(weights, 1e-2, 100.0).astype(np.float32)


def make_loss(task: str, loss: str, y: np.ndarray, focal_gamma: float = 2.0,
              device: torch.device | str = "cpu") -> LossFn:
    """Gives loss(logits (N, L), targets (N, L)) -> scalar mean loss, differentiable by autograd.

    single: softmax cross-entropy (targets are rows summing to 1), class-weighted for
    "weighted_bce"; multi: sigmoid BCE, with pos_weight for "weighted_bce". "focal" adds the
    (1 - p_t)^gamma factor to the weighted form of either.
    """
    weights = torch.from_numpy(label_weights(task, y)).to(device) if loss != "bce" else None
    gamma = focal_gamma if loss == "focal" else 0.0

    def fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _loss_and_grad(task, logits, target, weights, gamma, need_grad=False)[0]

    return fn


def make_loss_grad(task: str, loss: str, y: np.ndarray, focal_gamma: float = 2.0,
                   device: torch.device | str = "cpu") -> LossGradFn:
    """Gives loss_grad(logits, targets) -> (scalar loss, (N, L) d loss / d logits) for `make_loss`'s
    loss, in closed form for (weighted) BCE and cross-entropy: the linear solver needs no autograd."""
    weights = torch.from_numpy(label_weights(task, y)).to(device) if loss != "bce" else None
    gamma = focal_gamma if loss == "focal" else 0.0

    def fn(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _loss_and_grad(task, logits, target, weights, gamma, need_grad=True)

    return fn


def _loss_and_grad(task: str, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                   gamma: float, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Written with amax/exp/sum: torch's CPU softmax, logsumexp and pos_weight BCE kernels are
    # 10-100x slower on (N, 8) logits than these elementwise forms, and the solver calls this
    # a few hundred times.
    if gamma:
        if not need_grad:
            return _focal(task, logits, target, weights, gamma), None
        leaf = logits.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _focal(task, leaf, target, weights, gamma)
            (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach(), grad
    if task == "single":
        shifted = logits - logits.detach().amax(dim=1, keepdim=True)
        log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
        weighted = target if weights is None else target * weights
        total = weighted.sum()
        loss = -(weighted * log_p).sum() / total
        if not need_grad:
            return loss, None
        grad = (weighted.sum(dim=1, keepdim=True) * log_p.exp() - weighted) / total
        return loss, grad
    # BCE with pos_weight w: (1 - t) * l + (1 + (w - 1) * t) * softplus(-l), averaged.
    scale = 1.0 if weights is None else 1.0 + (weights - 1.0) * target
    loss = ((1.0 - target) * logits + scale * F.softplus(-logits)).mean()
    if not need_grad:
        return loss, None
    grad = ((1.0 - target) - scale * torch.sigmoid(-logits)) / logits.numel()
    return loss, grad


def _focal(task: str, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
           gamma: float) -> torch.Tensor:
    if task == "single":
        log_p = F.log_softmax(logits, dim=-1)
        weighted = target if weights is None else target * weights
        return -(weighted * (1 - log_p.exp()) ** gamma * log_p).sum() / weighted.sum()
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weights, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return ((1 - p_t) ** gamma * bce).mean()
