"""The wheel: only `emoreact/` inside, with what the commands need at run time, and it works when
installed into a fresh environment and run from a folder outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import emoreact
from emoreact import cli

ROOT = Path(__file__).resolve().parents[1]
# what a checkout may hold besides the sources (see .gitignore); never part of a build
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "runs", "artifacts", "test-artifacts", "__pycache__",
                                      "*.egg-info", "build", "dist", ".pytest_cache", ".hypothesis")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Builds the wheel from a copy of the checkout (a build writes build/ and egg-info into its source)."""
    src = tmp_path_factory.mktemp("src") / "emoreact"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCES)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(out.glob("emoreact-*.whl"))


@pytest.mark.subprocess
def test_the_wheel_holds_only_the_emoreact_package_and_its_run_time_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"emoreact-{emoreact.__version__}.dist-info"
    assert {name.split("/")[0] for name in names} == {"emoreact", dist_info}
    files = set(names)
    for needed in ["emoreact/__init__.py", "emoreact/cli.py", "emoreact/pipeline.py", "emoreact/predictor.py",
                   "emoreact/labels.toml", "emoreact/embed/model_configs/emoreact-emoji-s.json",
                   "emoreact/embed/weights/emoreact-emoji-s.safetensors", "emoreact/embed/weights/LICENSE.md",
                   "emoreact/web/templates/index.html", "emoreact/web/static/app.js", "emoreact/demo/__init__.py",
                   "emoreact/demo/labels.csv", "emoreact/demo/labels.toml", "emoreact/demo/manifest.csv",
                   "emoreact/bench/__init__.py", "emoreact/offline_demo.py", "emoreact/rayutil.py",
                   "emoreact/index/ray_build.py", f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/NOTICE.md",
                   f"{dist_info}/licenses/embed/weights/LICENSE.md",
                   f"{dist_info}/licenses/demo/LICENSES/OpenMoji-CC-BY-SA-4.0.txt"]:
        assert needed in files, needed
    shipped_images = {n for n in names if n.startswith("emoreact/demo/images/")}
    assert len(shipped_images) == len(list((ROOT / "demo" / "images").glob("*/*.png")))
    assert not [n for n in names if n.startswith(("emoreact/tests/", "emoreact/tools/"))]
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert f"Version: {emoreact.__version__}" in metadata
    assert "License-Expression: Apache-2.0 AND CC-BY-SA-4.0 AND CC-BY-4.0 AND MIT" in metadata


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel (--no-deps); the dependencies come from the test environment's
    site-packages through a .pth file, so no network is needed."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test-environment.pth").write_text("\n".join(sorted(shared)) + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _run(venv: Path, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done


@pytest.mark.subprocess
def test_installed_wheel_runs_the_cli_and_the_python_api_from_another_folder(installed, tmp_path, demo_run):
    python = str(installed / "bin" / "python")
    where = _run(installed, [python, "-c", "import emoreact; print(emoreact.__file__); print(emoreact.__version__)"],
                 tmp_path).stdout.split()
    assert Path(where[0]).is_relative_to(installed) and where[1] == emoreact.__version__

    helped = _run(installed, ["emoreact", "--help"], tmp_path).stdout
    assert all(f"  {name} " in helped for name in cli.main.commands)
    assert _run(installed, [python, "-m", "emoreact", "--help"], tmp_path).stdout == helped

    # The demo's store and head, as `emoreact demo` writes them (built once per test run, tests/test_demo.py
    # checks them); the installed package serves them with the bundled model from the wheel.
    demo, _ = demo_run
    script = """
import json, sys
from importlib.resources import files
import emoreact
store, head = sys.argv[1:3]
image = files("emoreact.demo") / "images" / "google" / "1f62d.png"   # loudly crying face, shipped in the wheel
with_store = emoreact.load(store=store, head=head, device="cpu").predict(str(image), k=2)
head_only = emoreact.load(head=head, device="cpu").predict(image.read_bytes())
print(json.dumps({"with_store": with_store, "head_only": head_only}))
"""
    results = json.loads(_run(installed, [python, "-c", script, str(demo / "store"), str(demo / "head")],
                              tmp_path).stdout)
    assert len(results["with_store"]["neighbours"]) == 2 and "neighbours" not in results["head_only"]
    assert results["with_store"]["emotion_scores"] == results["head_only"]["emotion_scores"]
    assert "sad" in results["head_only"]["predicted_emotions"]
    assert "😂" in results["head_only"]["blocked_emojis"]
