"""The embed job on Ray: the store a local run gives, on one node and on two; a killed driver resumes; a killed
worker is retried by Ray; without the extra, `--engine ray` fails at once naming it. The index built on Ray
(`reindex --engine ray`): the recall of the single-process build, exactly the live ids, tasks on both nodes.

Ray starts slowly, so the tests share one local Ray (2 CPUs) per module; the two-node cluster test has its
own. Ray runs on loopback only, with this run's home and temporary folder (tests/ray_clusters.py). Kills are
named fault points (index/faults.py), never timing. Clusters started by `ray start` are in test_ray_cluster.py.
"""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT, TINY, TINY_MODEL
from emoreact import embed_source
from emoreact.bench.synthetic_store import Mixture, held_out_queries, write_store
from emoreact.embed import EmbedConfig, RayConfig
from emoreact.index import Store, ann, brute_force_search
from ray_clusters import LOOPBACK, assert_loopback, isolated_ray
from synthetic import draw

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='Ray is not installed (pip install "emoreact[ray]")')
# Small batches and shards: several shards, so that a kill lands between two of them.
CONFIG = EmbedConfig(batch_size=8, workers=0, shard_size=16, progress=False, near_duplicate_threshold=None)
UNIQUE = 44
CLIPS = (5, 12)  # these are animated GIFs
FP16_STEP = 2.0 ** -11  # fp16 spacing just below 1: the local and Ray workers may round a value apart
MIX = Mixture(dim=64, clusters=48, seed=3)
IVF = "IVF32_HNSW32,RaBitQ"  # a small approximate index of the production kind (as in test_store_scale.py)
REMOVED = [0, 17, 1999, 2000, 5999]  # shard edges among them


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A labelled folder: 44 images (two of them animated GIFs, clips), byte-identical copies of some, and files
    no model can take."""
    root = tmp_path_factory.mktemp("ray") / "src"
    for n in range(UNIQUE):
        label = ("happy", "sad")[n % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        if n in CLIPS:
            frames = [draw(("neutral",), seed=n)] + [draw((label,), seed=90_000 + n + k) for k in range(3)]
            frames[0].save(root / label / f"{n:03d}.gif", save_all=True, append_images=frames[1:], duration=120)
            continue
        draw((label,), seed=90_000 + n).save(root / label / f"{n:03d}.jpg", quality=90)
        if n % 7 == 0:
            shutil.copy(root / label / f"{n:03d}.jpg", root / label / f"{n:03d}b.jpg")
    (root / "happy" / "notes.jpg").write_text("not an image")
    (root / "happy" / "empty.png").write_bytes(b"")
    (root / "sad" / "cut.jpg").write_bytes((root / "sad" / "001.jpg").read_bytes()[:400])
    draw(("sad",), seed=1).save(root / "sad" / "scan.tif")
    return root


@pytest.fixture(scope="module")
def local(source, tmp_path_factory, label_config) -> dict:
    """The local engine's store of the source, as a snapshot."""
    path = tmp_path_factory.mktemp("local") / "store"
    embed_source(source, path, TINY, labels=label_config, device="cpu", config=CONFIG)
    return snapshot(path)


@pytest.fixture(scope="module")
def ray_session():
    """Ray, shut down at the end of the module; its home (where a local Ray writes its token) and temporary
    folder are this run's."""
    import ray

    with isolated_ray():
        yield ray
        ray.shutdown()


@pytest.fixture()
def ray_local(ray_session):
    """One local Ray of 2 CPUs, started by the first test that needs it and kept for the next ones (the
    cluster test, which replaces it, runs last)."""
    if not ray_session.is_initialized():
        ray_session.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                         _node_ip_address=LOOPBACK)
        assert_loopback(ray_session)
    return ray_session


@pytest.fixture()
def two_nodes(ray_session):
    """A simulated cluster of two nodes of 1 CPU each, in place of the module's Ray while the test runs."""
    from ray.cluster_utils import Cluster

    ray_session.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK})
    cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    ray_session.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    assert_loopback(ray_session)
    yield cluster
    ray_session.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def vector_store(tmp_path_factory) -> Path:
    """A synthetic store of 6,000 vectors in three shards, a flat index, a few images removed."""
    from emoreact.bench import synthetic_store

    path = tmp_path_factory.mktemp("vectors") / "store"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic_store, "BLOCK", 2000)  # a shard per block: shards for two tasks
        store = write_store(path, 6000, MIX, index="flat")  # the flat build writes the manifest
    store.remove(REMOVED, "test", "t")
    store.close()
    return path


