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
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) picks torch's index: PyPI's
  # Linux torch pulls CUDA; a machine's own index may serve the CPU build already.
  .venv/bin/python -m pip install -q -c scripts/constraints.txt \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
# The browser test drives Debian's chromium + chromedriver. Install them when missing and we
# can (root with apt-get); otherwise that test skips, or fails under CI=true. `--no-browser`
# leaves them out (the demo does not need a browser).
if [ "${1:-}" != "--no-browser" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver for the browser test" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      chromium chromium-driver >&2
  else
    echo "setup: /usr/bin/chromium or /usr/bin/chromedriver is missing and this is not root:" \
      "tests/service/test_search_page.py will skip; install: apt-get install chromium chromium-driver" >&2
  fi
fi
