"""The adaptive search (index/adaptive.py) on small seeded data: brute-force agreement on queries from
topics never stored, the fixed search's answers wherever its rule does not fire, stores without its
settings searched as before, and what an answer says of its neighbours."""
import json
import shutil

import faiss
import numpy as np
import pytest

from emoreact.bench.synthetic_store import Mixture, held_out_queries, write_store
from emoreact.index import Store, adaptive, ann, brute_force_search
from emoreact.index.ann import IndexSettings

MIX = Mixture(dim=64, clusters=48, seed=3)
IVF = "IVF32_HNSW32,RaBitQ"  # a small approximate index of the production kind


@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("adaptive") / "store"
    with pytest.MonkeyPatch.context() as patch:  # the same tuning on fewer queries: seconds, not tens
        patch.setattr(ann, "TUNING_QUERIES", 400)
        patch.setattr(adaptive, "FAR_QUERIES", 400)
        write_store(path, 3000, MIX, index=IVF).close()
    return path


def recall(ids, truth):
    return float(np.mean([len(set(a) & set(t)) / truth.shape[1] for a, t in zip(ids.tolist(), truth.tolist())]))


def test_the_build_tunes_a_second_pass_for_queries_unlike_the_stored_rows(ivf_store):
    with Store.open(ivf_store) as store:
        settings = store.index_settings
    assert settings.far_below is not None and 0 < settings.far_below < 1
    assert settings.far_candidates > settings.candidates and settings.far_nprobe >= settings.nprobe
    assert settings.far_recall_at_10 >= 0.9  # on the tuning's own far queries
    recorded = json.loads((ivf_store / "manifest.json").read_text())["index"]  # beside nprobe and candidates
    assert {"far_below", "far_weight", "far_nprobe", "far_candidates", "far_recall_at_10"} <= set(recorded)


def test_on_new_topics_the_adaptive_search_agrees_with_brute_force_at_least_as_well_as_the_fixed_one(ivf_store):
    new_topics = MIX.draw_new_topics(200, seed=1)  # tuning drew its own queries, from the store's rows
    held_out = held_out_queries(200, MIX)
    with Store.open(ivf_store) as store:
        vectors = store.vectors()
        for queries, floor in ((new_topics, 0.85), (held_out, 0.95)):
            _, truth = brute_force_search(vectors, queries, 10)
            scores, found = store.search(queries, 10)
            _, fixed = ann.search(store.index, store.index_settings, queries, 10, store.vectors_of)
            assert recall(found, truth) >= recall(fixed, truth) and recall(found, truth) >= floor
            # the similarities are the exact cosines of the images returned
            assert np.allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[found]), atol=1e-5)
        _, fixed = ann.search(store.index, store.index_settings, new_topics, 10, store.vectors_of)
        _, found = store.search(new_topics, 10)
        _, truth = brute_force_search(vectors, new_topics, 10)
        assert recall(found, truth) >= recall(fixed, truth) + 0.1  # 0.63 -> 0.90 at 6,000 rows


def test_where_the_rule_does_not_fire_the_answer_is_the_fixed_searchs(ivf_store):
    queries = np.concatenate([held_out_queries(100, MIX), MIX.draw_new_topics(100, seed=2)])
    with Store.open(ivf_store) as store:
        store.search(queries[:1], 1)  # loads the index
        never = store.index_settings.with_(far_below=-2.0)
        got = adaptive.search(store.index, never, queries, 10, store.vectors_of)
        fixed = ann.search(store.index, store.index_settings, queries, 10, store.vectors_of)
    assert np.array_equal(got[1], fixed[1]) and np.array_equal(got[0], fixed[0])


def test_a_store_without_the_adaptive_settings_searches_exactly_as_before(ivf_store, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(ivf_store, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["index"] = {k: v for k, v in manifest["index"].items() if not k.startswith("far_")}
    (old / "manifest.json").write_text(json.dumps(manifest))
    queries = MIX.draw_new_topics(100, seed=3)
    with Store.open(old) as store:
        settings = store.index_settings
        assert settings.far_below is None and not adaptive.applies(store.index, settings)
        scores, ids = store.search(queries, 10)
        fixed = ann.search(store.index, settings, queries, 10, store.vectors_of)
    assert np.array_equal(ids, fixed[1]) and np.array_equal(scores, fixed[0])


def test_an_nprobe_override_never_narrows_the_second_pass():
    assert adaptive.parameters(64, IVF, nprobe=32).nprobe == 64
    assert adaptive.parameters(64, IVF, nprobe=128).nprobe == 128
    [hnsw] = adaptive.parameters(64, IVF, nprobe=32).referenced_objects
    assert hnsw.efSearch == 128  # the quantizer searches as broadly as ann.configure would set it


def test_far_queries_are_seeded_unit_vectors_with_the_samples_mean_direction():
    sample = MIX.draw(500, stream=0)[0]
    far = adaptive.far_queries(sample, 200, seed=4)
    assert far.shape == (200, 64) and far.dtype == np.float32 and np.allclose(np.linalg.norm(far, axis=1), 1, atol=1e-5)
    assert np.array_equal(far, adaptive.far_queries(sample, 200, seed=4))
    assert not np.array_equal(far, adaptive.far_queries(sample, 200, seed=5))
    mean = sample.mean(axis=0)
    assert float((far @ mean).mean()) > 0.5 * float(np.linalg.norm(mean))  # the common direction is kept
    best = (far @ sample.T).max(axis=1)
    assert np.median(best) < np.median(np.sort(sample @ sample.T, axis=1)[:, -2])  # farther than rows are from rows


def test_settings_say_whether_a_search_is_exact():
    assert IndexSettings("Flat", "index-000001.faiss", indexed_rows=10).exact
    ivf = IndexSettings(IVF, "index-000001.faiss", indexed_rows=500, nprobe=8, candidates=80)
    assert not ivf.exact
    assert ivf.with_(nprobe=32, candidates=500).exact  # every list probed, every row re-ranked
    old = IndexSettings.from_json({"factory": IVF, "file": "f", "indexed_rows": 5, "nprobe": 4, "candidates": 80})
    assert old.far_below is None and old.far_candidates == 0  # a manifest from before the adaptive search


def test_each_prediction_says_whether_its_neighbours_are_exact(predictor):
    vectors = predictor.store.vectors_of(np.array([0, 1]))
    with_store = predictor.predict_vectors(vectors, ["a", "b"], k=2)
    assert [r["neighbours_exact"] for r in with_store] == [True, True]  # the test store's index is flat
    keys = list(with_store[0])
    assert keys.index("neighbours_exact") == keys.index("neighbours") + 1
