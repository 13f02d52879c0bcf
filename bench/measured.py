"""`python -m emoreact.bench.measured OUT.json ARGS...`: runs `emoreact ARGS...` and, as it exits, writes
its peak resident memory to OUT.json ({"peak_rss_mib": N}).

The peak is read from the process itself (`VmHWM`), not from the parent's `wait4`: Linux's ru_maxrss of
a child also counts the memory its parent held when it forked (the count survives exec), so a large
benchmark process would inflate the figure of every command it starts.
"""
from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path

from .common import peak_rss_mib


def main(out: str, args: list[str]) -> None:
    atexit.register(lambda: Path(out).write_text(json.dumps({"peak_rss_mib": peak_rss_mib()})))
    from emoreact.cli import main as cli

    cli(args=args, prog_name="emoreact")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
