"""Heads: save/load round trip, thresholds, zero-shot head, refusal of foreign files."""
import pickle

import numpy as np
import pytest

from emoreact.heads import EmotionHead, HeadConfig, HeadError, fit_head, label_text_embeddings, zero_shot_head
from emoreact.heads.metrics import decide, macro_f1, tune_thresholds


def blobs(count, dim=16, seed=0, skew=(0.5, 0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.005), noise=1.2):
    """Unit vectors around one centre per label; label frequencies follow `skew`."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(8, dim))
    labels = rng.choice(8, size=count, p=np.array(skew) / sum(skew))
    x = centres[labels] + noise * rng.normal(size=(count, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.eye(8, dtype=np.float32)[labels]
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(label_config):
    x, y = blobs(3000, seed=1)
    xv, yv = blobs(1000, seed=2)
    head, history = fit_head(HeadConfig(epochs=60, patience=10), label_config, "m/x", x, y, xv, yv)
    return head, history


def test_save_load_round_trip_gives_identical_scores(tmp_path, fitted):
    head, _ = fitted
    x, _ = blobs(50, seed=3)
    head.save(tmp_path / "head")
    loaded = EmotionHead.load(tmp_path / "head", model_id="m/x", dim=16)
    assert np.array_equal(loaded.predict_proba(x), head.predict_proba(x))
    assert np.array_equal(loaded.thresholds_, head.thresholds_)
    assert loaded.labels == head.labels


def test_tuned_thresholds_beat_a_fixed_half_on_a_skewed_set(fitted):
    head, history = fitted
    assert history and history[-1]["epoch"] <= 60
    x, y = blobs(2000, seed=4)
    probs = head.predict_proba(x)
    tuned = macro_f1(probs, y, head.thresholds_)
    fixed = macro_f1(probs, y, np.full(8, 0.5, np.float32))
    assert tuned > fixed + 0.02, (tuned, fixed)


def test_tune_thresholds_finds_the_separating_value():
    probs = np.array([[0.1], [0.2], [0.35], [0.4], [0.9]], np.float32)
    targets = np.array([[0], [0], [1], [1], [1]], np.float32)
    assert 0.2 < tune_thresholds(probs, targets)[0] <= 0.35


def test_decide_always_gives_at_least_one_label():
    probs = np.array([[0.1, 0.3], [0.9, 0.8]], np.float32)
    assert decide(probs, np.array([0.5, 0.5], np.float32)).tolist() == [[False, True], [True, True]]


def test_focal_and_mlp_heads_train(label_config):
    x, y = blobs(1500, seed=5, skew=(1,) * 8, noise=0.6)
    xt, yt = blobs(500, seed=7, skew=(1,) * 8, noise=0.6)
    for config in (HeadConfig(loss="focal", epochs=40), HeadConfig(kind="mlp", epochs=40, schedule="plateau"),
                   HeadConfig(loss="bce", epochs=40, schedule="step")):
        head, _ = fit_head(config, label_config, "m/x", x, y, *blobs(500, seed=6, skew=(1,) * 8, noise=0.6))
        assert macro_f1(head.predict_proba(xt), yt, head.thresholds_) > 0.8, config


def test_zero_shot_head_works_without_labels(label_config, backbone):
    text = label_text_embeddings(lambda p: backbone.encode_texts(p).numpy(), label_config)
    assert text.shape == (8, backbone.dim) and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    head = zero_shot_head(label_config, backbone.spec.model_id, text, logit_scale=100.0)
    # A vector equal to a label's text embedding must score that label highest.
    probs = head.predict_proba(text)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(probs.argmax(axis=1)) == list(range(8))


def test_zero_shot_prior_is_blended_and_saved(tmp_path, label_config):
    x, y = blobs(400, seed=7, skew=(1,) * 8)
    centres = np.random.default_rng(99).normal(size=(8, 16))
    text = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    head, _ = fit_head(HeadConfig(zero_shot_prior=True, epochs=30), label_config, "m/x", x, y,
                       *blobs(200, seed=8, skew=(1,) * 8), text=text, logit_scale=50.0)
    assert head.prior_ is not None and 0.0 <= head.alpha_ <= 1.0
    head.save(tmp_path / "h")
    loaded = EmotionHead.load(tmp_path / "h")
    assert np.allclose(loaded.predict_proba(x), head.predict_proba(x))


def test_untrained_head_and_wrong_shapes_are_clear_errors(label_config, fitted):
    with pytest.raises(HeadError, match="not trained"):
        EmotionHead(HeadConfig(), label_config, "m/x", 16).predict_proba(np.zeros((1, 16)))
    with pytest.raises(HeadError, match=r"shape \(N, 16\)"):
        fitted[0].predict_proba(np.zeros((1, 8)))


def test_foreign_files_are_refused(tmp_path, fitted):
    head, _ = fitted
    folder = head.save(tmp_path / "head")
    with pytest.raises(HeadError, match="trained on 'm/x' vectors"):
        EmotionHead.load(folder, model_id="ViT-B-32/openai")
    (folder / "weights.safetensors").write_bytes(pickle.dumps({"net.1.weight": np.zeros(3)}))
    with pytest.raises(HeadError, match="weights.safetensors is not a valid safetensors file"):
        EmotionHead.load(folder)
    with pytest.raises(HeadError, match="no manifest.json"):
        EmotionHead.load(tmp_path)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        HeadConfig(loss="hinge")


def test_f1_per_threshold_equals_the_brute_force_count():
    from emoreact.heads.metrics import THRESHOLD_GRID, f1_per_threshold

    rng = np.random.default_rng(0)
    probs = np.round(rng.random((400, 8)), 2).astype(np.float32)  # ties on the grid on purpose
    truth = rng.random((400, 8)) < 0.3
    pred = probs[None] >= THRESHOLD_GRID[:, None, None]
    tp, fp, fn = (pred & truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1)
    expected = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    assert np.allclose(f1_per_threshold(probs, truth.astype(np.float32)), expected)
