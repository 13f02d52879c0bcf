"""An `embed` killed at a chosen step (a fault point), then run again, gives the uninterrupted store.

Each kill is SIGKILL sent by the job to itself at a named step (EMOREACT_FAULT), so every run
of these tests kills at the same place: no sleeps, no racing a signal against the clock.
"""
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL
from emoreact.index import Store, StoreError
from emoreact.index.faults import POINTS, fault_point
from synthetic import draw

SHARD = 8  # with a batch of 8 and the copies below, the first shard holds an original whose copy came before it
UNIQUE = 40


def embed(source: Path, store: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """Runs `cli.py embed` in its own process (so that it can be killed), dying at `fault` if given."""
    env = {k: v for k, v in os.environ.items() if k != "EMOREACT_FAULT"}
    if fault:
        env["EMOREACT_FAULT"] = fault
    command = [sys.executable, str(ROOT / "cli.py"), "embed", str(source), "--store", str(store),
               "--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu", "--workers", "0",
               "--batch-size", "8", "--shard-size", str(SHARD), "--no-progress"]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)


def killed(source: Path, store: Path, fault: str) -> None:
    result = embed(source, store, fault)
    assert result.returncode == -signal.SIGKILL, f"{fault} did not kill the job:\n{result.stderr[-2000:]}"


def completed(source: Path, store: Path) -> None:
    result = embed(source, store)
    assert result.returncode == 0, result.stderr[-2000:]


def snapshot(path: Path) -> dict:
    """Gives what must not depend on kills: vectors, paths and splits by hash, skipped files, count."""
    store = Store.open(path)
    vectors = store.vectors()
    texts = store.text_vectors_of(store.live_ids())
    words = dict(zip(store.live_ids().tolist(), store.texts(store.live_ids().tolist())))
    state = {"images": {it.sha256: (it.path, it.split, vectors[it.id].tobytes()) for it in store.items()},
             "words": {it.sha256: (words[it.id], texts[n].tobytes()) for n, it in enumerate(store.items())},
             "ids": [it.sha256 for it in store.items()], "skipped": sorted(store.skipped()), "count": len(store)}
    store.close()
    return state


def assert_like_uninterrupted(path: Path, clean: dict) -> None:
    got = snapshot(path)
    assert got["count"] == clean["count"] == UNIQUE
    missing = clean["images"].keys() - got["images"].keys()
    assert not missing, f"{len(missing)} images lost for good"
    assert got == clean
    assert not list(path.glob("**/*.tmp")), "temporary files left behind"
    with sqlite3.connect(path / "metadata.sqlite") as conn:
        shards = {row[0] for row in conn.execute("SELECT name FROM shards")}
    files = {p.name for p in (path / "vectors").iterdir()} | {p.name for p in (path / "vectors-text").glob("*")}
    assert files == shards, "orphan shard files left behind"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A manifest of 40 images, and byte-identical copies of some, each listed right after its original;
    every third has a caption (so that text shards are written with the image shards)."""
    folder = tmp_path_factory.mktemp("kills") / "src"
    folder.mkdir()
    lines = ["path,caption"]
    for n in range(UNIQUE):
        draw(("happy", "sad")[n % 2:n % 2 + 1], seed=70_000 + n).save(folder / f"{n:03d}.png")
        lines.append(f"{n:03d}.png,{'so sad today' if n % 3 == 0 else ''}")
        if n % 4 == 0:
            shutil.copy(folder / f"{n:03d}.png", folder / f"{n:03d}b.png")
            lines.append(f"{n:03d}b.png,")
    (folder / "posts.csv").write_text("\n".join(lines) + "\n")
    return folder / "posts.csv"


@pytest.fixture(scope="module")
def clean(source, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("clean") / "store"
    completed(source, path)
    return snapshot(path)


@pytest.mark.subprocess
def test_duplicate_skipped_before_its_original_is_written_is_not_lost_after_a_kill(source, clean, tmp_path):
    # The first batch holds 000.png and its copy 000b.png; the copy's skip row ("duplicate of 000.png")
    # must not make 000.png count as stored when the kill lands before 000.png's shard is committed.
    killed(source, tmp_path / "store", "after_shard_file:1")
    completed(source, tmp_path / "store")
    assert_like_uninterrupted(tmp_path / "store", clean)


@pytest.mark.parametrize("fault, leftover", [("during_shard_write:2", "vectors/.*.npy.*.tmp"),
                                             ("during_index_write:1", ".index-*.faiss.*.tmp")])
@pytest.mark.subprocess
def test_temporary_file_of_a_killed_atomic_write_is_removed_by_the_rerun(source, clean, tmp_path, fault, leftover):
    killed(source, tmp_path / "store", fault)
    assert list((tmp_path / "store").glob(leftover)), "the kill should have left a temporary file"
    completed(source, tmp_path / "store")
    assert_like_uninterrupted(tmp_path / "store", clean)


@pytest.mark.subprocess
def test_kill_between_rows_and_manifest_is_refused_then_completed_by_the_rerun(source, clean, tmp_path):
    killed(source, tmp_path / "store", "before_manifest:1")
    with pytest.raises(StoreError):
        Store.open(tmp_path / "store")  # every row is committed, but readers must not see them yet
    completed(source, tmp_path / "store")
    assert_like_uninterrupted(tmp_path / "store", clean)


@pytest.mark.subprocess
def test_random_kills_at_fault_points_then_a_rerun_give_the_uninterrupted_store(source, clean, tmp_path):
    rng = random.Random(2024)  # seeded: the same kills every run; change the seed to explore others
    shards = UNIQUE // SHARD
    for _ in range(3):
        point = rng.choice(POINTS)
        step = rng.randint(1, shards) if "shard" in point else 1
        result = embed(source, tmp_path / "store", f"{point}:{step}")
        # A rerun may have fewer shards left to write than `step`: then it completes, which is fine too.
        assert result.returncode in (0, -signal.SIGKILL), result.stderr[-2000:]
    completed(source, tmp_path / "store")
    assert_like_uninterrupted(tmp_path / "store", clean)


def test_a_bad_fault_spec_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("EMOREACT_FAULT", "after_everything:2")
    with pytest.raises(ValueError, match="EMOREACT_FAULT='after_everything:2' is not a fault point; use NAME"):
        fault_point("after_shard_file")
