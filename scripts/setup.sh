#!/usr/bin/env bash
# Create .venv and install hashbridge with its dev tools. Safe to re-run: it reinstalls only
# when pyproject.toml changed. torch is pinned through a constraint so that no dependency can
# pull a newer (multi-GB CUDA) build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.hashbridge-installed"
want="$(sha256sum pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing dependencies (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
