"""The Ray engine's parts, in this process and without Ray: the plan checked against the cluster's resources,
the decode step, the model worker (`_Encoder`), the results turned back into the writer's items, the known
hashes, the spec the workers load, which cluster a job joins (Ray's bootstrap file, RAY_ADDRESS). Ray itself
(the dataset, the actor pool, the driver's loop) is in test_ray_engine.py and test_ray_cluster.py, marked `ray`.

Where a part only reads from Ray (the cluster's resources, the worker's node id), a stand-in gives just that.
"""
import logging
import os
import re
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import FAST_EMBED, TINY, TINY_MODEL
from emoreact import embed_source
from emoreact.embed import ModelSpec, RayConfig
from emoreact.embed.ray_engine import (_STATUS_ERROR, _STATUS_KNOWN, _STATUS_OK, _decode_batch, _Encoder, _HashSet,
                                       _items, _plan, _portable)
from emoreact.index import Store
from emoreact.rayutil import EngineError
from synthetic import make_labelled_folder

FP16_STEP = 2.0 ** -11  # fp16 spacing just below 1: two batchings of one image may round a value apart
MAX_PIXELS = 10_000_000


class Cluster:
    """Stands in for the `ray` module where `_plan` reads the cluster's resources, and for nothing else."""

    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict:
        return dict(self.resources)


# ---- the plan --------------------------------------------------------------------------------------------------

def test_cpu_workers_take_every_cpu_but_the_one_left_for_reading():
    plan = _plan(Cluster(CPU=8), RayConfig(start_timeout_s=30), "auto")
    assert (plan.workers, plan.device, plan.gpus, plan.cpus) == (7, "cpu", 0.0, 1.0)
    assert plan.decode_cpus == 1.0  # the workers' own CPUs: Ray Data fuses the decode step into them
    assert plan.threads == 1  # the cluster's 8 CPUs shared by 7 workers
    assert plan.start_timeout_s == 30


def test_cpu_workers_follow_cpus_per_worker_workers_and_threads():
    assert _plan(Cluster(CPU=16), RayConfig(cpus_per_worker=4), "cpu").workers == 3  # 16 - 4 decode = 12 spare
    plan = _plan(Cluster(CPU=16), RayConfig(workers=2, threads_per_worker=3), "cpu")
    assert (plan.workers, plan.threads) == (2, 3)
    assert _plan(Cluster(CPU=16), RayConfig(workers=2), "cpu").threads == 8  # no threads asked: 16 CPUs / 2


def test_gpu_workers_one_per_gpu_with_a_cpu_per_decode_task():
    plan = _plan(Cluster(CPU=16, GPU=4), RayConfig(cpus_per_decode_task=2), "auto")
    assert (plan.workers, plan.device, plan.gpus, plan.decode_cpus) == (4, "cuda", 1.0, 2.0)
    assert plan.threads is None  # a GPU worker's torch threads are left to torch
    assert _plan(Cluster(CPU=16, GPU=4), RayConfig(gpus_per_worker=0.5), "auto").workers == 8
    assert _plan(Cluster(CPU=16, GPU=4), RayConfig(), "cpu").device == "cpu"  # --device cpu on a GPU cluster


def test_a_plan_the_cluster_cannot_hold_is_refused_naming_the_fix():
    with pytest.raises(EngineError, match=r"--gpus-per-worker 1\) or use --device cpu"):
        _plan(Cluster(CPU=8, GPU=1), RayConfig(gpus_per_worker=0), "cuda")
    with pytest.raises(EngineError, match=r"--gpus-per-worker 1 but the Ray cluster has 0 GPUs; use "
                                          r"--gpus-per-worker 0"):
        _plan(Cluster(CPU=8), RayConfig(gpus_per_worker=1), "auto")
    with pytest.raises(EngineError, match=r"8 workers x 1 CPUs leave no CPU .* 8 CPUs; use --workers 7 or fewer"):
        _plan(Cluster(CPU=8), RayConfig(workers=8), "cpu")
    with pytest.raises(EngineError, match=r"use --workers 1 or fewer"):  # one CPU: the decode step takes it
        _plan(Cluster(CPU=1), RayConfig(), "auto")


# ---- the known hashes ------------------------------------------------------------------------------------------

def test_hash_set_holds_exactly_its_hashes():
    hashes = {f"{n:064x}" for n in (0, 7, 2**200, 2**255)}
    known = _HashSet(hashes)
    assert all(sha in known for sha in hashes)
    assert not any(f"{n:064x}" in known for n in (1, 8, 2**200 + 1, 2**256 - 1))
    assert "00" * 32 not in _HashSet(set())


