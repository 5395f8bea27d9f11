#!/usr/bin/env bash
# Set up, then train and evaluate DSMHN on MIRFlickr-25K at 32 bits (the headline benchmark).
# Extra arguments are config overrides, e.g. bits=64 split_seed=7.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -d ../shared/datasets/mirflickr25k ]; then
  echo "MIRFlickr-25K not found at ../shared/datasets/mirflickr25k; with it elsewhere, run" \
    "hashbridge train --config configs/mirflickr25k.toml --set 'data.path=\"/your/mirflickr25k\"' --out runs/NAME" >&2
  exit 2
fi
bash scripts/setup.sh
sets=()
for kv in "$@"; do sets+=(--set "$kv"); done
run="runs/mirflickr25k-$(date +%Y%m%d-%H%M%S)"
.venv/bin/hashbridge train --config configs/mirflickr25k.toml --out "$run" "${sets[@]}"
.venv/bin/hashbridge eval --run "$run" --out "$run/eval.json"
