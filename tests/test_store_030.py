"""A store written by EmoReact 0.3.0 (format version 1, tests/fixtures/store-0.3.0) is served, grown and
removed from; readers read it as it is, writing nothing, and a writer migrates it to this version."""
import json
import shutil
import stat

import numpy as np
import pytest

from conftest import FAST_EMBED, LABELS, TINY, TINY_MODEL
from emoreact import embed_source
from emoreact.index import Store
from emoreact.index.migrations import VERSION
from synthetic import make_manifest

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "store-0.3.0"


def _copy(tmp_path, name="store"):
    """Gives a copy of the fixture whose manifest names this checkout's tiny model file."""
    copy = tmp_path / name
    shutil.copytree(FIXTURE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess"]["model"] = TINY_MODEL  # the fixture names it relative to tests/
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return copy


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_readers_read_a_0_3_0_store_from_read_only_media_and_write_nothing(tmp_path):
    root = _copy(tmp_path)
    before = _files(root)
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with Store.open(root) as store:
            assert store.manifest["format_version"] == 1 and len(store) == 23 and store.rows == 24
            assert [s.count for s in store.shards()] == [8, 8, 8]
            assert [e["id"] for e in store.removed()] == [5]
            _, ids = store.search(store.vectors_of(np.array([3])), 5)
            assert ids[0, 0] == 3 and 5 not in ids[0]
            assert sum(len(b.ids) for b in store.blocks()) == 23
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert _files(root) == before


def test_a_0_3_0_store_predicts_with_a_head_trained_on_it(tmp_path):
    import emoreact
    from synthetic import draw

    root = _copy(tmp_path)
    emoreact.train(root, tmp_path / "head", head="linear", device="cpu", search=False)
    predictor = emoreact.load(root, tmp_path / "head", device="cpu")
    try:
        answer = predictor.predict(draw(("happy",), seed=7))
    finally:
        predictor.close()
    near = [n["id"] for n in answer["neighbours"]]
    assert len(near) == 5 and 5 not in near and set(answer["emotion_scores"]) == set(LABELS)
    assert json.loads((root / "manifest.json").read_text())["format_version"] == 1  # reading migrated nothing


def test_a_0_3_0_store_grows_and_removes_after_its_writer_migrates_it(tmp_path):
    root = _copy(tmp_path)
    source = make_manifest(tmp_path / "more", [((LABELS[n % 8],), "train") for n in range(6)], seed=77)
    embed_source(source, root, TINY, device="cpu", config=FAST_EMBED)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == VERSION and manifest["vector_sets"] == {
        "image": {"dim": 64, "folder": "vectors"}, "text": {"dim": 64, "folder": "vectors-text"}}
    with Store.open(root) as store:
        assert len(store) == 29 and store.rows == 30 and store.known_hashes() >= {store.items([0])[0].sha256}
        new = store.items()[-1]
        _, ids = store.search(store.vector(new.id)[None], 1)
        assert ids[0, 0] == new.id
    with Store.open_for_writing(root) as store:
        assert store.remove([0, new.id], "test", "tests") == [0, new.id]
    with Store.open(root) as store:
        assert len(store) == 27 and {e["id"] for e in store.removed()} == {0, 5, new.id}
        assert not np.any(store.vectors()[[0, 5, new.id]])
        _, ids = store.search(store.vectors_of(np.array([1])), 30)
        assert not {0, 5, new.id} & set(ids[0].tolist())


def test_a_store_of_a_newer_format_is_refused_with_the_versions_this_one_reads(tmp_path):
    from emoreact.index import StoreError

    root = _copy(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "format_version": VERSION + 1}))
    with pytest.raises(StoreError, match=rf"format version {VERSION + 1} is not supported \(this EmoReact reads "
                                         rf"versions 1 to {VERSION}\)"):
        Store.open(root)
