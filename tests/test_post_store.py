"""A post's words in the store: captions read from manifests, cleaned by one rule, encoded by the text tower
into the `text` vector set beside the image's vector, kept through resume and merge, zeroed by removal."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_EMBED, TINY
from emoreact import embed_source
from emoreact.embed import MAX_CAPTION_CHARS, SourceError, clean_caption, has_words, read_source, text_vectors
from emoreact.index import Store
from emoreact.index.migrations import VERSION
from emoreact.labels import load_label_config
from synthetic import PHRASES, make_manifest, make_post_manifest


def _posts(count, seed=0):
    """(picture labels, caption, post labels, split) posts: every other one has a caption."""
    labels = list(PHRASES)
    out = []
    for n in range(count):
        label = labels[n % len(labels)]
        caption = PHRASES[label][n % 2] if n % 2 == 0 else None
        out.append((("neutral",), caption, (label,) if caption else ("neutral",), "train"))
    return out


@pytest.mark.parametrize("raw, cleaned", [
    (None, None), ("", None), ("   \t\n ", None),
    ("  so\tsad \n today  ", "so sad today"),
    ("bell\x07 and\x00nul", "bell and nul"),
    ("zero\u200bwidth\ufeff", "zero width"),
    ("😂👨‍👩‍👧 family", "😂👨‍👩‍👧 family"),  # emoji sequences keep their joiners
    ("Cafe\u0301 日本語 مرحبا", "Café 日本語 مرحبا"),  # NFC; every script kept
])
def test_a_caption_is_cleaned_by_one_stated_rule(raw, cleaned):
    assert clean_caption(raw) == cleaned


def test_a_caption_of_megabytes_is_cut_to_the_stated_length():
    cleaned = clean_caption("sad " * 1_000_000)
    assert len(cleaned) <= MAX_CAPTION_CHARS and cleaned.startswith("sad sad")


def test_text_vectors_pool_caption_and_read_text_and_leave_posts_without_words_zero(backbone):
    vectors = text_vectors(backbone.encode_texts, backbone.dim, ["so sad", None, None, "so sad"],
                           [None, "eww", None, "eww"])
    sad, eww = (backbone.encode_texts([t]).numpy()[0] for t in ("so sad", "eww"))
    assert vectors.shape == (4, backbone.dim) and has_words(vectors).tolist() == [True, True, False, True]
    assert np.allclose(vectors[0], sad, atol=1e-5) and np.allclose(vectors[1], eww, atol=1e-5)
    pooled = (sad + eww) / np.linalg.norm(sad + eww)
    assert np.allclose(vectors[3], pooled, atol=1e-5) and not vectors[2].any()


def test_a_caption_longer_than_the_text_towers_context_is_truncated_not_refused(backbone):
    words = " ".join(["sad"] * 500)
    long, capped = text_vectors(backbone.encode_texts, backbone.dim, [words, " ".join(["sad"] * 200)], [None, None])
    assert np.allclose(long, capped, atol=1e-5)  # both cut at the context: the first words count


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifests_give_their_caption_column_cleaned(tmp_path, suffix):
    source = make_post_manifest(tmp_path / "posts", [(("happy",), "  best\tday ever ", ("happy",), "train"),
                                                     (("sad",), "", ("sad",), None)], suffix=suffix)
    records = read_source(source, load_label_config())
    assert [r.caption for r in records] == ["best day ever", None]


def test_embedding_posts_stores_their_words_and_text_vectors_beside_the_images(tmp_path, backbone):
    source = make_post_manifest(tmp_path / "posts", _posts(12))
    store = tmp_path / "store"
    report = embed_source(source, store, TINY, device="cpu", config=FAST_EMBED)
    assert report.added == 12
    with Store.open(store) as opened:
        ids = opened.live_ids()
        texts = opened.texts(ids.tolist())
        vectors = opened.text_vectors_of(ids)
        assert opened.has_texts and opened.text_count() == 6
        assert [t["caption"] if t else None for t in texts] == [p[1] for p in _posts(12)]
        assert has_words(vectors).tolist() == [p[1] is not None for p in _posts(12)]
        expected = backbone.encode_texts([_posts(12)[0][1]]).numpy()[0]
        assert np.allclose(vectors[0], expected, atol=2e-3)  # stored as float16
        assert opened.manifest["vector_sets"]["text"] == {"dim": backbone.dim, "folder": "vectors-text"}


def test_a_source_without_captions_writes_no_text_shards(tmp_path):
    source = make_manifest(tmp_path / "plain", [(("happy",), "train")] * 4)
    embed_source(source, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    assert not list((tmp_path / "store" / "vectors-text").glob("*.npy"))
    with Store.open(tmp_path / "store") as store:
        assert store.text_count() == 0 and not store.text_vectors_of(store.live_ids()).any()


def test_removal_zeroes_an_images_text_vector_and_forgets_its_words(tmp_path):
    source = make_post_manifest(tmp_path / "posts", _posts(6))
    embed_source(source, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    with Store.open_for_writing(tmp_path / "store") as store:
        store.remove([0], "test", "tests")
    with Store.open(tmp_path / "store") as store:
        assert store.texts([0]) == [None] and not store.text_vectors_of(np.array([0])).any()
        assert store.text_count() == 2 and store.texts([2])[0]["caption"] == _posts(6)[2][1]


def test_a_resumed_job_adds_the_rest_with_their_words(tmp_path):
    posts = _posts(10)
    first = make_post_manifest(tmp_path / "a", posts[:4])
    embed_source(first, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    second = make_post_manifest(tmp_path / "b", posts, seed=0)  # same files again, and more
    embed_source(second, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    with Store.open(tmp_path / "store") as store:
        assert len(store) == 10 and store.text_count() == 5
        assert store.texts([8])[0]["caption"] == posts[8][1]


@pytest.mark.subprocess
def test_the_multi_device_engine_carries_captions_through_its_merge(tmp_path):
    source = make_post_manifest(tmp_path / "posts", _posts(8))
    embed_source(source, tmp_path / "store", TINY, device="cpu,cpu", config=FAST_EMBED)
    with Store.open(tmp_path / "store") as store:
        by_path = {item.path: item.id for item in store.items()}
        texts = store.texts([by_path[str(tmp_path / "posts" / f"post{n:05d}.png")] for n in range(8)])
        assert [t["caption"] if t else None for t in texts] == [p[1] for p in _posts(8)]
        assert store.text_count() == 4


def test_a_bad_caption_cell_is_a_clear_error_or_cleaned(tmp_path):
    path = tmp_path / "m.jsonl"
    (tmp_path / "x.png").write_bytes(b"")
    path.write_text(json.dumps({"path": "x.png", "caption": {"not": "text"}}) + "\n")
    with pytest.raises(SourceError, match="caption"):
        read_source(path, load_label_config())


def test_a_0_3_0_store_gets_its_captions_by_backfill_without_re_embedding(tmp_path, label_config):
    import shutil

    from emoreact.backfill import backfill_words

    root = tmp_path / "store"
    shutil.copytree(Path(__file__).parent / "fixtures" / "store-0.3.0", root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["preprocess"]["model"] = TINY.model  # the fixture names it relative to tests/
    (root / "manifest.json").write_text(json.dumps(manifest))
    with Store.open(root) as store:
        before, paths = store.vectors(), {item.id: item.path for item in store.items()}
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\n" + f"{paths[1]},we lost him yesterday\n{paths[12]},best day ever\n"
                        + f"{paths[0]},\n/elsewhere/unknown.jpg,not in the store\n")
    report = backfill_words(captions, root, label_config, device="cpu")
    assert report.to_json()["backfill"] == {"shards": 2, "images_with_words": 2, "unreadable": 0,
                                            "shards_with_words_already": 0}
    with Store.open(root) as store:
        assert store.manifest["format_version"] == VERSION and store.text_count() == 2
        np.testing.assert_array_equal(store.vectors(), before)  # no picture re-embedded
        assert [t and t["caption"] for t in store.texts([0, 1, 12])] == [None, "we lost him yesterday", "best day ever"]
        assert has_words(store.text_vectors_of(np.arange(24))).nonzero()[0].tolist() == [1, 12]
    again = backfill_words(captions, root, label_config, device="cpu")
    assert again.shards == 0 and again.left_alone == 2  # shards with words are left as they are


def test_a_backfill_with_nothing_to_add_says_what_to_give(tmp_path, label_config):
    from emoreact.backfill import backfill_words

    source = make_manifest(tmp_path / "plain", [(("happy",), "train")] * 2)
    embed_source(source, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    with pytest.raises(ValueError, match="caption.*--ocr on"):
        backfill_words(source, tmp_path / "store", label_config, device="cpu")


def _words_image(path, words):
    """Writes a white picture with `words` in large black letters (matplotlib's own DejaVu font)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"), 44)
    image = Image.new("RGB", (480, 160), "white")
    ImageDraw.Draw(image).text((20, 50), words, fill="black", font=font)
    image.save(path)


@pytest.mark.long
def test_embedding_with_ocr_on_stores_the_words_read_in_each_image(tmp_path):
    pytest.importorskip("rapidocr")
    (tmp_path / "src").mkdir()
    _words_image(tmp_path / "src" / "meme.png", "SO SAD TODAY")
    (tmp_path / "src" / "m.csv").write_text("path,caption\nmeme.png,\n")
    embed_source(tmp_path / "src" / "m.csv", tmp_path / "store", TINY, device="cpu", config=FAST_EMBED, ocr="on")
    with Store.open(tmp_path / "store") as store:
        [words] = store.texts([0])
        assert words["caption"] is None and "SO SAD" in " ".join(line["text"] for line in words["ocr"]).upper()
        assert has_words(store.text_vectors_of(np.array([0]))).all()


@pytest.mark.long
def test_a_predictor_with_ocr_on_returns_the_lines_read_with_their_boxes(tmp_path, post_store, post_heads):
    pytest.importorskip("rapidocr")
    from emoreact.predictor import load

    _words_image(tmp_path / "meme.png", "WE LOST HIM")
    with load(post_store, post_heads[0], device="cpu", ocr="on") as predictor:
        answer = predictor.predict(tmp_path / "meme.png")
    [line] = answer["text"]["ocr"]
    assert "WE LOST HIM" in line["text"].upper() and 0 < line["score"] <= 1
    assert len(line["box"]) == 4 and all(0 <= x <= 480 and 0 <= y <= 160 for x, y in line["box"])
    assert answer["channels"]["text"] is not None  # the words reached the text channel


def test_ocr_on_without_the_extra_names_it(monkeypatch, post_store, post_heads):
    import emoreact.embed.ocr as ocr
    from emoreact.embed import ModelLoadError
    from emoreact.predictor import load

    monkeypatch.setattr(ocr, "engine_problem", lambda: "rapidocr is not installed")
    with pytest.raises(ModelLoadError, match='pip install "emoreact\\[ocr\\]"'):
        load(post_store, post_heads[0], device="cpu", ocr="on")


@pytest.mark.long
def test_a_backfill_with_ocr_reads_the_words_of_stored_images_and_counts_those_gone(tmp_path, label_config):
    pytest.importorskip("rapidocr")
    from emoreact.backfill import backfill_words

    (tmp_path / "src").mkdir()
    _words_image(tmp_path / "src" / "meme.png", "I HATE MONDAYS")
    _words_image(tmp_path / "src" / "gone.png", "LOST")
    (tmp_path / "src" / "m.csv").write_text("path\nmeme.png\ngone.png\n")
    embed_source(tmp_path / "src" / "m.csv", tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    (tmp_path / "src" / "gone.png").unlink()
    report = backfill_words(None, tmp_path / "store", label_config, ocr="on", device="cpu")
    assert report.images_with_words == 1 and report.unreadable == 1
    with Store.open(tmp_path / "store") as store:
        by_path = {Path(item.path).name: item.id for item in store.items()}
        [words] = store.texts([by_path["meme.png"]])
        assert "HATE" in " ".join(line["text"] for line in words["ocr"]).upper()
        assert store.texts([by_path["gone.png"]]) == [None]
