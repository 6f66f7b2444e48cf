#!/usr/bin/env bash
# Lint, format check and the whole test suite (unit, property, golden), as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m pytest -q "$@"
