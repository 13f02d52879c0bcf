"""The store at scale, on small seeded data: index kinds against brute force, incremental updates,
removal that leaves no trace, and kills during reindex and remove."""
import json
import os
import shutil
import signal
import subprocess
import sys

import faiss
import numpy as np
import pytest

from conftest import ROOT
from emoreact.bench.synthetic_store import Mixture, held_out_queries, write_store
from emoreact.index import Store, StoreError, ann, brute_force_search
from emoreact.index.dedup import split_moves
from helpers import brute_force_groups

MIX = Mixture(dim=64, clusters=48, seed=3)
IVF = "IVF32_HNSW32,RaBitQ"  # a small approximate index of the production kind
IVF_PQ = "IVF32_HNSW32,PQ8"  # the kind stores were built with before RaBitQ: still read, searched, grown


def make(path, count=6000, index="flat"):
    store = write_store(path, count, MIX, index=index)
    store.close()
    return Store.open(path)


def recall(ids, truth):
    return float(np.mean([len(set(a) & set(t)) / truth.shape[1] for a, t in zip(ids.tolist(), truth.tolist())]))


@pytest.mark.parametrize("kind", ["flat", IVF, pytest.param(IVF_PQ, marks=pytest.mark.long)])
def test_each_index_kind_reaches_the_recall_target_against_brute_force(tmp_path, kind):
    store = make(tmp_path / "s", index=kind)
    queries = held_out_queries(300, MIX)
    truth_scores, truth = brute_force_search(store.vectors(), queries, 10)
    scores, ids = store.search(queries, 10)
    got = recall(ids, truth)
    settings = store.index_settings
    if kind == "flat":
        assert settings.factory == "Flat" and got == 1.0
    else:
        assert settings.factory == kind and settings.nprobe > 0 and settings.candidates > 0
        assert got >= ann.RECALL_TARGET, f"recall@10 {got:.3f} with nprobe={settings.nprobe}"
        assert settings.recall_at_10 >= ann.RECALL_TARGET
    # whatever the kind, the reported similarity is the true cosine with the stored (fp16) vector
    stored = store.vectors()
    assert np.allclose(scores, np.einsum("qd,qkd->qk", queries, stored[ids]), atol=1e-5)
    store.close()


def test_auto_chooses_flat_while_small_and_ivf_beyond(monkeypatch):
    assert ann.choose_factory(ann.FLAT_MAX_ROWS, 512) == "Flat"
    assert ann.choose_factory(2_000_000, 512) == "IVF2048_HNSW32,RaBitQ"
    assert ann.choose_factory(10_000_000, 512) == "IVF4096_HNSW32,RaBitQ"
    with pytest.raises(ValueError, match="neither auto, flat, ivf nor a FAISS factory string"):
        ann.factory_for("IVF-nonsense", 1000, 512)


def test_an_approximate_index_is_memory_mapped_for_serving(tmp_path):
    store = make(tmp_path / "s", index=IVF)
    path = str((tmp_path / "s" / store.index_settings.file).resolve())
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else path
    assert path in maps  # its inverted lists are read through a mapping of the file, not copied into RAM
    # and it scans with 4-bit queries (float queries take FAISS's ~200x slower path)
    assert faiss.downcast_index(faiss.extract_index_ivf(store.index)).qb == ann.QUERY_BITS
    store.close()


