"""The output-folder lock: holder info, refusal while held, stale locks, re-entrancy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exo2micro.batch.lock import LOCK_NAME, OutputLock, read_holder
from exo2micro.errors import EXIT_USAGE, LockError, exit_code_for
from tests.runner_helpers import child_env

HOLD = """
import sys, time
from exo2micro.batch.lock import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Another process holding the lock on ``tmp_path / 'out'``."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True, env=child_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


def test_lock_records_holder_and_is_removed(tmp_path: Path) -> None:
    with OutputLock(tmp_path / "out") as lock:
        info = read_holder(lock.path)
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert lock.path.name == LOCK_NAME
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_second_run_is_refused_with_the_holder_named(holder: tuple[Path, subprocess.Popen]
                                                     ) -> None:
    out, proc = holder
    with pytest.raises(LockError) as info:
        OutputLock(out).acquire()
    msg = str(info.value)
    assert f"pid {proc.pid}" in msg and str(out) in msg and "is in use" in msg
    assert exit_code_for(info.value) == EXIT_USAGE


def test_lock_is_free_again_when_the_holder_dies(holder: tuple[Path, subprocess.Popen]
                                                 ) -> None:
    out, proc = holder
    proc.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
    proc.wait()
    assert (out / LOCK_NAME).exists()
    with OutputLock(out):
        assert read_holder(out / LOCK_NAME)["pid"] == os.getpid()


def test_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host":
                                             socket.gethostname(), "started": "earlier"}))
    t0 = time.monotonic()
    with OutputLock(out):
        pass
    assert time.monotonic() - t0 < 1


def test_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputLock(out), OutputLock(out):
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()
