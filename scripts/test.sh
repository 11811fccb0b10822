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
if command -v nextflow >/dev/null 2>&1 && command -v nf-test >/dev/null 2>&1; then
  echo "== nf-test (nextflow found)" >&2
  nf-test test --profile test
else
  echo "== nf-test skipped: nextflow/nf-test not on PATH (the Nextflow code is checked statically by tests/nextflow)" >&2
fi
