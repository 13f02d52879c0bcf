"""Clips end to end: an animation is answered from frames chosen by time with its timeline, stored as one row
with its pooled vector (embed job, neighbours, removal, resume), served by the API and re-embedded from a
0.3.0 store's first-frame vector by a backfill (tests/fixtures/store-0.3.0-animations)."""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_EMBED, TINY
from emoreact import embed_source
from emoreact.embed.frames import pool_vectors
from emoreact.index import Store
from synthetic import draw

FIXTURES = Path(__file__).parent / "fixtures"


def gif(labels_per_frame: list[str], durations: int | list[int] = 100, size: int = 96) -> bytes:
    """Gives an animated GIF whose frames show the labels in turn (tests/synthetic.py's drawings, each its own)."""
    frames = [draw((label,), seed=n, size=size) for n, label in enumerate(labels_per_frame)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


SAD_AFTER_NEUTRAL = ["neutral"] + ["sad"] * 7  # the case: a neutral first frame, then the emotion


def test_a_gif_is_answered_from_its_frames_not_its_first(predictor):
    first = predictor.predict(png(draw(("neutral",), seed=0)))
    assert "sad" not in first["predicted_emotions"]
    answer = predictor.predict(gif(SAD_AFTER_NEUTRAL))
    assert "sad" in answer["predicted_emotions"] and answer["decided_by"]["sad"] == "frames"
    clip, timeline = answer["clip"], answer["timeline"]
    assert clip["format"] == "GIF" and clip["frame_count"] == 8 and clip["duration_ms"] == 800
    assert clip["frames_used"] == len(timeline) >= 2 and not clip["truncated"]
    assert [m["t_ms"] for m in timeline] == sorted(m["t_ms"] for m in timeline)
    assert clip["peaks"]["sad"] > 0  # the sad frames come after the first
    assert set(answer["channels"]) == {"image", "text", "frames"}
    assert answer["channels"]["frames"]["sad"] == max(m["emotion_scores"]["sad"] for m in timeline)
    assert "sad" in next(m for m in timeline if m["t_ms"] == clip["peaks"]["sad"])["emotions"]


def test_the_share_pooling_gives_each_labels_score_held_for_30_percent_of_the_time():
    from emoreact.heads.frames import FrameScores

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.2, 0.95]], np.float32)
    seen = FrameScores([0, 100, 200, 300], probs, probs > 0.5)
    # label 0: 0.9 holds for 0.2 of the time, 0.8 for 0.2 + 0.2 = 0.4 >= 0.3; label 1: 0.95 for 0.4.
    assert np.allclose(seen.held(np.array([0.2, 0.2, 0.2, 0.4])), [0.8, 0.95])
    # the sad half of a clip keeps sad; a label shown for 0.25 of it does not pass a 0.5 threshold
    assert np.allclose(seen.held(np.array([0.2, 0.05, 0.1, 0.65])), [0.2, 0.95])
    assert np.allclose(seen.pooled(np.array([0.25, 0.25, 0.25, 0.25])), [0.5, 0.4875])
    assert seen.peaks(["happy", "sad"]) == {"happy": 0, "sad": 300}


def test_the_poolings_are_what_they_say(predictor, store_path, trained):
    from emoreact.embed.clips import Clip
    from emoreact.predictor import Predictor

    name, clip = predictor.decode(gif(["happy", "sad", "sad", "sad"], [400, 200, 200, 200]))
    assert isinstance(clip, Clip)
    vectors, clips = predictor.embed_media([clip])
    frame_vectors = clips[0][1]
    assert np.allclose(vectors[0], pool_vectors(frame_vectors, clip.weights), atol=1e-6)
    head = predictor.head
    frame_probs = head.predict_proba(frame_vectors)
    by_share = predictor.predict_vectors(vectors, [name], 0, clips=clips)[0]  # the default
    from emoreact.heads.frames import FrameScores

    held = FrameScores(clip.times_ms, frame_probs, head.decide(frame_probs)).held(np.asarray(clip.weights))
    assert np.allclose(list(by_share["emotion_scores"].values()), held, atol=1e-4)
    scores = Predictor(predictor.backbone, predictor.store, head, clip_pooling="scores")
    by_scores = scores.predict_vectors(vectors, [name], 0, clips=clips)[0]
    expected = np.asarray(clip.weights) @ frame_probs
    assert np.allclose(list(by_scores["emotion_scores"].values()), expected, atol=1e-4)
    features = Predictor(predictor.backbone, predictor.store, head, clip_pooling="features")
    by_features = features.predict_vectors(vectors, [name], 0, clips=clips)[0]
    assert np.allclose(list(by_features["emotion_scores"].values()), head.predict_proba(vectors)[0], atol=1e-4)
    assert by_features["timeline"] == by_scores["timeline"]  # the frames' own scores, whatever the pooling


