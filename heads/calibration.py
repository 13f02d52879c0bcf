"""Calibrated scores: temperature scaling fitted on validation, and the expected calibration error.

A moderator reads `emotion_scores` as probabilities, but a class-weighted or long-trained head is
over- or under-confident. Softmax heads get one temperature (Guo et al. 2017): dividing all logits
by it keeps the top label and its ranking. Sigmoid heads get a temperature and an offset per label
(Platt scaling): pos_weight shifts each label's scores by its own amount, which a temperature
alone cannot undo; both maps are increasing, so per-label thresholds tuned afterwards decide the same.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, task: str,
                    steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Gives ((L,) temperature, (L,) offset) float32 minimising the validation log-loss of
    softmax(logits / T) (single: one T, zero offset) or sigmoid(logits / T_l + b_l) (multi).

    logits: (N, L) float32 uncalibrated; targets: (N, L) float32 {0, 1} (rows sum to 1 for single).
    """
    count = logits.shape[1]
    # Clones: the logits may come from inference mode, whose tensors autograd refuses to save.
    logits, targets = logits.detach().float().cpu().clone(), targets.detach().float().cpu().clone()
    # log T = 3 tanh(u) keeps T in (0.05, 20), and a light L2 term keeps the offsets finite: on a
    # validation set the head separates perfectly, the log-loss would push T to 0 and offsets away.
    u = torch.zeros(1 if task == "single" else count, requires_grad=True)
    offset = torch.zeros(count, requires_grad=(task != "single"))
    params = [u] + ([offset] if task != "single" else [])
    optimiser = torch.optim.LBFGS(params, lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        scaled = logits / (3 * torch.tanh(u)).exp()
        if task == "single":
            loss = -(targets * F.log_softmax(scaled, dim=-1)).sum(1).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(scaled + offset, targets) + 1e-3 * (offset * offset).mean()
        loss.backward()
        return loss

    optimiser.step(closure)
    temperature = (3 * torch.tanh(u.detach())).exp().expand(count).numpy().astype(np.float32)
    return temperature, offset.detach().numpy().astype(np.float32)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, task: str, bins: int = ECE_BINS) -> float:
    """Gives the ECE over `bins` equal-width bins: sum over bins of (share of scores) x |mean score - hit rate|.

    single: each image's top score against whether its top label is right (Guo et al.);
    multi: every (image, label) score against whether the label is present.
    probs, targets: (N, L).
    """
    if task == "single":
        scores = probs.max(axis=1)
        hits = targets[np.arange(len(targets)), probs.argmax(axis=1)] > 0
    else:
        scores, hits = probs.ravel(), targets.ravel() > 0
    if len(scores) == 0:
        return 0.0
    which = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(scores[inside].mean() - hits[inside].mean())
    return float(total)
