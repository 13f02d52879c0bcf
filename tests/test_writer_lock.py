"""One writer per store: a second writer fails at once naming the first (or waits with --wait); readers
never wait. The holder is another process that says when it holds the lock, so nothing here is timed."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import ROOT, TINY_MODEL
from emoreact import cli
from emoreact.index import Store, StoreError
from synthetic import draw

# Takes the write lock of the store folder argv[1], says so, and holds it until its stdin closes.
HOLDER = """
import sys
from emoreact.index.writelock import WriterLock
lock = WriterLock(sys.argv[1])
assert lock.acquire()
print("holding", flush=True)
sys.stdin.read()
lock.release()
"""


def hold(store) -> subprocess.Popen:
    """Gives a process holding the write lock of `store`; close its stdin to release it."""
    store.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "holding\n"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def embed_args(source, store) -> list[str]:
    return ["embed", str(source), "--store", str(store), "--model", TINY_MODEL, "--pretrained", "none",
            "--device", "cpu", "--workers", "0", "--no-progress"]


@pytest.fixture
def small_source(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for n in range(6):
        draw(("happy",), seed=90_000 + n).save(folder / f"{n}.png")
    return folder


def test_second_writer_fails_at_once_naming_the_holder_while_readers_go_on(tmp_path, store_path, small_source):
    store = shutil.copytree(store_path, tmp_path / "store")
    holder = hold(store)
    try:
        reader = Store.open(store)  # serving and training never take the lock
        assert len(reader) == 640 and reader.search(reader.vectors()[:1], 1)[1][0, 0] == 0
        reader.close()
        result = CliRunner().invoke(cli.main, embed_args(small_source, store))
        assert result.exit_code == 1
        assert f"store {store} is being written by pid {holder.pid} since " in result.output
        assert "--wait" in result.output and "Traceback" not in result.output
    finally:
        release(holder)


@pytest.mark.subprocess
def test_second_writer_with_wait_starts_when_the_first_finishes(tmp_path, small_source):
    store = tmp_path / "store"
    holder = hold(store)
    job = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *embed_args(small_source, store), "--wait"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in job.stderr:  # the job logs that it waits, then blocks on the lock
            if f"waiting for pid {holder.pid} since" in line:
                break
        else:
            pytest.fail(f"the job never waited; it exited with {job.wait()}")
        assert job.poll() is None
    finally:
        release(holder)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert json.loads(out)["added"] == 6 and len(Store.open(store)) == 6


def test_a_killed_writer_leaves_no_stale_lock(tmp_path, backbone, label_config):
    holder = hold(tmp_path / "store")
    holder.kill()  # SIGKILL: it never releases; the kernel drops its lock as it dies
    holder.wait()
    store = Store.create_or_resume(tmp_path / "store", backbone.spec.model_id, backbone.dim, {}, label_config.names)
    store.close()


def test_two_writers_in_one_process_are_refused_too(tmp_path, backbone, label_config):
    args = (backbone.spec.model_id, backbone.dim, {}, label_config.names)
    first = Store.create_or_resume(tmp_path / "store", *args)
    with pytest.raises(StoreError, match=f"is being written by pid {os.getpid()} since"):
        Store.create_or_resume(tmp_path / "store", *args)
    first.close()
    Store.create_or_resume(tmp_path / "store", *args).close()  # released by close()
