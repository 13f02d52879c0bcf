"""The whole pipeline learns what the synthetic images show: embed -> train -> predict."""
import json

import numpy as np

from conftest import TINY
from synthetic import draw


def test_trained_head_is_far_above_chance_on_held_out_images(trained):
    _, metrics = trained
    assert metrics["split"] == "test" and metrics["count"] >= 90
    # Chance macro-F1 for 8 labels at these frequencies is about 0.2.
    assert metrics["macro_f1"] >= 0.8, metrics
    assert min(v["f1"] for v in metrics["per_label"].values()) >= 0.5, metrics["per_label"]


def test_train_writes_metrics_and_plots(trained):
    head, metrics = trained
    saved = json.loads((head / "metrics_test.json").read_text())
    assert saved["macro_f1"] == metrics["macro_f1"]
    assert set(saved["per_label"]) == {"happy", "sad", "angry", "fear", "surprise", "disgust", "neutral", "other"}
    for name in ("training_curves.png", "per_label_f1.png", "pr_curves.png"):
        assert (head / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictor_answers_in_the_mission_format(store_path, trained):
    from emoreact.predictor import load
    import io

    predictor = load(store_path, trained[0], device="cpu", pretrained=TINY.pretrained)
    buffer = io.BytesIO()
    draw(("sad",), seed=999_001).save(buffer, "PNG")
    [result] = predictor.predict_files([("sad.png", buffer.getvalue())], k=3)
    assert set(result) == {"image", "predicted_emotions", "allowed_emojis", "blocked_emojis",
                           "emotion_scores", "reaction_scores", "novelty", "unsure", "neighbours", "neighbours_exact",
                           "text", "channels", "decided_by"}
    assert list(result["emotion_scores"]) == predictor.labels
    assert all(0.0 <= s <= 1.0 for s in result["emotion_scores"].values())
    assert result["predicted_emotions"][0] == "sad"
    assert "😂" in result["blocked_emojis"] and "😂" not in result["allowed_emojis"]
    assert len(result["neighbours"]) == 3
    sims = [n["similarity"] for n in result["neighbours"]]
    assert sims == sorted(sims, reverse=True)
    assert sum("sad" in n["labels"] for n in result["neighbours"]) >= 2


def test_bad_file_in_a_batch_gets_its_own_error(store_path, trained):
    from emoreact.predictor import load
    import io

    predictor = load(store_path, trained[0], device="cpu")
    buffer = io.BytesIO()
    draw(("happy",), seed=5).save(buffer, "JPEG")
    results = predictor.predict_files([("notes.jpg", b"hello, not an image"), ("ok.jpg", buffer.getvalue())])
    assert results[0]["image"] == "notes.jpg" and "not an image" in results[0]["error"]
    assert results[1]["predicted_emotions"]


def test_neighbours_of_a_stored_image_exclude_itself(store_path, trained):
    from emoreact.predictor import load

    predictor = load(store_path, trained[0], device="cpu")
    near = predictor.neighbours_of_id(0, k=4)
    assert len(near) == 4 and all(n["id"] != 0 for n in near)
    assert np.isclose(predictor.store.vector(0) @ predictor.store.vector(0), 1.0, atol=2e-3)


def test_micro_batched_concurrent_requests_match_single_ones(store_path, trained):
    from concurrent.futures import ThreadPoolExecutor

    from emoreact.predictor import load
    from emoreact.web.batching import MicroBatcher

    predictor = load(store_path, trained[0], device="cpu").batch_calls(MicroBatcher)
    images = [draw((label,), seed=4242 + n) for n, label in enumerate(["happy", "sad", "angry", "fear"] * 6)]
    alone = np.concatenate([predictor.embed([image]) for image in images])
    with ThreadPoolExecutor(8) as pool:
        together = np.concatenate(list(pool.map(lambda image: predictor.embed([image]), images)))
    assert np.allclose(alone, together, atol=1e-5)


def test_train_on_cuda_1_trains_on_cuda_1_or_fails_clearly(store_path, tmp_path, monkeypatch):
    import pytest
    import torch

    from emoreact import ModelLoadError, pipeline

    if not torch.cuda.is_available():  # it used to train on the CPU without a word
        with pytest.raises(ModelLoadError, match="--device cuda:1 was asked for but no CUDA GPU is visible"):
            pipeline.train(store_path, tmp_path / "head", device="cuda:1")

    class Stop(Exception):
        pass

    seen = {}

    def fit_head(*args, device, **kwargs):
        seen["device"] = device
        raise Stop

    from emoreact.index import indexfile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs, as far as it asks
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(indexfile, "to_gpu_if_available", lambda index: index)
    monkeypatch.setattr(pipeline, "fit_head", fit_head)
    with pytest.raises(Stop):
        pipeline.train(store_path, tmp_path / "head", device="cuda:1")
    assert seen["device"] == "cuda:1"