def reindex_copy(vector_store: Path, to: Path, builder=None):
    """Gives the store (open) and its index settings after a reindex of a copy of `vector_store`."""
    shutil.copytree(vector_store, to)
    store = Store.open_for_writing(to)
    settings = store.reindex(IVF, builder=builder)
    store.close()
    return Store.open(to), settings


def indexed_ids(path: Path) -> np.ndarray:
    """Gives the sorted ids held by the inverted lists of the store's IVF index file."""
    import faiss

    store = Store.open(path)
    whole = faiss.read_index(str(path / store.index_settings.file))
    index = faiss.extract_index_ivf(whole)  # a view: `whole` must stay alive while it is read
    store.close()
    lists = index.invlists
    ids = [faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n)).copy() for n in range(index.nlist)]
    return np.sort(np.concatenate(ids))


def recall(store: Store, queries: np.ndarray) -> float:
    """Gives the recall@10 of the store's search against brute force over its live vectors."""
    _, truth = brute_force_search(store.vectors(), queries, 10)  # removed rows are zero: never in a top 10
    _, ids = store.search(queries, 10)
    return float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ids.tolist(), truth.tolist())]))


def snapshot(path: Path) -> dict:
    """Gives what must not depend on the engine: rows in id order, vectors, skipped files and reasons."""
    store = Store.open(path)
    state = {"items": [(it.path, it.sha256, it.labels, it.split, it.width, it.height) for it in store.items()],
             "vectors": store.vectors(), "skipped": sorted(store.skipped()), "count": len(store),
             "clips": store.clips([it.id for it in store.items()])}
    store.close()
    return state


def assert_same_store(got: dict, want: dict) -> None:
    assert got["count"] == want["count"] == UNIQUE
    assert got["items"] == want["items"], "ids, paths, hashes, labels, splits or sizes differ"
    assert got["skipped"] == want["skipped"]
    assert got["clips"] == want["clips"] and sum(c is not None for c in want["clips"]) == len(CLIPS)
    assert np.abs(got["vectors"] - want["vectors"]).max() <= FP16_STEP


def ray_embed(source: Path, store: Path, label_config, ray_config: RayConfig = RayConfig(workers=1)):
    return embed_source(source, store, TINY, labels=label_config, device="cpu", config=CONFIG, engine="ray",
                        ray_config=ray_config)


@needs_ray
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_ray_engine_writes_the_store_the_local_engine_writes(source, local, tmp_path, label_config):
    report = ray_embed(source, tmp_path / "store", label_config)
    assert_same_store(snapshot(tmp_path / "store"), local)
    assert dict(report.skipped) == {"duplicate": 7, "not an image": 2, "damaged": 1, "unsupported format": 1}
    written = json.loads((tmp_path / "store" / "report.json").read_text())
    assert (written["engine"], written["nodes"], written["workers"]) == ("ray", 1, 1)
    assert sum(written["images_per_node"].values()) == written["added"] == UNIQUE
    again = ray_embed(source, tmp_path / "store", label_config)
    assert (again.added, again.already_present) == (0, UNIQUE + 11)  # bad files and copies are known by hash too