def static_gif(frames: int = 3) -> bytes:
    """Gives an animated GIF whose frames differ by one pixel each (a "static" GIF: one frame's worth)."""
    shown = []
    for n in range(frames):
        frame = draw(("angry",), seed=1)
        frame.putpixel((0, 0), (n * 40, 0, 0))
        shown.append(frame)
    out = io.BytesIO()
    shown[0].save(out, "GIF", save_all=True, append_images=shown[1:], duration=100, loop=0)
    return out.getvalue()


def test_a_list_mixes_stills_clips_and_bad_files_in_order(predictor):
    results = predictor.predict([png(draw(("happy",), 1)), gif(SAD_AFTER_NEUTRAL), b"not an image",
                                 static_gif()], k=2)
    assert "clip" not in results[0] and results[1]["clip"]["frame_count"] == 8
    assert results[2]["kind"] == "invalid" and results[3]["clip"]["frames_used"] == 1  # identical frames count once
    streamed = list(predictor.predict_many([gif(SAD_AFTER_NEUTRAL), (gif(["happy"] * 2), "so happy")], k=0))
    assert streamed[0]["timeline"] == results[1]["timeline"] and streamed[1]["text"]["caption"] == "so happy"


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory, label_config):
    """A store embedded from a folder of stills and animated GIF/WebP/PNG clips (labelled by sub-folder)."""
    root = tmp_path_factory.mktemp("clips")
    for label in ("happy", "sad", "angry"):
        (root / label).mkdir()
        for n in range(4):
            draw((label,), seed=n).save(root / label / f"still{n}.png")
        (root / label / "moving.gif").write_bytes(gif(["neutral", label, label, label]))
        frames = [draw(("neutral",), 9)] + [draw((label,), 10 + n) for n in range(3)]
        frames[0].save(root / label / "moving.webp", save_all=True, append_images=frames[1:], duration=150, lossless=True)
        frames[0].save(root / label / "moving.png", save_all=True, append_images=frames[1:], duration=150)
    store = tmp_path_factory.mktemp("clip-store") / "store"
    report = embed_source(root, store, TINY, labels=label_config, device="cpu", config=FAST_EMBED)
    return root, store, report


def test_the_embed_job_stores_a_clip_as_one_row_with_its_pooled_vector(clip_store, predictor, label_config):
    root, store_path, report = clip_store
    assert report.added == 21 and not report.skipped
    with Store.open(store_path) as store:
        assert store.clip_count() == 9 and store.manifest["format_version"] == 4
        items = {Path(item.path).relative_to(root).as_posix(): item for item in store.items()}
        clips = dict(zip(items, store.clips([item.id for item in items.values()])))
        assert clips["sad/still0.png"] is None
        assert {clips[f"sad/moving.{ext}"]["format"] for ext in ("gif", "webp", "png")} == {"GIF", "WEBP", "PNG"}
        assert clips["sad/moving.gif"]["frame_count"] == 4 and clips["sad/moving.gif"]["duration_ms"] == 400
        moving = items["sad/moving.gif"]
        vectors, _ = predictor.embed_media([predictor.decode(root / "sad" / "moving.gif")[1]])
        assert np.allclose(store.vector(moving.id), vectors[0], atol=2e-3)  # stored as float16
    again = embed_source(root, store_path, TINY, labels=label_config, device="cpu", config=FAST_EMBED)
    assert again.added == 0 and again.already_present == 21


def test_a_neighbour_that_is_a_clip_says_so_and_removal_takes_its_clip_record(clip_store, predictor, tmp_path):
    root, store_path, _ = clip_store
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    with Store.open(copy) as store:
        from emoreact.predictor import Predictor

        near = Predictor(predictor.backbone, store, None).neighbours(
            predictor.embed_media([predictor.decode(root / "angry" / "moving.gif")[1]])[0], 3)[0]
        assert near[0]["path"].endswith("angry/moving.gif") and near[0]["clip"] == {
            "format": "GIF", "duration_ms": 400, "frame_count": 4}
        assert all("clip" not in n for n in near if not n["path"].endswith(("gif", "webp", "png")) or "still" in n["path"])
        clip_id = near[0]["id"]
    with Store.open_for_writing(copy) as store:
        store.remove([clip_id], "test", "tests")
        assert store.clips([clip_id]) == [None] and store.clip_count() == 8


