"""Zero-shot label embeddings from CLIP's text tower: prompt ensembles averaged per label."""
from __future__ import annotations

from typing import Callable

import numpy as np

from emoreact.labels import LabelConfig


def label_text_embeddings(encode_texts: Callable[[list[str]], "np.ndarray"], config: LabelConfig) -> np.ndarray:
    """Gives (L, D) float32 unit-norm label embeddings: the mean of each label's prompt embeddings.

    `encode_texts` maps a list of prompts to (P, D) unit-norm vectors (e.g. Backbone.encode_texts).
    """
    rows = []
    for name in config.names:
        prompts = config.prompts(name)
        vectors = np.asarray(encode_texts(prompts), dtype=np.float32)
        mean = vectors.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows).astype(np.float32)
