"""Model identity: local weights carry a content hash, hf-hub references load from the cache offline,
older artifacts stay loadable, and loading a backbone leaves the caller's random state alone."""
import json
import logging
import re
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_MODEL
from emoreact.embed import DEFAULT_MODEL, ModelLoadError, ModelSpec, load_backbone
from emoreact.index import StoreError
from synthetic import draw

HUB_REPO = "emoreact-tests/tiny-clip"


@pytest.fixture
def weights(tmp_path, backbone) -> Path:
    """The tiny model's random weights saved as a local checkpoint, named like a hub download."""
    path = tmp_path / "a" / "open_clip_pytorch_model.bin"
    path.parent.mkdir()
    torch.save(backbone.model.state_dict(), path)
    return path


def test_local_weights_get_a_content_hash_in_the_model_id(weights, tmp_path):
    spec = ModelSpec(TINY_MODEL, str(weights))
    assert re.fullmatch(r"tiny-clip/file:open_clip_pytorch_model\.bin@sha256:[0-9a-f]{12}", spec.model_id)
    copy = tmp_path / "b" / weights.name
    copy.parent.mkdir()
    shutil.copy(weights, copy)
    assert ModelSpec(TINY_MODEL, str(copy)).model_id == spec.model_id  # same bytes, another machine's path
    assert ModelSpec(TINY_MODEL, str(weights.parent)).model_id == spec.model_id  # a folder names its file

    other = torch.load(weights, weights_only=True)
    other["logit_scale"] = other["logit_scale"] + 1.0
    torch.save(other, copy)
    assert ModelSpec(TINY_MODEL, str(copy)).model_id != spec.model_id  # same file name, another checkpoint


def test_weights_are_hashed_once_per_path_size_and_mtime(weights, monkeypatch):
    from emoreact.embed import identity as models

    calls = []
    digest = models.hashlib.file_digest
    monkeypatch.setattr(models.hashlib, "file_digest", lambda *a: calls.append(a) or digest(*a))
    spec = ModelSpec(TINY_MODEL, str(weights))
    first = spec.model_id
    assert spec.model_id == first and len(calls) <= 1
    before = len(calls)
    weights.write_bytes(weights.read_bytes() + b"\0")  # new size and mtime: hashed again
    assert ModelSpec(TINY_MODEL, str(weights)).model_id != first and len(calls) == before + 1


def test_a_store_of_other_weights_with_the_same_file_name_is_refused(weights):
    from emoreact.pipeline import backbone_for_store

    store = fake_store("tiny-clip/file:open_clip_pytorch_model.bin@sha256:000000000000", weights)
    with pytest.raises(StoreError, match="was built with .*@sha256:000000000000.* pass the same --pretrained"):
        backbone_for_store(store, "cpu")


def test_a_store_from_before_content_hashes_still_loads_with_a_warning(weights, caplog):
    from emoreact.pipeline import backbone_for_store

    store = fake_store("tiny-clip/file:open_clip_pytorch_model.bin", weights)
    with caplog.at_level(logging.WARNING):
        loaded = backbone_for_store(store, "cpu")
    assert loaded.spec.model_id.startswith("tiny-clip/file:open_clip_pytorch_model.bin@sha256:")
    assert "file name only" in caplog.text and "re-embed" in caplog.text


def fake_store(model_id: str, weights: Path):
    return SimpleNamespace(model_id=model_id, root=weights.parent,
                           manifest={"preprocess": {"model": TINY_MODEL, "pretrained": str(weights)}})


def test_pretrained_hf_hub_is_not_a_local_path():
    spec = ModelSpec(DEFAULT_MODEL, f"hf-hub:{HUB_REPO}")
    assert spec.hub == f"hf-hub:{HUB_REPO}" and spec.model_id == f"hf-hub:{HUB_REPO}"
    assert ModelSpec.parse(spec.model_id).model_id == spec.model_id


@pytest.fixture
def hub_cache(tmp_path, backbone, monkeypatch) -> Path:
    """HF_HOME with the hub cache layout holding HUB_REPO: an open_clip config and the tiny random weights."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    config = {"model_cfg": json.loads(Path(TINY_MODEL).read_text()),
              "preprocess_cfg": {"mean": list(backbone.preprocess.mean), "std": list(backbone.preprocess.std)}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(backbone.model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read once, at import
    return snapshot


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("the network is off in this test")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_a_cached_hf_hub_model_loads_offline(hub_cache, no_network, backbone):
    loaded = load_backbone(ModelSpec(DEFAULT_MODEL, f"hf-hub:{HUB_REPO}"), "cpu")
    assert loaded.spec.model_id == f"hf-hub:{HUB_REPO}" and loaded.dim == backbone.dim
    image = backbone.transform(draw(("happy",), seed=3))[None]
    assert np.allclose(loaded.encode_images(image), backbone.encode_images(image), atol=1e-6)


def test_embed_with_pretrained_hf_hub_through_the_cli(hub_cache, no_network, tmp_path):
    from click.testing import CliRunner

    from emoreact import cli
    from emoreact.index import Store
    from synthetic import make_labelled_folder

    make_labelled_folder(tmp_path / "src", ["happy", "sad"], per_label=3)
    result = CliRunner().invoke(cli.main, ["embed", str(tmp_path / "src"), "--store", str(tmp_path / "store"),
                                           "--pretrained", f"hf-hub:{HUB_REPO}", "--device", "cpu",
                                           "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    store = Store.open(tmp_path / "store")
    assert store.model_id == f"hf-hub:{HUB_REPO}" and len(store) == 6
    store.close()


def test_an_uncached_hf_hub_model_offline_is_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=f"hf-hub:{HUB_REPO} are not in the local cache"):
        load_backbone(ModelSpec(DEFAULT_MODEL, f"hf-hub:{HUB_REPO}"), "cpu")


def test_a_local_dir_without_weights_is_refused(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(Path(TINY_MODEL).read_text())}))
    with pytest.raises(ModelLoadError, match="holds no .* weights file"):
        load_backbone(ModelSpec(DEFAULT_MODEL, f"local-dir:{tmp_path}"), "cpu")


def test_load_backbone_keeps_the_global_random_state():
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    load_backbone(TINY, "cpu")
    assert torch.equal(torch.rand(4), expected)


def test_a_missing_cuda_device_is_a_clear_error(monkeypatch):
    from emoreact.embed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ModelLoadError, match=r"--device cuda:1 .* only 1 CUDA GPU\(s\) are visible"):
        resolve_device("cuda:1")