@pytest.mark.long
def test_new_rows_are_added_without_retraining_until_the_store_doubles(tmp_path):
    root = tmp_path / "s"
    make(root, index=IVF).close()
    first = Store.open(root, with_index=False).index_settings
    write_store(root, 600, MIX, first_stream=50, index=None).close()  # rows committed, index not yet updated
    writer = Store.open_for_writing(root)
    writer.finish()
    writer.close()
    grown = Store.open(root, with_index=False).index_settings
    assert grown.trained_rows == first.trained_rows == 6000 and grown.indexed_rows == 6600
    assert grown.nprobe == first.nprobe and grown.file != first.file
    assert not (root / first.file).exists()  # the old generation is deleted once replaced
    reader = Store.open(root)
    new = reader.vectors()[6000:6600]
    _, ids = reader.search(new, 1)
    assert (ids[:, 0] == np.arange(6000, 6600)).mean() > 0.98  # the new rows are found
    reader.close()

    writer = write_store(root, 7000, MIX, first_stream=80, index=None)
    writer.finish()  # no --index: the store's own choice, IVF, stays
    writer.close()
    assert Store.open(root, with_index=False).index_settings.trained_rows == 13_600  # past x2: re-trained


def test_an_index_is_saved_at_its_serving_breadth_and_adds_at_the_assigning_one(ivf_store):
    settings = Store.open(ivf_store, with_index=False).index_settings
    index = faiss.read_index(str(ivf_store / settings.file))
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    assert quantizer.hnsw.efSearch == max(64, 2 * settings.nprobe)  # not the last tuning trial's
    quantizer.hnsw.efSearch = 1024
    vectors = held_out_queries(5, MIX)
    assert ann.add_blocks(index, [(np.arange(10**6, 10**6 + 5), vectors)]) == 5
    assert quantizer.hnsw.efSearch == ann.ASSIGN_EF_SEARCH


def test_streaming_blocks_give_the_live_rows_in_id_order(tmp_path):
    store = make(tmp_path / "s", count=1000)
    blocks = list(store.blocks(block_rows=300))
    ids = np.concatenate([b.ids for b in blocks])
    assert ids.tolist() == list(range(1000)) and max(len(b.ids) for b in blocks) <= 300
    assert np.array_equal(np.concatenate([b.vectors for b in blocks]), store.vectors())
    train = np.concatenate([b.ids for b in store.blocks(split="train")])
    assert set(train) == {it.id for it in store.items() if it.split == "train"}
    store.close()
    light = Store.open(tmp_path / "s", with_index=False)
    assert light.index is None and len(light) == 1000
    light.close()


@pytest.mark.parametrize("kind", ["flat", IVF])
def test_removal_leaves_no_trace(tmp_path, kind):
    root = tmp_path / "s"
    make(root, index=kind).close()
    before = Store.open(root)
    gone = [5, 77, 4000]
    vectors = before.vectors()[gone]
    hashes = [it.sha256 for it in before.items(gone)]
    before.close()

    writer = Store.open_for_writing(root)
    assert writer.remove(gone, "privacy request #12", "moderator-a") == gone
    writer.close()

    store = Store.open(root)
    assert len(store) == 6000 - 3 and store.rows == 6000
    _, ids = store.search(vectors, 50)
    assert not set(ids.ravel().tolist()) & set(gone)  # not even for its own vector
    for image_id in gone:
        with pytest.raises(KeyError):
            store.items([image_id])
        with pytest.raises(KeyError):
            store.vector(image_id)
    assert not set(np.concatenate([b.ids for b in store.blocks()]).tolist()) & set(gone)
    assert not np.any(store.vectors()[gone])  # the vector bytes are overwritten in the shard
    assert set(hashes) <= store.known_hashes()  # a later embed refuses the same content...
    assert not set(hashes) & store.known_hashes(tombstones=False)  # ...unless --allow-readd
    log = store.removed()
    assert [e["id"] for e in log] == gone and {e["removed_by"] for e in log} == {"moderator-a"}
    assert {e["reason"] for e in log} == {"privacy request #12"}
    assert not any(h in json.dumps(store.skipped_hashes()) for h in hashes)
    store.close()


