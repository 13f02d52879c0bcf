"""Killed jobs, floods of corrupt files and damaged artifacts: nothing is lost, nothing crashes."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_EMBED, ROOT, TINY_MODEL
from emoreact.embed import Record, run_embed_job
from emoreact.index import Store, StoreError
from synthetic import draw


def embed_cmd(source, store, shard_size=8):
    return [sys.executable, str(ROOT / "cli.py"), "embed", str(source), "--store", str(store), "--model", TINY_MODEL,
            "--pretrained", "none", "--device", "cpu", "--workers", "0", "--batch-size", "8",
            "--shard-size", str(shard_size), "--no-progress"]


def committed_shards(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store / 'metadata.sqlite'}?mode=ro", uri=True, timeout=0.2) as conn:
            return conn.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    except sqlite3.Error:
        return 0


def by_hash(store_path: Path) -> dict[str, np.ndarray]:
    store = Store.open(store_path)
    vectors = store.vectors()
    return {item.sha256: vectors[item.id] for item in store.items()}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_store(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for n in range(400):
        draw(("happy", "sad")[n % 2:n % 2 + 1], seed=50_000 + n, size=160).save(source / f"{n:04d}.png")
    job = subprocess.Popen(embed_cmd(source, tmp_path / "killed"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while committed_shards(tmp_path / "killed") < 2 and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before it could be killed; make the source larger"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    with pytest.raises(StoreError):
        Store.open(tmp_path / "killed")  # an unfinished store is refused, not half-read
    subprocess.run(embed_cmd(source, tmp_path / "killed"), check=True, capture_output=True)
    subprocess.run(embed_cmd(source, tmp_path / "clean", shard_size=64), check=True, capture_output=True)
    killed, clean = by_hash(tmp_path / "killed"), by_hash(tmp_path / "clean")
    assert len(killed) == 400 and killed.keys() == clean.keys()
    assert all(np.array_equal(killed[h], clean[h]) for h in clean)
    store = Store.open(tmp_path / "killed")
    assert sorted(p.name for p in (tmp_path / "killed" / "vectors").iterdir()) == \
        sorted(r[0] for r in store._query("SELECT name FROM shards"))
    assert not list((tmp_path / "killed").glob("**/*.tmp"))


def test_thousands_of_corrupt_files_are_each_skipped_with_a_reason(tmp_path, backbone, label_config):
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    header = b"\x89PNG\r\n\x1a\n"
    for n in range(2000):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        (source / f"bad{n:04d}.{('jpg', 'png', 'gif')[n % 3]}").write_bytes((header if n % 2 else b"") + junk)
    for n in range(5):
        draw(("fear",), seed=n).save(source / f"good{n}.png")
    store = Store.create_or_resume(tmp_path / "store", backbone.spec.model_id, backbone.dim, {}, label_config.names)
    report = run_embed_job([Record(p, None) for p in sorted(source.iterdir())], store, backbone, FAST_EMBED)
    assert report.added == 5
    assert sum(report.skipped.values()) == 2000
    skipped = dict(store.skipped())
    assert len(skipped) == 2000 and all(reason for reason in skipped.values())


def test_vectors_and_metadata_out_of_step_are_refused(tmp_path, store_path):
    import shutil

    copy = Path(shutil.copytree(store_path, tmp_path / "copy"))
    shard = sorted((copy / "vectors").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(StoreError, match=shard.name):
        Store.open(copy).vectors()
    shard.unlink()
    with pytest.raises(StoreError, match=shard.name):
        Store.open(copy).vectors()


def test_corrupt_metadata_and_manifest_are_refused_naming_the_file(tmp_path, store_path):
    import shutil

    copy = Path(shutil.copytree(store_path, tmp_path / "copy"))
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is unreadable"):
        Store.open(copy)
    (copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="not an EmoReact store manifest"):
        Store.open(copy)
    shutil.copy(store_path / "manifest.json", copy / "manifest.json")
    (copy / "metadata.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match="metadata.sqlite"):
        Store.open(copy)
