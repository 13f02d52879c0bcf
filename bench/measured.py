"""`python -m emoreact.bench.measured OUT.json ARGS...`: runs `python -m emoreact ARGS...` and, as it exits,
writes its peak resident memory to OUT.json ({"peak_rss_mib": N}).

The peak is read from the process itself (`VmHWM`), not from the parent's `wait4`: Linux's ru_maxrss of
a child also counts the memory its parent held when it forked (the count survives exec), so a large
benchmark process would inflate the figure of every command it starts.

The command runs as the program `python -m emoreact` runs (`runpy`), not through an import of the CLI:
the benchmarks drive the commands as a user does, and the CLI, which offers `emoreact bench`, is the
one that depends on them (the layers in pyproject.toml).
"""
from __future__ import annotations

import atexit
import json
import runpy
import sys
from pathlib import Path

from .common import peak_rss_mib


def main(out: str, args: list[str]) -> None:
    atexit.register(lambda: Path(out).write_text(json.dumps({"peak_rss_mib": peak_rss_mib()})))
    sys.argv = ["emoreact", *args]
    runpy.run_module("emoreact", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
