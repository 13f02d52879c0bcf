"""Splits that do not leak: near-duplicates share one split; metrics taken on val say so."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FAST_EMBED, LABELS, TINY
from emoreact import cli, embed_source
from emoreact.index import Grouping, Store, ann, build_index, near_duplicate_groups
from emoreact.index.dedup import groups_from, split_moves, store_index_neighbours
from helpers import brute_force_groups
from synthetic import make_manifest


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chain(dim: int, cos: float) -> np.ndarray:
    """Three unit vectors a, b, c with cos(a, b) = cos(b, c) = `cos` but cos(a, c) well below it."""
    angle = np.arccos(cos)
    out = np.zeros((3, dim), np.float32)
    for k in range(3):
        out[k, 0], out[k, 1] = np.cos(k * angle), np.sin(k * angle)
    return out


def test_near_duplicate_groups_match_brute_force_on_seeded_data():
    rng = np.random.default_rng(7)
    base = unit(rng.normal(size=(300, 32)))
    picked = rng.choice(300, size=60)
    copies = unit(base[picked] + 0.03 * rng.normal(size=(60, 32)))  # cosine about 0.97-0.99 to their original
    vectors = np.concatenate([base, copies, chain(32, 0.97)])
    vectors = vectors[rng.permutation(len(vectors))]
    expected = brute_force_groups(vectors, 0.95)
    assert len(expected) > 30
    for block in (1, 7, 1024):
        got = near_duplicate_groups(build_index(vectors), vectors, 0.95, block=block)
        assert {tuple(int(i) for i in g) for g in got} == expected
        assert all(np.all(np.diff(g) > 0) for g in got)
    for first_new in (300, 350, len(vectors)):  # a later job: only the groups its new rows are in
        got = near_duplicate_groups(build_index(vectors), vectors, 0.95, block=16, first_new=first_new)
        assert {tuple(int(i) for i in g) for g in got} == {g for g in expected if max(g) >= first_new}
    links = vectors @ chain(32, 0.97)[[0, 2]].T  # the chain's ends are not near-duplicates of each other...
    ends = [int(np.argmax(links[:, 0])), int(np.argmax(links[:, 1]))]
    assert any(set(ends) <= set(g) for g in expected)  # ...but one group through the middle one


def test_near_duplicate_groups_past_the_exact_size_go_through_ivf_and_still_match_brute_force():
    """Beyond `exact_up_to` rows the range search runs on an IVF index (an exact all-pairs search would
    take hours at a million rows); the near-duplicates found must be the same."""
    rng = np.random.default_rng(11)
    centres = unit(rng.normal(size=(40, 48)))  # clustered, as CLIP features are, not uniform noise
    base = unit(centres[rng.integers(0, 40, size=3000)] + 0.35 * rng.normal(size=(3000, 48)))
    picked = rng.choice(3000, size=400, replace=False)
    copies = unit(base[picked] + 0.025 * rng.normal(size=(400, 48)))
    vectors = np.concatenate([base, copies])[rng.permutation(3400)]
    expected = brute_force_groups(vectors, 0.95)
    assert len(expected) >= 350
    got = near_duplicate_groups(build_index(vectors), vectors, 0.95, exact_up_to=500)
    assert {tuple(int(i) for i in g) for g in got} == expected


@pytest.mark.parametrize("factory", ["IVF32,RaBitQ", "IVF32,PQ8"])
def test_a_store_index_finds_the_same_groups_as_brute_force_reading_only_the_rows_it_proposes(factory):
    """A large store groups through its own IVF index: proposals by code, verified on the stored rows.
    A group larger than the proposals asked for (30 copies, 4 proposals) is followed by asking again."""
    rng = np.random.default_rng(13)
    centres = unit(rng.normal(size=(40, 48)))
    base = unit(centres[rng.integers(0, 40, size=3000)] + 0.35 * rng.normal(size=(3000, 48)))
    picked = rng.choice(3000, size=300, replace=False)
    copies = unit(base[picked] + 0.025 * rng.normal(size=(300, 48)))
    crowd = unit(base[:1] + 0.01 * rng.normal(size=(30, 48)))
    vectors = np.concatenate([base, copies, crowd])[rng.permutation(3330)]
    index = ann.new_index(factory, 48)
    index.train(vectors)
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    read = []

    def rows_of(ids):
        read.append(len(ids))
        return vectors[ids]

    expected = brute_force_groups(vectors, 0.95)
    assert any(len(g) >= 30 for g in expected)
    neighbours = store_index_neighbours(index, rows_of, 0.95, proposals=4)
    for first_new in (0, 2000, 3300):
        got = groups_from(neighbours, len(vectors), first_new, block=256)
        assert {tuple(int(i) for i in g) for g in got} == {g for g in expected if max(g) >= first_new}
    assert max(read) <= 4 * 64  # rows are read a query's proposals at a time, never the whole store


def test_split_moves_follow_the_oldest_member_and_never_move_source_splits():
    group = [np.array([0, 3, 5])]
    split = {0: "test", 3: "train", 5: "val"}
    assert split_moves(group, split, {0: False, 3: False, 5: False}) == ({3: "test", 5: "test"}, 1)
    # a member whose split the source gave never moves, and the group joins it
    assert split_moves(group, split, {0: False, 3: True, 5: False}) == ({0: "train", 5: "train"}, 1)
    assert split_moves(group, {0: "val", 3: "val", 5: "val"}, {0: False, 3: False, 5: False}) == ({}, 0)


def _rows(n: int, splits: list[str], fixed: list[bool]) -> list[dict]:
    return [{"path": f"/img/{i}.png", "sha256": f"{i:064x}", "labels": None, "split": splits[i],
             "split_fixed": fixed[i], "width": 8, "height": 8, "bytes": 100} for i in range(n)]


def test_near_duplicates_never_straddle_splits_after_finish(tmp_path, backbone, label_config):
    rng = np.random.default_rng(3)
    dim = backbone.dim
    originals = unit(rng.normal(size=(4, dim)))
    twins = unit(originals + 0.01 * rng.normal(size=(4, dim)))  # a resized copy of each
    vectors = np.concatenate([originals, twins])
    splits = ["train", "val", "test", "train", "test", "train", "val", "val"]
    fixed = [False] * 8
    fixed[3] = fixed[7] = True  # original 3 and its twin 7 had their splits set by the source
    store = Store.create_or_resume(tmp_path / "s", backbone.spec.model_id, dim, {}, label_config.names)
    store.add(_rows(8, splits, fixed), vectors)
    assert store.finish(0.95) == (3, 3)  # groups 0-4, 1-5, 2-6 moved; 3-7 cannot (both fixed)
    after = {item.id: item.split for item in store.items()}
    assert after == {0: "train", 1: "val", 2: "test", 3: "train", 4: "train", 5: "val", 6: "test", 7: "val"}
    assert store.finish(0.95) == (0, 0)  # a rerun finds nothing left to move
    # A later job adds a twin of image 0 whose hash says "test", and a twin of that twin: both join 0's split.
    late = unit(np.stack([originals[0] + 0.01 * rng.normal(size=dim), originals[0] + 0.01 * rng.normal(size=dim)]))
    store.add(_rows(10, [*splits, "test", "val"], [*fixed, False, False])[8:], late)
    assert store.finish(0.95) == (1, 2)
    assert {item.id: item.split for item in store.items([8, 9])} == {8: "train", 9: "train"}
    recorded = store.manifest["near_duplicates"]
    assert (recorded["threshold"], recorded["rows_checked"]) == (0.95, 10)
    assert store.grouping() == Grouping(1, 2, "train", 4, 10, 0.95)  # this job's groups: 0, 4, 8, 9 in train
    store.close()


def test_embed_puts_near_duplicates_in_one_split_and_reports_it(tmp_path, label_config):
    # The tiny model's random weights see every image as a near-duplicate of every other: one group.
    items = [(("happy",), None)] * 10 + [(("sad",), "train")] * 2
    manifest = make_manifest(tmp_path / "data", items)
    report = embed_source(manifest, tmp_path / "store", TINY, labels=label_config, device="cpu",
                          config=FAST_EMBED, near_duplicate_threshold=0.95)
    store = Store.open(tmp_path / "store")
    splits = {item.split for item in store.items()}
    store.close()
    assert splits == {"train"}  # the group joins the split the source gave two of its members
    written = json.loads((tmp_path / "store" / "report.json").read_text())["near_duplicates_moved"]
    assert written["groups"] == report.near_duplicate_groups_moved == 1
    assert written["images"] == report.near_duplicate_images_moved > 0


@pytest.fixture(scope="module")
def no_test_split(tmp_path_factory, label_config):
    """A store whose source has train and val images but no test images."""
    root = tmp_path_factory.mktemp("no-test")
    items = [((LABELS[n % 4],), "train" if n % 4 else "val") for n in range(80)] + \
            [((LABELS[n % 4],), "val") for n in range(16)]
    embed_source(make_manifest(root / "data", items), root / "store", TINY, labels=label_config, device="cpu",
                 config=FAST_EMBED)
    return root


def test_metrics_on_val_for_want_of_a_test_split_say_so(no_test_split):
    runner = CliRunner()
    store, head = no_test_split / "store", no_test_split / "head"
    trained = runner.invoke(cli.main, ["train", "--store", str(store), "--out", str(head), "--epochs", "5",
                                       "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.output)
    assert summary["split"] == "val" and "no labelled test images" in summary["split_note"]
    written = json.loads((head / "metrics_val.json").read_text())
    assert written["split"] == "val" and written["split_note"] == summary["split_note"]
    evaluated = runner.invoke(cli.main, ["evaluate", "--store", str(store), "--head", str(head)])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["split"] == "val" and "split_note" in json.loads(evaluated.output)
    asked = runner.invoke(cli.main, ["evaluate", "--store", str(store), "--head", str(head), "--split", "val"])
    assert "split_note" not in json.loads(asked.output)  # asked for val: nothing to warn about


def test_without_the_older_walk_only_links_of_new_rows_count():
    vectors = chain(16, 0.97)  # a-b-c
    index = build_index(vectors)
    # rows 0 and 1 are older; row 2 (c) is new and links to b only; a joins through b only when walked
    assert [g.tolist() for g in near_duplicate_groups(index, vectors, 0.95, first_new=2)] == [[0, 1, 2]]
    assert [g.tolist() for g in near_duplicate_groups(index, vectors, 0.95, first_new=2, walk_older=False)] == [[1, 2]]


def test_a_new_image_joining_two_older_groups_of_different_splits_moves_them_whole(tmp_path, backbone, label_config):
    # Five points along a circle, each at cosine 0.97 to the next (0.88 to the one after): older groups
    # {0, 1} (train) and {2, 3} (test), then a new image between 1 and 2.
    angle = np.arccos(0.97)
    points = np.zeros((5, backbone.dim), np.float32)
    for k, step in enumerate([0, 1, 3, 4, 2]):
        points[k, 0], points[k, 1] = np.cos(step * angle), np.sin(step * angle)
    store = Store.create_or_resume(tmp_path / "s", backbone.spec.model_id, backbone.dim, {}, label_config.names)
    rows = _rows(5, ["train", "train", "test", "test", "val"], [False] * 5)
    store.add(rows[:4], points[:4])
    assert store.finish(0.95) == (0, 0)  # each older group already sits in one split
    store.add(rows[4:], points[4:])
    assert store.finish(0.95) == (1, 3)  # the new image and all of {2, 3} join 0's split, not just 2
    assert {item.id: item.split for item in store.items()} == {i: "train" for i in range(5)}
    store.close()


def test_a_model_that_finds_everything_alike_is_named_by_embed_and_by_train(tmp_path, caplog):
    """The tiny random-weight model finds every image alike: grouping puts the store in one split (here
    the first image's, fixed by the source as test). Embed warns with the figure; train names the cause."""
    from dataclasses import replace

    from emoreact import train
    from emoreact.index import StoreError

    items = [((LABELS[n % len(LABELS)],), "test" if n == 0 else None) for n in range(24)]
    source = make_manifest(tmp_path / "src", items, seed=5)
    with caplog.at_level("WARNING", logger="emoreact.index.grouping"):
        embed_source(source, tmp_path / "store", TINY, device="cpu",
                     config=replace(FAST_EMBED, near_duplicate_threshold=0.9))
    warned = [r.getMessage() for r in caplog.records if r.name == "emoreact.index.grouping"]
    assert len(warned) == 1 and "put 24 of 24 images into split 'test'" in warned[0]
    with Store.open(tmp_path / "store", with_index=False) as store:
        assert {item.split for item in store.items()} == {"test"}
        assert store.grouping().lopsided and store.grouping().largest_images == 24
    with pytest.raises(StoreError, match=r"no labelled training images: near-duplicate grouping put 24 of 24 "
                                         r"images into split 'test'.*--near-duplicate-threshold off"):
        train(tmp_path / "store", tmp_path / "head", head="linear", device="cpu")


def test_train_without_labels_still_says_to_embed_a_labelled_source(tmp_path):
    from emoreact import train
    from emoreact.index import StoreError

    source = make_manifest(tmp_path / "src", [((LABELS[0],), "val")] * 4, seed=6)
    embed_source(source, tmp_path / "store", TINY, device="cpu", config=FAST_EMBED)
    with pytest.raises(StoreError, match="no labelled training images; embed a labelled source"):
        train(tmp_path / "store", tmp_path / "head", head="linear", device="cpu")