# ---- decode, encode, items: one batch as Ray Data hands it from step to step -----------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A labelled folder of 6 images and one file that is no image."""
    root = make_labelled_folder(tmp_path_factory.mktemp("parts") / "src", ["happy", "sad"], 3, seed=7)
    (root / "sad" / "notes.png").write_text("not an image")
    return root


def paths_of(source: Path) -> list[Path]:
    return sorted(source.rglob("*.png"))


def as_ray_batch(columns: dict) -> dict:
    """Gives the batch the next step gets: Ray Data hands a column of arrays of differing shapes on as an
    object array, and every other column as the array it was."""
    out = dict(columns)
    pixels = np.empty(len(columns["pixels"]), dtype=object)
    pixels[:] = columns["pixels"]
    out["pixels"] = pixels
    return out


def decode(paths: list[Path], known: set[str], backbone) -> dict:
    batch = {"i": np.arange(len(paths), dtype=np.int64), "path": np.array([str(p) for p in paths])}
    return _decode_batch(batch, _HashSet(known), backbone.transform, MAX_PIXELS, None)


@pytest.fixture
def worker_node(monkeypatch):
    """Stands in for the `ray` module a worker imports to learn its node id."""
    context = SimpleNamespace(get_node_id=lambda: "node-a")
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(get_runtime_context=lambda: context))
    return "node-a"


def test_decode_gives_pixels_for_new_images_and_none_for_known_or_bad_files(source, backbone):
    paths = paths_of(source)
    first = decode(paths, set(), backbone)
    known_sha = str(first["sha"][0])
    columns = decode(paths, {known_sha}, backbone)
    bad = [p.name for p in paths].index("notes.png")
    assert list(columns["i"]) == list(range(len(paths)))
    assert columns["status"][0] == _STATUS_KNOWN and columns["status"][bad] == _STATUS_ERROR
    assert [s for s in columns["status"]].count(_STATUS_OK) == len(paths) - 2
    assert columns["sha"][bad] and columns["reason"][bad]  # a bad file has a hash and a reason
    side = backbone.preprocess.image_size
    for row, status in enumerate(columns["status"]):
        pixels = columns["pixels"][row]
        assert pixels.dtype == np.float32
        if status == _STATUS_OK:
            assert pixels.shape == (1, 3, *side)  # (frames, 3, H, W): one frame for a still
            assert tuple(columns["size"][row]) == (96, 96)  # synthetic.draw's images
            assert columns["bytes"][row] == os.path.getsize(paths[row])
        else:
            assert pixels.shape == (1, 3, 0, 0) and columns["bytes"][row] == 0
    assert columns["size"].shape == (len(paths), 2) and columns["size"].dtype == np.int64


def test_the_workers_vectors_are_the_local_engines(source, backbone, worker_node, tmp_path, label_config):
    embed_source(source, tmp_path / "store", TINY, labels=label_config, device="cpu", config=FAST_EMBED)
    with Store.open(tmp_path / "store") as store:
        local = dict(zip((item.sha256 for item in store.items()), store.vectors()))
    paths = paths_of(source)
    known_sha = str(decode(paths[:1], set(), backbone)["sha"][0])
    columns = as_ray_batch(decode(paths, {known_sha}, backbone))

    out = _Encoder(_portable(TINY), "cpu", None, backbone.dim)(columns)

    assert "pixels" not in out and list(out["node"]) == [worker_node] * len(paths)
    vectors = out["vector"]
    assert vectors.shape == (len(paths), backbone.dim) and vectors.dtype == np.float16
    ok = out["status"] == _STATUS_OK
    assert not vectors[~ok].any()  # known and bad rows carry no vector
    norms = np.linalg.norm(vectors[ok].astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)
    assert len(local) == ok.sum() + 1  # the local engine's store holds the known image too
    for sha, vector in zip(out["sha"][ok], vectors[ok]):
        assert np.abs(vector.astype(np.float32) - local[str(sha)].astype(np.float32)).max() <= FP16_STEP


def test_a_worker_uses_the_threads_it_is_given(backbone, worker_node):
    before = torch.get_num_threads()
    try:
        _Encoder(_portable(TINY), "cpu", 1, backbone.dim)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_worker_whose_model_is_not_the_drivers_says_what_to_install(backbone, worker_node):
    with pytest.raises(EngineError, match=rf"dim {backbone.dim}, the driver's has {backbone.dim + 1}; install the "
                                          "same EmoReact and model files on every node"):
        _Encoder(_portable(TINY), "cpu", None, backbone.dim + 1)


