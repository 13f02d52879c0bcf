"""The Ray index build's driver and tasks (index/ray_build.py), in this process and without a cluster: tasks
placed on the nodes in turn, shards cut into even runs, each task's part of the index, and the driver's merge
giving the index an in-process build gives. The build on a real (simulated two-node) Ray is in
test_ray_engine.py, marked `ray`.

`Executor` stands in for the `ray` module: it runs each task at once, in this process, and answers the few
questions the driver asks of the cluster. Everything else is the real code.
"""
import sys
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from emoreact.bench import synthetic_store
from emoreact.bench.synthetic_store import Mixture, write_store
from emoreact.index import Store
from emoreact.index.ray_build import RayIndexBuilder, _add_shards, _build_on_ray, _shard_groups
from emoreact.index.shards import Shard
from emoreact.rayutil import EngineError, RayConfig, node_placements

MIX = Mixture(dim=32, clusters=24, seed=5)
REMOVED = [0, 3, 499, 500, 1199]  # shard edges among them
IVF = "IVF16,Flat"
A, B, DEAD, SMALL = ("0a" * 28, "0b" * 28, "0c" * 28, "0d" * 28)  # node ids: 28 bytes in hex, as Ray checks


class Executor:
    """Runs Ray tasks at once in this process; `nodes` are the cluster's nodes as `ray.nodes()` gives them."""

    def __init__(self, nodes: list[dict]) -> None:
        self._nodes = nodes
        self.placed: list = []  # the scheduling strategy each task was given

    def nodes(self) -> list[dict]:
        return self._nodes

    def cluster_resources(self) -> dict:
        return {"CPU": sum(node["Resources"].get("CPU", 0) for node in self._nodes if node["Alive"])}

    def put(self, value):
        return value

    def get(self, ref):
        return ref

    def remote(self, num_cpus: float):
        executor = self

        class Task:
            def __init__(self, function) -> None:
                self.function = function

            def options(self, scheduling_strategy):
                executor.placed.append(scheduling_strategy)
                return self

            def remote(self, *args):
                return self.function(*args)

        return Task


def node(node_id: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus}, "NodeManagerAddress": "127.0.0.1"}


@pytest.fixture(scope="module")
def vector_store(tmp_path_factory):
    """A synthetic store of 1,200 vectors in three shards, a flat index, a few images removed."""
    path = tmp_path_factory.mktemp("vectors") / "store"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic_store, "BLOCK", 500)
        store = write_store(path, 1200, MIX, index="flat")
    store.remove(REMOVED, "test", "t")
    store.close()
    return path


@pytest.fixture
def on_node(monkeypatch):
    """The `ray` module a task imports to name its node, answering "node-a"."""
    context = SimpleNamespace(get_node_id=lambda: "node-a")
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(get_runtime_context=lambda: context))


def test_tasks_go_to_the_alive_nodes_that_can_hold_them_in_turn():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Executor([node(B, 4), node(A, 2), node(DEAD, 8, alive=False), node(SMALL, 0.5)])
    placed = node_placements(cluster, 1.0, 5)
    assert all(isinstance(p, NodeAffinitySchedulingStrategy) and p.soft for p in placed)
    assert [p.node_id for p in placed] == [A, B, A, B, A]  # sorted ids, taken in turn
    assert node_placements(Executor([node(SMALL, 0.5)]), 1.0, 2) == ["SPREAD", "SPREAD"]  # none fits: Ray decides


def test_shards_are_cut_into_runs_of_about_equal_rows():
    shards = [Shard(f"{n}", first, count) for n, (first, count) in
              enumerate([(0, 500), (500, 500), (1000, 200), (1200, 100), (1300, 700)])]
    groups = _shard_groups(shards, 2)
    assert len(groups) == 2 and [s for g in groups for s in g] == shards  # consecutive, each shard once
    rows = [sum(s.count for s in g) for g in groups]
    assert rows == [1000, 1000]
    assert len(_shard_groups(shards, 10)) == len(shards)  # never more groups than shards
    assert _shard_groups(shards, 1) == [shards]


def test_a_task_adds_the_live_rows_of_its_shards_and_names_its_node(vector_store, on_node):
    with Store.open(vector_store, with_index=False) as store:
        live, shards, vectors = store.live_ids(), store.shards(), store.vectors()
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(MIX.dim))
    mine = live[live >= shards[1].first_id]
    part, node_id, added = _add_shards(faiss.serialize_index(flat), str(vector_store / "vectors"), shards[1:], mine, 1)
    index = faiss.deserialize_index(part)
    assert (node_id, added, index.ntotal) == ("node-a", len(mine), len(mine))
    assert 1199 not in mine and 500 not in mine  # removed rows are not added
    scores, ids = index.search(vectors[mine[:5]], 1)
    assert np.array_equal(ids[:, 0], mine[:5]) and np.allclose(scores[:, 0], 1.0, atol=1e-3)


def test_a_task_that_cannot_read_a_shard_names_the_shared_file_system(vector_store, tmp_path, on_node):
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(MIX.dim))
    with pytest.raises(EngineError, match="same path"):
        _add_shards(faiss.serialize_index(flat), str(tmp_path), [Shard("000000000.npy", 0, 500)], np.arange(5), 1)


def test_the_driver_merges_the_parts_into_the_index_an_in_process_build_gives(vector_store, on_node):
    cluster = Executor([node(A, 1), node(B, 1)])
    with Store.open(vector_store, with_index=False) as store:
        index, settings, per_node = _build_on_ray(cluster, store, IVF, RayConfig(workers=3))
        live = store.live_ids()
        local, local_settings = synthetic_build(store)
    assert len(cluster.placed) == 3 and {p.node_id for p in cluster.placed} == {A, B}
    assert index.ntotal == len(live) and sum(per_node.values()) == len(live)
    assert settings.factory == IVF and settings.indexed_rows == 1200 and settings.trained_rows == 1200
    queries = Mixture.draw(MIX, 50, stream=99)[0]
    index.nprobe = local.nprobe = 4
    # the same trained quantizer and the rows added in id order: the very lists an in-process add gives
    assert np.array_equal(index.search(queries, 10)[1], local.search(queries, 10)[1])
    assert settings.nprobe == local_settings.nprobe


def synthetic_build(store):
    from emoreact.index import building

    return building.build(IVF, store.dim, store.rows_written(), store.live_ids(), store.live_blocks,
                          store.vectors_of)


def test_a_flat_index_is_built_in_this_process_without_a_cluster(vector_store, tmp_path):
    import shutil

    shutil.copytree(vector_store, tmp_path / "store")
    builder = RayIndexBuilder(RayConfig())  # Ray is installed with the test extra; no cluster is started
    with Store.open_for_writing(tmp_path / "store") as store:
        settings = store.reindex("flat", builder=builder)
        live = store.live_ids()
    assert settings.factory == "Flat" and builder.added_per_node_ == {}
    with Store.open(tmp_path / "store") as store:
        scores, ids = store.search(store.vectors_of(live[:3]), 1)
    assert np.array_equal(ids[:, 0], live[:3])
