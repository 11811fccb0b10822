"""The real Nextflow runtime for the tests (tests/nextflow/README.md, "Real runs").

``scripts/setup-nextflow.sh`` assembles the pinned Nextflow from Maven Central (checked against
``tests/nextflow/runtime/jars.sha256``) and prints the path of its launcher. ``E2M_NEXTFLOW``
names another launcher (for example a site's own Nextflow >= 25.04) and skips the assembly.

When the runtime cannot be had (no Java 17-24, no Maven, no network), the tests marked
``nextflow`` are skipped with the reason on a developer's machine and fail under ``CI=true``:
CI must never turn a broken runtime into a quiet skip.
"""

from __future__ import annotations

import csv
import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-nextflow.sh"
#: The project's tools (bin/ and the venv's console scripts) come first on the tasks' PATH.
VENV_BIN = Path(sys.executable).parent


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Nextflow test runtime is required under CI=true: {reason}")
    pytest.skip(f"Nextflow test runtime unavailable: {reason}")


@functools.cache
def _setup() -> tuple[str | None, str]:
    override = os.environ.get("E2M_NEXTFLOW")
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override, ""
        return None, f"E2M_NEXTFLOW={override} is not an executable file"
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=900)
    if proc.returncode != 0:
        return None, f"{SETUP.name} failed: {proc.stderr.strip()[-1500:]}"
    return proc.stdout.strip().splitlines()[-1], ""


def launcher() -> str:
    """Path of the ``nextflow`` launcher; skips or fails (under CI) when there is none."""
    path, reason = _setup()
    if path is None:
        _unavailable(reason)
    return path


def nextflow_env(**extra: str) -> dict[str, str]:
    """Environment of a test run: the venv's tools first on PATH, plain logs, no user site."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NXF_", "JAVA_TOOL"))}
    env.update(
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
        NXF_ANSI_LOG="false",
        NXF_DISABLE_CHECK_LATEST="true",
        # Start-up is most of a short run: C1 only, a serial collector.
        NXF_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1",
    )
    env.update(extra)
    return env


def run_nextflow(args: Sequence[str], cwd: Path, timeout: float = 600,
                 **env: str) -> subprocess.CompletedProcess[str]:
    """``nextflow ARGS`` in ``cwd`` (its .nextflow/ cache and work/ live there)."""
    return subprocess.run([launcher(), *args], cwd=cwd, env=nextflow_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def run_pipeline(cwd: Path, *args: str, timeout: float = 600, project: Path = REPO,
                 **env: str) -> subprocess.CompletedProcess[str]:
    """``nextflow run <project> ARGS`` with the log in ``cwd/nextflow.log``."""
    return run_nextflow(["-log", str(cwd / "nextflow.log"), "run", str(project), *args],
                        cwd=cwd, timeout=timeout, **env)


def explain(proc: subprocess.CompletedProcess[str], cwd: Path | None = None) -> str:
    """The end of a run's output (and of its log), for assertion messages."""
    text = (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-3000:]}")
    log = cwd / "nextflow.log" if cwd else None
    if log and log.is_file():
        text += f"\n--- nextflow.log\n{log.read_text(errors='replace')[-3000:]}"
    return text


def trace_rows(outdir: Path, suffix: str) -> list[dict[str, str]]:
    """Rows of ``pipeline_info/execution_trace_<suffix>.txt`` (one per task attempt)."""
    trace = outdir / "pipeline_info" / f"execution_trace_{suffix}.txt"
    assert trace.is_file(), f"no {trace}"
    with trace.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def process_name(row: dict[str, str]) -> str:
    """``EXO2MICRO:LOAD`` -> ``LOAD``."""
    return row["process"].rsplit(":", 1)[-1]
