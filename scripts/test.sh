#!/usr/bin/env bash
# The test command of the README: sets everything up, lints, runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" >&2
ruff check exo2micro tests bench
echo "== pytest" >&2
pytest -q "$@"
if command -v nextflow >/dev/null 2>&1; then
  echo "== nextflow lint (nextflow found)" >&2
  nextflow lint .
  if command -v nf-test >/dev/null 2>&1; then
    echo "== nf-test" >&2
    nf-test test --profile test
  else
    echo "== nf-test skipped: nf-test not on PATH" >&2
  fi
else
  echo "== nextflow lint / nf-test skipped: nextflow not on PATH (tests/nextflow checked the code with the Nextflow parser)" >&2
fi
