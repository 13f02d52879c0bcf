"""Backbone loading: identifiers, random seeded weights, and fast clear failures offline."""
import time

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_MODEL
from emoreact.embed import ModelLoadError, ModelSpec, load_backbone
from synthetic import draw


def test_model_id_round_trips_for_tags():
    spec = ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert spec.model_id == "ViT-B-32/laion2b_s34b_b79k"
    assert ModelSpec.parse(spec.model_id) == spec
    assert ModelSpec(TINY_MODEL, "none").model_id == "tiny-clip/none"
    assert ModelSpec("ViT-B-32", "/weights/open_clip_model.safetensors").model_id == \
        "ViT-B-32/file:open_clip_model.safetensors"


def test_random_weights_are_seeded_and_vectors_unit_norm(backbone):
    again = load_backbone(TINY, "cpu")
    batch = torch.stack([backbone.transform(draw(("happy",), seed=s)) for s in range(3)])
    first, second = backbone.encode_images(batch).numpy(), again.encode_images(batch).numpy()
    assert first.shape == (3, 64) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, second)
    assert backbone.preprocess.image_size == (64, 64)


def test_missing_pretrained_weights_fail_fast_with_instructions(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_backbone(ModelSpec("ViT-B-32", "laion2b_s34b_b79k"), "cpu")
    assert time.perf_counter() - start < 30  # no minute of retries (not a benchmark: a hang guard)
    assert "--pretrained" in str(info.value) and "local weights file" in str(info.value)


@pytest.mark.parametrize("spec, words", [
    (ModelSpec("ViT-B-99", "none"), "unknown model 'ViT-B-99'"),
    (ModelSpec("ViT-B-32", "no_such_tag"), "neither a pretrained tag of ViT-B-32 nor an existing file"),
    (ModelSpec("ViT-B-32", "/nowhere/weights.bin"), "weights file /nowhere/weights.bin does not exist"),
    (ModelSpec("missing-config.json", "none"), "model config missing-config.json does not exist"),
])
def test_bad_model_choices_are_clear_errors(spec, words):
    with pytest.raises(ModelLoadError, match=words):
        load_backbone(spec, "cpu")


def test_local_weights_file_loads(tmp_path, backbone):
    path = tmp_path / "tiny.pt"
    torch.save(backbone.model.state_dict(), path)
    loaded = load_backbone(ModelSpec(TINY_MODEL, str(path)), "cpu")
    assert loaded.spec.model_id.startswith("tiny-clip/file:tiny.pt@sha256:")
    image = backbone.transform(draw(("sad",), seed=1))[None]
    assert np.allclose(loaded.encode_images(image), backbone.encode_images(image), atol=1e-6)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="no CUDA GPU is visible; use --device cpu"):
        load_backbone(TINY, "cuda")


@pytest.mark.gpu
def test_gpu_embeddings_match_cpu(backbone):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    gpu = load_backbone(TINY, "cuda")
    batch = torch.stack([backbone.transform(draw(("fear",), seed=s)) for s in range(4)])
    cosine = (gpu.encode_images(batch).cpu() * backbone.encode_images(batch)).sum(1)
    assert float(cosine.mean()) >= 0.99