@pytest.mark.subprocess
def test_killed_remove_is_hidden_at_once_and_completed_by_the_next_writer(tmp_path):
    root = tmp_path / "s"
    make(root, index=IVF).close()
    script = ("import sys; from emoreact.index import Store; "
              "s = Store.open_for_writing(sys.argv[1]); s.remove([11, 12], 'takedown', 'ops')")
    env = {**os.environ, "EMOREACT_FAULT": "after_remove_commit"}
    result = subprocess.run([sys.executable, "-c", script, str(root)], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]

    reader = Store.open(root)  # the removal is committed: readers no longer see the images
    assert len(reader) == 5998
    vectors = np.load(next((root / "vectors").glob("*.npy")))[[11, 12]].astype(np.float32)
    assert np.any(vectors)  # the shard was not yet overwritten...
    _, ids = reader.search(vectors, 20)
    assert not {11, 12} & set(ids.ravel().tolist())  # ...yet search never answers with them
    reader.close()

    Store.open_for_writing(root).close()  # the next writer finishes the job
    store = Store.open(root)
    assert store.index.ntotal == 5998 and not np.any(store.vectors()[[11, 12]])
    store.close()


@pytest.mark.subprocess
def test_killed_reindex_leaves_the_store_as_before(tmp_path):
    root = tmp_path / "s"
    make(root, index="flat").close()
    before = json.loads((root / "manifest.json").read_text())
    queries = held_out_queries(20, MIX)
    reader = Store.open(root)
    expected = reader.search(queries, 5)
    reader.close()
    for fault in ("during_index_write", "before_manifest"):
        script = "import sys; from emoreact.index import Store; Store.open_for_writing(sys.argv[1]).reindex(sys.argv[2])"
        result = subprocess.run([sys.executable, "-c", script, str(root), IVF], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "EMOREACT_FAULT": fault})
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        assert json.loads((root / "manifest.json").read_text()) == before
        store = Store.open(root)
        got = store.search(queries, 5)
        assert np.array_equal(got[1], expected[1]) and store.index_settings.factory == "Flat"
        store.close()
    Store.open_for_writing(root).close()  # the next writer drops what the kills left
    assert sorted(p.name for p in root.glob("index*")) == [before["index"]["file"]]
    assert not list(root.glob(".*.tmp"))


