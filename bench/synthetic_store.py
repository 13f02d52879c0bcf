"""A synthetic store for benchmarks: N unit vectors shaped like CLIP image features, written as a real store.

Uniform random unit vectors are the wrong test data for an index: in 512 dimensions they are all
nearly orthogonal, so every list of an IVF index looks alike and "nearest" means nothing. CLIP image
features are instead (i) far from centred: any two images score a cosine of roughly 0.2-0.6, because
every embedding shares a large common component; (ii) clustered: near-copies, series of photos and
topics form tight groups, of very different sizes; (iii) anisotropic: a few directions carry most of
the variance. The generator draws each vector as

    x = normalise( common + centre[c] * scale[c] + (noise * spectrum) @ rotation * spread[c] )

with one shared `common` direction (so cosines between random pairs sit around 0.35), `clusters`
centres drawn from a Gaussian whose per-dimension variance decays like a power law (anisotropy),
cluster sizes from a Zipf-like law (a few huge clusters, many small ones), a spread that varies
per cluster (tight near-copy groups beside loose topics), and within-cluster variation that is
itself anisotropic: a power-law spectrum (standard deviation ~ rank^-0.75) in a random rotated basis.
That last point matters: isotropic noise in 512 dimensions would make all members of a cluster
nearly equidistant, a far harder (and less realistic) case for any index than image features,
whose variation lies mostly in a few tens of directions; the rotation keeps it off the coordinate
axes, which product quantisation would otherwise find for free. Everything is seeded; block b of the
vectors is drawn from its own RNG stream, so a store of any size is written a block at a time and
the same N gives the same vectors. Queries "held out" from a store are drawn the same way with
another seed: they are not stored, as real uploads are not.

The query kinds `bench index` reports on, each fixed and seeded:
- held-out: `held_out_queries`, the store's own mixture (existing clusters), never stored;
- near-copies: `near_copies` of stored vectors, Gaussian noise of sigma 0.01 per dimension, normalised
  again (a cosine of ~0.975 to the original);
- new topics: `Mixture.draw_new_topics`, one fresh cluster centre per query, drawn like the stored centres
  (same spectrum), with the same common direction, scale and spread laws and noise basis: the
  centres are never stored. Tuning uses one seed of these, the report another.

The store gets one metadata row per vector (path synthetic/<id>.jpg, a content hash of the id,
labels from the cluster, a split from the hash): the size of a real store's metadata, with no model run.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emoreact.index import Store
from emoreact.labels import load_label_config

MODEL_ID = "synthetic/clip-like"
OUR_LABELS = tuple(load_label_config().names)
BLOCK = 65_536
SCALES = (0.8, 1.6)            # a cluster centre's weight beside the common direction: uniform in this range
SPREAD_MEDIAN, SPREAD_SIGMA = 0.045, 0.5  # a cluster's per-dimension noise: lognormal, this median and sigma
NEAR_COPY_SIGMA = 0.01         # per-dimension noise of a near-copy query
NEW_TOPICS_STREAM = 3_000_000  # RNG streams of the query kinds, apart from the stores' (0, 1, ...; growth 10,000)
NEAR_COPIES_STREAM = 4_000_000


@dataclass(frozen=True)
class Mixture:
    """The seeded mixture every vector of one synthetic store comes from."""

    dim: int = 512
    clusters: int = 4_096
    seed: int = 0

    @classmethod
    def for_rows(cls, rows: int, dim: int = 512) -> "Mixture":
        """Gives the mixture the benchmarks use for a store of `rows`: one cluster per 250 images."""
        return cls(dim=dim, clusters=max(64, min(65_536, rows // 250)))

    @classmethod
    def of_store(cls, store: Store) -> "Mixture":
        """Gives the mixture a synthetic store was written from, as its manifest records it; for a store
        written before it was recorded, the benchmarks' mixture for the rows its index was trained on."""
        recorded = store.manifest.get("preprocess", {}).get("mixture")
        if recorded:
            return cls(**recorded)
        trained = store.index_settings.trained_rows
        return cls.for_rows(trained or len(store), store.dim)

    def parameters(self) -> tuple[np.ndarray, ...]:
        """Gives (common (D,), centres (C, D), scales (C,), spreads (C,), weights (C,), noise basis (D, D))."""
        return self._parameters()[:6]

    def _parameters(self) -> tuple[np.ndarray, ...]:
        """Gives `parameters()` and, last, the per-dimension spectrum the centres were drawn with (D,)."""
        rng = np.random.default_rng(self.seed)
        decay = (1.0 + np.arange(self.dim)) ** -0.5  # power-law spectrum: a few directions dominate
        common = rng.standard_normal(self.dim) * decay
        common *= 1.3 / np.linalg.norm(common)
        centres = rng.standard_normal((self.clusters, self.dim))
        centre_spectrum = decay[rng.permutation(self.dim)]
        centres = _unit(centres * centre_spectrum)
        scales = rng.uniform(*SCALES, self.clusters)
        spreads = rng.lognormal(mean=np.log(SPREAD_MEDIAN), sigma=SPREAD_SIGMA, size=self.clusters)  # per-dimension noise
        weights = 1.0 / (1.0 + np.arange(self.clusters)) ** 0.8  # Zipf-like cluster sizes
        spectrum = (1.0 + np.arange(self.dim)) ** -0.75
        spectrum /= np.sqrt(np.mean(spectrum ** 2))  # same total variance as isotropic noise
        rotation = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))[0]
        basis = (spectrum[:, None] * rotation).astype(np.float32)
        return common, centres, scales, spreads, weights / weights.sum(), basis, centre_spectrum

    def draw(self, count: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        """Gives (vectors (count, D) float32 unit-norm, cluster (count,) int64) from RNG stream `stream`."""
        common, centres, scales, spreads, weights, basis, _ = self._cached()
        rng = np.random.default_rng([self.seed, 1 + stream])
        cluster = rng.choice(self.clusters, size=count, p=weights)
        noise = rng.standard_normal((count, self.dim), dtype=np.float32)
        x = common[None, :] + centres[cluster] * scales[cluster, None] + (noise @ basis) * spreads[cluster, None]
        return _unit(x.astype(np.float32)), cluster

    def draw_new_topics(self, count: int, seed: int) -> np.ndarray:
        """Gives (count, D) float32 unit-norm vectors on topics no store of this mixture holds.

        Each vector has a cluster centre of its own, never stored, drawn as the stored centres are (the
        same per-dimension spectrum), a scale and spread drawn as theirs, and the mixture's common
        direction and within-cluster noise basis: an upload from a new community, in the same feature
        space. `seed` picks the set (tuning and the report use different ones)."""
        common, _, _, _, _, basis, centre_spectrum = self._cached()
        rng = np.random.default_rng([self.seed, NEW_TOPICS_STREAM, seed])
        centres = _unit(rng.standard_normal((count, self.dim)) * centre_spectrum)
        scales = rng.uniform(*SCALES, count)
        spreads = rng.lognormal(mean=np.log(SPREAD_MEDIAN), sigma=SPREAD_SIGMA, size=count)
        noise = rng.standard_normal((count, self.dim), dtype=np.float32)
        x = common[None, :] + centres * scales[:, None] + (noise @ basis) * spreads[:, None]
        return _unit(x.astype(np.float32))

    def _cached(self):
        if not hasattr(self, "_params"):
            object.__setattr__(self, "_params", self._parameters())
        return self._params


def write_store(root: str | Path, count: int, mixture: Mixture = Mixture(), first_stream: int = 0,
                index: str | None = "auto") -> Store:
    """Writes (or grows, drawing from RNG streams `first_stream`, ...) a store of `count` synthetic images
    at `root`, through the store's normal writer; `index=None` leaves the index unbuilt: call `reindex()`
    or `finish()` on the store given before closing it, as an embed job that did not finish, the folder
    is no store until then (no manifest). Gives the store, still open for writing: close it."""
    preprocess = {"synthetic": True, "mixture": asdict(mixture)}  # so a kept store can draw queries again
    store = Store.create_or_resume(root, MODEL_ID, mixture.dim, preprocess, list(OUR_LABELS))
    start_id = store.rows
    for stream, offset in enumerate(range(0, count, BLOCK), start=first_stream):
        n = min(BLOCK, count - offset)
        vectors, cluster = mixture.draw(n, stream)
        store.add([_row(start_id + offset + i, int(c)) for i, c in enumerate(cluster)], vectors)
    if index is not None:
        store.finish(index=index)
    return store


def held_out_queries(count: int, mixture: Mixture = Mixture(), stream: int = 1_000_000) -> np.ndarray:
    """Gives (count, D) float32 unit-norm queries from the store's mixture, never stored (stores draw
    from streams 0, 1, ... and growth from 10,000: another set of queries takes another stream here)."""
    return mixture.draw(count, stream=stream)[0]


def near_copies(stored: np.ndarray, seed: int, sigma: float = NEAR_COPY_SIGMA) -> np.ndarray:
    """Gives (n, D) float32 unit-norm near-copies of (n, D) `stored` vectors: each plus Gaussian noise of
    `sigma` per dimension, normalised again (at D = 512 and sigma 0.01, a cosine of ~0.975 to its original:
    a re-encoded or lightly edited copy of a stored image)."""
    rng = np.random.default_rng([NEAR_COPIES_STREAM, seed])
    x = np.asarray(stored, np.float32) + sigma * rng.standard_normal(stored.shape, dtype=np.float32)
    return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _row(image_id: int, cluster: int) -> dict:
    sha = hashlib.sha256(f"synthetic-{image_id}".encode()).hexdigest()
    label = OUR_LABELS[cluster % len(OUR_LABELS)]
    split = ("train", "train", "train", "train", "train", "train", "train", "train", "val", "test")[int(sha[:2], 16) % 10]
    return {"path": f"synthetic/{image_id:09d}.jpg", "sha256": sha, "labels": (label,), "split": split,
            "split_fixed": True, "width": 512, "height": 512, "bytes": 50_000}
