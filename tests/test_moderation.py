"""The moderator loop through the API: keys, corrections, retraining, metrics and request ids."""
from __future__ import annotations

import csv
import hmac
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from emoreact.heads import HeadConfig
from helpers import ADMIN_KEY, MODERATOR, encoded, shuffled_train_labels, upload


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"# name:key[:admin]\nmod:{MODERATOR}\nops:{ADMIN_KEY}:admin\n")
    return path


@pytest.fixture
def served(tmp_path, store_path, linear_head, keys_file, session_backbone_loader):
    """Gives a factory of apps serving copies of the session store and the linear head, keyed: each test's
    app has its own store, head, corrections and limits; the model is the session's."""
    from emoreact.web import WebConfig, create_app

    shutil.copytree(store_path, tmp_path / "store")
    shutil.copytree(linear_head, tmp_path / "head")

    def make(**settings):
        return create_app(WebConfig(store=tmp_path / "store", head=tmp_path / "head", device="cpu",
                                    api_keys=keys_file, loader=session_backbone_loader, **settings))
    return make


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()["error"]


# ---- keys ---------------------------------------------------------------------------------

def test_keys_missing_wrong_and_lacking_the_right(served):
    client = served().test_client()
    body = {"id": 0, "labels": ["sad"]}
    response = client.post("/api/feedback", json=body)
    assert "needs an API key" in error_of(response, 401) and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "not valid" in error_of(client.post("/api/feedback", json=body, headers=bearer("x" * 24)), 401)
    assert "admin" in error_of(client.post("/api/admin/retrain", headers=bearer(MODERATOR)), 403)
    assert client.get("/api/admin/retrain", headers={"X-API-Key": ADMIN_KEY}).status_code == 200
    assert client.post("/api/feedback", json=body, headers={"X-API-Key": MODERATOR}).status_code == 201
    # Reads are open by default, and a key sent along is not checked there.
    assert client.get("/api/labels").status_code == 200
    assert client.get("/api/labels", headers=bearer("x" * 24)).status_code == 200


def test_reads_need_a_key_when_asked(served):
    client = served(require_key_for_read=True).test_client()
    assert "needs an API key" in error_of(client.get("/api/labels"), 401)
    assert client.get("/metrics").status_code == 401
    assert client.get("/api/labels", headers=bearer(MODERATOR)).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # always open


def test_without_a_key_file_feedback_is_refused_naming_the_option(store_path, linear_head):
    from emoreact.web import WebConfig, create_app

    client = create_app(WebConfig(store=store_path, head=linear_head, device="cpu")).test_client()
    assert "--api-keys" in error_of(client.post("/api/feedback", json={"id": 0, "labels": ["sad"]}), 401)


def test_keys_are_compared_in_constant_time_against_every_key(keys_file, monkeypatch):
    from emoreact.web import auth

    keys = auth.load_api_keys(keys_file)
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    for given, expected in ((MODERATOR, "mod"), (ADMIN_KEY, "ops"), ("wrong-key-0123456789", None)):
        calls.clear()
        found = auth.match_key(keys, given)
        assert (found.name if found else None) == expected
        assert len(calls) == len(keys)  # no early exit, whichever key matched
        assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: equal lengths, so compare_digest is flat


@pytest.mark.parametrize("line, message", [
    ("mod:short", "shorter than 16"), ("mod", "expected name:key"), (f"mod:{MODERATOR}:root", "expected name:key"),
    (f"m d:{MODERATOR}", "key name"),
])
def test_bad_key_files_name_the_line(tmp_path, line, message):
    from emoreact.web.auth import KeyFileError, load_api_keys

    path = tmp_path / "keys.txt"
    path.write_text(f"# keys\n{line}\n")
    with pytest.raises(KeyFileError, match="line 2") as info:
        load_api_keys(path)
    assert message in str(info.value)