def test_a_store_from_before_index_kinds_still_opens_and_is_upgraded(tmp_path):
    root = tmp_path / "s"
    make(root, count=500).close()
    manifest = json.loads((root / "manifest.json").read_text())
    vectors = Store.open(root).vectors()
    old = faiss.IndexFlatIP(MIX.dim)  # what 0.2 wrote: a plain flat index, ids = positions
    old.add(vectors)
    faiss.write_index(old, str(root / "index.faiss"))
    (root / manifest["index"]["file"]).unlink()
    del manifest["index"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    store = Store.open(root)
    assert store.index_settings.file == "index.faiss"
    assert store.search(vectors[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    store.close()
    writer = Store.open_for_writing(root)
    writer.remove([1], "test", "t")  # ids were positions: the index is rebuilt with store ids
    writer.close()
    store = Store.open(root)
    assert isinstance(faiss.downcast_index(store.index), faiss.IndexIDMap2) if hasattr(store.index, "id_map") else True
    assert store.search(vectors[:3], 1)[1][:, 0].tolist()[0::2] == [0, 2] and 1 not in store.search(vectors[1:2], 5)[1]
    store.close()


def test_unknown_ids_to_remove_are_refused_naming_them(tmp_path):
    from emoreact.index.removal import resolve_targets

    make(tmp_path / "s", count=200).close()
    writer = Store.open_for_writing(tmp_path / "s")
    with pytest.raises(KeyError, match="id:999"):
        resolve_targets(writer, ids=[3, 999])
    assert resolve_targets(writer, hashes=[writer.items([4])[0].sha256]) == [4]
    writer.close()
    with pytest.raises(StoreError):
        Store.open(tmp_path / "nothing")


@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory):
    """A 4,000-image store with an IVF index, built once: copy it before changing it."""
    root = tmp_path_factory.mktemp("ivf") / "s"
    make(root, count=4000, index=IVF).close()
    return root


def _with_twins(root, count: int, seed: int) -> None:
    """Adds `count` near-duplicates (cosine ~0.99) of stored images to the store at `root`, their splits
    set in turn and free to move, without finishing."""
    stored = Store.open(root, with_index=False)
    originals = np.sort(np.random.default_rng(seed).choice(stored.rows, count, replace=False))
    vectors = stored.vectors_of(originals)
    stored.close()
    rng = np.random.default_rng(seed + 1)
    twins = vectors + 0.012 * rng.normal(size=vectors.shape).astype(np.float32)
    twins /= np.linalg.norm(twins, axis=1, keepdims=True)
    rows = [{"path": f"twin/{i}.jpg", "sha256": f"{seed:08x}{i:056x}", "labels": None,
             "split": ("train", "val", "test")[i % 3], "split_fixed": False, "width": 8, "height": 8, "bytes": 1}
            for i in range(count)]
    writer = Store.open_for_writing(root)
    writer.add(rows, twins)
    writer.close()


def _expected_moves(store: Store) -> tuple[dict, dict, int]:
    """Gives (split by id, the moves brute force calls for, groups moved) for the rows past 4,000, whose
    splits are free (the synthetic store's are fixed)."""
    split = {item.id: item.split for item in store.items()}
    groups = [np.array(g) for g in brute_force_groups(store.vectors(), 0.95) if max(g) >= 4000]
    moves, moved_groups = split_moves(groups, split, {i: i < 4000 for i in split})
    return split, moves, moved_groups


@pytest.mark.long
def test_a_large_store_groups_near_duplicates_through_its_index_without_loading_its_vectors(ivf_store, tmp_path, monkeypatch):
    """The groups, and so the moves, are those of brute force over all vectors (this mixture is tight at
    D = 64: its clusters hold near-duplicate groups of hundreds, whose fixed members pull the twins)."""
    root = shutil.copytree(ivf_store, tmp_path / "s")
    _with_twins(root, 60, seed=21)
    writer = Store.open_for_writing(root)
    split, moves, moved_groups = _expected_moves(writer)
    assert moves and len(moves) < 60

    def whole_store(self):
        raise AssertionError("near-duplicate grouping read the whole store")

    monkeypatch.setattr(Store, "vectors", whole_store)
    assert writer.finish(0.95) == (moved_groups, len(moves))
    writer.close()
    monkeypatch.undo()
    store = Store.open(root)
    assert {item.id: item.split for item in store.items()} == {**split, **moves}
    assert {k: store.manifest["near_duplicates"][k] for k in ("threshold", "rows_checked")} == {"threshold": 0.95, "rows_checked": 4060}
    assert store.index_settings.indexed_rows == 4060
    store.close()


@pytest.mark.subprocess
def test_a_kill_between_index_and_grouping_leaves_the_rows_to_group_next_time(ivf_store, tmp_path):
    root = shutil.copytree(ivf_store, tmp_path / "s")
    _with_twins(root, 30, seed=5)
    writer = Store.open_for_writing(root)
    split, moves, _ = _expected_moves(writer)
    writer.close()
    assert moves
    script = "import sys; from emoreact.index import Store; Store.open_for_writing(sys.argv[1]).finish(0.95)"
    result = subprocess.run([sys.executable, "-c", script, str(root)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "EMOREACT_FAULT": "before_near_duplicates_recorded"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["index"]["indexed_rows"] == 4030 and "near_duplicates" not in manifest  # indexed, not checked
    writer = Store.open_for_writing(root)
    assert writer.finish(0.95) == (0, 0)  # the killed job had moved them; this one finds them in place
    writer.close()
    store = Store.open(root)
    assert {item.id: item.split for item in store.items()} == {**split, **moves}
    assert {k: store.manifest["near_duplicates"][k] for k in ("threshold", "rows_checked")} == {"threshold": 0.95, "rows_checked": 4030}
    store.close()