@needs_ray
@pytest.mark.ray
def test_a_killed_driver_rerun_gives_the_uninterrupted_store(ray_local, source, local, tmp_path, label_config):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EMOREACT_FAULT")},
           "EMOREACT_FAULT": "after_shard_rows:2"}  # two shards committed, then the driver dies
    command = [sys.executable, str(ROOT / "cli.py"), "embed", str(source), "--store", str(tmp_path / "store"),
               "--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu", "--engine", "ray",
               "--ray-address", ray_local.get_runtime_context().gcs_address, "--workers", "1", "--batch-size",
               str(CONFIG.batch_size), "--shard-size", str(CONFIG.shard_size), "--no-progress",
               "--near-duplicate-threshold", "off"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    report = ray_embed(source, tmp_path / "store", label_config)
    assert report.already_present >= 2 * CONFIG.shard_size, "the rerun started over instead of resuming"
    assert_same_store(snapshot(tmp_path / "store"), local)


@needs_ray
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_a_worker_killed_mid_batch_is_retried_by_ray(source, local, tmp_path, label_config, monkeypatch):
    marker = tmp_path / "worker-killed"
    monkeypatch.setenv("EMOREACT_FAULT", "in_embed_worker:2")  # the worker dies on its second batch ...
    monkeypatch.setenv("EMOREACT_FAULT_ONCE", str(marker))  # ... once: its restarted process does not
    report = ray_embed(source, tmp_path / "store", label_config)
    assert marker.exists(), "the fault point was never reached: no worker was killed"
    assert report.added == UNIQUE
    assert_same_store(snapshot(tmp_path / "store"), local)


@needs_ray
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("ray_config, device, message", [
    (RayConfig(workers=2), "cpu", "2 workers x 1 CPUs leave no CPU for reading and decoding on a Ray cluster of 2 "
                                  "CPUs; use --workers 1 or fewer"),
    (RayConfig(gpus_per_worker=1), "auto", "--gpus-per-worker 1 but the Ray cluster has 0 GPUs"),
    (RayConfig(), "cuda", "--device cuda with --gpus-per-worker 0"),
])
def test_workers_the_cluster_cannot_hold_are_refused_at_once(source, tmp_path, label_config, ray_config, device,
                                                             message):
    # Actors holding every CPU would leave the read tasks none, and the job would hang (Ray issue 44687).
    from emoreact.embed import EngineError

    with pytest.raises(EngineError, match=re.escape(message)):
        embed_source(source, tmp_path / "store", TINY, labels=label_config, device=device, config=CONFIG,
                     engine="ray", ray_config=ray_config)


@needs_ray
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_the_index_built_on_ray_has_the_local_builds_recall_and_exactly_the_live_ids(vector_store, tmp_path):
    from emoreact.index.ray_build import RayIndexBuilder

    local, local_settings = reindex_copy(vector_store, tmp_path / "local")
    builder = RayIndexBuilder(RayConfig(workers=2))
    on_ray, ray_settings = reindex_copy(vector_store, tmp_path / "ray", builder)
    assert ray_settings.factory == IVF and ray_settings.nprobe > 0 and ray_settings.candidates > 0
    assert sum(builder.added_per_node_.values()) == 6000 - len(REMOVED)
    live = on_ray.live_ids()
    assert len(live) == 6000 - len(REMOVED) and not set(REMOVED) & set(live.tolist())
    assert np.array_equal(indexed_ids(tmp_path / "ray"), live), "the index must hold exactly the live ids"
    queries = held_out_queries(300, MIX)
    got, want = recall(on_ray, queries), recall(local, queries)
    assert got >= ann.RECALL_TARGET and want >= ann.RECALL_TARGET, (got, want)
    # Tuning keeps the fastest setting that reaches the target, by timing: compare the indexes at one setting.
    same = {"nprobe": local_settings.nprobe, "candidates": local_settings.candidates}
    local.close()
    on_ray.close()
    local, on_ray = Store.open(tmp_path / "local", **same), Store.open(tmp_path / "ray", **same)
    got, want = recall(on_ray, queries), recall(local, queries)
    assert abs(got - want) <= 0.01, (got, want, same)
    local.close()
    on_ray.close()


@needs_ray
@pytest.mark.ray
def test_two_nodes_both_embed_and_give_the_same_store(two_nodes, source, local, tmp_path, label_config):
    # Two workers of half a CPU on two 1-CPU nodes: Ray Data spreads them, one per node.
    report = ray_embed(source, tmp_path / "store", label_config, RayConfig(workers=2, cpus_per_worker=0.5))
    assert report.nodes == 2 and len(report.images_per_node) == 2, report.images_per_node
    assert all(count > 0 for count in report.images_per_node.values()), report.images_per_node
    assert_same_store(snapshot(tmp_path / "store"), local)


@needs_ray
@pytest.mark.ray
def test_two_nodes_both_add_vectors_to_the_index(two_nodes, vector_store, tmp_path):
    from emoreact.index.ray_build import RayIndexBuilder

    builder = RayIndexBuilder(RayConfig(workers=2))
    store, _ = reindex_copy(vector_store, tmp_path / "store", builder)
    assert len(builder.added_per_node_) == 2, builder.added_per_node_
    assert all(count > 0 for count in builder.added_per_node_.values()), builder.added_per_node_
    assert np.array_equal(indexed_ids(tmp_path / "store"), store.live_ids())
    store.close()


def test_without_the_extra_reindex_engine_ray_fails_at_once_naming_it(vector_store, tmp_path, monkeypatch):
    from emoreact.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    before = json.loads((vector_store / "manifest.json").read_text())
    result = CliRunner().invoke(main, ["reindex", "--store", str(vector_store), "--engine", "ray"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert 'pip install "emoreact[ray]"' in result.output
    assert json.loads((vector_store / "manifest.json").read_text()) == before, "the store must be untouched"


def test_without_the_extra_engine_ray_fails_at_once_naming_it(source, tmp_path, monkeypatch):
    from emoreact.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = CliRunner().invoke(main, ["embed", str(source), "--store", str(tmp_path / "store"), "--model", TINY_MODEL,
                                       "--pretrained", "none", "--engine", "ray"])
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert 'pip install "emoreact[ray]"' in result.output
    assert not (tmp_path / "store").exists(), "it should fail before touching the store"

