"""The store: resume, skipped files, manifest checks, FAISS against brute force."""
import json
import shutil

import numpy as np
import pytest

from conftest import FAST_EMBED, TINY
from emoreact.embed import Record, run_embed_job
from emoreact.index import Store, StoreError, brute_force_search, build_index
from emoreact.index.search import search
from synthetic import draw


def make_images(folder, count, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(start, start + count):
        draw(("happy",) if n % 2 else ("sad",), seed=10_000 + n).save(folder / f"{n:03d}.png")


def new_store(path, backbone, labels):
    return Store.create_or_resume(path, backbone.spec.model_id, backbone.dim, backbone.preprocess.to_json(),
                                  labels.names)


def embed_folder(folder, path, backbone, labels, config=FAST_EMBED):
    records = [Record(p, None) for p in sorted(folder.iterdir())]
    store = new_store(path, backbone, labels)
    report = run_embed_job(records, store, backbone, config)
    store.close()
    return report


def test_resume_embeds_only_new_files(tmp_path, backbone, label_config):
    make_images(tmp_path / "src", 10)
    first = embed_folder(tmp_path / "src", tmp_path / "store", backbone, label_config)
    make_images(tmp_path / "src", 5, start=10)
    second = embed_folder(tmp_path / "src", tmp_path / "store", backbone, label_config)
    assert (first.added, second.added, second.already_present) == (10, 5, 10)
    store = Store.open(tmp_path / "store")
    assert len(store) == 15 and store.manifest["count"] == 15
    assert len({item.sha256 for item in store.items()}) == 15

    fresh = embed_folder(tmp_path / "src", tmp_path / "fresh", backbone, label_config)
    assert fresh.added == 15
    assert np.allclose(Store.open(tmp_path / "fresh").vectors(), store.vectors(), atol=1e-3)


def test_bad_files_are_skipped_with_reasons_and_the_job_finishes(tmp_path, backbone, label_config):
    make_images(tmp_path / "src", 4)
    good = (tmp_path / "src" / "000.png").read_bytes()
    (tmp_path / "src" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "src" / "notes.jpg").write_text("this is text, not a JPEG")
    (tmp_path / "src" / "copy.png").write_bytes(good)
    report = embed_folder(tmp_path / "src", tmp_path / "store", backbone, label_config)
    assert report.added == 4
    assert report.skipped == {"damaged": 1, "not an image": 1, "duplicate": 1}
    reasons = dict(Store.open(tmp_path / "store").skipped())
    assert "not an image" in reasons[str(tmp_path / "src" / "notes.jpg")]
    assert "damaged or truncated" in reasons[str(tmp_path / "src" / "truncated.png")]


def test_store_records_labels_and_a_deterministic_split(store_path):
    items = Store.open(store_path).items()
    assert {item.split for item in items} == {"train", "val", "test"}
    assert all(item.labels for item in items)


def test_store_built_for_another_model_is_refused(tmp_path, backbone, label_config):
    make_images(tmp_path / "src", 2)
    embed_folder(tmp_path / "src", tmp_path / "store", backbone, label_config)
    with pytest.raises(StoreError, match=r"built with model .*tiny-clip/none.*not 'ViT-B-32/laion"):
        Store.open(tmp_path / "store", model_id="ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(StoreError, match="model_id="):
        Store.create_or_resume(tmp_path / "store", "ViT-L-14/openai", 768, {}, label_config.names)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    manifest["count"] = 99
    (tmp_path / "store" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="manifest counts 99 images but .* holds 2"):
        Store.open(tmp_path / "store")


def test_truncated_index_is_refused_naming_the_file(tmp_path, store_path):
    copy = shutil.copytree(store_path, tmp_path / "copy")
    index = copy / json.loads((copy / "manifest.json").read_text())["index"]["file"]
    index.write_bytes(index.read_bytes()[:100])
    with pytest.raises(StoreError, match=rf"{index.name} is truncated or corrupt"):
        Store.open(copy)


def test_killed_job_leaves_an_orphan_shard_that_is_dropped(tmp_path, backbone, label_config):
    make_images(tmp_path / "src", 6)
    embed_folder(tmp_path / "src", tmp_path / "store", backbone, label_config)
    (tmp_path / "store" / "vectors" / "000000099.npy").write_bytes(b"half a shard")
    make_images(tmp_path / "src", 2, start=6)
    report = embed_folder(tmp_path / "src", tmp_path / "store", backbone, label_config)
    assert report.added == 2
    assert not (tmp_path / "store" / "vectors" / "000000099.npy").exists()
    assert len(Store.open(tmp_path / "store").vectors()) == 8


def test_faiss_neighbours_equal_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(2000, 50)] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, ids = search(build_index(vectors), queries, 10)
    ref_scores, ref_ids = brute_force_search(vectors, queries, 10)
    assert np.array_equal(ids, ref_ids)
    assert np.allclose(scores, ref_scores, atol=1e-5)


def test_store_search_is_cosine_over_stored_vectors(store_path):
    store = Store.open(store_path)
    vectors = store.vectors()
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    scores, ids = store.search(vectors[:5], 3)
    assert list(ids[:, 0]) == [0, 1, 2, 3, 4]
    ref_scores, _ = brute_force_search(vectors, vectors[:5], 3)
    assert np.allclose(scores, ref_scores, atol=1e-5)


def test_torch_exact_search_matches_faiss_flat():
    import torch

    from emoreact.index.search import TorchFlatIndex

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3000, 48)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:40] + 0.1 * rng.normal(size=(40, 48)).astype(np.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores, ids = search(TorchFlatIndex(vectors, device), queries, 10)
    ref_scores, ref_ids = search(build_index(vectors), queries, 10)
    assert np.array_equal(ids, ref_ids)
    assert np.allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.subprocess
def test_sharded_run_over_two_processes_equals_a_single_process_run(tmp_path, label_config):
    from emoreact import embed_source

    make_images(tmp_path / "src", 9)
    (tmp_path / "src" / "copy.png").write_bytes((tmp_path / "src" / "000.png").read_bytes())
    (tmp_path / "src" / "bad.jpg").write_text("not an image")
    for name, device in (("single", "cpu"), ("sharded", "cpu,cpu")):
        report = embed_source(tmp_path / "src", tmp_path / name, TINY, labels=label_config, device=device,
                              config=FAST_EMBED)
        assert report.added == 9 and sum(report.skipped.values()) == 2
    single, sharded = Store.open(tmp_path / "single"), Store.open(tmp_path / "sharded")
    assert [(i.path, i.sha256, i.split) for i in single.items()] == [(i.path, i.sha256, i.split) for i in sharded.items()]
    assert np.array_equal(single.vectors(), sharded.vectors())
    assert single.skipped() == sharded.skipped()
    assert not (tmp_path / "sharded" / ".parts").exists()
