"""The layer picture (docs/design.md, "Layers") is a test: the import-linter contracts in pyproject.toml hold
for the package, and on a copy of it with planted faults they catch what they are there for: an import
upwards, an entry point imported from below, a cycle, a module left out of the picture."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# No skip without import-linter: it is in the test extra, and a skipped picture would be a wish again.


def lint_imports(folder: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs import-linter on `folder`'s pyproject.toml in a process of its own: it sets up logging and
    sys.path for itself, which would leak into the other tests of this process."""
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
               "sys.exit(lint_imports_command())", "--no-cache"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layer_contracts():
    done = lint_imports(ROOT)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report  # the report names each import that breaks a contract, with its line
    assert "Contracts: 3 kept, 0 broken" in report, report


def copy_package(to: Path) -> Path:
    """Copies the package's modules (its .py files, no data) to `to`/emoreact; gives that folder."""
    package = to / "emoreact"
    for source in [*ROOT.glob("*.py"), *ROOT.glob("*/**/*.py")]:
        relative = source.relative_to(ROOT)
        if all((ROOT / Path(*relative.parts[:depth]) / "__init__.py").exists()
               for depth in range(1, len(relative.parts))):  # inside the package, not tests/ or tools/
            (package / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, package / relative)
    shutil.copyfile(ROOT / "pyproject.toml", to / "pyproject.toml")
    return package


def test_the_contracts_catch_an_upward_import_an_entry_point_a_cycle_and_an_unplaced_module(tmp_path):
    package = copy_package(tmp_path)
    (package / "index" / "zz_upward.py").write_text("from emoreact.pipeline import embed_source\n")
    (package / "heads" / "zz_entry.py").write_text("import emoreact.bench.common\n")
    (package / "embed" / "zz_a.py").write_text("import emoreact.embed.zz_b\n")
    (package / "embed" / "zz_b.py").write_text("import emoreact.embed.zz_a\n")
    (package / "zz_unplaced.py").write_text("")
    # A process of its own, so that `emoreact` is the copy: this process has imported the checkout.
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = lint_imports(tmp_path, env)
    report = done.stdout + done.stderr
    assert done.returncode == 1, report
    assert "Contracts: 0 kept, 3 broken" in report, report
    # The broken contracts' sections, in the order of pyproject.toml: layers, forbidden, acyclic.
    _, broken = report.split("Broken contracts")
    layers, rest = broken.split("\nembed, heads and index never import an entry point")
    forbidden, acyclic = rest.split("\nNo import cycles between the modules of a package")
    assert "emoreact.index.zz_upward -> emoreact.pipeline" in layers, report
    assert "- emoreact.zz_unplaced" in layers, report  # exhaustive: every module has its place in the picture
    assert "emoreact.heads.zz_entry -> emoreact.bench.common" in forbidden, report
    assert "No cycles are allowed in emoreact.embed." in acyclic and ".zz_b -> .zz_a" in acyclic, report
