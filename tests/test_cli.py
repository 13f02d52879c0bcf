"""The CLI, through click's runner: every command, and clear one-line errors."""
import json

import pytest
from click.testing import CliRunner

from emoreact import cli
from conftest import TINY_MODEL
from synthetic import draw, make_labelled_folder


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store and head built through the CLI from a labelled folder."""
    root = tmp_path_factory.mktemp("cli")
    make_labelled_folder(root / "src", ["happy", "sad", "angry", "fear"], per_label=25)
    runner = CliRunner()
    embedded = runner.invoke(cli.main, ["embed", str(root / "src"), "--store", str(root / "store"),
                                        "--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu",
                                        "--workers", "0", "--no-progress", "--near-duplicate-threshold", "off"])
    assert embedded.exit_code == 0, embedded.output
    trained = runner.invoke(cli.main, ["train", "--store", str(root / "store"), "--out", str(root / "head"),
                                       "--epochs", "30", "--zero-shot-prior", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    return root, json.loads(embedded.output), json.loads(trained.output)


def test_info_reports_versions_and_models(runner):
    result = runner.invoke(cli.main, ["info"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert {"torch", "open_clip", "faiss", "cuda", "bf16", "device"} <= set(data)
    assert "ViT-B-32" in data["models"] and "ViT-L-14" in data["models"]


def test_setting_options_take_their_defaults_from_the_config_classes():
    """Each option named after a config field is that field, default included (written once, in the config)."""
    import dataclasses

    from emoreact.heads import HeadConfig
    from emoreact.web import WebConfig

    for command, config in (("train", HeadConfig), ("serve", WebConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        shared = [p for p in cli.main.commands[command].params if p.name in defaults]
        assert len(shared) >= 9, [p.name for p in shared]
        for param in shared:
            assert param.default == defaults[param.name], (command, param.name)
    serve = {p.name: p for p in cli.main.commands["serve"].params}
    assert serve["max_upload_mb"].default * 1024 * 1024 == WebConfig().max_upload_bytes


def test_serve_hands_its_settings_to_the_app_as_one_web_config(runner, tmp_path, monkeypatch):
    from emoreact import web
    from emoreact.web import WebConfig

    given = []

    def create_app(config):
        given.append(config)
        raise SystemExit(3)

    monkeypatch.setattr(web, "create_app", create_app)
    keys = tmp_path / "keys.txt"
    keys.write_text("alice:secret\n")
    result = runner.invoke(cli.main, ["serve", "--store", str(tmp_path), "--head", str(tmp_path), "--k", "7",
                                      "--unsure-above", "0.5", "--api-keys", str(keys), "--max-upload-mb", "2"])
    assert result.exit_code == 3, result.output
    [config] = given
    assert config == WebConfig(store=tmp_path, head=tmp_path, k_default=7, unsure_above=0.5, api_keys=keys,
                               max_upload_bytes=2 * 1024 * 1024)


def test_train_a_zero_shot_head_reads_no_training_labels(built, runner, tmp_path):
    root, _, _ = built
    result = runner.invoke(cli.main, ["train", "--store", str(root / "store"), "--out", str(tmp_path / "zs"),
                                      "--head", "zeroshot", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "zs" / "manifest.json").read_text())["config"]["kind"] == "zeroshot"
    assert "macro_f1" in json.loads(result.output)


def test_embed_and_train_report_json(built):
    _, embedded, trained = built
    assert embedded["added"] == 100 and embedded["skipped"] == 0
    assert trained["split"] in ("test", "val") and 0 <= trained["macro_f1"] <= 1
    assert set(trained["per_label_f1"]) >= {"happy", "sad"}


def test_embed_again_adds_nothing(built, runner):
    root, _, _ = built
    result = runner.invoke(cli.main, ["embed", str(root / "src"), "--store", str(root / "store"), "--model",
                                      TINY_MODEL, "--pretrained", "none", "--workers", "0", "--no-progress",
                                      "--near-duplicate-threshold", "off"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["added"] == 0 and json.loads(result.output)["already_present"] == 100


def test_evaluate_writes_a_report(built, runner, tmp_path):
    root, _, _ = built
    result = runner.invoke(cli.main, ["evaluate", "--store", str(root / "store"), "--head", str(root / "head"),
                                      "--split", "train", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["split"] == "train"
    assert (tmp_path / "metrics_train.json").exists() and (tmp_path / "per_label_f1.png").exists()


def test_predict_prints_one_json_line_per_image(built, runner, tmp_path):
    root, _, _ = built
    paths = []
    for n, label in enumerate(("happy", "sad")):
        paths.append(tmp_path / f"{label}.png")
        draw((label,), seed=77_000 + n).save(paths[-1])
    result = runner.invoke(cli.main, ["predict", *map(str, paths), "--store", str(root / "store"),
                                      "--head", str(root / "head"), "--k", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    for line in lines:
        assert {"predicted_emotions", "emotion_scores", "allowed_emojis", "blocked_emojis", "neighbours"} <= set(line)
        assert len(line["neighbours"]) == 3
        assert {"id", "path", "labels", "similarity"} <= set(line["neighbours"][0])


def test_neighbours_lists_nearest_images(built, runner):
    root, _, _ = built
    query = sorted((root / "src" / "sad").iterdir())[0]
    result = runner.invoke(cli.main, ["neighbours", str(query), "--store", str(root / "store"), "--k", "4"])
    assert result.exit_code == 0, result.output
    near = json.loads(result.output)["neighbours"]
    assert near[0]["path"] == "sad/" + query.name and near[0]["similarity"] > 0.99  # relative to the source
    assert len(near) == 4


@pytest.mark.parametrize("args, words", [
    (["embed", "{tmp}", "--store", "{tmp}/s", "--model", "ViT-B-99", "--pretrained", "none"], "unknown model 'ViT-B-99'"),
    (["train", "--store", "{tmp}", "--out", "{tmp}/h"], "is not an EmoReact store"),
    (["predict", "{tmp}/x.png", "--store", "{tmp}", "--head", "{tmp}"], "is not an EmoReact store"),
])
def test_errors_are_one_clear_line_without_traceback(runner, tmp_path, args, words):
    (tmp_path / "x.png").write_bytes(b"")
    result = runner.invoke(cli.main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert words in result.output and "Traceback" not in result.output


def test_predict_reports_a_bad_image_and_exits_non_zero(built, runner, tmp_path):
    root, _, _ = built
    (tmp_path / "fake.jpg").write_text("not an image")
    result = runner.invoke(cli.main, ["predict", str(tmp_path / "fake.jpg"), "--store", str(root / "store"),
                                      "--head", str(root / "head")])
    assert result.exit_code == 1
    assert "not an image" in json.loads(result.output.splitlines()[0])["error"]


def test_python_dash_m_emoreact_is_the_same_cli(monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["emoreact", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("emoreact", run_name="__main__")
    assert done.value.code == 0
    helped = capsys.readouterr().out
    assert helped.startswith("Usage: emoreact") and all(f"  {name} " in helped for name in cli.main.commands)
