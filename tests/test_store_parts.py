"""The store's parts, each on its own: Metadata, VectorSet, IndexFile, migrations and split grouping."""
import json
import shutil

import numpy as np
import pytest

from emoreact.index import StoreError
from emoreact.index.grouping import Grouping, group
from emoreact.index.indexfile import IndexFile
from emoreact.index.items import Item
from emoreact.index.manifest import ManifestFile
from emoreact.index.metadata import Metadata
from emoreact.index.migrations import VERSION, migrate
from emoreact.index.search import build_index
from emoreact.index.vectors import VectorSet

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "store-0.3.0"


def _row(n, split="train"):
    return {"path": f"/x/{n}.jpg", "sha256": f"{n:064x}", "labels": ["happy"], "split": split, "split_fixed": False,
            "width": 1, "height": 1, "bytes": 10}


def _unit(rng, n, dim=8):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_metadata_looks_up_more_ids_than_sqlite_binds_in_one_query(tmp_path):
    from emoreact.index.shards import Shard

    meta = Metadata(tmp_path / "m.sqlite", readonly=False)
    meta.add(Shard("000000000.npy", 0, 25_000), [_row(n) for n in range(25_000)], [])
    meta.remove([Item(7, "/x/7.jpg", f"{7:064x}", None, "train", 1, 1)], "test", "me")
    wanted = list(range(0, 30_000, 1))
    assert sorted(meta.present(wanted)) == [i for i in range(25_000) if i != 7]
    assert meta.rows_written() == 25_000 and meta.live_count() == 24_999
    assert meta.removed_ids(applied=False) == [7] and meta.removed_ids(applied=True) == []
    assert dict(meta.ids_by("sha256", [f"{3:064x}", "nope"])) == {f"{3:064x}": 3}
    with pytest.raises(ValueError, match="cannot be looked up by 'labels'"):
        meta.ids_by("labels", ["happy"])
    meta.close()


def test_a_vector_set_writes_reads_zeroes_and_drops_what_a_killed_job_left(tmp_path):
    meta = Metadata(tmp_path / "m.sqlite", readonly=False)
    vectors = VectorSet("image", tmp_path / "vectors", 8, meta)
    rows = _unit(np.random.default_rng(0), 6)
    shard = vectors.write(0, rows)
    meta.add(shard, [_row(n) for n in range(6)], [])
    vectors.changed()
    orphan = vectors.write(6, rows[:2])  # a shard whose rows were never committed
    (tmp_path / "vectors" / ".000000006.npy.x.tmp").write_bytes(b"half")
    assert np.allclose(vectors.rows_of(np.array([4, 1])), rows[[4, 1]], atol=1e-3)
    vectors.drop_leftovers()
    assert sorted(p.name for p in (tmp_path / "vectors").iterdir()) == [shard.name] and orphan.name != shard.name
    vectors.zero_rows([1])
    assert not np.any(vectors.all()[1]) and np.any(vectors.all()[2])
    assert [len(b.ids) for b in vectors.blocks(block_rows=4)] == [4, 2]
    meta.close()


def test_the_index_file_publishes_under_a_new_name_and_serves_only_live_ids(tmp_path):
    manifest = ManifestFile(tmp_path / "manifest.json", {"count": 0, "dim": 8})
    index_file = IndexFile(tmp_path, manifest, 8)
    rows = _unit(np.random.default_rng(1), 10)
    index, settings = index_file.update(10, 10, "flat", False, lambda factory: _flat(rows), None, 0)
    index_file.publish(index, settings, 10, {"index_choice": "flat"})
    assert json.loads(manifest.path.read_text())["index"]["file"] == "index-000001.faiss"
    index_file.publish(index, settings, 10, {})
    assert sorted(p.name for p in tmp_path.glob("index-*")) == ["index-000002.faiss"]  # the old one is gone
    index_file.load(expected=10)
    _, ids = index_file.search(rows[:1], 3, 2, None, lambda ids: [i for i in ids if i != 0])
    assert ids[0, 0] != 0 and len(ids[0]) == 3
    with pytest.raises(StoreError, match="holds 10 vectors of dim 8, but the store has 11"):
        index_file.load(expected=11)


