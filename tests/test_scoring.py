"""Batch scoring of stored vectors (`score`) and `predict` over a folder or manifest into a file."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from emoreact.heads import EmotionHead, emoji_policy
from emoreact.index import Store
from emoreact.labels import parse_label_config

from synthetic import draw


@pytest.fixture(scope="module")
def weighted_policy(label_config):
    """The default policy with reaction weights, so that the ranking of allowed emojis is exercised."""
    return parse_label_config(label_config.text.replace('# "🤍" = 0.8', '"🤍" = 0.8\n"👍" = 1.6\n"😂" = 0.4'))


def _predictor_rows(store_path, head, backbone):
    """What the predictor answers, image by image, for every stored vector (the reference)."""
    from emoreact.predictor import Predictor

    store = Store.open(store_path, with_index=False)
    vectors, items = store.vectors(), store.items()
    store.close()
    results = Predictor(backbone, None, head).predict_vectors(vectors[[it.id for it in items]],
                                                             [it.path for it in items], k=0)
    return {it.id: r for it, r in zip(items, results)}


def test_score_writes_what_the_predictor_answers_for_every_stored_image(store_path, trained, backbone, tmp_path,
                                                                        weighted_policy):
    import emoreact

    summary = emoreact.score(store_path, trained[0], tmp_path / "preds.parquet", labels=weighted_policy,
                             batch_rows=100)
    emoreact.score(store_path, trained[0], tmp_path / "preds.jsonl", labels=weighted_policy)
    expected = _predictor_rows(store_path, EmotionHead.load(trained[0]).with_policy(weighted_policy), backbone)
    table = pq.read_table(tmp_path / "preds.parquet")
    assert summary["rows"] == table.num_rows == len(expected) == 640
    assert table.schema.names == ["id", "path", "split", "emotion_scores", "predicted_emotions", "allowed_emojis",
                                  "reaction_scores", "blocked_emojis"]
    assert pq.ParquetFile(tmp_path / "preds.parquet").num_row_groups == 7  # one per block of 100
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    for row, line in zip(table.to_pylist(), lines):
        want = expected[row["id"]]
        assert line["id"] == row["id"] and row["path"] == line["path"] == want["image"]
        for got in (row, line):
            assert got["predicted_emotions"] == want["predicted_emotions"]
            assert got["allowed_emojis"] == want["allowed_emojis"]
            assert got["blocked_emojis"] == want["blocked_emojis"]
        assert line["emotion_scores"] == want["emotion_scores"] and line["reaction_scores"] == want["reaction_scores"]
        assert {k: round(v, 4) for k, v in row["emotion_scores"].items()} == want["emotion_scores"]
        assert dict(row["reaction_scores"]) == pytest.approx(want["reaction_scores"], abs=1e-4)
    # The weights reorder some images' emojis: the ranking was compared, not only the sets.
    assert any(want["allowed_emojis"] != emoji_policy(want["predicted_emotions"], weighted_policy)[0]
               for want in expected.values())


def test_score_of_one_split_and_without_removed_images(store_path, trained, tmp_path):
    import emoreact

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    store = Store.open(copy, with_index=False)
    test_ids = [it.id for it in store.items() if it.split == "test"]
    store.close()
    writer = Store.open_for_writing(copy)
    writer.remove(test_ids[:3], reason="takedown", by="test")
    writer.close()
    emoreact.score(copy, trained[0], tmp_path / "test.jsonl", "test")
    scored = [json.loads(line)["id"] for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert scored == test_ids[3:]


def test_score_cli_prints_a_summary_and_refuses_a_bad_output_name(store_path, trained, tmp_path):
    from emoreact.cli import main

    result = CliRunner().invoke(main, ["score", "--store", str(store_path), "--head", str(trained[0]),
                                       "--out", str(tmp_path / "p.parquet"), "--split", "val", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == pq.read_metadata(tmp_path / "p.parquet").num_rows > 0
    bad = CliRunner().invoke(main, ["score", "--store", str(store_path), "--head", str(trained[0]),
                                    "--out", str(tmp_path / "p.csv")])
    assert bad.exit_code == 1 and "must end in .parquet or .jsonl" in bad.output
    assert not (tmp_path / "p.csv").exists() and "Traceback" not in bad.output


def test_predict_a_folder_into_a_file_batch_by_batch(store_path, trained, tmp_path):
    from emoreact.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for n, label in enumerate(["happy", "sad", "angry", "fear", "surprise"]):
        draw((label,), seed=777 + n).save(folder / f"{n}.png")
    (folder / "notes.jpg").write_bytes(b"not an image")
    for name in ("out.jsonl", "out.parquet"):
        result = CliRunner().invoke(main, ["predict", str(folder), "--store", str(store_path), "--head",
                                           str(trained[0]), "--out", str(tmp_path / name), "--batch-size", "2",
                                           "--k", "2", "--device", "cpu", "--no-progress"])
        assert result.exit_code == 1, result.output  # one file is not an image
        assert json.loads(result.output.strip().splitlines()[-1]) == {"images": 6, "errors": 1,
                                                                      "out": str(tmp_path / name)}
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [l["image"] for l in lines] == [r["image"] for r in rows] == sorted(str(p) for p in folder.iterdir())
    bad = next(r for r in rows if r["error"])
    assert bad["image"].endswith("notes.jpg") and bad["predicted_emotions"] is None
    good = [(l, r) for l, r in zip(lines, rows) if "error" not in l]
    assert all(l["predicted_emotions"] == r["predicted_emotions"] and len(r["neighbours"]) == 2 for l, r in good)
    assert np.allclose([r["novelty"] for _, r in good], [l["novelty"] for l, _ in good], atol=1e-4)


def test_predict_proba_in_place_gives_the_same_scores(store_path, trained):
    head = EmotionHead.load(trained[0])
    store = Store.open(store_path, with_index=False)
    x = next(store.blocks()).vectors
    store.close()
    own = x.copy()
    assert np.array_equal(head.predict_proba(own, overwrite_x=True), head.predict_proba(x))
    assert not np.array_equal(own, x)  # it was standardised in place; x itself is untouched by default
