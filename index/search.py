"""Exact cosine search over unit-norm vectors: FAISS inner product, and a numpy reference."""
from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)


def build_index(vectors: np.ndarray) -> faiss.Index:
    """Gives an exact inner-product FAISS index over (N, D) unit-norm vectors (any float dtype)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def to_gpu_if_available(index: faiss.Index) -> faiss.Index:
    """Gives the index on GPU 0 when this FAISS build has GPU support and sees a GPU, else itself."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        try:
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        except RuntimeError as exc:  # e.g. a wheel built without kernels for this card
            log.warning("faiss-gpu cannot use this GPU (%s); searching on the CPU", exc)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gives (scores, ids), each (Q, k'), k' = min(k, N), best first, for (Q, D) unit-norm queries."""
    k = min(int(k), index.ntotal)
    if k <= 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def brute_force_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gives (scores, ids) like `search`, by a full numpy matrix product (the reference)."""
    sims = queries.astype(np.float32) @ vectors.astype(np.float32).T
    k = min(int(k), vectors.shape[0])
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids
