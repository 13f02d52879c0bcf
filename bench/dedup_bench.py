"""Near-duplicate grouping of a first embed job, on the same vectors with planted near-duplicates: the exact
all-pairs range search (the baseline), the IVF one a Flat store uses past `EXACT_UP_TO` rows, and the
search through the store's own approximate index that a large store uses (proposals re-ranked exactly)."""
from __future__ import annotations

import numpy as np

from emoreact.index import ann, build_index, near_duplicate_groups
from emoreact.index.dedup import groups_from, store_index_neighbours

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
    store_index, build_s = _store_index(vectors)
    ann_s, ann_groups = timed(lambda: groups_from(store_index_neighbours(store_index, lambda ids: vectors[ids]),
                                                  len(vectors)))
    same = _same(ivf, exact)
    return {"bench": "dedup", **environment(torch.device("cpu")), "vectors": count, "dim": dim,
            "baseline_exact_seconds": round(exact_s, 2), "ours_ivf_seconds": round(ivf_s, 2),
            "speedup": round(exact_s / ivf_s, 2), "exact_groups": len(exact), "ivf_groups": len(ivf),
            "exact_groups_found_identically": same, "group_recall": round(same / len(exact), 4) if exact else 1.0,
            "store_index": store_index_factory(count, dim), "store_index_build_seconds": round(build_s, 2),
            "store_index_seconds": round(ann_s, 2), "store_index_groups": len(ann_groups),
            "store_index_group_recall": round(_same(ann_groups, exact) / len(exact), 4) if exact else 1.0}


def store_index_factory(count: int, dim: int) -> str:
    """The approximate index a store of `count` rows would hold (whatever its size: Flat is not this path)."""
    return ann.choose_factory(max(count, ann.FLAT_MAX_ROWS + 1), dim)


def _store_index(vectors: np.ndarray):
    """Builds the index a large store holds (IVF-HNSW, RaBitQ codes), as a grown store's jobs group through it;
    gives (index, seconds). Its build is the store's, not grouping's: timed apart."""
    def build():
        index = ann.new_index(store_index_factory(*vectors.shape), vectors.shape[1])
        index.train(vectors)
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        return index

    seconds, index = timed(build)
    return index, seconds


def _same(found: list[np.ndarray], exact: list[np.ndarray]) -> int:
    """Gives how many of the exact groups `found` holds identically."""
    have = {tuple(int(i) for i in g) for g in found}
    return sum(tuple(int(i) for i in g) in have for g in exact)
