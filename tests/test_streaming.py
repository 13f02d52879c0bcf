"""Training and evaluation read a store block by block: the same head as an in-memory read on a small
store, a bounded seeded sample on a large one, and no index needed."""
import json
import shutil

import numpy as np
import pytest

from emoreact.heads import EmotionHead, HeadConfig, fit_head
from emoreact.heads.sampling import Moments, RowSample, row_keys, water_level
from emoreact.heads.model import Standardize
from emoreact.index import Store


def _in_memory(store_path, names):
    """Today's in-memory read: every vector and item, then per-split arrays (the reference)."""
    store = Store.open(store_path)
    vectors, items = store.vectors(), store.items()
    store.close()
    position = {n: j for j, n in enumerate(names)}
    out = {}
    for split in ("train", "val", "test"):
        rows = [i for i, it in enumerate(items) if it.split == split and it.labels]
        y = np.zeros((len(rows), len(names)), np.float32)
        for r, i in enumerate(rows):
            y[r, [position[n] for n in items[i].labels]] = 1
        out[split] = (vectors[[items[i].id for i in rows]], y)
    return out


@pytest.mark.parametrize("config", [HeadConfig(kind="linear"),
                                    HeadConfig(kind="mlp", search=False, epochs=15, patience=5)],
                         ids=["linear", "mlp"])
def test_streaming_reads_give_the_same_head_as_in_memory_on_a_small_store(store_path, label_config, tmp_path,
                                                                           config):
    from emoreact.pipeline import train_from_store

    streamed, metrics = train_from_store(store_path, tmp_path / "head", config, label_config, "cpu")
    data = _in_memory(store_path, label_config.names)
    reference, _ = fit_head(config, label_config, streamed.model_id, *data["train"], *data["val"])
    for (name, a), (_, b) in zip(streamed.net_.state_dict().items(), reference.net_.state_dict().items()):
        assert np.allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6), name
    assert np.allclose(streamed.thresholds_, reference.thresholds_)
    assert np.allclose(streamed.temperature_, reference.temperature_, rtol=1e-4)
    x_test, y_test = data["test"]
    assert np.allclose(streamed.predict_proba(x_test), reference.predict_proba(x_test), atol=1e-4)
    assert metrics["count"] == len(y_test) and metrics["train_rows"] == {"labelled": len(data["train"][0]),
                                                                         "used": len(data["train"][0])}
    saved = EmotionHead.load(tmp_path / "head")
    assert saved.config.max_train_rows == config.max_train_rows


def test_a_capped_store_sample_is_bounded_per_label_and_seeded(store_path, label_config, tmp_path):
    from emoreact.pipeline import train_from_store

    config = HeadConfig(kind="linear", search=False, max_train_rows=120, max_val_rows=40)
    first, metrics = train_from_store(store_path, tmp_path / "a", config, label_config, "cpu")
    again, _ = train_from_store(store_path, tmp_path / "b", config, label_config, "cpu")
    assert metrics["train_rows"]["used"] <= 120 < metrics["train_rows"]["labelled"]
    assert metrics["val_rows"]["used"] == 40 < metrics["val_rows"]["labelled"]
    assert np.array_equal(first.net_[1].weight.detach().numpy(), again.net_[1].weight.detach().numpy())
    other, _ = train_from_store(store_path, tmp_path / "c", HeadConfig(kind="linear", search=False, max_train_rows=120,
                                                                       max_val_rows=40, seed=1), label_config, "cpu")
    assert not np.array_equal(first.net_[1].weight.detach().numpy(), other.net_[1].weight.detach().numpy())


def test_train_and_evaluate_need_no_index(store_path, label_config, tmp_path):
    from emoreact.pipeline import evaluate_head, train_from_store

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    for index in copy.glob("*.faiss"):
        index.unlink()  # a store whose index is missing (or being rebuilt) still trains
    train_from_store(copy, tmp_path / "head", HeadConfig(kind="linear", search=False), label_config, "cpu")
    metrics = evaluate_head(copy, tmp_path / "head", "val")
    assert metrics["split"] == "val" and metrics["count"] > 0
    saved = json.loads((tmp_path / "head" / "metrics_val.json").read_text())
    assert saved["macro_f1"] == metrics["macro_f1"]


