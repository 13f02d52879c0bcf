"""Training a head on stored vectors: weighted BCE or focal loss, AdamW, schedules, early stopping,
per-label thresholds and the optional zero-shot prior (CLAP-style init + L2, WiSE-FT-style blend).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch.optim import AdamW  # imported here, not at first use: it pulls in a second of modules

from emoreact.labels import LabelConfig
from .metrics import THRESHOLD_GRID, f1_per_threshold, tune_thresholds
from .model import EmotionHead, HeadConfig, ZeroShotPrior

log = logging.getLogger(__name__)
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
             device: str = "cpu") -> tuple[EmotionHead, list[dict]]:
    """Gives a trained head and its per-epoch history.

    x_*: (N, D) float32 unit-norm vectors; y_*: (N, L) {0, 1}; text: (L, D) prompt embeddings,
    needed when `config.zero_shot_prior` is set. Validation data drives early stopping,
    the blend weight and the thresholds.
    """
    if config.zero_shot_prior and text is None:
        raise ValueError("zero_shot_prior needs the label text embeddings (text=...)")
    torch.manual_seed(config.seed)
    dev = torch.device(device)
    head = EmotionHead(config, labels, model_id, x_train.shape[1])
    xt, yt = _tensor(x_train, dev), _tensor(y_train, dev)
    xv, yv = _tensor(x_val, dev), _tensor(y_val, dev)
    if config.zero_shot_prior:
        head.prior_ = calibrate_prior(text, x_train, y_train, logit_scale)
    net = head.net_.to(dev)
    with torch.no_grad():
        # Layer 0 is a fixed standardisation: apply it once, then train the layers after it.
        zt, zv = net[0].fit(xt)(xt), net[0](xv)
    body = net[1:]
    anchor = _init_from_prior(net, head.prior_, dev) if config.zero_shot_prior else None
    loss_fn = _loss(config, y_train, dev)
    optimiser = AdamW(body.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(xt) / config.batch_size))
    scheduler = _scheduler(config, optimiser, steps_per_epoch)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    history, best_f1, best_state, stale = [], -1.0, None, 0
    start = time.perf_counter()
    # Shuffle once, then visit the batches in a new order each epoch: batches are views, not copies.
    order = torch.randperm(len(zt), generator=generator).to(dev)
    zt, yt = zt[order], yt[order]
    starts = torch.arange(0, len(zt), config.batch_size)
    for epoch in range(1, config.epochs + 1):
        body.train()
        total = 0.0
        for start in starts[torch.randperm(len(starts), generator=generator)].tolist():
            zb, yb = zt[start:start + config.batch_size], yt[start:start + config.batch_size]
            with _autocast(dev):
                logits = body(zb).float()
            loss = loss_fn(logits, yb)
            if anchor is not None:
                loss = loss + config.prior_l2 * ((net[1].weight - anchor) ** 2).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if config.schedule == "cosine":
                scheduler.step()
            total += float(loss.detach()) * len(zb)
        val_logits, val_loss = _evaluate(body, zv, yv, loss_fn)
        f1 = _best_macro_f1(torch.sigmoid(val_logits).cpu().numpy(), y_val)
        history.append({"epoch": epoch, "train_loss": total / len(xt), "val_loss": val_loss,
                        "val_macro_f1": f1, "lr": optimiser.param_groups[0]["lr"]})
        if config.schedule == "step":
            scheduler.step()
        elif config.schedule == "plateau":
            scheduler.step(f1)
        if f1 > best_f1 + 1e-4:
            best_f1, best_state, stale = f1, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    net.load_state_dict(best_state)
    head.net_ = net.eval().cpu()
    head.fitted_ = True
    _tune_blend_and_thresholds(head, x_val, y_val)
    log.info("trained %s head: %d epochs in %.2fs, best val macro-F1 %.3f, alpha %.1f",
             config.kind, len(history), time.perf_counter() - start, best_f1, head.alpha_)
    return head, history


def calibrate_prior(text: np.ndarray, x: np.ndarray, y: np.ndarray, logit_scale: float,
                    steps: int = 200) -> ZeroShotPrior:
    """Gives the prior with a per-label affine map of cosine scores fitted by logistic regression.

    Raw CLIP cosines are tuned for a softmax over classes; a sigmoid head needs each label's
    scores shifted and scaled on its own (the recalibration DATASETS.md warns about).
    """
    cos = torch.from_numpy(x.astype(np.float32)) @ torch.from_numpy(text.astype(np.float32)).T
    target = torch.from_numpy(y.astype(np.float32))
    scale = torch.full((text.shape[0],), float(logit_scale), requires_grad=True)
    bias = (-cos.mean(0) * logit_scale).detach().requires_grad_(True)
    optimiser = torch.optim.LBFGS([scale, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(cos * scale + bias, target)
        loss.backward()
        return loss

    optimiser.step(closure)
    return ZeroShotPrior(text.astype(np.float32), scale.detach().numpy(), bias.detach().numpy())


def _init_from_prior(net: torch.nn.Sequential, prior: ZeroShotPrior, dev: torch.device) -> torch.Tensor | None:
    """Starts a linear head at the calibrated zero-shot classifier; gives the weights to pull towards.

    The head sees standardised vectors z = (x - m) / s, so W0 x + b0 = (W0 * s) z + (b0 + W0 m).
    """
    if len(net) != 2:
        return None  # an MLP cannot start from text weights; it still gets the blended prior
    standardize, linear = net[0], net[1]
    raw = torch.from_numpy(prior.text * prior.scale[:, None]).to(dev)
    weight = raw * standardize.std[None, :]
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.from_numpy(prior.bias).to(dev) + raw @ standardize.mean)
    return weight.detach()


def _tune_blend_and_thresholds(head: EmotionHead, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """Chooses the prior's blend weight and then per-label thresholds on validation data."""
    x = torch.from_numpy(x_val.astype(np.float32))
    with torch.inference_mode():
        head_logits = head.net_(x).float()
        best = (-1.0, 0.0)
        for alpha in (_ALPHAS if head.prior_ is not None else [0.0]):
            head.alpha_ = float(alpha)
            probs = head.logits_to_proba(head.logits(x, head_logits)).numpy()
            best = max(best, (_best_macro_f1(probs, y_val), float(alpha)))
        head.alpha_ = best[1]
        head.thresholds_ = tune_thresholds(head.logits_to_proba(head.logits(x, head_logits)).numpy(), y_val)