def _flat(rows):
    import faiss
    from emoreact.index.ann import IndexSettings

    index = faiss.IndexIDMap2(build_index(np.zeros((0, rows.shape[1]), np.float32)))
    index.add_with_ids(rows, np.arange(len(rows), dtype=np.int64))
    return index, IndexSettings("Flat", "", indexed_rows=len(rows))


def test_migration_adds_to_a_0_3_0_database_and_may_run_again(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "s")
    meta = Metadata(tmp_path / "s" / "metadata.sqlite", readonly=False)
    assert not meta.has_column("shards", "vector_set")
    manifest = ManifestFile(tmp_path / "s" / "manifest.json", json.loads((tmp_path / "s" / "manifest.json").read_text()))
    migrate(meta, manifest, written=True)
    migrate(meta, ManifestFile(manifest.path, {**manifest.data, "format_version": 1}), written=True)  # killed, redone
    assert meta.has_column("shards", "vector_set") and [s.count for s in meta.shards("image")] == [8, 8, 8]
    assert json.loads(manifest.path.read_text())["format_version"] == VERSION
    meta.close()


def test_grouping_reports_what_it_moved_and_a_lopsided_store(caplog):
    splits = {0: ("val", True), 1: ("train", False), 2: ("train", False), 3: ("test", False), 4: ("train", False)}
    groups = [np.array([0, 1, 2, 3])]

    def splits_of(ids):
        return [(i, *splits[i]) for i in ids if i in splits]

    with caplog.at_level("WARNING"):
        moves, report = group(lambda walk_older: groups, splits_of, 0, 5, 0.95)
    assert moves == {1: "val", 2: "val", 3: "val"}
    assert report == Grouping(1, 3, "val", 4, 5, 0.95) and not report.lopsided  # fewer than 10 images
    big = Grouping(1, 3, "val", 112, 120, 0.95)
    assert big.lopsided and "put 112 of 120 images into split 'val'" in big.cause()
    assert Grouping.from_json(big.to_json()) == big and not caplog.records


def test_reading_and_writing_are_roles_and_with_closes_and_unlocks(tmp_path):
    from emoreact.index import Store

    shutil.copytree(FIXTURE, tmp_path / "s")
    with Store.open(tmp_path / "s", with_index=False) as reader:
        with pytest.raises(StoreError, match="open for reading; open it with Store.open_for_writing"):
            reader.remove([1], "test", "me")
        with pytest.raises(StoreError, match="open for reading"):
            reader.add([_row(99)], np.zeros((1, 64), np.float32))
    assert reader.closed
    with Store.open_for_writing(tmp_path / "s") as writer:
        with pytest.raises(StoreError, match="is being written by pid"):
            Store.open_for_writing(tmp_path / "s")
        assert writer.relabel([]) == {"changed": 0, "unchanged": 0, "unknown": 0}
    with Store.open_for_writing(tmp_path / "s") as again:  # the lock went with the first writer's `with`
        assert len(again) == 23


def test_a_writer_opened_through_a_link_re_pointed_meanwhile_publishes_into_its_own_store(tmp_path):
    """How a server switches stores: `current` is re-pointed while a job writes through it. Every file the
    job writes, its manifest included, goes to the store it opened."""
    from emoreact.index import Store

    for name in ("a", "b"):
        shutil.copytree(FIXTURE, tmp_path / name)
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "a")
    before_b = (tmp_path / "b" / "manifest.json").read_text()
    with Store.open_for_writing(link) as writer:
        link.unlink()
        link.symlink_to(tmp_path / "b")
        writer.add([_row(1000 + n) for n in range(3)], _unit(np.random.default_rng(0), 3, dim=writer.dim))
        writer.finish()
    assert (tmp_path / "b" / "manifest.json").read_text() == before_b
    with Store.open(tmp_path / "a") as grown:
        assert grown.rows == 27 and len(grown) == 26  # 24 + 3 rows, one image removed by 0.3.0
