"""Process lifetime of a batch: workers die with their runner, SIGTERM stops like Ctrl-C, and
a script without a ``__main__`` guard is refused instead of re-running itself in every worker.

Workers die with their parent
-----------------------------
A SIGKILLed runner (the OOM killer, a scheduler, ``kill -9``) gets no chance to clean up, and
the kernel releases its output lock at once. Workers that lived on would keep writing into an
output folder that a second run may now lock. So every pool worker and task subprocess calls
:func:`die_with_parent` first: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel
SIGKILL it when its parent exits, and on every platform a daemon thread polls
``os.getppid()`` once per :data:`WATCH_S` seconds as a fallback (and for a parent that died
before the ``prctl`` call). The death signal is tied to the parent *thread* that started the
worker; the runners start workers from the thread that called ``run_batch``, which blocks
until they are gone.

SIGTERM
-------
:func:`sigterm_as_interrupt` turns SIGTERM into :class:`Terminated` (a
:class:`KeyboardInterrupt`), so the runners take the Ctrl-C path: queued tasks are dropped,
workers are stopped and joined, the lock is released last. Then the previous SIGTERM
disposition is re-raised, so a runner killed by a scheduler still dies *by* SIGTERM.

The ``__main__`` guard
----------------------
Spawned workers import the parent's script as ``__mp_main__``. A script that calls
``run_batch(parallel=True)`` at top level would start a batch in every worker.
:func:`refuse_worker_reentry`, called first by ``run_batch``, detects that it runs inside such
an import (a calling frame's module is ``__mp_main__``), leaves a note for the parent in the
pool's status folder (``EXO2MICRO_POOL_DIR``) and exits the worker; the parent turns the note
into :class:`UnguardedMainError` (exit code 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exo2micro.errors import EXIT_USAGE, Exo2microError

#: Seconds between two checks of the parent pid by a worker's watch thread.
WATCH_S = 1.0
PR_SET_PDEATHSIG = 1
#: Environment variable naming a pool's status folder; spawned workers inherit it.
POOL_DIR_ENV = "EXO2MICRO_POOL_DIR"
GUARD_NOTE = "unguarded-main.txt"


class Terminated(KeyboardInterrupt):
    """The runner received SIGTERM; handled like Ctrl-C, then SIGTERM is re-raised."""


class UnguardedMainError(Exo2microError):
    """``run_batch`` was called at import time of a script without a ``__main__`` guard."""

    exit_code = EXIT_USAGE


def die_with_parent(parent_pid: int) -> None:
    """Make this process die when ``parent_pid`` (its parent) exits (module docstring)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(128 + signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="exo2micro-parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_S)
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread; on the way out the
    previous handler is restored and, if SIGTERM arrived, the signal is raised again."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"received signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def guard_message(script: str) -> str:
    """What to write when ``script`` calls ``run_batch`` without a ``__main__`` guard."""
    return (f"run_batch() was called while a worker process imported {script}: the script has "
            f"no `if __name__ == \"__main__\":` guard, so every spawned worker would re-run the "
            f"whole batch; put the run_batch(...) call under `if __name__ == \"__main__\":` "
            f"(README, 'Running a batch on one machine', Python)")


def refuse_worker_reentry() -> None:
    """Exit this process if it is a spawned worker importing its parent's script (module
    docstring); do nothing anywhere else."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") != "__mp_main__":
        frame = frame.f_back
    if frame is None:
        return
    message = guard_message(str(frame.f_globals.get("__file__") or "the main script"))
    folder = os.environ.get(POOL_DIR_ENV)
    if folder:
        with contextlib.suppress(OSError):
            (Path(folder) / GUARD_NOTE).write_text(message)
        os._exit(EXIT_USAGE)
    raise UnguardedMainError(message)


def raise_for_guard_note(status_dir: Path) -> None:
    """Raise :class:`UnguardedMainError` if a worker of this pool left the guard note."""
    note = status_dir / GUARD_NOTE
    if note.is_file():
        raise UnguardedMainError(note.read_text())
