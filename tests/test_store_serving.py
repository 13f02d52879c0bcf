"""A served store: read-only media, GPU search from many request threads, cheap len()."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from emoreact.index import Store, brute_force_search, build_index
from emoreact.index.search import SerialisedIndex, TorchFlatIndex, to_gpu_if_available


def unit_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- GPU search: one call at a time, precision set per call -----------------------------------


class RecordingIndex:
    """Stands in for a GPU index: records whether each call ran under the serialising lock."""

    def __init__(self, index: faiss.Index) -> None:
        self.index, self.ntotal, self.d = index, index.ntotal, index.d
        self.wrapper: SerialisedIndex | None = None
        self.unlocked_calls = 0
        self.entered, self.release = threading.Event(), threading.Event()
        self.hold = False

    def search(self, queries, k):
        self.unlocked_calls += not (self.wrapper and self.wrapper.busy)
        if self.hold:
            self.entered.set()
            assert self.release.wait(30)
        return self.index.search(queries, k)

    def reconstruct(self, i):
        self.unlocked_calls += not (self.wrapper and self.wrapper.busy)
        return self.index.reconstruct(i)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Makes to_gpu_if_available take its faiss-gpu path on this CPU; gives the stand-ins it made."""
    made = []

    def to_gpu(resources, device, index):
        made.append(RecordingIndex(index))
        return made[-1]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    return made


def test_gpu_search_from_many_threads_is_serialised(fake_gpu):
    vectors, queries = unit_vectors(500), unit_vectors(64, seed=1)
    served = to_gpu_if_available(build_index(vectors))
    assert isinstance(served, SerialisedIndex)
    gpu = fake_gpu[0]
    gpu.wrapper, gpu.unlocked_calls = served, 0  # the probe search at load time ran before serving

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda q: served.search(q[None], 5), queries))
    expected = brute_force_search(vectors, queries, 5)[1]
    assert np.array_equal(np.concatenate([ids for _, ids in answers]), expected)
    served.reconstruct(3)
    assert gpu.unlocked_calls == 0

    gpu.hold = True  # while one search runs, the lock that every other call takes is held
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(served.search, queries[:1], 5)
        assert gpu.entered.wait(30)
        assert served.busy
        gpu.release.set()
        running.result(timeout=30)
    assert not served.busy


class TF32Enabled:
    """torch.backends.cuda.matmul as a process looks after someone turned TF32 on; writing is refused."""

    allow_tf32 = property(lambda self: True)

    @allow_tf32.setter
    def allow_tf32(self, value):
        raise AssertionError("the search flipped the process-wide TF32 flag")


def test_torch_search_sets_precision_per_call_without_flipping_the_global_tf32_flag(monkeypatch):
    vectors, queries = unit_vectors(300), unit_vectors(20, seed=2)
    monkeypatch.setattr(torch.backends.cuda, "matmul", TF32Enabled())
    scores, ids = TorchFlatIndex(vectors, "cpu").search(queries, 10)
    ref_scores, ref_ids = brute_force_search(vectors, queries, 10)
    assert np.array_equal(ids, ref_ids) and np.allclose(scores, ref_scores, atol=1e-6)


# ---- len() without a query --------------------------------------------------------------------


def test_len_of_a_store_reads_the_manifest_not_the_database(store_path, monkeypatch):
    store = Store.open(store_path)

    def no_query(*args):
        raise AssertionError("len(store) queried the database")

    monkeypatch.setattr(store._metadata, "_query", no_query)
    assert len(store) == store.manifest["count"] == 640
    store.close()


# ---- read-only stores ---------------------------------------------------------------------------


def files_and_times(folder: Path) -> dict:
    """Gives every entry under `folder` (the folder too) with its size and modification time."""
    entries = [folder, *sorted(folder.rglob("*"))]
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in entries}


def read_only(folder: Path, on: bool = True) -> None:
    for path in [*folder.rglob("*"), folder]:
        path.chmod((0o555 if path.is_dir() else 0o444) if on else (0o755 if path.is_dir() else 0o644))


def use(store: Store) -> None:
    """Does what serving does: search, metadata, one vector, all vectors."""
    scores, ids = store.search(store.vectors()[:3], 4)
    assert ids[:, 0].tolist() == [0, 1, 2]
    assert store.items([int(i) for i in ids[0]])[0].id == 0
    assert store.vector(5).shape == (store.dim,) and len(store) == 640


@pytest.fixture
def copy(store_path, tmp_path):
    folder = Path(shutil.copytree(store_path, tmp_path / "store"))
    yield folder
    read_only(folder, on=False)  # so that pytest can clean up


def as_legacy_wal_store(folder: Path) -> None:
    """Puts the metadata back in WAL mode, as stores written before this fix (or by a killed writer) are."""
    conn = sqlite3.connect(folder / "metadata.sqlite")
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.close()


def test_a_store_on_read_only_media_opens_and_searches_without_creating_a_file(copy):
    read_only(copy)  # stops a non-root user; root passes chmod, which is why the listing is compared too
    before = files_and_times(copy)
    store = Store.open(copy)
    use(store)
    store.close()
    assert files_and_times(copy) == before


def test_a_wal_store_whose_wal_files_cannot_be_created_opens_immutable(copy, monkeypatch):
    as_legacy_wal_store(copy)
    read_only(copy)
    before = files_and_times(copy)
    real_connect = sqlite3.connect

    def read_only_volume(database, *args, **kwargs):
        # What SQLite answers on read-only media for a WAL database: it cannot create -wal/-shm.
        if "immutable=1" not in str(database):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only_volume)
    store = Store.open(copy)
    use(store)
    store.close()
    assert files_and_times(copy) == before


_CHECK = """
import json, sys
from emoreact.index import Store
from emoreact.pipeline import train
store = Store.open(sys.argv[1])
scores, ids = store.search(store.vectors()[:2], 3)
store.close()
metrics = train(sys.argv[1], sys.argv[2], "linear", device="cpu", epochs=2)
print(json.dumps({"ids": ids[:, 0].tolist(), "split": metrics["split"]}))
"""


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private read-only bind mount")
@pytest.mark.subprocess
@pytest.mark.parametrize("legacy_wal", [False, True], ids=["store", "legacy-wal-store"])
def test_a_store_on_a_read_only_mount_serves_and_trains(copy, tmp_path, legacy_wal):
    if legacy_wal:
        as_legacy_wal_store(copy)
    before = files_and_times(copy)
    # A bind mount remounted read-only, in a mount namespace of its own: even root cannot write there.
    script = (f'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && touch "$1/probe" 2>/dev/null '
              f'&& exit 99; exec "{sys.executable}" -c "$2" "$1" "$3"')
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(copy),
                             _CHECK, str(tmp_path / "head")], capture_output=True, text=True, timeout=300)
    if result.returncode == 99 or "mount" in result.stderr[:200] and result.returncode != 0 and not result.stdout:
        pytest.skip(f"no read-only bind mount here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"ids": [0, 1], "split": "test"}
    assert files_and_times(copy) == before
