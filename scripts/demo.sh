#!/usr/bin/env bash
# The demo of the README: generates a small synthetic batch (one pair deliberately broken,
# one incomplete) and runs the whole pipeline on it with the local runner, in lenient mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
out=${1:-demo}
exo2micro synth --raw-dir "$out/raw" --pairs 4 --broken
exo2micro run --raw-dir "$out/raw" --outdir "$out/processed" --lenient
echo "demo: open $out/processed/report.html in a browser; per-pair outputs are in $out/processed/<sample>/<dye>/" >&2
