"""Near-duplicates (a re-encoded or resized copy) kept in one split, so no test image has its twin in train.

Splits come from the content hash, which changes with every re-encoding; the vectors do not. Images
joined by cosine >= a threshold, directly or through each other, form a group, and the group goes
to one split. Pure functions over arrays; grouping.py runs them on a store, whose writer applies the moves.

A job only searches from the rows it added, and from the groups they join: groups among older rows
were settled by earlier jobs. Beyond `EXACT_UP_TO` rows the search runs on an IVF index over the
same rows instead of the exact one: an exact all-pairs search of a first job over a million images
would take hours on a CPU, while a near-duplicate (cosine >= 0.95, L2 distance <= 0.32) almost
always lies in one of the few cells nearest its twin. A store with an approximate index (millions
of rows) searches through that index instead (`store_index_neighbours`), reading only the rows it
proposes (`python cli.py bench dedup` measures all three).
"""
from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

DEFAULT_THRESHOLD = 0.95  # resized or re-encoded copies of one picture score above this with CLIP
EXACT_UP_TO = 100_000  # rows; beyond, the range search goes through an IVF index (see the module doc)
IVF_NPROBE = 16  # cells searched per query: a near-duplicate pair is found even when it straddles a border
ANN_PROPOSALS = 32  # a store index's proposals re-ranked per row (doubled for a row whose all qualify)


def range_search_index(index, vectors: np.ndarray, exact_up_to: int = EXACT_UP_TO):
    """Gives the index to range-search for near-duplicates: `index` (exact) for up to `exact_up_to`
    rows, else an IVF-Flat over the same (N, D) float32 unit-norm rows, trained on a seeded sample."""
    n, dim = vectors.shape
    if n <= exact_up_to:
        return index
    nlist = int(4 * np.sqrt(n))  # FAISS's guideline for IVF: 4*sqrt(N) to 16*sqrt(N) cells
    sample = np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # Training dominates the cost; rough cells do here, since a pair only has to share one of
    # IVF_NPROBE cells, so fewer k-means rounds than FAISS's default 25 (measured: same groups).
    ivf.cp.niter = 10
    ivf.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    for start in range(0, n, 65_536):
        ivf.add(np.ascontiguousarray(vectors[start:start + 65_536], dtype=np.float32))
    ivf.nprobe = IVF_NPROBE
    return ivf


Neighbours = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # rows -> (lims, ids) as range_search gives


