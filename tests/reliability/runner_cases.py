"""Shared pieces of the runner's reliability cases (``test_runner_*.py``): small raw batches,
runner processes marked in their environment, and the check that none of their processes
survives.

A runner started by a test is marked with ``E2M_CASE_MARK=<unique>`` in its environment; its
pool workers and task subprocesses inherit the mark, so :func:`survivors` finds them even after
the runner died and they were re-parented away from the test process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil

from tests.runner_helpers import child_env, exo2micro_cmd

MARK = "E2M_CASE_MARK"


def new_mark() -> str:
    return uuid.uuid4().hex


def marked_env(mark: str, **extra: str) -> dict[str, str]:
    """The environment of a runner child: the repository on the path, plus the mark."""
    return child_env(**{MARK: mark}, **extra)


def survivors(mark: str) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose environment carries ``mark``."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(MARK) == mark:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def wait_no_survivors(mark: str, timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until no marked process lives (or ``timeout`` seconds); return those left."""
    deadline = time.monotonic() + timeout
    left = survivors(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = survivors(mark)
    return left


def kill_all(procs: list[psutil.Process]) -> None:
    """Clean up after a failed assertion: SIGKILL what survived."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue


def start_runner(args: list[str], mark: str) -> subprocess.Popen[str]:
    """``python -m exo2micro ARGS`` in the background, marked, output captured."""
    return subprocess.Popen(exo2micro_cmd(*args), env=marked_env(mark), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def driver(path: Path, body: str, *, guard: bool = True) -> Path:
    """Write a Python script calling the runner (``body``), under a ``__main__`` guard or not."""
    code = textwrap.dedent(body).strip()
    if guard:
        code = 'if __name__ == "__main__":\n' + textwrap.indent(code, "    ")
    path.write_text("import functools\nfrom exo2micro.parallel import run_batch\n"
                    "from tests import faults\n\n" + code + "\n")
    return path


def start_driver(script: Path, mark: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script)], env=marked_env(mark), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Wait until ``path`` exists (raise if ``proc`` ends first or after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"runner ended (rc {proc.returncode}) before {path}:\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")
