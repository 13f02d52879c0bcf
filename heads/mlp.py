"""The MLP head: its layers and their training with AdamW (mini-batches, schedules,
early stopping on validation) over a small width/dropout grid."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch.optim import AdamW  # imported here, not at first use: it pulls in a second of modules

from .config import MLPSettings
from .losses import LossFn, make_loss

if TYPE_CHECKING:
    from .config import HeadConfig
    from .train import FitInputs


def layers(config: MLPSettings, dim: int, num_labels: int) -> list[torch.nn.Module]:
    """Gives the layers after the standardisation: Linear (D -> hidden), GELU, dropout, Linear (hidden -> L)."""
    return [torch.nn.Linear(dim, config.hidden), torch.nn.GELU(), torch.nn.Dropout(config.dropout),
            torch.nn.Linear(config.hidden, num_labels)]


def fit(head, data: "FitInputs") -> list[dict]:
    """Trains one MLP per (hidden, dropout) of the grid (or the configured one); keeps the best on validation
    in `head` (its config then names the chosen pair); gives the chosen one's per-epoch history."""
    config = head.config
    loss_fn = make_loss(head.task_, config.loss, data.y_train, config.focal_gamma, data.zt.device)
    pairs = config.mlp_grid if config.search else ((config.hidden, config.dropout),)
    best = (-np.inf, None, None, None)
    for hidden, dropout in pairs:
        candidate = replace(config, hidden=hidden, dropout=dropout)
        torch.manual_seed(config.seed)
        net_layers = layers(candidate, data.zt.shape[1], data.tt.shape[1])
        net = torch.nn.Sequential(copy.deepcopy(head.net_[0]), *net_layers).to(data.zt.device)
        history, value = train_layers(candidate, net[1:], data.zt, data.tt, data.zv, data.tv, loss_fn,
                                      data.mean_score)
        head.search_.append({"hidden": hidden, "dropout": dropout, "val_macro_f1": value, "epochs": len(history)})
        if value > best[0] + 1e-4:
            best = (value, candidate, net, history)
    _, chosen, net, history = best
    head.config, head.net_ = chosen, net
    return history


def train_layers(config: "HeadConfig", body: torch.nn.Module, zt: torch.Tensor, tt: torch.Tensor,
                 zv: torch.Tensor, tv: torch.Tensor, loss_fn: LossFn,
                 score: Callable[[torch.Tensor], float]) -> tuple[list[dict], float]:
    """Trains `body` (standardised (N, D) -> (N, L) logits) in place, leaving its best epoch;
    gives (per-epoch history, best validation score).

    zt/zv: standardised vectors; tt/tv: (N, L) float32 training targets of the loss; score(val
    logits) gives the validation macro-F1 that early stopping follows.
    """
    dev = zt.device
    optimiser = AdamW(body.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(zt) / config.batch_size))
    scheduler = _scheduler(config, optimiser, steps_per_epoch)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    history, best, best_state, stale = [], -1.0, None, 0
    # Shuffle once, then visit the batches in a new order each epoch. Each batch gathers its rows
    # through the shuffled order rather than slicing a shuffled copy: the same batches, without a
    # second copy of the training vectors (which may be a store's whole training sample).
    order = torch.randperm(len(zt), generator=generator).to(dev)
    starts = torch.arange(0, len(zt), config.batch_size)
    for epoch in range(1, config.epochs + 1):
        body.train()
        total = 0.0
        for start in starts[torch.randperm(len(starts), generator=generator)].tolist():
            rows = order[start:start + config.batch_size]
            zb, tb = zt[rows], tt[rows]
            with _autocast(dev):
                logits = body(zb).float()
            loss = loss_fn(logits, tb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if config.schedule == "cosine":
                scheduler.step()
            total += float(loss.detach()) * len(zb)
        val_logits, val_loss = _evaluate(body, zv, tv, loss_fn)
        f1 = score(val_logits)
        history.append({"epoch": epoch, "train_loss": total / len(zt), "val_loss": val_loss,
                        "val_macro_f1": f1, "lr": optimiser.param_groups[0]["lr"]})
        if config.schedule == "step":
            scheduler.step()
        elif config.schedule == "plateau":
            scheduler.step(f1)
        if f1 > best + 1e-4:
            best, best_state, stale = f1, {k: v.clone() for k, v in body.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    body.load_state_dict(best_state)
    return history, best


def _scheduler(config: "HeadConfig", optimiser, steps_per_epoch: int):
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


def _autocast(dev: torch.device):
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


__all__ = ["fit", "layers", "train_layers"]
