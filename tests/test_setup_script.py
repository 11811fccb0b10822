"""scripts/setup.sh installs quietly: no warning a new user would take for a problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner_helpers import ROOT

pytestmark = pytest.mark.slow


def test_editable_install_prints_no_build_backend_warning(tmp_path: Path) -> None:
    """The same install as setup.sh (editable, build isolation, from the repository root, the
    script's warning filter) into a throw-away venv that borrows the installed dependencies."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    quiet = re.search(r'^QUIET_EDITABLE="([^"]+)"$', text, flags=re.M)
    assert quiet and 'PYTHONWARNINGS="$QUIET_EDITABLE"' in text, "setup.sh lost its filter"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    # this venv's (recent) pip installs into the throw-away one, as setup.sh's upgraded pip does
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-deps", "-e", str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": quiet.group(1), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
