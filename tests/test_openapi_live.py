"""The schemathesis CLI against a live `cli.py serve` (waitress, keys, a writable store): every documented
operation, positive and negative data, all checks. Fails on any failure schemathesis reports."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ADMIN_KEY, MODERATOR, start_server

pytestmark = pytest.mark.subprocess
pytest.importorskip("schemathesis")  # the test extra

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def live(tmp_path_factory, store_path, linear_head):
    folder = tmp_path_factory.mktemp("live")
    shutil.copytree(store_path, folder / "store")  # feedback uploads and retrains write here
    shutil.copytree(linear_head, folder / "head")
    keys = folder / "keys.txt"
    keys.write_text(f"mod:{MODERATOR}\nops:{ADMIN_KEY}:admin\n")
    # A high feedback rate: the run sends hundreds of corrections, and 429s would stop it testing them.
    yield from start_server(folder / "store", folder / "head", folder / "serve.log",
                            ["--api-keys", str(keys), "--feedback-per-minute", "100000"])


def test_schemathesis_finds_no_failure_against_a_live_server(live, tmp_path):
    base, _ = live
    if not SCHEMATHESIS.exists():
        pytest.skip(f"the schemathesis command is not installed beside {sys.executable}")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{base}/api/openapi.json", "--checks", "all", "--max-examples", "10",
         "--workers", "1", "--seed", "1", "--header", f"Authorization: Bearer {ADMIN_KEY}",
         "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "No issues found" in output, output[-6000:]
    assert "13 selected / 13 total" in output  # every operation, the new ones included
