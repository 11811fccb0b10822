#!/usr/bin/env bash
# The test command of the README: sets everything up, lints, runs the whole test suite.
#
#   bash scripts/test.sh              everything (what CI runs)
#   bash scripts/test.sh --quick      skip the slow tests and the real Nextflow runs
#   bash scripts/test.sh -k resume    extra arguments go to pytest
#
# The Nextflow tests run the pipeline with a real Nextflow: scripts/setup-nextflow.sh assembles
# the pinned version from Maven Central (needs Java 17-24 and mvn), or E2M_NEXTFLOW names a
# launcher of your own. Without either they skip, except under CI=true, where they must run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
marks=()
if [ "${1:-}" = "--quick" ]; then
  shift
  marks=(-m "not slow and not nextflow")
fi
echo "== ruff" >&2
ruff check exo2micro tests bench
if [ ${#marks[@]} -eq 0 ] && [ -z "${E2M_NEXTFLOW:-}" ]; then
  echo "== Nextflow test runtime" >&2
  if E2M_NEXTFLOW=$(bash scripts/setup-nextflow.sh); then
    export E2M_NEXTFLOW
  elif [ "${CI:-}" = "true" ]; then
    echo "CI: the Nextflow test runtime could not be assembled (see above)" >&2
    exit 1
  else
    echo "== Nextflow test runtime unavailable (see above): the Nextflow runs will skip" >&2
  fi
fi
echo "== pytest" >&2
pytest -q "${marks[@]}" "$@"
if command -v nf-test >/dev/null 2>&1 && [ ${#marks[@]} -eq 0 ]; then
  echo "== nf-test" >&2
  PATH="$(dirname "${E2M_NEXTFLOW:-$(command -v nextflow || echo .)}"):$PATH" \
    nf-test test --profile test
fi
