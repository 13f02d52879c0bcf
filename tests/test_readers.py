"""Readers: every supported layout on a tiny fixture, mapped to our labels."""
import csv
import json

import pytest

from emoreact.embed import Record, SourceError, detect_format, read_source
from emoreact.heads import ConfigError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_with_label_subfolders(tmp_path, label_config):
    touch(tmp_path / "happy" / "a.jpg")
    touch(tmp_path / "sad" / "b.png")
    records = read_source(tmp_path, label_config)
    assert records == [Record(tmp_path / "happy" / "a.jpg", ("happy",)), Record(tmp_path / "sad" / "b.png", ("sad",))]


def test_flat_folder_is_unlabelled(tmp_path, label_config):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "nested" / "b.jpg")
    assert [r.labels for r in read_source(tmp_path, label_config)] == [None, None]


def test_unknown_label_folder_names_the_fix(tmp_path, label_config):
    touch(tmp_path / "bliss" / "a.jpg")
    with pytest.raises(ConfigError, match=r"bliss.*\[datasets.mikels\]"):
        read_source(tmp_path, label_config)


def test_fi_layout_maps_mikels_emotions(tmp_path, label_config):
    for emotion in ("amusement", "awe", "sadness", "contentment"):
        touch(tmp_path / emotion / f"{emotion}_1.jpg")
    records = read_source(tmp_path, label_config, "fi")
    assert {r.path.name: r.labels for r in records} == {
        "amusement_1.jpg": ("happy",), "awe_1.jpg": ("surprise",), "sadness_1.jpg": ("sad",),
        "contentment_1.jpg": ("happy",)}


@pytest.mark.parametrize("four_fields", [False, True])
def test_emoset_accepts_three_and_four_field_records(tmp_path, label_config, four_fields):
    (tmp_path / "image").mkdir()
    (tmp_path / "info.json").write_text("{}")
    for split, emotion in (("train", "anger"), ("val", "awe"), ("test", "fear")):
        record = [emotion, f"image/{emotion}/{emotion}_1.jpg", f"annotation/{emotion}/{emotion}_1.json"]
        if four_fields:
            record.insert(1, f"{emotion}_1")
        (tmp_path / f"{split}.json").write_text(json.dumps([record]))
    assert detect_format(tmp_path) == "emoset"
    records = read_source(tmp_path, label_config)
    assert [(r.labels, r.split, r.path.name) for r in records] == [
        (("angry",), "train", "anger_1.jpg"), (("surprise",), "val", "awe_1.jpg"), (("fear",), "test", "fear_1.jpg")]


def test_emoset_bad_record_names_file_and_record(tmp_path, label_config):
    (tmp_path / "image").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps([["anger"]]))
    with pytest.raises(SourceError, match=r"train.json, record 0"):
        read_source(tmp_path, label_config)


def test_emotion6_gives_multi_label_targets(tmp_path, label_config):
    rows = [["[image_filename]", "[valence]", "[arousal]", "[prob. anger]", "[prob. disgust]", "[prob. fear]",
             "[prob. joy]", "[prob. sadness]", "[prob. surprise]", "[prob. neutral]"],
            ["fear/1.jpg", "3.1", "6.2", "0.0", "0.1", "0.5", "0.0", "0.0", "0.4", "0.0"],
            ["joy/2.jpg", "7.0", "5.0", "0.0", "0.0", "0.0", "0.9", "0.0", "0.1", "0.0"]]
    with (tmp_path / "ground_truth.txt").open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows(rows)
    records = read_source(tmp_path, label_config)
    assert [(r.path.relative_to(tmp_path).as_posix(), r.labels) for r in records] == [
        ("images/fear/1.jpg", ("fear", "surprise")), ("images/joy/2.jpg", ("happy",))]


def test_affectnet_maps_codes_and_drops_uncertain(tmp_path, label_config):
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    (lists / "training.csv").write_text(header + '1/a.jpg,0,0,10,10,"1;2",6,0.1,0.2\n2/b.jpg,0,0,10,10,"1;2",9,0,0\n')
    (lists / "validation.csv").write_text(header + '3/c.jpg,0,0,10,10,"1;2",7,0.1,0.2\n')
    records = read_source(tmp_path, label_config)
    assert [(r.path.name, r.labels, r.split) for r in records] == [("a.jpg", ("angry",), None),
                                                                   ("c.jpg", ("disgust",), "test")]


def test_csv_and_jsonl_manifests(tmp_path, label_config):
    (tmp_path / "m.csv").write_text("path,labels,split\na.jpg,happy|surprise,train\nb.jpg,,\n")
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "labels": ["surprise", "happy"], "split": "val"}\n')
    csv_records = read_source(tmp_path / "m.csv", label_config)
    assert [(r.labels, r.split) for r in csv_records] == [(("happy", "surprise"), "train"), (None, None)]
    [jsonl] = read_source(tmp_path / "m.jsonl", label_config)
    assert jsonl == Record(tmp_path / "a.jpg", ("happy", "surprise"), "val")


def test_manifest_errors_name_the_line(tmp_path, label_config):
    (tmp_path / "m.csv").write_text("path,labels\na.jpg,happy\nb.jpg,joyous\n")
    with pytest.raises(ConfigError, match=r"m.csv, line 3: unknown label 'joyous'"):
        read_source(tmp_path / "m.csv", label_config)
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg"}\n{oops\n')
    with pytest.raises(SourceError, match=r"m.jsonl, line 2"):
        read_source(tmp_path / "m.jsonl", label_config)


def test_missing_source_is_a_clear_error(tmp_path, label_config):
    with pytest.raises(SourceError, match="does not exist"):
        read_source(tmp_path / "nope", label_config)


def test_one_image_at_a_labelled_folder_root_warns_that_labels_are_dropped_and_how_to_fix(tmp_path, label_config,
                                                                                         caplog):
    touch(tmp_path / "happy" / "a.jpg")
    touch(tmp_path / "sad" / "b.png")
    touch(tmp_path / "stray.jpg")
    with caplog.at_level("WARNING", logger="emoreact.embed.readers"):
        records = read_source(tmp_path, label_config)
    assert [r.labels for r in records] == [None, None, None]
    assert "stray.jpg" in caplog.text and "UNLABELLED" in caplog.text and "move the top-level images" in caplog.text


def test_records_have_absolute_paths_and_the_source_root_is_where_they_are_relative_to(tmp_path, label_config,
                                                                                       monkeypatch):
    from emoreact.embed import source_root

    touch(tmp_path / "data" / "a.jpg")
    (tmp_path / "data" / "m.csv").write_text("path,labels\na.jpg,happy\n")
    monkeypatch.chdir(tmp_path)
    assert read_source("data/m.csv", label_config) == [Record(tmp_path / "data" / "a.jpg", ("happy",))]
    assert source_root("data/m.csv") == source_root("data") == tmp_path / "data"
