"""The Ray engines against a real cluster, as an operator starts one: a head (`ray start --head`) and a second
node (`ray start --address`), on loopback only, with token authentication on (a token in the home that
`ray start` sees). The embed job and the index build run on both nodes and give what the local engine
gives; each way of failing to join gives its own message and fix, without Ray's retries.

One cluster for the module; HOME and Ray's temporary folder are this run's (tests/ray_clusters.py).
"""
import importlib.metadata
import importlib.util
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY, TINY_MODEL
from emoreact import embed_source
from emoreact.embed import RayConfig
from emoreact.rayutil import EngineError, bootstrap_file, connected
from ray_clusters import LOOPBACK, RayStartCluster, assert_loopback, free_port, isolated_ray, write_token
from test_ray_engine import (CONFIG, UNIQUE, assert_same_store, indexed_ids, local, reindex_copy,  # noqa: F401
                             snapshot, source, vector_store)

pytestmark = [pytest.mark.ray, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                  reason='Ray is not installed (pip install "emoreact[ray]")')]


@pytest.fixture(scope="module")
def cluster():
    """A token-authenticated cluster of two 2-CPU nodes on 127.0.0.2, checked to be on loopback."""
    import ray

    with isolated_ray() as root:
        write_token(root / "home")
        nodes = RayStartCluster(root)
        try:
            nodes.start_head(cpus=2)
            nodes.add_node(cpus=2)
            with connected(ray, nodes.address) as joined:
                assert joined.authenticated, "the head should have turned token authentication on"
                assert len([node for node in ray.nodes() if node["Alive"]]) == 2, ray.nodes()
                assert_loopback(ray, bootstrap_file())
            yield nodes
        finally:
            nodes.stop()


def test_embed_on_both_nodes_of_a_token_cluster_gives_the_local_store(cluster, source, local, tmp_path):
    import ray

    from emoreact.cli import main

    # Three 1-CPU workers on two 2-CPU nodes (one CPU left for reading): at most two fit a node, so both run.
    command = ["embed", str(source), "--store", str(tmp_path / "store"), "--model", TINY_MODEL, "--pretrained",
               "none", "--device", "cpu", "--engine", "ray", "--ray-address", cluster.address, "--workers", "3",
               "--batch-size", str(CONFIG.batch_size), "--shard-size", str(CONFIG.shard_size), "--no-progress",
               "--near-duplicate-threshold", "off"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["ray_cluster"] == {"address": cluster.address, "authenticated": True,
                                     "ray_version": ray.__version__}
    assert report["nodes"] == 2 and all(count > 0 for count in report["images_per_node"].values()), report
    assert all(name.startswith(LOOPBACK) for name in report["images_per_node"]), report["images_per_node"]
    assert_same_store(snapshot(tmp_path / "store"), local)


def test_the_index_built_on_both_nodes_holds_exactly_the_live_ids(cluster, vector_store, tmp_path):
    from emoreact.index.ray_build import RayIndexBuilder

    builder = RayIndexBuilder(RayConfig(address=cluster.address, workers=2))
    store, _ = reindex_copy(vector_store, tmp_path / "store", builder)
    assert len(builder.added_per_node_) == 2, builder.added_per_node_
    assert all(count > 0 for count in builder.added_per_node_.values()), builder.added_per_node_
    assert builder.cluster_.authenticated and builder.cluster_.address == cluster.address
    assert np.array_equal(indexed_ids(tmp_path / "store"), store.live_ids())
    store.close()


def test_auto_joins_the_cluster_ray_start_named(cluster):
    import ray

    with connected(ray, "auto") as joined:
        assert (joined.address, joined.authenticated) == (cluster.address, True)


@pytest.mark.parametrize("case, message", [
    ("no cluster", "no Ray cluster at --ray-address '127.0.0.2:{free}': nothing answers there"),
    ("no token", "authentication refused: the Ray cluster at '{address}' asks for its token (Ray's token "
                 "authentication) and this machine has none; copy the head's token"),
    ("wrong token", "authentication refused: the Ray cluster at '{address}' does not take the token in "
                    "RAY_AUTH_TOKEN"),
    ("token not sent", "authentication refused: the Ray cluster at '{address}' asks for its token (Ray's token "
                       "authentication) and RAY_AUTH_MODE=disabled here; unset it"),
    ("other Ray", "Ray version mismatch: the cluster at '{address}' runs Ray {version} on Python"),
    ("too few CPUs", "5 workers x 1 CPUs leave no CPU for reading and decoding on a Ray cluster of 4 CPUs; use "
                     "--workers 3 or fewer"),
])
def test_each_way_of_failing_to_join_says_what_happened_and_the_fix(cluster, source, tmp_path, monkeypatch, case,
                                                                   message, label_config):
    import ray

    address, free = cluster.address, free_port()
    if case == "no cluster":
        address = f"{LOOPBACK}:{free}"
    elif case == "no token":
        monkeypatch.setenv("HOME", str(tmp_path))  # a home without ~/.ray/auth_token
    elif case == "wrong token":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)  # Ray reads it before any token file
    elif case == "token not sent":
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    elif case == "other Ray":
        monkeypatch.setattr(ray, "__version__", "2.55.0")  # this driver pretends to run another Ray
    config = RayConfig(address=address, workers=5 if case == "too few CPUs" else 1)
    want = message.format(address=cluster.address, free=free, version=importlib.metadata.version("ray"))
    with pytest.raises(EngineError, match=re.escape(want)):
        embed_source(source, tmp_path / "store", TINY, labels=label_config, device="cpu", config=CONFIG,
                     engine="ray", ray_config=config)
    assert not ray.is_initialized(), "a failed join must leave no connection behind"

