"""The linear head's solver: full-batch L-BFGS over a path of L2 strengths, warm-started.

Why this solver: the reference protocol for linear probes on frozen CLIP features (the CLIP
paper) is an L-BFGS logistic regression with its L2 strength searched on validation. On
standardised vectors a full-batch quasi-Newton solve converges in tens of iterations and has no
learning rate, epochs or batch size to tune. The path runs from strong to weak regularisation,
each solve starting at the previous solution, so the weakly regularised (slow) solves start near
their answer; and it stops once validation has not improved for `patience` strengths, because
weaker strengths only fit the training set harder. A second-order (Newton) solve would need the
(L*D)^2 Hessian, 17M entries for 8 labels over 512 dimensions: L-BFGS's low-rank curvature
gives most of its speed at a fraction of the cost.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .losses import LossGradFn

# L2 strengths (the loss is a mean over images): 8 values, strong to weak, 10x apart.
DEFAULT_L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


@dataclass
class PathResult:
    """The chosen linear layer and the path that chose it."""

    weight: torch.Tensor  # (L, D) float32
    bias: torch.Tensor  # (L,) float32
    l2: np.ndarray  # (L,) float64: the strength chosen for each label (one value for a softmax head)
    history: list[dict] = field(default_factory=list)  # one record per strength tried


def solve(z: torch.Tensor, targets: torch.Tensor, loss_grad: LossGradFn, l2: float, weight: torch.Tensor,
          bias: torch.Tensor, anchor: torch.Tensor | None = None, max_iter: int = 200,
          tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Gives (weight, bias, final objective, function evaluations) minimising
    loss(z W^T + b, targets) + l2 / 2 * ||W - anchor||^2 from the given starting point.

    z: (N, D) float32; targets: (N, L) float32; anchor: (L, D) or None (pull towards zero).
    Stops when the largest gradient entry is under `tol` (scikit-learn's lbfgs criterion).
    """
    w, b = weight.detach().clone(), bias.detach().clone()
    optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                                  tolerance_change=1e-10, line_search_fn="strong_wolfe")
    evaluations = [0]

    @torch.no_grad()
    def closure() -> torch.Tensor:
        # Gradients by hand: the two (N, D) products are the whole cost, autograd would add a third pass.
        evaluations[0] += 1
        logits = torch.mm(z, w.T) + b
        with _one_thread(z.device):
            loss, dlogits = loss_grad(logits, targets)
        pull = w if anchor is None else w - anchor
        w.grad = torch.mm(dlogits.T, z) + l2 * pull
        b.grad = dlogits.sum(dim=0)
        return loss + 0.5 * l2 * (pull * pull).sum()

    loss = optimiser.step(closure)
    return w, b, float(loss), evaluations[0]


@contextmanager
def _one_thread(device: torch.device):
    """Runs the (N, L) elementwise loss on one CPU thread. Torch splits each of its ~10 small ops
    over every core; on a busy machine each split waits for a core to come free, which made these
    microsecond ops cost as much as the (N, D) products (measured: a solver step 2x slower)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def solve_path(z: torch.Tensor, targets: torch.Tensor, loss_grad: LossGradFn, z_val: torch.Tensor,
               score: Callable[[torch.Tensor], np.ndarray], grid: tuple[float, ...] = DEFAULT_L2_GRID, *,
               per_label: bool = False, bias_init: torch.Tensor | None = None,
               anchor: torch.Tensor | None = None, patience: int = 2, max_iter: int = 200, tol: float = 1e-4) -> PathResult:
    """Gives the linear layer whose L2 strength scores best on validation, and the path.

    z, z_val: (N, D) float32 standardised vectors; targets: (N, L) float32; score(val_logits) gives
    (L,) per-label validation scores (higher is better). With `per_label` (sigmoid heads, whose loss
    is a sum of independent per-label problems) each label keeps the column of its own best strength;
    otherwise (softmax) the mean score picks one strength for all.
    """
    count, dim = targets.shape[1], z.shape[1]
    weight = (anchor.clone() if anchor is not None else torch.zeros(count, dim, device=z.device))
    bias = bias_init.clone() if bias_init is not None else torch.zeros(count, device=z.device)
    # Best so far by mean score (all labels), and per label; a label that validation cannot score
    # (NaN: no positives there) takes the strength that is best on average.
    mean_best, mean_w, mean_b, mean_l2 = -np.inf, weight.clone(), bias.clone(), grid[0]
    label_best, label_w, label_b = np.full(count, -np.inf), weight.clone(), bias.clone()
    chosen = np.full(count, float(grid[0]))
    history, stale = [], 0
    for l2 in sorted(grid, reverse=True):
        start = time.perf_counter()
        weight, bias, loss, evaluations = solve(z, targets, loss_grad, l2, weight, bias, anchor, max_iter, tol)
        with torch.no_grad():
            scores = np.asarray(score(torch.addmm(bias, z_val, weight.T)), np.float64).reshape(-1)
        mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else 0.0
        improved = mean > mean_best + 1e-4
        if improved:
            mean_best, mean_w, mean_b, mean_l2 = mean, weight.clone(), bias.clone(), l2
        if per_label:
            better = np.nan_to_num(scores, nan=-np.inf) > label_best + 1e-4
            mask = torch.from_numpy(better).to(weight.device)
            label_w[mask], label_b[mask] = weight[mask], bias[mask]
            label_best, chosen[better] = np.where(better, scores, label_best), l2
        # The path stops on the mean: a weaker strength that helps one label by chance but the
        # labels on average no more is the sign that the rest of the path only fits noise.
        stale = 0 if improved else stale + 1
        history.append({"l2": l2, "train_loss": loss, "val_macro_f1": mean,
                        "evaluations": evaluations, "seconds": round(time.perf_counter() - start, 3)})
        if stale >= patience:
            break
    if not per_label:
        return PathResult(mean_w, mean_b, np.full(count, float(mean_l2)), history)
    unscored = torch.from_numpy(~np.isfinite(label_best)).to(z.device)
    label_w[unscored], label_b[unscored] = mean_w[unscored], mean_b[unscored]
    chosen[~np.isfinite(label_best)] = mean_l2
    return PathResult(label_w, label_b, chosen, history)
