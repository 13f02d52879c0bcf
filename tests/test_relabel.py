"""Relabelling stored images by path or SHA-256 without re-embedding (`label` command, `Store.relabel`)."""
import contextlib
import json
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from emoreact.index import Relabel, Store


@pytest.fixture
def store_copy(store_path, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    return copy


def _snapshot(root):
    with Store.open(root, with_index=False) as store:
        items = {it.id: it for it in store.items()}
    with contextlib.closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        fixed = dict(conn.execute("SELECT id, split_fixed FROM images").fetchall())
    return items, fixed


def test_relabel_changes_only_what_it_names(store_copy, tmp_path):
    from emoreact.cli import main

    before, fixed_before = _snapshot(store_copy)
    shards = {p.name: p.read_bytes() for p in (store_copy / "vectors").iterdir()}
    a, b, c = before[3], before[10], before[20]
    new_labels = "sad|happy" if a.labels != ("happy", "sad") else "angry"
    new_split = "test" if b.split != "test" else "train"
    manifest = tmp_path / "fixes.csv"
    manifest.write_text("path,sha256,labels,split\n"
                        f"{os.path.relpath(a.path, tmp_path)},,{new_labels},\n"  # relative to the manifest
                        f",{b.sha256.upper()},{'|'.join(b.labels or [])},{new_split}\n"  # by hash, split only
                        f"{c.path},,{'|'.join(c.labels or [])},\n"  # as stored already
                        f"{tmp_path / 'never-embedded.jpg'},,happy,\n")
    result = CliRunner().invoke(main, ["label", "--store", str(store_copy), str(manifest)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"changed": 2, "unchanged": 1, "unknown": 1}
    after, fixed_after = _snapshot(store_copy)
    stored_order = tuple(l for l in ("happy", "sad", "angry") if l in new_labels.split("|"))
    assert after[a.id].labels == stored_order and after[a.id].split == a.split
    assert after[b.id].split == new_split and after[b.id].labels == b.labels and fixed_after[b.id] == 1
    untouched = set(before) - {a.id, b.id}
    assert all(after[i] == before[i] and fixed_after[i] == fixed_before[i] for i in untouched)
    assert {p.name: p.read_bytes() for p in (store_copy / "vectors").iterdir()} == shards  # nothing re-embedded
    assert len(Store.open(store_copy)) == len(before)  # still opens for serving, index and all


def test_a_bad_label_names_the_label_and_the_known_ones_and_changes_nothing(store_copy, tmp_path):
    from emoreact.cli import main

    before, _ = _snapshot(store_copy)
    manifest = tmp_path / "fixes.jsonl"
    first = before[0]
    manifest.write_text(json.dumps({"path": first.path, "labels": ["angry"]}) + "\n"
                        + json.dumps({"sha256": before[1].sha256, "labels": "happy|joyous"}) + "\n")
    result = CliRunner().invoke(main, ["label", "--store", str(store_copy), str(manifest)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unknown label 'joyous'" in result.output and "'happy', 'sad'" in result.output
    assert _snapshot(store_copy)[0] == before


def test_relabel_clears_labels_keeps_them_without_a_column_and_last_entry_wins(store_copy):
    store = Store.open_for_writing(store_copy)
    try:
        items = store.items()
        x = next(it for it in items if it.labels)
        y = next(it for it in items if it.id != x.id and it.split != "val" and it.labels != ("fear",))
        counts = store.relabel([Relabel(x.path, labels=()),  # unlabelled
                                Relabel(y.sha256, "sha256", split="val"),  # labels left alone
                                Relabel(y.sha256, "sha256", labels=("fear",)),
                                Relabel(y.sha256, "sha256", labels=("fear",))])  # nothing left to change
        assert counts == {"changed": 3, "unchanged": 1, "unknown": 0}
        got = {it.id: it for it in store.items([x.id, y.id])}
        assert got[x.id].labels is None and got[y.id].labels == ("fear",) and got[y.id].split == "val"
        with pytest.raises(ValueError, match="split 'holdout' is not one of"):
            store.relabel([Relabel(x.path, split="holdout")])
    finally:
        store.close()


def test_a_bad_manifest_is_a_clear_error(store_copy, tmp_path):
    from emoreact.cli import main

    manifest = tmp_path / "fixes.csv"
    manifest.write_text("file,labels\na.jpg,happy\n")
    result = CliRunner().invoke(main, ["label", "--store", str(store_copy), str(manifest)])
    assert result.exit_code == 1 and "the header names none of path, sha256" in result.output


def test_relabel_waits_for_no_one_unless_asked(store_copy, tmp_path):
    import emoreact
    from emoreact import StoreError

    (tmp_path / "fixes.csv").write_text("sha256,labels\nabc,happy\n")
    holder = Store.open_for_writing(store_copy)
    try:
        with pytest.raises(StoreError, match="is being written by pid"):
            emoreact.relabel(store_copy, tmp_path / "fixes.csv")
    finally:
        holder.close()
    assert emoreact.relabel(store_copy, tmp_path / "fixes.csv") == {"changed": 0, "unchanged": 0, "unknown": 1}