def test_evaluate_scores_every_labelled_test_image_as_predict_proba_does(store_path, trained):
    from emoreact.pipeline import evaluate_head
    from emoreact.trainset import score_splits

    head = EmotionHead.load(trained[0])
    store = Store.open(store_path, with_index=False)
    scores = score_splits(store, head, ("test",), block_rows=50)["test"]  # blocks smaller than a shard
    store.close()
    x_test, y_test = _in_memory(store_path, head.labels)["test"]
    assert np.array_equal(scores.targets, y_test)
    assert np.allclose(scores.probs, head.predict_proba(x_test), atol=1e-6)
    assert np.allclose(scores.uncalibrated, head.predict_proba(x_test, calibrated=False), atol=1e-6)
    assert evaluate_head(store_path, trained[0])["count"] == len(y_test)


def test_row_sample_under_its_cap_keeps_every_row_in_id_order():
    rng = np.random.default_rng(0)
    ids = np.arange(1000)
    x, y = rng.standard_normal((1000, 4)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 1000)]
    sample = RowSample(1000, 4, 3)
    for start in range(0, 1000, 128):
        part = slice(start, start + 128)
        sample.add(ids[part], x[part], y[part], y[part].argmax(1))
    kept_ids, kept_x, kept_y = sample.result()
    assert not sample.sampled
    assert np.array_equal(kept_ids, ids) and np.array_equal(kept_y, y)
    assert np.allclose(kept_x, x, atol=1e-3)  # held as float16 until result()


@pytest.mark.parametrize("block", [7, 100, 5000])
def test_row_sample_past_its_cap_fills_labels_to_one_level_whatever_the_block_size(block):
    counts = [2000, 900, 60, 15]  # two large labels, two small ones
    strata = np.repeat(np.arange(4), counts)
    ids = np.random.default_rng(1).permutation(len(strata)).astype(np.int64)  # any order
    x = (ids % 1024)[:, None].astype(np.float32).repeat(2, axis=1)  # exact in float16
    y = np.eye(4, dtype=np.float32)[strata]
    sample = RowSample(1000, 2, 4, seed=3)
    for start in range(0, len(ids), block):
        part = slice(start, start + block)
        sample.add(ids[part], x[part], y[part], strata[part])
    kept_ids, kept_x, kept_y = sample.result()
    level = water_level(np.array(counts), 1000)
    assert level == (1000 - 60 - 15) // 2
    assert list(kept_y.sum(0).astype(int)) == [level, level, 60, 15]
    assert np.all(np.diff(kept_ids) > 0) and np.array_equal(kept_x[:, 0], kept_ids % 1024)
    # Each label keeps its rows with the smallest seeded hashes: the same set whatever the blocks.
    for label in (0, 1):
        mine = ids[strata == label]
        expected = np.sort(mine[np.argsort(row_keys(mine, 3))[:level]])
        assert np.array_equal(kept_ids[kept_y[:, label] == 1], expected)


def test_moments_streamed_in_blocks_match_standardize_fit():
    import torch

    x = np.random.default_rng(2).standard_normal((3000, 16)).astype(np.float32) * 0.1 + 0.05
    moments = Moments(16)
    for start in range(0, 3000, 700):
        moments.add(x[start:start + 700], chunk=256)
    mean, std = moments.mean_std()
    fitted = Standardize(16).fit(torch.from_numpy(x))
    assert np.allclose(mean, fitted.mean.numpy(), atol=1e-7)
    assert np.allclose(std, fitted.std.numpy(), rtol=1e-5)


def test_a_bad_row_cap_names_the_value():
    with pytest.raises(ValueError, match="max_train_rows=0 must be a whole number"):
        HeadConfig(max_train_rows=0)
    with pytest.raises(ValueError, match="at least 1"):
        RowSample(0, 4, 2)


def test_batches_regroup_small_shards_and_prefetching_keeps_order_and_errors(store_path):
    from emoreact.prefetch import prefetched
    from emoreact.trainset import batches

    store = Store.open(store_path, with_index=False)
    sizes = [len(b.ids) for b in prefetched(batches(store, 100))]  # the session store has shards of 64
    ids = np.concatenate([b.ids for b in batches(store, 100, "test")])
    store.close()
    assert sizes == [100] * 6 + [40]
    assert np.all(np.diff(ids) > 0) and len(ids) == 96

    def failing():
        yield 1
        raise KeyError("shard 7")

    with pytest.raises(KeyError, match="shard 7"):
        list(prefetched(failing()))
    endless = prefetched(iter(range(10**9)))
    assert [next(endless), next(endless)] == [0, 1]
    endless.close()  # stops its reader thread instead of waiting on it
