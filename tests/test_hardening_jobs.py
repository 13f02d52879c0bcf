"""Floods of corrupt files and damaged artifacts: nothing is lost, nothing crashes (killed jobs: test_kills.py)."""
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_EMBED
from emoreact.embed import Record, run_embed_job
from emoreact.index import Store, StoreError
from synthetic import draw


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
