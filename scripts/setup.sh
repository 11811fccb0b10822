#!/usr/bin/env bash
# Create .venv (if needed) and install exo2micro with its test tools into it.
# Used by scripts/demo.sh and scripts/test.sh; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "exo2micro needs Python >= 3.10 (found: $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
QUIET_EDITABLE="ignore:Editable installation"
stamp=.venv/.exo2micro-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing exo2micro and test tools into .venv" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  # setuptools warns on every editable install that a folder named like the package may shadow
  # it; that is the point of an editable install here, so the known, harmless warning is hidden.
  PYTHONWARNINGS="$QUIET_EDITABLE" .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