def _best_macro_f1(probs: np.ndarray, targets: np.ndarray) -> float:
    present = targets.sum(axis=0) > 0
    if not present.any():
        return 0.0
    return float(f1_per_threshold(probs, targets, THRESHOLD_GRID).max(axis=0)[present].mean())


def _loss(config: HeadConfig, y: np.ndarray, dev: torch.device):
    positives = y.sum(axis=0)
    # pos_weight = negatives / positives balances each label's gradient; capped for near-empty labels.
    pos_weight = torch.from_numpy(np.clip((len(y) - positives) / np.maximum(positives, 1), 1.0, 100.0)
                                  .astype(np.float32)).to(dev)
    if config.loss == "bce":
        return torch.nn.BCEWithLogitsLoss()
    if config.loss == "weighted_bce":
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gamma = config.focal_gamma

    def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight,
                                                                   reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        return ((1 - p_t) ** gamma * bce).mean()

    return focal


def _scheduler(config: HeadConfig, optimiser, steps_per_epoch: int):
    if config.schedule == "cosine":
        warmup = config.warmup_epochs * steps_per_epoch
        total = config.epochs * steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, config.epochs // 3), gamma=0.1)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="max",
                                                          patience=max(1, config.patience // 3))
    return None


@torch.inference_mode()
def _evaluate(net, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, float]:
    net.eval()
    with _autocast(x.device):
        logits = net(x).float()
    return logits, float(loss_fn(logits, y))


def _tensor(array: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(dev)


def _autocast(dev: torch.device):
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
