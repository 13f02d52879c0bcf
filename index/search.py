"""Exact cosine search over unit-norm vectors: FAISS inner product, and a numpy reference."""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_BLOCK = 65_536  # stored vectors per float64 block when TF32 is on: bounds the extra memory


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
        import torch

        self.xb = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
        self.ntotal, self.d = self.xb.shape

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.xb.device)
        scores, ids = torch.topk(_full_precision_products(q, self.xb), k, dim=1)
        return scores.cpu().numpy(), ids.cpu().numpy().astype(np.int64)

    def reconstruct(self, i: int) -> np.ndarray:
        return self.xb[int(i)].cpu().numpy()


def _full_precision_products(q: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Gives (Q, N) float32 q @ xb.T at full fp32 precision, so that scores (and so rankings) match
    faiss-cpu's. When the process allows TF32 or bf16 for fp32 products (a setting made for someone
    else's model), this call works in float64 block by block: the process-wide flag is only read,
    never flipped, because other threads run under it."""
    import torch

    if not (torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"):
        return q @ xb.T
    out = torch.empty((q.shape[0], xb.shape[0]), dtype=torch.float32, device=xb.device)
    q64 = q.double()
    for start in range(0, xb.shape[0], _BLOCK):
        out[:, start:start + _BLOCK] = (q64 @ xb[start:start + _BLOCK].double().T).float()
    return out


class SerialisedIndex:
    """An index that answers one call at a time. FAISS GPU indexes are not thread-safe, not even
    for searches (they share one scratch memory and stream), and the server searches from several
    request threads; for torch search it also bounds GPU memory at one score matrix."""

    def __init__(self, index) -> None:
        self._index = index
        self._lock = threading.Lock()
        self.ntotal, self.d = index.ntotal, index.d

    @property
    def busy(self) -> bool:
        """Tells whether a call is running now (the others wait for it)."""
        return self._lock.locked()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._index.search(queries, k)

    def reconstruct(self, i: int) -> np.ndarray:
        with self._lock:
            return self._index.reconstruct(i)


def to_gpu_if_available(index: faiss.Index) -> "faiss.Index | SerialisedIndex":
    """Gives the index on GPU 0 when one is visible: faiss-gpu if this build runs on the card
    (checked by a test search), else exact torch search, either answering one call at a time;
    without a GPU, the index itself (faiss-cpu searches are thread-safe)."""
    import torch  # here, not at the top: the store's own commands (remove, label, removed) do not need it

    if not torch.cuda.is_available() or index.ntotal == 0:
        return index
    probe = index.reconstruct_n(0, min(index.ntotal, 8))
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        try:
            gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            if np.array_equal(gpu.search(probe, 1)[1], index.search(probe, 1)[1]):
                return SerialisedIndex(gpu)
            log.warning("faiss-gpu gave different neighbours on this GPU; using torch search")
        except RuntimeError as exc:  # e.g. a wheel built without kernels for this card
            log.warning("faiss-gpu cannot use this GPU (%s); using torch search", exc)
    return SerialisedIndex(TorchFlatIndex(index.reconstruct_n(0, index.ntotal), "cuda"))


def search(index: "faiss.Index | SerialisedIndex", queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
