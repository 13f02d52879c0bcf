"""The embed job on Ray: the store a local run gives, on one node and on two; a killed driver resumes; a killed
worker is retried by Ray; without the extra, `--engine ray` fails at once naming it.

Ray starts slowly, so the tests share one local Ray (2 CPUs) per module; the two-node cluster test has its
own. Kills are named fault points (index/faults.py), never timing.
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
from emoreact.embed import EmbedConfig, RayConfig
from emoreact.index import Store
from synthetic import draw

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='Ray is not installed (pip install "emoreact[ray]")')
# Small batches and shards: several shards, so that a kill lands between two of them.
CONFIG = EmbedConfig(batch_size=8, workers=0, shard_size=16, progress=False, near_duplicate_threshold=None)
UNIQUE = 44
FP16_STEP = 2.0 ** -11  # fp16 spacing just below 1: the local and Ray workers may round a value apart


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A labelled folder: 44 images, byte-identical copies of some, and files no model can take."""
    root = tmp_path_factory.mktemp("ray") / "src"
    for n in range(UNIQUE):
        label = ("happy", "sad")[n % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
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
    """Ray, shut down at the end of the module."""
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture()
def ray_local(ray_session):
    """One local Ray of 2 CPUs, started by the first test that needs it and kept for the next ones (the
    cluster test, which replaces it, runs last)."""
    if not ray_session.is_initialized():
        ray_session.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray_session


@pytest.fixture()
def two_nodes(ray_session):
    """A simulated cluster of two nodes of 1 CPU each, in place of the module's Ray while the test runs."""
    from ray.cluster_utils import Cluster

    ray_session.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray_session.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray_session.shutdown()
    cluster.shutdown()


def snapshot(path: Path) -> dict:
    """Gives what must not depend on the engine: rows in id order, vectors, skipped files and reasons."""
    store = Store.open(path)
    state = {"items": [(it.path, it.sha256, it.labels, it.split, it.width, it.height) for it in store.items()],
             "vectors": store.vectors(), "skipped": sorted(store.skipped()), "count": len(store)}
    store.close()
    return state


def assert_same_store(got: dict, want: dict) -> None:
    assert got["count"] == want["count"] == UNIQUE
    assert got["items"] == want["items"], "ids, paths, hashes, labels, splits or sizes differ"
    assert got["skipped"] == want["skipped"]
    assert np.abs(got["vectors"] - want["vectors"]).max() <= FP16_STEP


def ray_embed(source: Path, store: Path, label_config, ray_config: RayConfig = RayConfig(workers=1)):
    return embed_source(source, store, TINY, labels=label_config, device="cpu", config=CONFIG, engine="ray",
                        ray_config=ray_config)


@needs_ray
@pytest.mark.slow
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
@pytest.mark.slow
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
@pytest.mark.slow
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
@pytest.mark.slow
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
@pytest.mark.slow
def test_two_nodes_both_embed_and_give_the_same_store(two_nodes, source, local, tmp_path, label_config):
    # Two workers of half a CPU on two 1-CPU nodes: Ray Data spreads them, one per node.
    report = ray_embed(source, tmp_path / "store", label_config, RayConfig(workers=2, cpus_per_worker=0.5))
    assert report.nodes == 2 and len(report.images_per_node) == 2, report.images_per_node
    assert all(count > 0 for count in report.images_per_node.values()), report.images_per_node
    assert_same_store(snapshot(tmp_path / "store"), local)


def test_without_the_extra_engine_ray_fails_at_once_naming_it(source, tmp_path, monkeypatch):
    from emoreact.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = CliRunner().invoke(main, ["embed", str(source), "--store", str(tmp_path / "store"), "--model", TINY_MODEL,
                                       "--pretrained", "none", "--engine", "ray"])
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert 'pip install "emoreact[ray]"' in result.output
    assert not (tmp_path / "store").exists(), "it should fail before touching the store"

