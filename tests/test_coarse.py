"""Two-level k-means for the IVF coarse quantizer: every list gets a centroid, even for skewed data."""
import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emoreact.index import ann
from emoreact.index.coarse import deal, two_level_centroids


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=40), st.data())
def test_dealt_centroids_sum_to_the_total_within_each_clusters_bounds(sizes, data):
    sizes = np.array(sizes)
    if sizes.sum() == 0:
        return
    total = data.draw(st.integers(int(np.count_nonzero(sizes)), int(sizes.sum())))
    shares = deal(sizes, total)
    assert shares.sum() == total
    assert np.all(shares <= sizes) and np.all(shares[sizes > 0] >= 1) and np.all(shares[sizes == 0] == 0)


def test_dealing_is_proportional_when_nothing_is_near_a_bound():
    assert deal(np.array([600, 300, 100]), 100).tolist() == [60, 30, 10]
    with pytest.raises(ValueError, match="cannot deal 2 centroids"):
        deal(np.array([5, 5, 5]), 2)  # three non-empty clusters need three


def test_skewed_data_with_tiny_outlying_clusters_trains(tmp_path):
    """FAISS's own two_level_clustering refuses this set (a share rounds to zero)."""
    rng = np.random.default_rng(0)
    bulk = rng.normal(size=(20_000, 32))
    outliers = rng.normal(size=(5, 32)) * 0.01 + 50
    sample = np.vstack([bulk, outliers]).astype(np.float32)
    centroids = two_level_centroids(sample, 256)
    assert centroids.shape == (256, 32) and np.isfinite(centroids).all()
    assert np.allclose(two_level_centroids(sample, 256), centroids)  # repeatable
    assert np.min(np.linalg.norm(centroids - 50, axis=1)) < 1  # the outliers have a list of their own


def test_two_level_lists_are_about_as_good_as_plain_kmeans():
    """Same data, same number of lists: the k-means objective (mean squared distance to the nearest
    centroid) of two-level training is within 10% of plain k-means'."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(64, 32)) * 3
    sample = (centres[rng.integers(0, 64, 30_000)] + rng.normal(size=(30_000, 32))).astype(np.float32)

    def objective(centroids):
        distances, _ = faiss.knn(sample, np.ascontiguousarray(centroids, dtype=np.float32), 1)
        return float(distances.mean())

    plain = faiss.Kmeans(32, 256, niter=20, seed=1234)
    plain.train(sample)
    assert objective(two_level_centroids(sample, 256)) <= 1.1 * objective(plain.centroids)


def test_many_lists_are_trained_two_level_and_a_few_by_plain_kmeans(monkeypatch):
    from emoreact.index import coarse

    calls = []
    monkeypatch.setattr(ann, "two_level_centroids", lambda *args: calls.append(args) or coarse.two_level_centroids(*args))
    monkeypatch.setattr(ann, "TWO_LEVEL_FROM_LISTS", 64)
    sample = np.random.default_rng(2).normal(size=(5_000, 64)).astype(np.float32)
    for factory, lists, two_level_runs in (("IVF64_HNSW32,PQ8", 64, 1), ("IVF32_HNSW32,PQ8", 32, 1)):
        index = ann.new_index(factory, 64)
        ann.train(index, sample)
        assert index.is_trained and faiss.extract_index_ivf(index).quantizer.ntotal == lists
        assert len(calls) == two_level_runs  # 64 lists (the threshold here) two-level; 32 lists plain
