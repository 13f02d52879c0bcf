"""The post set of `bench posts` (emoreact.postset): deterministic files, the four slices and their
labels, disjoint phrase lists, a manifest the embed job reads, word accuracy's rule, the tower's words."""
import csv
import hashlib
import re

import pytest

from emoreact.postset import (EMOTIONS, MANIFEST_COLUMNS, SLICES, known_words, load_phrases, make_posts,
                                       measure_ocr, ocr_word_accuracy, text_tower_words)
from emoreact.embed import read_source
from emoreact.labels import load_label_config


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    out = tmp_path_factory.mktemp("posts")
    return out, make_posts(out, seed=0, per_slice=12)


def _digests(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_the_same_files_and_another_seed_others(tmp_path):
    rows = make_posts(tmp_path / "first", seed=0, per_slice=3)
    again = make_posts(tmp_path / "again", seed=0, per_slice=3)
    assert again == rows and _digests(tmp_path / "again") == _digests(tmp_path / "first")
    other = make_posts(tmp_path / "other", seed=1, per_slice=3)
    assert [r["path"] for r in other] == [r["path"] for r in rows]  # the same names...
    assert _digests(tmp_path / "other") != _digests(tmp_path / "first")  # ...other posts


def test_each_slice_puts_the_emotion_where_it_says(posts):
    _, rows = posts
    phrases = load_phrases("test")
    emotional = {p for e in EMOTIONS for p in phrases[e]}
    by_slice = {s: [r for r in rows if r["slice"] == s] for s in SLICES}
    assert all(len(group) == 12 for group in by_slice.values())
    for row in by_slice["picture"]:  # an emoji of an emotion, no words of one
        assert row["picture"].startswith("openmoji/") and not row["drawn_text"] and not row["word_labels"]
        assert row["caption"] in ("", *phrases["neutral"]) and row["labels"] == row["picture_labels"]
    for row in by_slice["caption"]:  # a neutral picture, the emotion in the caption field only
        assert not row["drawn_text"] and row["caption"] in phrases[row["labels"]] and not row["picture_labels"]
    for row in by_slice["drawn"]:  # a neutral picture, the emotion drawn on it only
        assert row["caption"] == "" and row["drawn_text"] in phrases[row["labels"]] and not row["picture_labels"]
    assert {r["picture"] == "plain" for r in by_slice["caption"] + by_slice["drawn"]} == {True, False}
    assert {r["labels"] for r in by_slice["caption"]} == set(EMOTIONS)  # every emotion, evenly
    order = load_label_config().names
    agreeing = 0
    for row in by_slice["both"]:  # the union of the picture's and the words' emotions
        words = row["caption"] or row["drawn_text"]
        assert words in emotional and bool(row["caption"]) != bool(row["drawn_text"])
        union = set(row["picture_labels"].split("|")) | {row["word_labels"]}
        assert row["labels"].split("|") == sorted(union, key=order.index)
        agreeing += row["word_labels"] in row["picture_labels"].split("|")
    assert 0 < agreeing < 12  # some agree, some conflict
    assert {bool(r["caption"]) for r in by_slice["both"]} == {True, False}  # words in the caption, or drawn


def test_the_manifest_is_read_by_the_embed_jobs_reader_with_its_caption_column(posts):
    out, rows = posts
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS and "caption" in reader.fieldnames
        assert list(reader) == rows
    records = read_source(out / "manifest.csv", load_label_config())
    assert len(records) == len(rows) and all(r.path.is_file() and r.split == "test" for r in records)
    assert [r.labels for r in records] == [tuple(row["labels"].split("|")) for row in rows]


def test_the_test_phrases_are_disjoint_from_the_training_phrases():
    def norm(phrase):
        return " ".join(re.findall(r"[a-z0-9]+", phrase.lower().replace("'", "")))

    test, train = load_phrases("test"), load_phrases("train")
    test_set = {norm(p) for ps in test.values() for p in ps}
    train_set = {norm(p) for ps in train.values() for p in ps}
    assert test_set and train_set and not test_set & train_set
    assert set(test) == set(train) == {*EMOTIONS, "neutral"}
    assert {"so sad", "i hate this", "eww", "we lost him yesterday"} <= test_set  # the examples
    with pytest.raises(ValueError, match="choose test or train"):
        load_phrases("val")


def test_training_posts_use_the_other_art_styles_and_training_phrases(tmp_path):
    rows = make_posts(tmp_path, seed=0, per_slice=2, phrases="train")
    train = {p for ps in load_phrases("train").values() for p in ps}
    assert all(r["split"] == "train" for r in rows)
    assert all(r["picture"] == "plain" or r["picture"].split("/")[0] in ("google", "twitter") for r in rows)
    assert all(w in train for r in rows for w in (r["caption"], r["drawn_text"]) if w)


@pytest.mark.parametrize("expected, read, ignored, strict", [
    (["so sad"], ["SO SAD"], 1.0, 1.0),  # case
    (["on the first try"], ["ONTHE FIRSTTRY :("], 1.0, 0.0),  # dropped spaces
    (["i'm so mad"], ["IM SO MAD"], 1.0, 1.0),  # apostrophes
    (["i hate this"], ["hate this"], 2 / 3, 2 / 3),  # a missed word
    (["we lost him yesterday"], ["we lost\nhim yesterdav"], 0.75, 0.75),  # a misread word
    (["eww", "so sad"], ["", "so sad"], 2 / 3, 2 / 3),  # totals over texts
    (["sad sad"], ["sad"], 0.5, 0.5),  # a word read once counts once
])
def test_word_accuracy_follows_its_stated_rule(expected, read, ignored, strict):
    assert ocr_word_accuracy(expected, read) == pytest.approx(ignored)
    assert ocr_word_accuracy(expected, read, spaces="strict") == pytest.approx(strict)


def test_word_accuracy_refuses_unequal_lists_and_unknown_rules():
    with pytest.raises(ValueError):
        ocr_word_accuracy(["a b"], [])
    with pytest.raises(ValueError, match="ignored or strict"):
        ocr_word_accuracy(["a"], ["a"], spaces="loose")


def test_known_words_are_those_the_text_tower_trained_on():
    vocabulary = text_tower_words()
    assert len(vocabulary) > 3000 and {"cry", "sad", "rage", "vomit", "joy", "scream"} <= vocabulary
    found = known_words(["So sad", "EWW", "we lost him yesterday", "can't"])
    assert "sad" in found["known"] and "eww" in found["unknown"] and "yesterday" in found["unknown"]
    assert set(found["known"]).isdisjoint(found["unknown"])


@pytest.mark.long
def test_the_drawn_words_are_read_back_by_ocr(posts):
    pytest.importorskip("rapidocr", reason="the ocr extra is not installed")
    from emoreact.embed import ocr_reader

    out, rows = posts
    drawn = [r for r in rows if r["slice"] == "drawn"][:6]
    report = measure_ocr(drawn, out, ocr_reader("on"))
    assert report["images"] == 6 and report["word_accuracy"] >= 0.9
    assert report["ms_p50"] > 0 and report["ms_p95"] >= report["ms_p50"] and 0 <= report["within_budget"] <= 1


def test_measuring_no_drawn_posts_says_so():
    assert measure_ocr([{"drawn_text": ""}], ".", reader=None) == {"images": 0}
