"""A post head reads the picture and the words: trained from a store of captioned posts, saved and loaded
with its inputs, judging a post without words exactly as the image-only head does, and letting a sad caption
block 😂 on a happy picture."""
import json

import numpy as np
import pytest

from conftest import FAST_EMBED, LABELS, TINY
from emoreact import embed_source, evaluate, train
from emoreact.heads import EmotionHead, HeadError
from emoreact.index import Store
from emoreact.predictor import load
from synthetic import PHRASES, draw, make_post_manifest


@pytest.fixture(scope="module")
def heads(post_store, post_heads):
    return post_heads

def test_a_store_of_posts_trains_a_head_that_reads_both_and_says_so(heads):
    post, image, fused, plain = heads
    manifest = json.loads((post / "manifest.json").read_text())
    assert manifest["inputs"] == ["image", "text", "has_text"] and (post / "text" / "manifest.json").is_file()
    assert json.loads((image / "manifest.json").read_text())["inputs"] == ["image"]
    assert fused["inputs"] == ["image", "text", "has_text"] and plain["inputs"] == ["image"]
    assert EmotionHead.load(post).reads_text and not EmotionHead.load(image).reads_text
    assert fused["macro_f1"] > plain["macro_f1"]  # the caption-only posts are out of the picture's reach


def test_a_post_without_words_is_judged_by_the_picture_alone_and_no_worse_than_an_image_only_head(post_store, heads):
    from emoreact.heads.metrics import macro_f1

    post, image = EmotionHead.load(heads[0]), EmotionHead.load(heads[1])
    with Store.open(post_store, with_index=False) as store:
        ids = store.live_ids()
        x, text = store.vectors_of(ids), store.text_vectors_of(ids)
        labels = [item.labels for item in store.items(ids.tolist())]
    plain = ~np.any(text != 0, axis=1)
    np.testing.assert_array_equal(post.predict_proba(x[plain], text=text[plain]), post.channels(x[plain])[0])
    y = np.array([[name in row for name in post.labels] for row in labels], np.float32)[plain]
    fused = macro_f1(post.predict_proba(x[plain]), y, post.thresholds_, post.task_, post.fallback_)
    alone = macro_f1(image.predict_proba(x[plain]), y, image.thresholds_, image.task_, image.fallback_)
    assert fused >= alone - 0.01


def test_a_sad_caption_blocks_laughter_on_a_happy_picture(post_store, heads):
    with load(post_store, heads[0], device="cpu") as predictor:
        happy = draw(("happy",), seed=424_242)
        alone = predictor.predict(happy)
        captioned = predictor.predict(happy, caption="we lost him yesterday")
    assert "happy" in alone["predicted_emotions"] and "😂" in alone["allowed_emojis"]
    assert alone["text"] == {"caption": None, "ocr": []} and alone["channels"]["text"] is None
    assert "sad" in captioned["predicted_emotions"] and "😂" in captioned["blocked_emojis"]
    assert "😂" not in captioned["allowed_emojis"] and captioned["decided_by"]["sad"] == "text"
    assert captioned["text"]["caption"] == "we lost him yesterday"
    assert set(captioned["channels"]["text"]) == set(LABELS)
    assert captioned["channels"]["image"] == alone["channels"]["image"] == alone["emotion_scores"]


def test_the_python_api_takes_captions_one_by_one_in_lists_and_in_pairs(post_store, heads):
    neutral = draw(("neutral",), seed=515_151)
    with load(post_store, heads[0], device="cpu") as predictor:
        one = predictor.predict(neutral, caption="eww gross")
        listed = predictor.predict([neutral, neutral], caption=["eww gross", None])
        paired = list(predictor.predict_many([(neutral, "eww gross"), neutral], batch_size=1))
        with pytest.raises(ValueError, match="2 captions for 1 images"):
            predictor.predict([neutral], caption=["a", "b"])
        with pytest.raises(TypeError, match="caption must be a string"):
            predictor.predict(neutral, caption=42)
    assert "disgust" in one["predicted_emotions"]
    assert [r["emotion_scores"] for r in listed] == [r["emotion_scores"] for r in paired]
    assert listed[0]["emotion_scores"] == one["emotion_scores"] and listed[1]["text"]["caption"] is None


