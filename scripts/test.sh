#!/usr/bin/env bash
# Set up (if needed), then lint, type-check, check the import layers and run the whole suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
export PYTHONHASHSEED=0
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
echo "== import layers" && .venv/bin/lint-imports
echo "== pytest" && .venv/bin/python -m pytest -q "$@"
