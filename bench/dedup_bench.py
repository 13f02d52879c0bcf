"""Near-duplicate grouping of a first embed job: the exact all-pairs range search vs the IVF one the store
uses past `EXACT_UP_TO` rows, on the same vectors with planted near-duplicates."""
from __future__ import annotations

import numpy as np

from emoreact.index import build_index, near_duplicate_groups

from .common import environment, timed


def run(count: int = 50_000, dim: int = 512, copies: float = 0.05, clusters: int = 1000) -> dict:
    """Gives the seconds of both searches and how many of the exact search's groups the IVF one finds.

    The vectors mimic CLIP features more than uniform noise does: points scattered around `clusters`
    random centres of varied spread, plus a `copies` share of near-duplicates (cosine about 0.97-0.99
    to their original, as a resized or re-encoded copy scores)."""
    import torch

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    unique = count - int(count * copies)
    # noise of norm 0.45-1.35 around a unit centre: members of a cluster score cosine 0.4-0.8, as CLIP's do
    spread = rng.uniform(0.45, 1.35, size=(unique, 1)).astype(np.float32) / np.sqrt(dim)
    vectors = centres[rng.integers(0, clusters, unique)] + spread * rng.standard_normal((unique, dim), dtype=np.float32)
    twins = vectors[rng.choice(unique, count - unique, replace=False)]
    twins = twins + 0.14 / np.sqrt(dim) * rng.standard_normal(twins.shape, dtype=np.float32)
    vectors = np.concatenate([vectors, twins])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors)
    ivf_s, ivf = timed(lambda: near_duplicate_groups(index, vectors, exact_up_to=0))
    exact_s, exact = timed(lambda: near_duplicate_groups(index, vectors, exact_up_to=len(vectors)))
    found = {tuple(g) for g in map(lambda g: tuple(int(i) for i in g), ivf)}
    same = sum(tuple(int(i) for i in g) in found for g in exact)
    return {"bench": "dedup", **environment(torch.device("cpu")), "vectors": count, "dim": dim,
            "baseline_exact_seconds": round(exact_s, 2), "ours_ivf_seconds": round(ivf_s, 2),
            "speedup": round(exact_s / ivf_s, 2), "exact_groups": len(exact), "ivf_groups": len(ivf),
            "exact_groups_found_identically": same,
            "group_recall": round(same / len(exact), 4) if exact else 1.0}