def test_evaluate_and_score_use_the_stored_words(post_store, heads, tmp_path):
    from emoreact import score

    metrics = evaluate(post_store, heads[0], split="test", out=tmp_path)
    assert metrics["inputs"] == ["image", "text", "has_text"] and metrics["macro_f1"] == heads[2]["macro_f1"]
    score(post_store, heads[0], tmp_path / "scores.jsonl", split="test")
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    with Store.open(post_store, with_index=False) as store:
        captions = {i: (t or {}).get("caption") for i, t in zip([r["id"] for r in rows], store.texts([r["id"] for r in rows]))}
    sad_captioned = [r for r in rows if captions[r["id"]] in PHRASES["sad"]]
    assert sad_captioned and all("sad" in r["predicted_emotions"] for r in sad_captioned)


def test_too_few_posts_with_words_train_an_image_only_head(tmp_path):
    posts = [((label,), None, (label,), split) for split in ("train", "val") for label in LABELS for _ in range(3)]
    posts += [(("neutral",), "so sad today", ("sad",), "train")] * 2
    source = make_post_manifest(tmp_path / "few", posts)
    embed_source(source, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    metrics = train(tmp_path / "store", tmp_path / "head", head="linear", device="cpu", search=False)
    assert metrics["inputs"] == ["image"]


def test_a_head_whose_fusion_is_damaged_is_refused_with_the_fix(heads, tmp_path):
    import shutil

    copy = tmp_path / "head"
    shutil.copytree(heads[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fusion"]["image"] = [1.0]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HeadError, match="fusion is invalid.*retrain the head"):
        EmotionHead.load(copy)


# ---- the HTTP API ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def post_client(post_store, heads):
    from emoreact.web import WebConfig, create_app

    app = create_app(WebConfig(store=post_store, head=heads[0], device="cpu"))
    yield app.test_client()
    app.extensions["emoreact"].predictor.close()


def _png(labels, seed):
    from helpers import encoded

    return encoded(labels, seed)


def test_the_api_takes_one_caption_per_image_in_order(post_client):
    from helpers import upload

    happy = _png(("happy",), 424_242)
    response = post_client.post("/api/predict", data={**upload(("a.png", happy), ("b.png", happy)),
                                                      "caption": ["we lost him yesterday", ""]})
    assert response.status_code == 200
    first, second = response.get_json()["results"]
    assert first["text"]["caption"] == "we lost him yesterday" and "😂" in first["blocked_emojis"]
    assert first["decided_by"]["sad"] == "text" and set(first["channels"]) == {"image", "text"}
    assert second["text"] == {"caption": None, "ocr": []} and second["channels"]["text"] is None
    assert "😂" in second["allowed_emojis"]
    plain = post_client.post("/api/predict", data=upload(("b.png", happy))).get_json()["results"][0]
    assert plain["emotion_scores"] == second["emotion_scores"]


def test_a_caption_count_other_than_the_images_is_a_400_naming_both(post_client):
    from helpers import assert_error, upload

    happy = _png(("happy",), 1)
    response = post_client.post("/api/predict", data={**upload(("a.png", happy), ("b.png", happy)),
                                                      "caption": ["one"]})
    assert_error(response, 400, "1 captions for 2 images", "one per image")


@pytest.mark.parametrize("caption", ["\x00\x07\x1b[31m red \u202e", "😂😂😂 لول 日本 Ünïcödé",
                                     "sad " * 5000, "\n\n\n", "<script>alert(1)</script>"])
def test_hostile_captions_get_a_bounded_answer(post_client, caption):
    from helpers import upload

    response = post_client.post("/api/predict", data={**upload(("a.png", _png(("neutral",), 5))),
                                                      "caption": caption})
    assert response.status_code == 200
    stored = response.get_json()["results"][0]["text"]["caption"]
    assert stored is None or (len(stored) <= 2000 and "\x00" not in stored and "\u202e" not in stored)


def test_a_caption_of_a_megabyte_is_a_413_in_plain_words(post_client):
    from helpers import assert_error, upload

    response = post_client.post("/api/predict", data={**upload(("a.png", _png(("neutral",), 5))),
                                                      "caption": "x" * 1_000_000})
    assert_error(response, 413, "caption")


def test_the_openapi_document_describes_the_caption_field_and_the_new_answer_keys(post_client):
    document = post_client.get("/api/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    form = next(v for k, v in schemas.items() if k.startswith("ImageForm"))
    assert "caption" in form["properties"] and {"text", "channels", "decided_by"} <= set(schemas["Prediction"]["properties"])


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_predict_takes_a_caption_for_one_image_and_reads_a_manifests_caption_column(post_store, heads, tmp_path):
    from click.testing import CliRunner

    from emoreact import cli

    draw(("happy",), seed=424_242).save(tmp_path / "happy.png")
    args = ["predict", "--store", str(post_store), "--head", str(heads[0]), "--device", "cpu", "--k", "0"]
    one = CliRunner().invoke(cli.main, [*args, str(tmp_path / "happy.png"), "--caption", "we lost him yesterday"])
    assert one.exit_code == 0, one.output
    answer = json.loads(one.output)
    assert "sad" in answer["predicted_emotions"] and answer["text"]["caption"] == "we lost him yesterday"
    (tmp_path / "posts.csv").write_text("path,caption\nhappy.png,we lost him yesterday\nhappy.png,\n")
    listed = CliRunner().invoke(cli.main, [*args, str(tmp_path / "posts.csv")])
    lines = [json.loads(line) for line in listed.output.splitlines()]
    assert listed.exit_code == 0 and [r["text"]["caption"] for r in lines] == ["we lost him yesterday", None]
    many = CliRunner().invoke(cli.main, [*args, str(tmp_path / "happy.png"), str(tmp_path / "happy.png"),
                                         "--caption", "x"])
    assert many.exit_code == 2 and "--caption goes with one image file" in many.output


def test_cli_embed_backfill_adds_captions_to_stored_images(tmp_path):
    from click.testing import CliRunner

    from emoreact import cli
    from synthetic import make_manifest

    source = make_manifest(tmp_path / "src", [(("happy",), "train"), (("sad",), "train")])
    common = ["--store", str(tmp_path / "store"), "--model", TINY.model, "--pretrained", "none", "--device", "cpu",
              "--workers", "0", "--no-progress"]
    assert CliRunner().invoke(cli.main, ["embed", str(source), *common]).exit_code == 0
    (tmp_path / "src" / "captions.csv").write_text("path,caption\nimg00001.jpg,so sad today\n")
    result = CliRunner().invoke(cli.main, ["embed", str(tmp_path / "src" / "captions.csv"), *common, "--backfill"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["backfill"]["images_with_words"] == 1
    with Store.open(tmp_path / "store") as store:
        assert store.text_count() == 1


@pytest.mark.long
@pytest.mark.parametrize("shape", ["tall screenshot", "page of tiny text"])
def test_a_hostile_picture_for_ocr_gets_a_bounded_answer(post_client, shape):
    import io

    from PIL import Image, ImageDraw

    from helpers import upload

    pytest.importorskip("rapidocr")
    if shape == "tall screenshot":
        image = Image.new("RGB", (800, 20_000), "white")
        pen = ImageDraw.Draw(image)
        for y in range(0, 20_000, 60):
            pen.text((20, y), f"line {y // 60}: so sad today, nothing works", fill="black")
    else:
        image = Image.new("RGB", (1200, 1200), "white")
        pen = ImageDraw.Draw(image)
        for y in range(0, 1200, 9):
            pen.text((2, y), "tiny words " * 20, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    response = post_client.post("/api/predict", data=upload(("shot.png", buffer.getvalue())))
    assert response.status_code == 200
    read = response.get_json()["results"][0]["text"]["ocr"]
    assert len(read) <= 32 and sum(len(line["text"]) for line in read) <= 1000  # OcrSettings' caps


def test_neighbours_of_a_captioned_post_work_as_for_any_image(post_client, post_store):
    with Store.open(post_store) as store:
        captioned = next(i for i, t in zip(store.live_ids().tolist(), store.texts(store.live_ids().tolist())) if t)
    response = post_client.get(f"/api/neighbours?id={captioned}&k=3")
    assert response.status_code == 200 and len(response.get_json()["neighbours"]) == 3


def test_the_zero_shot_prior_reaches_the_text_head_too(post_store, tmp_path):
    train(post_store, tmp_path / "head", head="linear", device="cpu", zero_shot_prior=True, search=False)
    head = EmotionHead.load(tmp_path / "head")
    assert head.reads_text and head.prior_ is not None and head.text_head_.prior_ is not None
