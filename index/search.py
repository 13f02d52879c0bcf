"""Exact cosine search over unit-norm vectors: FAISS inner product, and a numpy reference."""
from __future__ import annotations

import contextlib
import logging

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)


def build_index(vectors: np.ndarray) -> faiss.Index:
    """Gives an exact inner-product FAISS index over (N, D) unit-norm vectors (any float dtype)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


class TorchFlatIndex:
    """Exact inner-product search with torch on any device: the GPU fallback when faiss-gpu
    cannot run on the card. Offers the part of faiss.Index the store uses."""

    def __init__(self, vectors: np.ndarray, device: str) -> None:
        self.xb = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
        self.ntotal, self.d = self.xb.shape

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.xb.device)
        # fp32 matrix product without TF32, so scores (and so rankings) match faiss-cpu's.
        with _no_tf32():
            scores, ids = torch.topk(q @ self.xb.T, k, dim=1)
        return scores.cpu().numpy(), ids.cpu().numpy().astype(np.int64)

    def reconstruct(self, i: int) -> np.ndarray:
        return self.xb[int(i)].cpu().numpy()


def to_gpu_if_available(index: faiss.Index) -> faiss.Index | TorchFlatIndex:
    """Gives the index on GPU 0 when one is visible: faiss-gpu if this build runs on the card
    (checked by a test search), else exact torch search; without a GPU, the index itself."""
    if not torch.cuda.is_available() or index.ntotal == 0:
        return index
    probe = index.reconstruct_n(0, min(index.ntotal, 8))
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        try:
            gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            if np.array_equal(gpu.search(probe, 1)[1], index.search(probe, 1)[1]):
                return gpu
            log.warning("faiss-gpu gave different neighbours on this GPU; using torch search")
        except RuntimeError as exc:  # e.g. a wheel built without kernels for this card
            log.warning("faiss-gpu cannot use this GPU (%s); using torch search", exc)
    return TorchFlatIndex(index.reconstruct_n(0, index.ntotal), "cuda")


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def search(index: "faiss.Index | TorchFlatIndex", queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
