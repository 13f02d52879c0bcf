"""A killed multi-device embed keeps every device's committed work: a rerun resumes the parts."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_EMBED, TINY
from emoreact.embed import read_source, split_for
from emoreact.index import Store
from helpers import InProcessPool

DIM = 64  # the tiny model's embedding width


def one_hot(k: int) -> np.ndarray:
    """A marker vector no real embedding equals: whoever kept it, kept the killed run's work."""
    vector = np.zeros(DIM, np.float32)
    vector[k] = 1.0
    return vector


def add(store: Store, records, marks: list[int]) -> None:
    rows = [{"path": str(r.path), "sha256": hashlib.sha256(r.path.read_bytes()).hexdigest(), "labels": None,
             "split": split_for(hashlib.sha256(r.path.read_bytes()).hexdigest()), "width": 32, "height": 32,
             "bytes": r.path.stat().st_size} for r in records]
    store.add(rows, np.stack([one_hot(k) for k in marks]))


@pytest.mark.parametrize("pool", [pytest.param("processes", marks=pytest.mark.subprocess), "in this process"])
def test_a_killed_multi_device_job_resumes_its_parts_instead_of_starting_over(tmp_path, label_config, pool,
                                                                              monkeypatch):
    from emoreact import embed_source
    from emoreact.embed import parallel

    if pool == "in this process":
        monkeypatch.setattr(parallel, "ProcessPoolExecutor", InProcessPool)

    (tmp_path / "src").mkdir()
    for n in range(12):
        Image.new("RGB", (32, 32), (20 * n, 255 - 20 * n, 7 * n)).save(tmp_path / "src" / f"{n:03d}.png")
    records = read_source(tmp_path / "src", label_config)
    model_id, parts = TINY.model_id, tmp_path / "store" / ".parts"
    # What a kill leaves: device 0 had finished its slice, device 1 had committed two rows of its slice,
    # and the merge had added the first row of device 0's slice to the store itself.
    first = Store.create_or_resume(parts / "0", model_id, DIM, {}, label_config.names)
    add(first, records[0::2], list(range(0, 12, 2)))
    first.finish()
    first.close()
    second = Store.create_or_resume(parts / "1", model_id, DIM, {}, label_config.names)
    add(second, records[1::2][:2], [1, 3])
    second.close()
    target = Store.create_or_resume(tmp_path / "store", model_id, DIM, {}, label_config.names)
    add(target, records[:1], [0])
    target.close()

    report = embed_source(tmp_path / "src", tmp_path / "store", TINY, labels=label_config, device="cpu,cpu",
                          config=FAST_EMBED)
    store = Store.open(tmp_path / "store")
    vectors = {item.path: vector for item, vector in zip(store.items(), store.vectors())}
    assert len(vectors) == 12 and report.added == 11 and report.already_present == 1
    for n, record in enumerate(records):
        kept = np.array_equal(vectors[str(record.path)], one_hot(n))
        assert kept == (n % 2 == 0 or n in (1, 3)), f"image {n}: the killed run's work was {'kept' if kept else 'lost'}"
    assert not parts.exists()
    store.close()
