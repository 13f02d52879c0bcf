#!/usr/bin/env bash
# The fast tier (`pytest -m "not slow"`) under coverage.py: prints each module's line coverage and fails if
# any module of the package is under 50%. Extra arguments go to pytest.
#   tools/coverage_fast.sh                 (PYTHON=... to use another interpreter than .venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export COVERAGE_FILE=${COVERAGE_FILE:-.coverage.fast}
"$PYTHON" -m coverage erase
"$PYTHON" -m coverage run -m pytest -q -m "not slow" "$@"
"$PYTHON" -m coverage json -q -o coverage-fast.json
"$PYTHON" tools/coverage_floor.py coverage-fast.json --floor 50
