"""Prints each module's line coverage from coverage.py's JSON report; fails if any is under the floor.

    python -m coverage json -o coverage-fast.json
    python tools/coverage_floor.py coverage-fast.json --floor 50

tools/coverage_fast.sh runs the fast tier under coverage, then this.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the JSON written by `coverage json`")
    parser.add_argument("--floor", type=float, default=50.0, help="least line coverage of any module, in %%")
    parser.add_argument("--exempt", action="append", default=[], metavar="MODULE",
                        help="a module the floor does not apply to (repeatable); say why where it is passed")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        files, totals = report["files"], report["totals"]
    except (OSError, ValueError, KeyError) as exc:
        parser.error(f"{args.report} is not a coverage JSON report ({exc}); write one with `coverage json -o FILE`")
    rows = sorted((f["summary"]["percent_covered"], name, f["summary"]["num_statements"]) for name, f in files.items())
    width = max(len(name) for _, name, _ in rows)
    unknown = set(args.exempt) - set(files)
    if unknown:
        parser.error(f"--exempt names no module of the report: {', '.join(sorted(unknown))}")
    for percent, name, statements in rows:
        flag = "  (exempt)" if name in args.exempt else "  <- under the floor" if percent < args.floor else ""
        print(f"{name:<{width}}  {statements:>5} lines  {percent:5.1f}%{flag}")
    print(f"{'TOTAL':<{width}}  {totals['num_statements']:>5} lines  {totals['percent_covered']:5.1f}%")
    below = [name for percent, name, _ in rows if percent < args.floor and name not in args.exempt]
    if below:
        print(f"{len(below)} module(s) under {args.floor:g}% line coverage: {', '.join(below)}", file=sys.stderr)
        return 1
    exempt = f", {len(args.exempt)} exempt" if args.exempt else ""
    print(f"every module at {args.floor:g}% line coverage or more ({len(rows)} modules{exempt})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