def test_a_feedback_flood_from_one_key_is_bounded(served):
    app = served(feedback_per_minute=2)
    limiter = app.extensions["emoreact"].limiter
    clock = [1000.0]
    limiter.clock = lambda: clock[0]
    client = app.test_client()
    body = {"id": 1, "labels": ["happy"]}
    assert [client.post("/api/feedback", json=body, headers=bearer(MODERATOR)).status_code for _ in range(2)] == [201] * 2
    refused = client.post("/api/feedback", json=body, headers=bearer(MODERATOR))
    assert "2 corrections a minute" in error_of(refused, 429) and refused.headers["Retry-After"] == "30"
    assert client.post("/api/feedback", json=body, headers=bearer(ADMIN_KEY)).status_code == 201  # another key
    clock[0] += 30  # one token back
    assert client.post("/api/feedback", json=body, headers=bearer(MODERATOR)).status_code == 201


# ---- corrections --------------------------------------------------------------------------

def test_a_correction_of_an_indexed_image_is_stored_with_what_the_head_said(served):
    app = served()
    client = app.test_client()
    before = client.get("/api/neighbours?id=3&k=1").get_json()
    response = client.post("/api/feedback", json={"id": 3, "labels": ["sad", "fear"], "note": "crying child"},
                           headers=bearer(MODERATOR))
    entry = response.get_json()
    assert response.status_code == 201
    assert entry["labels"] == ["sad", "fear"] and entry["key_name"] == "mod" and entry["source"] == "indexed"
    assert entry["image_id"] == 3 and entry["note"] == "crying child" and len(entry["head_id"]) == 16
    served_answer = app.extensions["emoreact"].predictor
    vector = served_answer.store.vector(3)[None, :]
    assert entry["predicted"] == served_answer.predict_vectors(vector, ["x"], 0)[0]["predicted_emotions"]
    assert before["neighbours"]  # the image is indexed; its row itself is unchanged
    listed = client.get("/api/feedback", headers=bearer(MODERATOR)).get_json()["feedback"]
    assert listed == [entry]
    later = client.get("/api/feedback", query_string={"since": entry["time"]}, headers=bearer(MODERATOR))
    assert later.get_json() == {"feedback": []}
    assert client.get("/healthz").get_json()["feedback_count"] == 1


def test_an_uploaded_correction_adds_the_image_to_the_store(served):
    client = served().test_client()
    size = client.get("/healthz").get_json()["index_size"]
    data = encoded(("angry",), seed=424_242)
    form = upload(("new.png", data), labels="angry, disgust", note="a new meme")
    response = client.post("/api/feedback", data=form, headers=bearer(MODERATOR))
    entry = response.get_json()
    assert response.status_code == 201, entry
    assert entry["source"] == "upload" and entry["image_id"] == size and entry["labels"] == ["angry", "disgust"]
    assert client.get("/healthz").get_json()["index_size"] == size + 1  # served at once
    assert client.get(f"/api/images/{size}/thumbnail").status_code == 200
    [near] = client.post("/api/neighbours", data=upload(("same.png", data), k=1)).get_json()["neighbours"]
    assert near["id"] == size and near["labels"] == ["angry", "disgust"] and near["split"] == "train"
    again = client.post("/api/feedback", data=upload(("again.png", data), labels="angry"), headers=bearer(MODERATOR))
    assert again.get_json()["image_id"] == size and client.get("/healthz").get_json()["index_size"] == size + 1


