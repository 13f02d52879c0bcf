"""The IVF coarse quantizer's centroids by two-level k-means, cheap enough for many lists on a CPU.

Plain k-means over K centroids costs N·K·D per iteration. Two-level k-means first splits the sample
into √K clusters, then splits each cluster into a share of the K centroids in proportion to its
size: about √K times cheaper, and the lists come out as balanced as plain k-means'. FAISS ships the
idea as `faiss.contrib.clustering.two_level_clustering`, but its shares can round to zero for a small
cluster or exceed a cluster's points, and FAISS then refuses to train; real collections have such
outlying clusters (a burst of near-identical screenshots), so the shares are dealt here, each
cluster getting at least one centroid and at most one per point.
"""
from __future__ import annotations

import math

import faiss
import numpy as np

FIRST_LEVEL_ITERATIONS = 10  # past ~10 the clusters barely move, and each iteration costs N·√K·D
SECOND_LEVEL_ITERATIONS = 20  # small runs (a few thousand points each): cheap


def two_level_centroids(sample: np.ndarray, lists: int, seed: int = 1234) -> np.ndarray:
    """Gives (lists, D) float32 centroids for (N, D) float32 `sample` (N >= lists), deterministic for a seed."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if len(sample) < lists:
        raise ValueError(f"{lists} lists need at least {lists} training vectors, got {len(sample)}")
    first = _kmeans(sample, max(1, int(math.sqrt(lists))), FIRST_LEVEL_ITERATIONS, seed)
    _, assignment = first.index.search(sample, 1)
    assignment = assignment.ravel()
    sizes = np.bincount(assignment, minlength=first.k)
    shares = deal(sizes, lists)
    centroids = []
    for cluster in np.flatnonzero(shares):
        members = sample[assignment == cluster]
        k = int(shares[cluster])
        if k == len(members):
            centroids.append(members)
        elif k == 1:
            centroids.append(members.mean(axis=0, keepdims=True))
        else:
            centroids.append(_kmeans(members, k, SECOND_LEVEL_ITERATIONS, seed + int(cluster)).centroids)
    return np.ascontiguousarray(np.concatenate(centroids), dtype=np.float32)


def deal(sizes: np.ndarray, total: int) -> np.ndarray:
    """Gives each cluster's number of centroids: about in proportion to `sizes`, at least 1 for a non-empty
    cluster, at most its size, summing to `total` (which must lie between the non-empty clusters and the points)."""
    sizes = np.asarray(sizes, np.int64)
    if not (np.count_nonzero(sizes) <= total <= sizes.sum()):
        raise ValueError(f"cannot deal {total} centroids to clusters of sizes {sizes.tolist()}")
    shares = np.minimum(np.maximum(sizes * total // sizes.sum(), sizes > 0), sizes)
    while shares.sum() < total:  # to the cluster with the most points per centroid that has room
        room = np.where(shares < sizes, sizes / np.maximum(shares, 1), -1.0)
        shares[int(np.argmax(room))] += 1
    while shares.sum() > total:  # from the cluster with the fewest points per centroid that can spare one
        spare = np.where(shares > 1, sizes / np.maximum(shares, 1), np.inf)
        shares[int(np.argmin(spare))] -= 1
    return shares


def _kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> faiss.Kmeans:
    # Every point is used (no subsampling) and few points per centroid are fine here: no FAISS warnings.
    kmeans = faiss.Kmeans(points.shape[1], k, niter=iterations, seed=seed, max_points_per_centroid=1 << 30,
                          min_points_per_centroid=1)
    kmeans.train(points)
    return kmeans