def _fixture_copy(tmp_path) -> Path:
    """Gives a copy of the 0.3.0 store of animations whose rows name the copied files."""
    files = tmp_path / "files"
    shutil.copytree(FIXTURES / "store-0.3.0-animations-files", files)
    root = tmp_path / "store"
    shutil.copytree(FIXTURES / "store-0.3.0-animations", root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["preprocess"]["model"] = TINY.model
    manifest["source_roots"] = [str(files)]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with sqlite3.connect(root / "metadata.sqlite") as db:
        db.execute("UPDATE images SET path = replace(path, '/emoreact-0.3.0-animations', ?)", (str(files),))
    return root


def _found(store: Store, image_id: int, vector: np.ndarray) -> bool:
    """Tells whether the index gives `image_id` for its own vector, at similarity 1 (the fixture's WebP and
    PNG show the same frames, so their vectors tie)."""
    scores, ids = store.search(vector[None, :], 2)
    return image_id in ids[0].tolist() and scores[0][ids[0].tolist().index(image_id)] > 0.999


def test_a_backfill_re_embeds_a_0_3_0_stores_animations_as_clips_in_place(tmp_path, predictor):
    from emoreact.backfill import backfill_clips

    root = _fixture_copy(tmp_path)
    with Store.open(root) as store:
        before = {item.path: (item, store.vector(item.id).copy()) for item in store.items()}
    report = backfill_clips(root, device="cpu")
    assert report.to_json()["clips"] == {"re_embedded": 3, "already_clips": 0, "changed_since_stored": 0,
                                         "unreadable": 0}
    with Store.open(root) as store:
        assert store.manifest["format_version"] == 4 and store.clip_count() == 3
        for path, (item, old) in before.items():
            [now] = store.items([item.id])
            assert (now.labels, now.split, now.sha256) == (item.labels, item.split, item.sha256)  # the same row
            vector = store.vector(item.id)
            if path.endswith("still.png"):
                assert np.array_equal(vector, old) and store.clips([item.id]) == [None]
                continue
            pooled, _ = predictor.embed_media([predictor.decode(path)[1]])
            assert np.allclose(vector, pooled[0], atol=2e-3) and not np.allclose(vector, old, atol=0.05)
            assert _found(store, item.id, vector)  # the index holds the new vector
    assert backfill_clips(root, device="cpu").to_json()["clips"]["already_clips"] == 3


def test_a_backfill_leaves_a_file_changed_since_it_was_stored_alone(tmp_path):
    from emoreact.backfill import backfill_clips

    root = _fixture_copy(tmp_path)
    (tmp_path / "files" / "sad" / "rain.png").write_bytes(gif(["sad", "happy"]))
    report = backfill_clips(root, device="cpu").to_json()["clips"]
    assert report["re_embedded"] == 2 and report["changed_since_stored"] == 1


_BACKFILL = """
import sys
from emoreact.backfill import backfill_clips
backfill_clips(sys.argv[1], device="cpu")
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("point", ["after_clip_vectors", "after_clip_commit"])
def test_a_backfill_killed_half_way_is_finished_by_the_next(tmp_path, point, predictor):
    from emoreact.backfill import backfill_clips

    root = _fixture_copy(tmp_path)
    env = {**os.environ, "EMOREACT_FAULT": point}
    killed = subprocess.run([sys.executable, "-c", _BACKFILL, str(root)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    with Store.open(root) as store:  # readable as it was left: every row there, old or new vector
        assert len(store) == 4
    backfill_clips(root, device="cpu")
    with Store.open(root) as store:
        assert store.clip_count() == 3
        for item in store.items():
            vector = store.vector(item.id)
            assert _found(store, item.id, vector)
            if not item.path.endswith("still.png"):
                pooled, _ = predictor.embed_media([predictor.decode(item.path)[1]])
                assert np.allclose(vector, pooled[0], atol=2e-3)


# ---- the API ----------------------------------------------------------------------------------

def test_the_api_answers_a_gif_with_its_timeline_and_refuses_other_types_naming_the_accepted(make_app):
    client = make_app().test_client()
    sent = client.post("/api/predict", data={"image": [(io.BytesIO(gif(SAD_AFTER_NEUTRAL)), "sad.gif"),
                                                       (io.BytesIO(png(draw(("happy",), 3))), "happy.png")]})
    assert sent.status_code == 200
    clip, still = sent.get_json()["results"]
    assert clip["image"] == "sad.gif" and len(clip["timeline"]) == clip["clip"]["frames_used"]
    assert "timeline" not in still and "clip" not in still
    tiff = io.BytesIO()
    draw(("happy",), 1).save(tiff, "TIFF")
    refused = client.post("/api/predict", data={"image": [(io.BytesIO(tiff.getvalue()), "x.tiff")]})
    assert refused.status_code == 415 and "GIF" in refused.get_json()["error"]
    near = client.post("/api/neighbours", data={"image": (io.BytesIO(gif(SAD_AFTER_NEUTRAL)), "sad.gif"), "k": "2"})
    assert near.status_code == 200 and len(near.get_json()["neighbours"]) == 2


def test_a_stored_clips_thumbnail_is_its_middle_frame(clip_store):
    from emoreact.web.thumbnails import make_thumbnail

    root, _, _ = clip_store
    data = (root / "happy" / "moving.gif").read_bytes()
    thumbnail = Image.open(io.BytesIO(make_thumbnail(data, 64, 10_000_000)))
    middle = np.asarray(draw(("happy",), seed=2).resize(thumbnail.size), np.float32)
    first = np.asarray(draw(("neutral",), seed=0).resize(thumbnail.size), np.float32)
    shown = np.asarray(thumbnail.convert("RGB"), np.float32)
    assert np.abs(shown - middle).mean() < np.abs(shown - first).mean()


def test_the_multi_device_engine_carries_clips_through_its_merge(tmp_path, label_config, monkeypatch):
    from helpers import InProcessPool

    from emoreact.embed import parallel

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", InProcessPool)
    (tmp_path / "src").mkdir()
    for n in range(3):
        draw(("happy",), seed=n).save(tmp_path / "src" / f"still{n}.png")
        (tmp_path / "src" / f"clip{n}.gif").write_bytes(gif(["neutral"] + ["sad"] * (n + 2)))
    embed_source(tmp_path / "src", tmp_path / "two", TINY, labels=label_config, device="cpu,cpu", config=FAST_EMBED)
    embed_source(tmp_path / "src", tmp_path / "one", TINY, labels=label_config, device="cpu", config=FAST_EMBED)
    with Store.open(tmp_path / "two") as two, Store.open(tmp_path / "one") as one:
        def state(store):
            items = store.items()
            return {i.path: (clip, store.vector(i.id)) for i, clip in zip(items, store.clips([i.id for i in items]))}
        merged, single = state(two), state(one)
        assert merged.keys() == single.keys() and sum(c is not None for c, _ in merged.values()) == 3
        for path, (clip, vector) in merged.items():
            assert clip == single[path][0] and np.allclose(vector, single[path][1], atol=2e-3)


def test_a_video_is_answered_and_embedded_like_a_gif(predictor, tmp_path, label_config):
    av = pytest.importorskip("av")
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        for n, label in enumerate(["neutral", "sad", "sad", "sad"]):
            frame = av.VideoFrame.from_ndarray(np.asarray(draw((label,), seed=n)), format="rgb24")
            for _ in range(10):  # a second each
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    answer = predictor.predict(out.getvalue())
    assert answer["clip"]["format"] == "MP4" and 3900 <= answer["clip"]["duration_ms"] <= 4100
    assert "sad" in answer["predicted_emotions"] and answer["clip"]["peaks"]["sad"] >= 900
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tears.mp4").write_bytes(out.getvalue())
    report = embed_source(tmp_path / "src", tmp_path / "store", TINY, labels=label_config, device="cpu",
                          config=FAST_EMBED)
    assert report.added == 1
    with Store.open(tmp_path / "store") as store:
        assert store.clips([0])[0]["format"] == "MP4"


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_predict_to_a_file_keeps_a_clips_timeline_and_leaves_a_stills_empty(predictor, tmp_path, suffix):
    from emoreact.cli_predict import predict_to_file

    (tmp_path / "sad.gif").write_bytes(gif(SAD_AFTER_NEUTRAL))
    draw(("happy",), seed=2).save(tmp_path / "happy.png")
    out = tmp_path / f"answers{suffix}"
    summary = predict_to_file(predictor, [tmp_path / "sad.gif", tmp_path / "happy.png"], out, batch_size=2, k=1)
    assert summary["errors"] == 0
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    clip, still = sorted(rows, key=lambda row: row["image"].endswith(".png"))
    assert clip["clip"]["format"] == "GIF" and len(clip["timeline"]) == clip["clip"]["frames_used"]
    assert still.get("timeline") is None and still.get("clip") is None


def test_a_captioned_clip_through_a_post_head_keeps_its_three_channels_apart(post_store, post_heads):
    import emoreact
    from synthetic import PHRASES

    with emoreact.load(post_store, post_heads[0], device="cpu", ocr="off") as posts:
        plain = posts.predict(gif(["neutral"] * 2 + ["happy"] * 4))
        captioned = posts.predict(gif(["neutral"] * 2 + ["happy"] * 4), caption=PHRASES["sad"][0])
    assert plain["channels"]["text"] is None and set(plain["decided_by"].values()) <= {"frames"}
    assert captioned["channels"]["text"] is not None and "sad" in captioned["predicted_emotions"]
    assert captioned["decided_by"]["sad"] == "text"
    # The picture channel is the frames' own, the same whatever the caption says.
    assert captioned["channels"]["image"] == plain["channels"]["image"]
    assert captioned["channels"]["frames"] != plain["channels"]["frames"]  # frames are scored with the words