def test_results_turn_back_into_the_writers_items(source, backbone):
    paths = paths_of(source)
    columns = decode(paths, set(), backbone)
    known_sha = str(columns["sha"][1])
    columns = decode(paths, {known_sha}, backbone)
    items = _items(columns)
    assert [item["i"] for item in items] == [item["row"] for item in items] == list(range(len(paths)))
    bad = [p.name for p in paths].index("notes.png")
    assert items[1] == {"i": 1, "sha": known_sha, "row": 1, "known": True}
    assert set(items[bad]) == {"i", "sha", "row", "error"} and items[bad]["error"] == columns["reason"][bad]
    good = [item for n, item in enumerate(items) if n not in (1, bad)]
    assert all(item["size"] == (96, 96) and item["bytes"] == os.path.getsize(paths[item["i"]]) for item in good)
    assert all(isinstance(item["sha"], str) and len(item["sha"]) == 64 for item in items)
    assert _items({"i": np.array([0]), "sha": np.array([""]), "status": np.array([_STATUS_ERROR]),
                   "reason": np.array(["unreadable file: gone"])})[0]["sha"] is None  # no bytes, no hash


# ---- the spec the workers load ---------------------------------------------------------------------------------

def test_the_workers_spec_names_local_files_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    spec = _portable(ModelSpec(model="tiny-clip.json", pretrained="weights.safetensors"))
    assert spec == ModelSpec(model=str(tmp_path / "tiny-clip.json"), pretrained=str(tmp_path / "weights.safetensors"))
    for kept in (ModelSpec("ViT-B-32", "laion2b_s34b_b79k"), ModelSpec(TINY_MODEL, "none"),
                 ModelSpec("hf-hub:org/repo", "hf-hub:org/repo")):
        assert _portable(kept) == kept  # names, random weights, hub references and absolute paths stay


# ---- which cluster a job joins: Ray's bootstrap file, RAY_ADDRESS, a port where nothing answers -----------------

@pytest.fixture()
def ray_tmpdir(tmp_path, monkeypatch) -> Path:
    """Ray's temporary folder (and so its bootstrap file) in this test's folder, with no RAY_ADDRESS."""
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def dead_address() -> str:
    """Gives a loopback host:port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return f"127.0.0.2:{probe.getsockname()[1]}"


def name_in_bootstrap_file(address: str) -> Path:
    from emoreact.rayutil import bootstrap_file

    file = bootstrap_file()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(address)  # what `ray start` writes, and leaves behind when its head is killed
    return file


def test_without_an_address_a_stale_bootstrap_file_gives_a_warning_and_a_local_ray(ray_tmpdir, caplog):
    from emoreact.rayutil import resolve_address

    stale = dead_address()
    file = name_in_bootstrap_file(stale)
    with caplog.at_level(logging.WARNING, logger="emoreact.rayutil"):
        assert resolve_address(None) is None  # a local Ray, not the dead cluster
    assert f"Ray's bootstrap file {file} names {stale}, where no Ray cluster answers" in caplog.text
    assert "`ray stop` removes the stale file" in caplog.text


def test_without_an_address_a_live_cluster_in_the_file_is_not_joined(ray_tmpdir, caplog):
    from emoreact.rayutil import resolve_address

    with socket.socket() as head:
        head.bind(("127.0.0.2", 0))
        head.listen()
        name_in_bootstrap_file(f"127.0.0.2:{head.getsockname()[1]}")
        with caplog.at_level(logging.INFO, logger="emoreact.rayutil"):
            assert resolve_address(None) is None
    assert "this job starts its own local Ray (--ray-address auto joins that cluster)" in caplog.text


def test_auto_fails_at_once_on_a_stale_or_missing_bootstrap_file(ray_tmpdir):
    from emoreact.rayutil import resolve_address

    with pytest.raises(EngineError, match=r"--ray-address auto: no Ray cluster was started on this machine"):
        resolve_address("auto")
    stale = dead_address()
    name_in_bootstrap_file(stale)
    with pytest.raises(EngineError, match=re.escape(f"names {stale}, where no Ray cluster answers: its head stopped "
                                                    "without `ray stop`. Run `ray stop`")):
        resolve_address("auto")


def test_ray_address_is_joined_when_no_address_is_given_and_local_always_starts_one(ray_tmpdir, monkeypatch):
    from emoreact.rayutil import resolve_address

    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert resolve_address(None) == "10.1.2.3:6379"
    assert resolve_address("local") is None
    assert resolve_address("10.9.9.9:6379") == "10.9.9.9:6379"


def test_an_address_where_nothing_answers_fails_at_once_naming_it(ray_tmpdir):
    from emoreact.rayutil import check_cluster

    dead = dead_address()
    with pytest.raises(EngineError, match=re.escape(f"no Ray cluster at --ray-address '{dead}': nothing answers")):
        check_cluster(None, dead)
