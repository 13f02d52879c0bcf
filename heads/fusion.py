"""Judging a post from its picture and its words: two channels and a per-label fusion of their logits.

A post head is an image head (the head EmoReact always had; with posts in the store it learns from the
posts without words, whose labels can only come from their picture) plus a text head of the same kind trained on the text vectors of the posts that have words (their caption
and the text read in the image), plus a `Fusion`: for each label, a weight on each channel's
calibrated logit and a bias, fitted by logistic (or softmax) regression on validation posts with
words, with its own thresholds. The has-words indicator picks the path:

    no words:    the image head's answer, exactly (a post without words is judged as before)
    with words:  sigmoid(a * image logit + b * text logit + c), per label (softmax for single-label heads)

Why stacking and not one network over [image, text, has-text] with modality dropout: a post without
words is judged by a plain image head, to the last bit, whatever the words do to training (modality
dropout would teach the picture the labels its caption carried: a neutral face "is" sad), and each
channel keeps its own calibrated scores, which is what an answer's `channels` shows. The fusion's few parameters
(3 per label) are fitted on held-out posts, so it learns how far to trust each channel per label
(a neutral picture with "we lost him yesterday" is sad; a happy picture with a sad caption, both).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .losses import soft_targets
from .metrics import choose_fallback, decide, tune

MIN_POSTS = 20  # fewer posts with words than this cannot train a text head or fit a fusion
_PULL = 1e-3  # L2 pull of the fusion weights towards (1, 1, 0): stable with few posts


@dataclass
class Fusion:
    """Per-label weights of the two channels' calibrated logits, and the fused path's decisions."""

    image: np.ndarray  # (L,) float32: weight of the image head's calibrated logit
    text: np.ndarray  # (L,) float32: weight of the text head's calibrated logit
    bias: np.ndarray  # (L,) float32
    thresholds: np.ndarray  # (L,) float32: decision thresholds of fused scores
    task: str  # single (softmax over labels) or multi (sigmoid per label), as the image head's
    fallback: str = "top"  # multi: the label a post with none over threshold gets (metrics.decide)

    def proba(self, image_logits: np.ndarray, text_logits: np.ndarray) -> np.ndarray:
        """Gives (N, L) fused scores from the two channels' (N, L) calibrated logits."""
        fused = torch.from_numpy(self._logits(image_logits, text_logits))
        return (torch.softmax(fused, -1) if self.task == "single" else torch.sigmoid(fused)).numpy()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Gives (N, L) bool labels for fused scores."""
        return decide(probs, self.thresholds, self.task, self.fallback)

    def _logits(self, image_logits: np.ndarray, text_logits: np.ndarray) -> np.ndarray:
        return (image_logits * self.image + text_logits * self.text + self.bias).astype(np.float32)

    def to_json(self) -> dict:
        return {"image": self.image.tolist(), "text": self.text.tolist(), "bias": self.bias.tolist(),
                "thresholds": self.thresholds.tolist(), "task": self.task, "fallback": self.fallback}

    @classmethod
    def from_json(cls, data: dict, labels: int) -> "Fusion":
        arrays = [np.asarray(data[k], np.float32) for k in ("image", "text", "bias", "thresholds")]
        if any(a.shape != (labels,) for a in arrays) or data.get("task") not in ("single", "multi"):
            raise ValueError(f"fusion weights do not fit {labels} labels")
        return cls(*arrays, task=data["task"], fallback=data.get("fallback", "top"))


def fit_fusion(image_logits: np.ndarray, text_logits: np.ndarray, y: np.ndarray, task: str,
               steps: int = 200) -> Fusion:
    """Gives the fusion fitted on posts with words: (N, L) calibrated logits of each channel, (N, L) {0, 1}
    labels; its thresholds are tuned on the same posts."""
    zi, zt = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in (image_logits, text_logits))
    target = torch.from_numpy(soft_targets(y) if task == "single" else y.astype(np.float32))
    labels = y.shape[1]
    a, b = torch.ones(labels, requires_grad=True), torch.ones(labels, requires_grad=True)
    c = torch.zeros(labels, requires_grad=True)
    optimiser = torch.optim.LBFGS([a, b, c], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = zi * a + zt * b + c
        if task == "single":
            loss = -(target * torch.log_softmax(logits, dim=-1)).sum(1).mean()
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        loss = loss + _PULL * ((a - 1).square().sum() + (b - 1).square().sum() + c.square().sum())
        loss.backward()
        return loss

    optimiser.step(closure)
    fusion = Fusion(a.detach().numpy(), b.detach().numpy(), c.detach().numpy(),
                    np.full(labels, 0.5, np.float32), task)
    probs = fusion.proba(image_logits, text_logits)
    fusion.thresholds = tune(probs, y, task).astype(np.float32)
    if task == "multi":
        fusion.fallback = choose_fallback(probs, y, fusion.thresholds)
    return fusion


def deciding_channel(image: np.ndarray, text: np.ndarray | None) -> list[str]:
    """Gives, per label, the channel whose own score for it is higher ("image" or "text"): which one
    drove that emotion. (L,) scores of each channel; without words, "image" throughout."""
    if text is None:
        return ["image"] * len(image)
    return ["text" if t > i else "image" for i, t in zip(image.tolist(), text.tolist())]
