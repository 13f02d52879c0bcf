"""A clip's frames in the embed job and the predictor: every frame through the model in one call, then one
vector per clip, the time-weighted mean of its frames' unit vectors, normalised (what a store keeps).

An item is a still image's (3, H, W) tensor or a clip's (F, 3, H, W) frames with their weights (the share
of the clip's time each stands for, embed/clips.py); stills and clips mix in a batch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def pool_vectors(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Gives the (D,) unit vector of (F, D) frame vectors weighted by `weights` (F,): a clip's vector."""
    pooled = np.asarray(weights, np.float64) @ np.asarray(vectors, np.float64)
    norm = np.linalg.norm(pooled)
    return (pooled / norm if norm > 0 else pooled).astype(np.float32)


def encode_pooled(encode: Callable[[torch.Tensor], np.ndarray], tensors: Sequence[torch.Tensor],
                  weights: Sequence[Sequence[float] | None]) -> np.ndarray:
    """Gives (N, D) float32 vectors for N items: `tensors` (3, H, W) for a still or (F, 3, H, W) for a clip
    whose `weights` are given (None for a still); all frames go through `encode` ((M, 3, H, W) -> (M, D)
    array) as one batch."""
    encoded = np.asarray(encode(torch.cat([t.unsqueeze(0) if t.dim() == 3 else t for t in tensors])), np.float32)
    if all(w is None for w in weights):
        return encoded
    out, at = np.empty((len(tensors), encoded.shape[1]), np.float32), 0
    for n, (tensor, weight) in enumerate(zip(tensors, weights)):
        count = 1 if tensor.dim() == 3 else len(tensor)
        out[n] = encoded[at] if weight is None else pool_vectors(encoded[at:at + count], weight)
        at += count
    return out


__all__ = ["encode_pooled", "pool_vectors"]