def test_an_uploaded_clip_correction_is_stored_as_a_clip(served):
    import io

    from synthetic import draw

    client = served().test_client()
    size = client.get("/healthz").get_json()["index_size"]
    frames = [draw(("neutral",), seed=7)] + [draw(("angry",), seed=70 + n) for n in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    response = client.post("/api/feedback", data=upload(("rage.gif", out.getvalue()), labels="angry"),
                           headers=bearer(MODERATOR))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["image_id"] == size
    [near] = client.post("/api/neighbours", data=upload(("same.gif", out.getvalue()), k=1)).get_json()["neighbours"]
    assert near["id"] == size and near["clip"] == {"format": "GIF", "duration_ms": 400, "frame_count": 4}
    assert client.get(f"/api/images/{size}/thumbnail").status_code == 200


@pytest.mark.parametrize("kwargs, status, words", [
    ({"json": {"id": 0, "labels": ["joy"]}}, 400, "unknown label 'joy'"),
    ({"json": {"id": 0, "labels": []}}, 400, "labels"),
    ({"json": {"id": 0}}, 400, "labels"),
    ({"json": {"id": 99_999, "labels": ["sad"]}}, 404, "no indexed image has id 99999"),
    ({"data": "id=0", "content_type": "text/plain"}, 415, "send JSON"),
    ({"data": upload(("doc.pdf", b"%PDF-1.4 not an image"), labels="sad")}, 415, "PDF files are not accepted"),
    ({"data": upload(("notes.txt", b"meeting notes"), labels="sad")}, 400, "not an image"),
    ({"data": upload(("a.png", encoded()), labels=" , ")}, 400, "no labels were given"),
])
def test_bad_corrections_are_refused_naming_the_problem(served, kwargs, status, words):
    client = served().test_client()
    assert words in error_of(client.post("/api/feedback", headers=bearer(MODERATOR), **kwargs), status)


def test_a_bad_since_is_refused(served):
    client = served().test_client()
    assert "since" in error_of(client.get("/api/feedback?since=yesterday", headers=bearer(MODERATOR)), 400)


# ---- corrections in training and export ---------------------------------------------------

def test_train_applies_corrections_unless_told_not_to_and_export_writes_a_manifest(tmp_path, store_path):
    from emoreact.cli import main
    from emoreact.embed import read_source
    from emoreact.heads import load_label_config
    from emoreact.index import Store
    from emoreact.index.feedback import FeedbackLog, label_overrides

    store = tmp_path / "store"
    shutil.copytree(store_path, store)
    opened = Store.open(store)
    items = opened.items([0, 1])
    opened.close()
    log = FeedbackLog(store)
    other = next(l for l in ("sad", "happy") if (l,) != items[0].labels)
    log.add(key_name="mod", image_id=0, sha256=items[0].sha256, labels=["fear"], predicted=[], source="indexed")
    log.add(key_name="mod", image_id=0, sha256=items[0].sha256, labels=[other], predicted=[], source="indexed")
    log.add(key_name="mod", image_id=1, sha256=items[1].sha256, labels=list(items[1].labels), predicted=[],
            source="indexed")  # the same labels as stored: not an override that changes anything
    log.close()
    assert label_overrides(store) == {0: (other,), 1: tuple(items[1].labels)}  # the latest per image wins

    runner = CliRunner()
    args = ["train", "--store", str(store), "--head", "linear", "--no-search", "--device", "cpu"]
    with_feedback = runner.invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert with_feedback.exit_code == 0, with_feedback.output
    assert '"feedback_overrides": 1' in with_feedback.output
    without = runner.invoke(main, [*args, "--out", str(tmp_path / "b"), "--no-feedback"])
    assert '"feedback_overrides": 0' in without.output

    out = tmp_path / "fixes.csv"
    exported = runner.invoke(main, ["feedback", "export", "--store", str(store), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(out.open()))
    assert [(r["labels"], r["sha256"]) for r in rows] == [(other, items[0].sha256),
                                                          ("|".join(items[1].labels), items[1].sha256)]
    records = read_source(out, load_label_config())  # what `cli.py embed` reads
    assert [r.labels for r in records] == [(other,), tuple(items[1].labels)]
    assert str(records[0].path) == items[0].path


# ---- retraining ---------------------------------------------------------------------------

def finish(app) -> dict:
    retrainer = app.extensions["emoreact"].retrainer
    retrainer.thread.join(timeout=300)
    assert not retrainer.running
    return retrainer.last


def test_two_retrains_at_once_one_runs_one_gets_409_and_a_worse_head_is_not_swapped(served, tmp_path):
    app = served()
    client = app.test_client()
    shuffled_train_labels(tmp_path / "store")
    retrainer = app.extensions["emoreact"].retrainer
    retrainer.gate = threading.Event()  # holds the first retrain before it trains
    first = client.post("/api/admin/retrain", headers=bearer(ADMIN_KEY))
    assert first.status_code == 202 and first.get_json()["running"] is True
    second = client.post("/api/admin/retrain", headers=bearer(ADMIN_KEY))
    assert "already running" in error_of(second, 409)
    assert client.get("/api/admin/retrain", headers=bearer(ADMIN_KEY)).get_json()["running"] is True
    served_before = app.extensions["emoreact"].predictor
    retrainer.gate.set()
    last = finish(app)
    assert last["outcome"] == "kept", last
    assert last["new"]["val_macro_f1"] < last["served"]["val_macro_f1"]
    assert Path(last["new"]["head"]).is_dir() and last["feedback_overrides"] > 0
    assert app.extensions["emoreact"].predictor is served_before  # never served
    health = client.get("/healthz").get_json()
    assert health["last_retrain"] == last and health["last_reload"] is None


def test_a_better_head_is_swapped_in_and_changes_the_answer(tmp_path, store_path, label_config, keys_file,
                                                            session_backbone_loader):
    """The served head was trained on shuffled labels; the retrain (same config, true labels) is better."""
    from emoreact.pipeline import train_from_store
    from emoreact.web import WebConfig, create_app

    shutil.copytree(store_path, tmp_path / "store")
    shuffled_train_labels(tmp_path / "store")
    from emoreact.index.feedback import label_overrides

    bad = label_overrides(tmp_path / "store")
    (tmp_path / "store" / "feedback.sqlite").unlink()
    train_from_store(tmp_path / "store", tmp_path / "head", HeadConfig(kind="linear", search=False), label_config,
                     "cpu", overrides=bad)
    app = create_app(WebConfig(store=tmp_path / "store", head=tmp_path / "head", device="cpu", api_keys=keys_file,
                               loader=session_backbone_loader))
    client = app.test_client()
    image = upload(("sad.png", encoded(("sad",), seed=777)))
    before = client.post("/api/predict", data=image).get_json()["results"][0]
    assert client.post("/api/admin/retrain", headers=bearer(ADMIN_KEY)).status_code == 202
    last = finish(app)
    assert last["outcome"] == "swapped", last
    assert last["new"]["val_macro_f1"] >= last["served"]["val_macro_f1"]
    after = client.post("/api/predict", data=upload(("sad.png", encoded(("sad",), seed=777)))).get_json()["results"][0]
    assert after["emotion_scores"] != before["emotion_scores"]
    assert after["predicted_emotions"][0] == "sad"
    health = client.get("/healthz").get_json()
    assert health["last_reload"]["ok"] and health["last_retrain"]["outcome"] == "swapped"
    assert app.extensions["emoreact"].config.head == Path(last["new"]["head"])


# ---- metrics and request ids --------------------------------------------------------------

def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_move_with_requests(served):
    client = served().test_client()
    first = scrape(client)
    predicts = ("emoreact_http_requests_total", (("endpoint", "/api/predict"), ("method", "POST"), ("status", "200")))
    assert first.get(predicts, 0) == 0
    assert first[("emoreact_index_size", ())] == 640
    for _ in range(2):
        assert client.post("/api/predict", data=upload(("a.png", encoded()))).status_code == 200
    assert client.post("/api/feedback", json={"id": 2, "labels": ["sad"]}, headers=bearer(MODERATOR)).status_code == 201
    assert client.post("/api/feedback", json={"id": 2}, headers=bearer("x" * 20)).status_code == 401
    second = scrape(client)
    assert second[predicts] == 2
    assert second[("emoreact_http_request_duration_seconds_count", (("endpoint", "/api/predict"),))] == 2
    assert second[("emoreact_model_batch_size_count", ())] >= 2 and second[("emoreact_model_batch_size_sum", ())] >= 2
    assert second[("emoreact_feedback_total", (("kind", "indexed"),))] == 1
    refused = ("emoreact_http_requests_total", (("endpoint", "/api/feedback"), ("method", "POST"), ("status", "401")))
    assert second[refused] == 1


def test_every_answer_carries_a_request_id(served):
    client = served().test_client()
    given = client.get("/healthz", headers={"X-Request-ID": "lb-1234.abc"})
    assert given.headers["X-Request-ID"] == "lb-1234.abc"  # a proxy's id is kept
    made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["X-Request-ID"]
    assert len(made) == 32 and made.isalnum()  # an unusable one is replaced
    assert client.get("/nothing").headers["X-Request-ID"] != made


def test_access_log_lines_carry_the_request_id_and_key_name(served, caplog):
    client = served().test_client()
    with caplog.at_level("INFO", logger="emoreact.access"):
        response = client.post("/api/feedback", json={"id": 2, "labels": ["sad"]}, headers=bearer(MODERATOR))
    line = [r.getMessage() for r in caplog.records if r.name == "emoreact.access"][-1]
    assert '"POST /api/feedback" 201' in line and "key=mod" in line
    assert f"rid={response.headers['X-Request-ID']}" in line
    assert MODERATOR not in caplog.text  # the key itself is never logged


def test_feedback_log_is_a_separate_file_and_survives_a_busy_store(served, tmp_path):
    """A correction by id is recorded while another process holds the store's write lock (an embed job)."""
    from emoreact.index.writelock import WriterLock

    client = served().test_client()
    lock = WriterLock(tmp_path / "store")
    assert lock.acquire()
    try:
        assert client.post("/api/feedback", json={"id": 5, "labels": ["sad"]}, headers=bearer(MODERATOR)).status_code == 201
        busy = client.post("/api/feedback", data=upload(("n.png", encoded(seed=5)), labels="sad"),
                           headers=bearer(MODERATOR))
        message = error_of(busy, 409)
        assert "being written" in message and busy.headers["Retry-After"] == "60"
    finally:
        lock.release()
    assert (tmp_path / "store" / "feedback.sqlite").exists()



# ---- ranked reactions ---------------------------------------------------------------------

def with_weights(text: str, lines: str) -> str:
    """Gives label config TOML with `lines` in its [reaction_weights] table (the default has an empty one)."""
    assert "[reaction_weights]\n" in text
    return text.replace("[reaction_weights]\n", f"[reaction_weights]\n{lines}\n", 1)

def test_reactions_are_ranked_by_weight_times_the_best_allowing_label(label_config):
    from emoreact.heads import emoji_policy, parse_label_config, rank_reactions

    predicted, scores = ["happy", "surprise"], {"happy": 0.9, "surprise": 0.6}
    allowed, _ = emoji_policy(predicted, label_config)
    fit = rank_reactions(allowed, predicted, scores, label_config)
    assert list(fit)[:2] == ["😀", "😄"] and fit["😀"] == 0.9 and fit["😮"] == 0.6
    assert fit["👀"] == 0.6  # only surprise (0.6) of the two allows it
    assert list(fit.values()) == sorted(fit.values(), reverse=True)
    # A weight lifts or sinks an emoji; unlisted emojis weigh 1.
    weighted = parse_label_config(with_weights(label_config.text, '"😮" = 2.0\n"😀" = 0.5'))
    fit = rank_reactions(allowed, predicted, scores, weighted)
    assert list(fit)[0] == "😮" and fit["😮"] == 1.2 and fit["😀"] == 0.45
    # The sad example keeps its order: one label, equal weights, ties keep the policy's order.
    sad, _ = emoji_policy(["sad"], label_config)
    assert list(rank_reactions(sad, ["sad"], {"sad": 0.7}, label_config)) == ["😢", "😐", "💔", "🤍", "🙏"]


def test_bad_reaction_weights_name_the_line(label_config):
    from emoreact.heads import ConfigError, parse_label_config

    for table, message in (('"smile" = 1', "not a single emoji"), ('"😢" = -1', "from 0 to 10")):
        with pytest.raises(ConfigError, match=message):
            parse_label_config(with_weights(label_config.text, table), origin="labels.toml")


def test_predictions_order_allowed_emojis_by_their_reaction_scores(store_path, trained, backbone):
    from emoreact.heads import EmotionHead, parse_label_config
    from emoreact.index import Store
    from emoreact.predictor import Predictor

    head = EmotionHead.load(trained[0])
    head.with_policy(parse_label_config(with_weights(head.label_config.text, '"🙏" = 5.0')))
    store = Store.open(store_path)
    with Predictor(backbone, store, head, owns_store=True) as predictor:
        results = predictor.predict([encoded(("sad",), seed=s) for s in range(4)])
    for result in results:
        scores = result["reaction_scores"]
        assert list(scores) == result["allowed_emojis"]  # the same emojis, in the same order
        assert list(scores.values()) == sorted(scores.values(), reverse=True)
        if "🙏" in scores:
            assert result["allowed_emojis"][0] == "🙏"
    assert any("🙏" in r["reaction_scores"] for r in results)


# ---- novelty ------------------------------------------------------------------------------

def test_novelty_is_the_share_of_indexed_images_closer_to_their_neighbour():
    from emoreact.novelty import NoveltyCalibration

    calibration = NoveltyCalibration([0.99, 0.9, 0.97, 0.95])
    assert calibration.novelty([1.0, 0.99, 0.96, 0.9, 0.5]).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]
    assert calibration.to_json()["sample"] == 4


def test_an_image_unlike_the_index_is_flagged_unsure(store_path, trained, backbone):
    import numpy as np

    from emoreact.heads import EmotionHead
    from emoreact.index import Store
    from emoreact.novelty import NoveltyCalibration
    from emoreact.predictor import Predictor

    store = Store.open(store_path)
    with Predictor(backbone, store, EmotionHead.load(trained[0]), owns_store=True) as predictor:
        assert isinstance(predictor.novelty, NoveltyCalibration) and predictor.novelty.to_json()["sample"] == 640
        indexed = store.vector(7)[None, :]
        far = -indexed  # as unlike every indexed image as a unit vector can be
        near_result, far_result = predictor.predict_vectors(np.concatenate([indexed, far]), ["in", "out"], k=0)
        # Its own vector is its nearest (cosine ~1.0); only exact duplicates elsewhere in the index are closer.
        assert near_result["novelty"] < 0.01 and near_result["unsure"] is False
        assert far_result["novelty"] == 1.0 and far_result["unsure"] is True
        assert "neighbours" in far_result and far_result["neighbours"] == []  # k=0 still measures novelty
        # In-distribution images: about 1 - unsure_above of them are flagged (here: the sample itself).
        sample = np.stack([store.vector(i) for i in range(0, 640, 7)])
        flagged = [r["unsure"] for r in predictor.predict_vectors(sample + 0.0, ["x"] * len(sample), k=1)]
        assert sum(flagged) == 0  # each is in the index, so its nearest image is itself
    without_store = Predictor(backbone, None, EmotionHead.load(trained[0]))
    [result] = without_store.predict_vectors(indexed, ["x"])
    assert result["novelty"] is None and result["unsure"] is None and "neighbours" not in result


def test_predict_answers_with_novelty_and_reaction_scores(served):
    client = served(unsure_above=0.5).test_client()
    [result] = client.post("/api/predict", data=upload(("a.png", encoded()))).get_json()["results"]
    assert 0.0 <= result["novelty"] <= 1.0 and result["unsure"] == (result["novelty"] >= 0.5)
    assert list(result["reaction_scores"]) == result["allowed_emojis"]
    health = client.get("/healthz").get_json()
    assert health["unsure_above"] == 0.5 and health["novelty_calibration"]["sample"] == 640


def test_the_novelty_calibration_is_kept_while_the_store_is_unchanged(tmp_path, store_path, monkeypatch):
    import json

    from emoreact.index import Store
    from emoreact.novelty import CACHE_FILE, NoveltyCalibration

    shutil.copytree(store_path, tmp_path / "store", ignore=shutil.ignore_patterns(CACHE_FILE))
    store = Store.open(tmp_path / "store")
    measured = NoveltyCalibration.from_store(store)
    assert json.loads((tmp_path / "store" / CACHE_FILE).read_text())["live"] == 640
    monkeypatch.setattr(Store, "search", lambda *a, **k: pytest.fail("searched again though the store is unchanged"))
    again = NoveltyCalibration.from_store(store)
    assert np_equal(again.similarities_, measured.similarities_)
    monkeypatch.undo()
    store.close()
    cache = json.loads((tmp_path / "store" / CACHE_FILE).read_text())
    (tmp_path / "store" / CACHE_FILE).write_text(json.dumps({**cache, "rows": 639}))  # as if measured before a change
    searched = []
    real = Store.search
    monkeypatch.setattr(Store, "search", lambda self, q, k: searched.append(len(q)) or real(self, q, k))
    store = Store.open(tmp_path / "store")
    NoveltyCalibration.from_store(store)
    store.close()
    assert searched == [640]  # measured again


def np_equal(a, b) -> bool:
    import numpy as np

    return bool(np.allclose(a, b, atol=1e-6))
