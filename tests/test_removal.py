"""`cli.py remove` end to end: a removed image leaves no trace in search, neighbours, thumbnails, scoring,
training or a later embed, and the removal log says who, when and why."""
import json

import pytest
from click.testing import CliRunner

from conftest import TINY_MODEL
from emoreact import cli
from emoreact.index import Store
from synthetic import make_labelled_folder

EMBED = ["--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu", "--workers", "0", "--no-progress",
         "--near-duplicate-threshold", "off"]


@pytest.fixture(scope="module")
def removed_store(tmp_path_factory):
    """A store and head built through the CLI, then one image removed from the store."""
    root = tmp_path_factory.mktemp("removal")
    make_labelled_folder(root / "src", ["happy", "sad", "angry", "fear"], per_label=20)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["embed", str(root / "src"), "--store", str(root / "store"), *EMBED])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.main, ["train", "--store", str(root / "store"), "--out", str(root / "head"),
                                      "--epochs", "20", "--no-search", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    store = Store.open(root / "store")
    victim = next(it for it in store.items() if "/sad/" in it.path)  # stored absolute
    store.close()
    result = runner.invoke(cli.main, ["remove", "--store", str(root / "store"), "--id", str(victim.id),
                                      "--reason", "privacy request 7", "--by", "moderator-b"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["removed"] == 1
    return root, victim


def test_the_removal_is_logged_with_who_when_and_why(removed_store):
    root, victim = removed_store
    result = CliRunner().invoke(cli.main, ["removed", "--store", str(root / "store")])
    assert result.exit_code == 0, result.output
    [entry] = [json.loads(line) for line in result.output.splitlines()]
    assert entry["id"] == victim.id and entry["sha256"] == victim.sha256
    assert entry["removed_by"] == "moderator-b" and entry["reason"] == "privacy request 7" and entry["removed_at"]


def test_neighbours_of_its_own_file_no_longer_find_it(removed_store):
    root, victim = removed_store
    result = CliRunner().invoke(cli.main, ["neighbours", victim.path, "--store",
                                           str(root / "store"), "--k", "10"])
    assert result.exit_code == 0, result.output
    near = json.loads(result.output)["neighbours"]
    assert len(near) == 10 and victim.id not in [n["id"] for n in near]
    assert "sad/" + victim.path.rsplit("/", 1)[1] not in [n["path"] for n in near]  # shown relative to the source


def test_its_thumbnail_and_neighbours_by_id_answer_404(removed_store):
    from emoreact.web import WebConfig, create_app

    root, victim = removed_store
    app = create_app(WebConfig(store=root / "store", head=root / "head", device="cpu"))
    client = app.test_client()
    assert client.get(f"/api/images/{victim.id}/thumbnail").status_code == 404
    assert client.get(f"/api/neighbours?id={victim.id}").status_code == 404
    assert client.get(f"/api/images/{victim.id + 1}/thumbnail").status_code == 200  # its neighbour in the store is fine


def test_scoring_and_training_leave_it_out(removed_store, tmp_path):
    root, victim = removed_store
    runner = CliRunner()
    result = runner.invoke(cli.main, ["score", "--store", str(root / "store"), "--head", str(root / "head"),
                                      "--out", str(tmp_path / "preds.jsonl"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 79 and victim.id not in {r["id"] for r in rows}
    store = Store.open(root / "store", with_index=False)
    trained_on = [i for block in store.blocks() for i in block.ids.tolist()]
    store.close()
    assert victim.id not in trained_on and len(trained_on) == 79  # training reads these blocks


def test_a_later_embed_refuses_the_same_file_unless_allowed(removed_store, tmp_path):
    import shutil

    root, victim = removed_store
    copy = tmp_path / "store"
    shutil.copytree(root / "store", copy)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["embed", str(root / "src"), "--store", str(copy), *EMBED])
    assert result.exit_code == 0, result.output
    store = Store.open(copy)
    assert len(store) == 79 and victim.sha256 not in {it.sha256 for it in store.items()}
    store.close()
    result = runner.invoke(cli.main, ["embed", str(root / "src"), "--store", str(copy), "--allow-readd", *EMBED])
    assert result.exit_code == 0, result.output
    store = Store.open(copy)
    [back] = [it for it in store.items() if it.sha256 == victim.sha256]
    assert len(store) == 80 and back.id == 80  # under a new id: ids are never reused
    store.close()


def test_naming_nothing_or_an_unknown_image_is_a_clear_error(removed_store):
    root, victim = removed_store
    runner = CliRunner()
    result = runner.invoke(cli.main, ["remove", "--store", str(root / "store"), "--reason", "x"])
    assert result.exit_code != 0 and "name the images to remove" in result.output
    result = runner.invoke(cli.main, ["remove", "--store", str(root / "store"), "--id", str(victim.id),
                                      "--reason", "again"])
    assert result.exit_code == 1 and f"id:{victim.id}" in result.output and "Traceback" not in result.output


def test_a_manifest_names_images_by_id_hash_or_path_in_csv_jsonl_or_text(tmp_path):
    import hashlib

    from emoreact.bench.synthetic_store import Mixture, write_store
    from emoreact.index.removal import _read_entries

    write_store(tmp_path / "store", 300, Mixture(dim=32, clusters=8, seed=1), index="flat").close()
    sha = lambda image_id: hashlib.sha256(f"synthetic-{image_id}".encode()).hexdigest()  # noqa: E731
    (tmp_path / "a.csv").write_text("id,note\n3,dup\n5,\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"sha256": sha(7).upper()}) + "\n\n")
    (tmp_path / "c.txt").write_text(f"9\n{sha(11)}\n")
    runner = CliRunner()
    for name in ("a.csv", "b.jsonl", "c.txt"):
        result = runner.invoke(cli.main, ["remove", "--store", str(tmp_path / "store"), "--manifest",
                                          str(tmp_path / name), "--reason", "takedown"])
        assert result.exit_code == 0, result.output
    store = Store.open(tmp_path / "store", with_index=False)
    assert len(store) == 295 and {3, 5, 7, 9, 11}.isdisjoint(store.live_ids())
    store.close()
    (tmp_path / "m.txt").write_text("photos/a.jpg\n/elsewhere/b.jpg\n")  # relative to the manifest, as embed reads them
    assert _read_entries(tmp_path / "m.txt")[2] == [str(tmp_path / "photos" / "a.jpg"), "/elsewhere/b.jpg"]


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"id": 1}\n{"id": 2\n', "bad.jsonl, line 2: not valid JSON"),
    ("list.jsonl", '[1, 2]\n', "list.jsonl, line 1: expected a JSON object"),
    ("cols.csv", "image,why\n1,x\n", "cols.csv, line 1: the header names none of id, sha256, path"),
    ("word.csv", "id\n1\nseven\n", "word.csv, line 3: id 'seven' is not a whole number"),
    ("blank.csv", "id,sha256\n,\n", "blank.csv, line 2: needs an id, sha256 or path"),
])
def test_an_unreadable_removal_manifest_names_file_and_line_and_removes_nothing(tmp_path, name, text, message):
    from emoreact.bench.synthetic_store import Mixture, write_store

    write_store(tmp_path / "store", 50, Mixture(dim=32, clusters=4, seed=2), index="flat").close()
    (tmp_path / name).write_text(text)
    result = CliRunner().invoke(cli.main, ["remove", "--store", str(tmp_path / "store"), "--manifest",
                                           str(tmp_path / name), "--reason", "takedown"])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    store = Store.open(tmp_path / "store", with_index=False)
    assert len(store) == 50
    store.close()
