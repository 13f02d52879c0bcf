"""The store's index built on Ray (`reindex --engine ray`): a `Store.reindex` builder.

The driver trains the empty index, one task per group of shards adds that group's live vectors to a
copy of it (reading the shards memory-mapped from the store folder, which every node must see at the
same path), and the driver merges the parts in id order and tunes the result. Ray's settings and its
import guard are shared with the embed engine (`emoreact.rayutil`).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from emoreact.rayutil import (EngineError, RayCluster, RayConfig, connected, node_names, node_placements,
                              require_ray, resolve_address)

from . import ann, building
from .ann import IndexSettings

if TYPE_CHECKING:
    from emoreact.index import Store

log = logging.getLogger(__name__)


class RayIndexBuilder:
    """A `Store.reindex` builder, `(store, factory) -> (index, settings)`, that adds the store's vectors on a
    Ray cluster (see the module docstring).

    After a build, `added_per_node_` gives the vectors each node added, by node name, and `cluster_` the
    cluster (`rayutil.RayCluster`: its address, whether it asks for a token, its Ray)."""

    def __init__(self, ray_config: RayConfig = RayConfig()) -> None:
        self._ray = require_ray()  # at once: before the store is locked or anything trained
        # the cluster chosen at once too ("local": a Ray of its own), so that a stale one fails before any work
        self.ray_config = replace(ray_config, address=resolve_address(ray_config.address) or "local")
        self.added_per_node_: dict[str, int] = {}
        self.cluster_: RayCluster | None = None

    def __call__(self, store: Store, factory: str) -> tuple[faiss.Index, IndexSettings]:
        """Gives (index, settings) as `building.build_for_store` does, the adding done by Ray tasks."""
        if ann.is_flat(factory):  # nothing to train and a flat add is a copy: a cluster would only add transfers
            log.info("a %s index is built in this process, not on Ray", factory)
            return building.build_for_store(store, factory)
        with connected(self._ray, self.ray_config.address) as self.cluster_:
            index, settings, per_node = _build_on_ray(self._ray, store, factory, self.ray_config)
            names = node_names(self._ray)
        self.added_per_node_ = {names.get(node, node): count for node, count in sorted(per_node.items())}
        for node, count in self.added_per_node_.items():
            log.info("node %s added %d vectors", node, count)
        return index, settings


def _build_on_ray(ray, store: Store, factory: str, config: RayConfig) -> tuple[faiss.Index, IndexSettings, Counter]:
    """Gives the index `building.build` gives (trained, filled, tuned), its vectors added by Ray tasks, with
    the count each node (by id) added."""
    start = time.perf_counter()
    rows, live = store.rows_written(), store.live_ids()
    index = building.train_empty(factory, store.dim, live, store.vectors_of)
    empty = ray.put(faiss.serialize_index(index))  # once: every task gets the same trained copy
    folder = str(Path(store.root).resolve() / "vectors")
    cpus = max(1.0, config.cpus_per_worker)
    tasks = config.workers or max(1, int(float(ray.cluster_resources().get("CPU", 1)) // cpus))
    add = ray.remote(num_cpus=cpus)(_add_shards)
    groups = _shard_groups(store.shards(), tasks)
    refs = [add.options(scheduling_strategy=where).remote(
                empty, folder, group, live[(live >= group[0].first_id) & (live < group[-1].first_id + group[-1].count)],
                int(cpus))
            for group, where in zip(groups, node_placements(ray, cpus, len(groups)))]
    per_node: Counter = Counter()
    while refs:  # in id order: the merged lists then hold their ids as one in-process add would
        part, node, added = ray.get(refs.pop(0))  # dropping the ref frees the part in the object store
        index.merge_from(faiss.deserialize_index(part), 0)
        per_node[node] += added
    if index.ntotal != len(live):
        raise EngineError(f"the Ray tasks added {index.ntotal} vectors, the store has {len(live)} live images; "
                          "please report this with your Ray version")
    settings = IndexSettings(factory=factory, file="", indexed_rows=rows, trained_rows=rows)
    settings = building.tune_on_store(index, settings, live, store.live_blocks, store.vectors_of)
    return index, settings.with_(build_seconds=round(time.perf_counter() - start, 2)), per_node


def _shard_groups(shards: list, groups: int) -> list[list]:
    """Gives the shards cut into at most `groups` runs of consecutive shards with about equal rows."""
    total = sum(shard.count for shard in shards)
    out: list[list] = []
    done = 0
    for shard in shards:
        # a new group starts once the rows so far pass the next equal share
        if not out or (done >= total * len(out) / groups and len(out) < groups):
            out.append([])
        out[-1].append(shard)
        done += shard.count
    return out


def _add_shards(empty: np.ndarray, folder: str, shards: list, ids: np.ndarray,
                threads: int) -> tuple[np.ndarray, str, int]:
    """A Ray task: gives (the serialised index holding the live `ids` of `shards`, its node id, how many)."""
    import ray

    faiss.omp_set_num_threads(threads)
    index = faiss.deserialize_index(empty)
    added = 0
    for shard in shards:
        path = Path(folder) / shard.name
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        except OSError as exc:
            raise EngineError(f"a Ray node cannot read {path} ({exc}); every node must see the store "
                              "at the same path (a shared file system)") from exc
        mine = ids[(ids >= shard.first_id) & (ids < shard.first_id + shard.count)]
        for at in range(0, len(mine), 65_536):  # one block at a time in float32, as the local build
            block = mine[at:at + 65_536]
            index.add_with_ids(np.asarray(vectors[block - shard.first_id], np.float32), block)
        added += len(mine)
    return faiss.serialize_index(index), ray.get_runtime_context().get_node_id(), added
