"""Index kinds for the store, chosen by size, tuned to a recall target, re-ranked exactly.

- Up to `FLAT_MAX_ROWS` images: `Flat`, exact inner product (wrapped in an IndexIDMap2 so that ids
  are store ids and removal works).
- Beyond: `IVF{K}_HNSW32,RaBitQ`: an inverted file whose K lists are found through an HNSW graph over
  the centroids, holding RaBitQ codes: one bit per dimension of each vector's residual from its list
  centroid, plus two scalars (72 bytes at D = 512, against 1,024 for the fp16 vector). Queries are
  quantised to `QUERY_BITS` bits for the scan. The index only proposes candidates; they are re-ranked
  exactly against the stored fp16 vectors, so the similarity an answer reports is the true cosine.

Why RaBitQ rather than 8-bit PQ of D/8 bytes (the kind up to version 0.2.0): measured on the bench's
10M store with the same 4,096 lists (bench/RESULTS.md), a RaBitQ code scans ~1.4x faster than a 64-byte PQ code
and ranks better: 320 re-ranked candidates reached the recall that PQ needed 1,280 for, so a query
took 13 ms instead of 22 at p50. Its codes need no training (PQ's codebooks took minutes at 10M). Stores
built with PQ keep their index; `reindex` moves them over. 4-bit fast-scan codes (`PQ128x4fs`,
`RaBitQfs`) live in block lists that FAISS reads whole into RAM instead of memory-mapping them, and
fast-scan PQ ranked too coarsely.

Why not autofaiss: it tunes to a query-time budget, not to a recall target, knows nothing of the
exact re-rank (which lets coarse codes reach high recall), and pulls in its own reader stack; the
choice below is FAISS's own guideline ("Guidelines to choose an index") in a few lines.

Why K ≈ 1.3·√N (a power of two; 2,048 lists at 2M, 4,096 at 10M, 16,384 at 100M), fewer than
the guideline's 4–16·√N: training k-means costs N_train·K·D per iteration and dominates the build on
a CPU, while scanning codes is cheap (a probe of a 2,500-vector list is ~0.1 ms), so fewer, longer
lists give the same latency for a much shorter build.

Search settings (`nprobe`, and `candidates`, how many proposals are re-ranked) are tuned at build
time: for each pool size the smallest nprobe reaching the recall target on held-out stored vectors
(their own entry excluded), then the cheapest of those by a cost model (codes scanned plus
re-ranked candidates, deterministic on any machine); both are stored in the store manifest and can
be overridden per open. Then the adaptive search's second pass, for queries unlike the stored rows,
is tuned the same way (index/adaptive.py) and recorded beside them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

log = logging.getLogger(__name__)

FLAT_MAX_ROWS = 200_000     # exact search stays under ~50 ms per query up to here on a 2-core CPU
RETRAIN_GROWTH = 2.0        # an IVF index is re-trained once the store has grown past this factor
RECALL_TARGET = 0.95        # recall@10 that tuning must reach (with a margin, below)
TUNING_MARGIN = 0.01        # tuned on stored vectors; held-out queries come out a little lower
TUNING_QUERIES = 1_000
TRAIN_POINTS_PER_LIST = 64  # k-means sample: 64 per list (FAISS warns below 39; 256 is its cap)
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
CANDIDATES = (80, 160, 320, 640, 1280)  # re-ranked pools tried. Not 40: tuning's queries (stored rows) rank
                            # their neighbours more easily than new images do at the smallest pool (a 6,000-row
                            # RaBitQ store: 0.963 tuned, 0.945 on held-out queries), and 80 rows cost ~0.3 ms
RERANK_COST = {"RaBitQ": 200, "PQ": 150}  # codes scanned for the price of one exact re-rank (see tune),
                            # measured at 10M: ~3.9 µs a re-ranked row (a pread) against ~20 ns a RaBitQ
                            # code or ~26 ns a 64-byte PQ code
QUERY_BITS = 4              # RaBitQ query quantisation: FAISS's default; 8 gave the same recall, slower
ASSIGN_EF_SEARCH = 16       # HNSW breadth when adding vectors: FAISS's default; at 4,096 lists it finds the
                            # nearest list for 92% of vectors, 30x faster than at 1,024 (99.9%)


@dataclass(frozen=True)
class IndexSettings:
    """What the store manifest records about its index ("index" key)."""

    factory: str                 # FAISS factory string, e.g. "Flat" or "IVF2048_HNSW32,RaBitQ"
    file: str                    # the index file in the store folder
    indexed_rows: int            # rows < this were added (removed ones taken out again)
    trained_rows: int = 0        # store rows when the IVF quantizer was trained (0: flat)
    nprobe: int = 0              # lists probed per query (IVF)
    candidates: int = 0          # proposals re-ranked exactly per query (IVF)
    recall_at_10: float | None = None  # measured at tuning, against exact search
    removed_applied: int = 0     # removals (rows of the removed table) already taken out of the index
    build_seconds: float | None = None
    # The adaptive search (index/adaptive.py), tuned with nprobe/candidates; None/0: every query alike
    far_below: float | None = None   # a query whose signal (adaptive.signal) is below this is searched again...
    far_weight: float = 0.0          # ...the signal being its best re-ranked similarity less this x its last list's
    far_nprobe: int = 0              # ...probing this many lists
    far_candidates: int = 0          # ...and re-ranking this many proposals
    far_recall_at_10: float | None = None  # measured at tuning on queries unlike the stored rows

    @property
    def approximate(self) -> bool:
        return not is_flat(self.factory)

    @property
    def exact(self) -> bool:
        """Tells whether a search returns the exact neighbours: a flat index, or an approximate one
        probing every list and re-ranking every row (only ever set by hand, on a small store)."""
        lists = _lists(self.factory) if self.approximate and "IVF" in self.factory else None
        return not self.approximate or (lists is not None and self.nprobe >= lists
                                        and self.candidates >= self.indexed_rows)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "IndexSettings":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_(self, **changes) -> "IndexSettings":
        return replace(self, **changes)


def is_flat(factory: str) -> bool:
    return factory.replace(" ", "") in ("Flat", "IDMap2,Flat")


def choose_factory(rows: int, dim: int) -> str:
    """Gives the factory string the store uses for `rows` vectors of `dim` (see the module docstring)."""
    if rows <= FLAT_MAX_ROWS:
        return "Flat"
    lists = 2 ** round(math.log2(1.3 * math.sqrt(rows)))
    return f"IVF{min(max(lists, 256), 65_536)}_HNSW32,RaBitQ"


def factory_for(choice: str, rows: int, dim: int) -> str:
    """Gives the factory string for an `--index` choice: auto, flat, ivf (the approximate kind at any
    size) or a FAISS factory string; raises ValueError naming the choices for anything else."""
    if choice == "auto":
        return choose_factory(rows, dim)
    if choice == "flat":
        return "Flat"
    if choice == "ivf":
        return choose_factory(max(rows, FLAT_MAX_ROWS + 1), dim)
    try:
        faiss.index_factory(dim, choice, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"--index {choice!r} is neither auto, flat, ivf nor a FAISS factory string "
                         f"({str(exc).splitlines()[0]})") from None
    return choice


def new_index(factory: str, dim: int) -> faiss.Index:
    """Gives an empty inner-product index whose ids are store ids."""
    if is_flat(factory):
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # on by default for IVF-PQ; 10x the training time, unused here
    ivf.cp.niter = 10  # k-means iterations: past ~10 the lists barely move, and each costs minutes at 10M
    ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    _set_query_bits(ivf)
    return index


def training_size(factory: str, rows: int) -> int:
    """Gives how many vectors an index of `factory` trains on, out of `rows` (0 for Flat)."""
    if is_flat(factory):
        return 0
    return min(rows, max(_lists(factory) * TRAIN_POINTS_PER_LIST, 65_536))


def add_blocks(index: faiss.Index, blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> int:
    """Adds (ids (n,) int64, vectors (n, D) any float) blocks to `index`; gives the number added.

    An HNSW coarse quantizer assigns each vector to its list at `ASSIGN_EF_SEARCH`, whatever breadth a
    search last set: an index read back from a store carries its serving breadth (or, in stores written
    before this was fixed, the 1,024 its tuning last tried, which made adding 1% of a 10M store take a
    minute instead of seconds)."""
    ivf = faiss.try_extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = ASSIGN_EF_SEARCH
    added = 0
    for ids, vectors in blocks:
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            added += len(ids)
    return added


def configure(index: faiss.Index, settings: IndexSettings) -> None:
    """Sets the search-time knobs of an approximate index from `settings`."""
    if settings.approximate and settings.nprobe:
        params = faiss.ParameterSpace()
        params.set_index_parameter(index, "nprobe", int(settings.nprobe))
        if "HNSW" in settings.factory:
            params.set_index_parameter(index, "quantizer_efSearch", max(64, 2 * int(settings.nprobe)))
        _set_query_bits(faiss.extract_index_ivf(index))


def _set_query_bits(ivf: faiss.IndexIVF) -> None:
    """Quantises queries of a RaBitQ index to QUERY_BITS (FAISS's scan of float queries, qb = 0, was 200x slower at 1M)."""
    ivf = faiss.downcast_index(ivf)
    if hasattr(ivf, "qb"):
        ivf.qb = QUERY_BITS


def search(index: faiss.Index, settings: IndexSettings, queries: np.ndarray, k: int,
           rows_of: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Gives (scores, ids), each (Q, k') best first, for (Q, D) float32 unit-norm queries; approximate
    kinds re-rank `settings.candidates` proposals against `rows_of(ids) -> (n, D) float32`; a row
    with fewer than k hits is padded with id -1 and score -inf."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not settings.approximate:
        return index.search(queries, k)
    scores, ids = index.search(queries, max(k, settings.candidates))
    return rerank(queries, ids, k, rows_of)


def rerank(queries: np.ndarray, proposals: np.ndarray, k: int,
           rows_of: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Gives the best k of each query's proposed ids (-1: none) by exact inner product."""
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_ids = np.full((len(queries), k), -1, np.int64)
    for q, (query, row) in enumerate(zip(queries, proposals)):
        row = row[row >= 0]
        if not len(row):
            continue
        exact = rows_of(row) @ query
        best = np.argsort(-exact, kind="stable")[:k]
        out_scores[q, :len(best)], out_ids[q, :len(best)] = exact[best], row[best]
    return out_scores, out_ids


def tune(index: faiss.Index, settings: IndexSettings, queries: np.ndarray, query_ids: np.ndarray,
         truth: np.ndarray, rows_of: Callable[[np.ndarray], np.ndarray], k: int = 10,
         target: float = RECALL_TARGET + TUNING_MARGIN, nprobes: Sequence[int] = NPROBES,
         pools: Sequence[int] = CANDIDATES) -> IndexSettings:
    """Gives `settings` with the cheapest (nprobe, candidates) of `nprobes` x `pools` whose recall@k on
    `queries` (stored rows `query_ids`, -1 for a query not stored, whose exact neighbours besides
    themselves are `truth` (Q, k)) reaches `target`; when none does, the most accurate setting tried,
    with a warning."""
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.nlist
    sizes = list_sizes(ivf)
    reaching: dict[int, tuple[int, float]] = {}  # candidates -> (smallest nprobe, its recall)
    scanned: dict[int, float] = {}  # nprobe -> codes a query scans, on average over these queries
    tried = [p for p in nprobes if p <= lists] or [lists]
    known = _ExactScores(rows_of, len(queries))  # each (query, row) product read once over all trials
    best_seen = (0.0, tried[0], pools[-1])
    for nprobe in tried:
        trial = settings.with_(nprobe=nprobe, candidates=pools[-1])
        configure(index, trial)
        scanned[nprobe] = codes_scanned(ivf, sizes, queries, nprobe)
        _, proposals = index.search(queries, pools[-1] + 1)
        exact = known.scores(queries, proposals)
        for pool in pools:
            if pool in reaching:
                continue
            ids = _best_of_prefix(proposals, exact, pool + 1, k + 1)
            got = recall_excluding_self(ids, query_ids, truth, k)
            best_seen = max(best_seen, (got, nprobe, pool))
            if got >= target:
                reaching[pool] = (nprobe, got)
        if len(reaching) == len(pools):
            break
    if not reaching:
        got, nprobe, pool = best_seen
        log.warning("index %s reaches recall@%d %.3f at best (target %.2f); using nprobe=%d, candidates=%d",
                    settings.factory, k, got, target, nprobe, pool)
    else:
        # The cheapest by a cost model, not by timing it here: tests and rebuilds then choose the same setting
        # on any machine. The codes scanned are counted on the lists these queries probe, not estimated from
        # the mean list size: queries fall where the data is dense, in the longest lists (at 10M rows of the
        # bench's store, 2.3x the mean). One re-ranked candidate (a 1 KiB read and a D-dim dot product)
        # costs roughly what scanning rerank_cost(factory) codes does.
        row_cost = rerank_cost(settings.factory)
        timed = {pool: scanned[nprobe] + row_cost * pool for pool, (nprobe, _) in reaching.items()}
        pool = min(timed, key=timed.get)
        nprobe, got = reaching[pool]
        log.info("index %s tuned: nprobe=%d, candidates=%d, recall@%d %.3f", settings.factory, nprobe, pool, k, got)
    chosen = settings.with_(nprobe=nprobe, candidates=pool, recall_at_10=round(got, 4))
    configure(index, chosen)  # the index is saved as it will serve, not at the last trial's breadth
    return chosen


class _ExactScores:
    """The exact inner products of each query with the rows proposed for it so far, each row read once."""

    def __init__(self, rows_of: Callable[[np.ndarray], np.ndarray], count: int) -> None:
        self.rows_of = rows_of
        self.ids = [np.zeros(0, np.int64) for _ in range(count)]  # per query: ids read, ascending
        self.exact = [np.zeros(0, np.float32) for _ in range(count)]  # and their exact scores

    def scores(self, queries: np.ndarray, proposals: np.ndarray) -> np.ndarray:
        """Gives (Q, P) float32 exact scores of `proposals` (Q, P) ids (-inf where -1)."""
        out = np.full(proposals.shape, -np.inf, np.float32)
        for q, (query, row) in enumerate(zip(queries, proposals)):
            new = np.setdiff1d(row[row >= 0], self.ids[q])
            if len(new):
                ids = np.concatenate([self.ids[q], new])
                exact = np.concatenate([self.exact[q], self.rows_of(new) @ query])
                order = np.argsort(ids, kind="stable")
                self.ids[q], self.exact[q] = ids[order], exact[order].astype(np.float32)
            if len(self.ids[q]):
                where = np.minimum(np.searchsorted(self.ids[q], row), len(self.ids[q]) - 1)
                out[q] = np.where(row >= 0, self.exact[q][where], -np.inf)
        return out


def _best_of_prefix(proposals: np.ndarray, exact: np.ndarray, pool: int, k: int) -> np.ndarray:
    """Gives (Q, k) ids: the best k by exact score among each query's first `pool` proposals (-1: none), as
    `rerank` orders them."""
    ids = np.full((len(proposals), k), -1, np.int64)
    for q, (row, scores) in enumerate(zip(proposals[:, :pool], exact[:, :pool])):
        keep = row >= 0
        best = np.argsort(-scores[keep], kind="stable")[:k]
        ids[q, :len(best)] = row[keep][best]
    return ids


def list_sizes(ivf: faiss.IndexIVF) -> np.ndarray:
    """Gives the number of codes in each of the index's lists, (nlist,) int64."""
    return np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)


def codes_scanned(ivf: faiss.IndexIVF, sizes: np.ndarray, queries: np.ndarray, nprobe: int) -> float:
    """Gives the mean number of codes a query scans at `nprobe`: the sizes (`list_sizes`) of the lists
    each of `queries` probes."""
    _, probed = ivf.quantizer.search(queries, nprobe)
    return float(sizes[probed[probed >= 0]].sum() / len(queries))


def rerank_cost(factory: str) -> int:
    """Gives how many of `factory`'s codes scan in the time of one exact re-rank (RERANK_COST)."""
    return next((cost for kind, cost in RERANK_COST.items() if kind in factory), RERANK_COST["PQ"])


def recall_excluding_self(ids: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Gives the mean share of each query's true k neighbours (`truth` (Q, k), itself excluded) found
    among its first k results other than itself (`ids` (Q, >= k+1))."""
    hits = 0
    for row, own, want in zip(ids, query_ids, truth):
        got = [i for i in row if i != own and i >= 0][:k]
        hits += len(set(got) & set(want.tolist()))
    return hits / (len(truth) * k)


def exact_neighbours(queries: np.ndarray, blocks: Iterator[tuple[np.ndarray, np.ndarray]], k: int,
                     exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gives the exact (scores, ids) (Q, k) of (Q, D) queries over (ids, vectors) blocks, read one block at
    a time; `exclude` (Q,) ids are left out of their own query's answer (a stored row as query)."""
    extra = 0 if exclude is None else 1
    best_s = np.full((len(queries), k + extra), -np.inf, np.float32)
    best_i = np.full((len(queries), k + extra), -1, np.int64)
    for ids, vectors in blocks:
        scores = queries @ np.asarray(vectors, dtype=np.float32).T
        take = min(k + extra, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        merged_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        merged_i = np.concatenate([best_i, np.asarray(ids, np.int64)[top]], axis=1)
        order = np.argsort(-merged_s, axis=1, kind="stable")[:, :k + extra]
        best_s, best_i = np.take_along_axis(merged_s, order, 1), np.take_along_axis(merged_i, order, 1)
    if exclude is None:
        return best_s, best_i
    keep = best_i != np.asarray(exclude, np.int64)[:, None]
    # each row keeps its first k ids other than itself
    out_s = np.array([s[m][:k] for s, m in zip(best_s, keep)], np.float32)
    out_i = np.array([i[m][:k] for i, m in zip(best_i, keep)], np.int64)
    return out_s, out_i


def read(path: str, settings: IndexSettings, for_serving: bool) -> faiss.Index:
    """Gives the index stored at `path`; an approximate one opened for serving is memory-mapped (its
    inverted lists stay on disk, pages come in as queries touch them) and configured."""
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if settings.approximate and for_serving else 0
    index = faiss.read_index(path, flags)
    configure(index, settings)
    return index


def _lists(factory: str) -> int:
    head = next(part for part in factory.split(",") if part.startswith("IVF"))
    return int(head[3:].split("_")[0])
