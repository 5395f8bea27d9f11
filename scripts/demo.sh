#!/usr/bin/env bash
# Set up (first run only), then run the demo: generate pictures, clips and captions, train a
# small DSMHN model, export it, serve it on http://127.0.0.1:8000/ with the demo collection
# ingested, and print example queries. A second run reuses everything. Arguments go to
# `hashbridge demo` (e.g. --port 8001, --check).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh --no-browser
exec .venv/bin/hashbridge demo "$@"