def near_duplicate_groups(index, vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                          block: int = 4096, first_new: int = 0, exact_up_to: int = EXACT_UP_TO,
                          walk_older: bool = True) -> list[np.ndarray]:
    """Gives the groups (ascending int64 ids, two or more each) of rows joined by cosine >= `threshold`
    that hold a row numbered `first_new` or above (every group when it is 0); with `walk_older` False,
    only links that touch a new row count (see `groups_from`).

    `vectors` (N, D) float32 unit-norm are the rows of `index`, an exact inner-product FAISS index
    (searched as it is up to `exact_up_to` rows, through an IVF over the same rows beyond).
    Queries go `block` rows at a time, so memory holds the pairs found, never an N x N matrix.
    """
    index = range_search_index(index, vectors, exact_up_to)
    radius = _strictly_above(threshold)

    def neighbours(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lims, _, ids = index.range_search(np.ascontiguousarray(vectors[rows], dtype=np.float32), radius)
        return lims, ids

    return groups_from(neighbours, len(vectors), first_new, block, walk_older)


def store_index_neighbours(index, rows_of: Callable[[np.ndarray], np.ndarray], threshold: float = DEFAULT_THRESHOLD,
                           proposals: int = ANN_PROPOSALS, nprobe: int = IVF_NPROBE) -> Neighbours:
    """Gives `neighbours(rows)` for `groups_from` that searches a store's own approximate index (an IVF
    whose ids are store ids, holding every live row) instead of a copy of the vectors: what lets a job
    on a store of millions group its new images without reading the store into memory.

    Each row's `proposals` nearest by the index's codes (over `nprobe` lists) are re-ranked exactly on
    `rows_of(ids) -> (n, D) float32` and kept when their true cosine reaches `threshold`; a row whose
    proposals all reach it (a large group) asks again for twice as many, until some fall short."""
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = min(nprobe, ivf.nlist)  # the served copy is not touched: this index is the job's own

    def neighbours(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = rows_of(rows)
        found: list[np.ndarray] = [np.zeros(0, np.int64)] * len(rows)
        todo, k = np.arange(len(rows)), proposals
        while len(todo):
            k = min(k, index.ntotal)
            _, ids = index.search(queries[todo], k)
            again = []
            for q, row in zip(todo.tolist(), ids):
                row = row[row >= 0]
                close = row[rows_of(row) @ queries[q] >= threshold] if len(row) else row
                found[q] = close
                if len(close) == k < index.ntotal:
                    again.append(q)
            todo, k = np.asarray(again, np.int64), 2 * k
        lims = np.concatenate([[0], np.cumsum([len(f) for f in found])]).astype(np.int64)
        return lims, np.concatenate(found).astype(np.int64)

    return neighbours


def groups_from(neighbours: Neighbours, rows: int, first_new: int = 0, block: int = 4096,
                walk_older: bool = True) -> list[np.ndarray]:
    """Gives the groups of `near_duplicate_groups` among `rows` rows, each row's near-duplicates (itself
    may be among them) given by `neighbours(rows (n,) int64) -> (lims (n+1,), ids)`, `block` rows a call.

    With `walk_older`, an older row a new one reaches is searched from in turn, and so on: its whole
    older group joins. Without, only the new rows are searched: where near-duplicate links chain
    through a dense cluster, that walk would cover the cluster, and the store only needs it when older
    rows must move (grouping.py)."""
    reached = np.zeros(rows, bool)
    frontier = np.arange(first_new, rows)
    reached[frontier] = True
    left, right = [], []
    while len(frontier):  # new rows first, then any older row they reach, until no new row is reached
        found = []
        for start in range(0, len(frontier), block):
            part = frontier[start:start + block]
            lims, ids = neighbours(part)
            part = np.repeat(part, np.diff(lims).astype(np.int64))
            keep = ids != part  # a row always matches itself
            left.append(part[keep])
            right.append(ids[keep])
            found.append(ids[keep])
        frontier = np.unique(np.concatenate(found)) if walk_older else np.zeros(0, np.int64)
        frontier = frontier[~reached[frontier]]
        reached[frontier] = True
    if not sum(len(part) for part in left):
        return []
    return _components(np.concatenate(left), np.concatenate(right))


def _strictly_above(threshold: float) -> float:
    """FAISS keeps inner products strictly above a range search's radius; one float32 step below makes it ">="."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def _components(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Gives the connected components (ascending ids) of the graph with edges a[i] - b[i]."""
    nodes, pairs = np.unique(np.concatenate([a, b]), return_inverse=True)
    a, b = pairs[:len(a)], pairs[len(a):]
    label = np.arange(len(nodes))  # label[x] is always a node of x's component, so jumping through it is safe
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        while not np.array_equal(new, new[new]):
            new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    order = np.argsort(label, kind="stable")  # stable: members stay in ascending id order
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    return [nodes[part] for part in np.split(order, cuts)]


def split_moves(groups: list[np.ndarray], split: dict[int, str], fixed: dict[int, bool]) -> tuple[dict[int, str], int]:
    """Gives ({id: new split} for the images to move, number of groups that had to move) so that each
    group sits in one split.

    A group goes to the split of its oldest (lowest id) member, or of its oldest member whose split
    the source gave (`fixed`), since those never move. Only images whose split came from the hash move.
    """
    moves, moved_groups = {}, 0
    for group in groups:
        members = [int(i) for i in group]
        anchors = [i for i in members if fixed[i]] or members
        target = split[anchors[0]]
        here = {i: target for i in members if not fixed[i] and split[i] != target}
        moves |= here
        moved_groups += bool(here)
    return moves, moved_groups
