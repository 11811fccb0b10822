"""Fault-injecting task functions for the runner tests (``run_batch(task_fn=...)``).

Each wraps :func:`exo2micro.batch.tasks.process_one` and misbehaves for one pair only. They are
module-level functions, bound with :func:`functools.partial`, so that spawned pool workers and
task subprocesses receive them pickled, exactly as they receive the real task function.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from exo2micro.batch.plan import Task
from exo2micro.batch.tasks import process_one
from exo2micro.sampledye import StageCallback


def _key(task: Task) -> str:
    return f"{task[0]}/{task[1]}"


def kill_pair(key: str, task: Task, on_stage: StageCallback | None = None) -> dict[str, Any]:
    """SIGKILL the process running pair ``key`` (the OOM killer, simulated)."""
    if _key(task) == key:
        os.kill(os.getpid(), signal.SIGKILL)
    return process_one(task, on_stage)


def sleep_pair(key: str, seconds: float, task: Task,
               on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Sleep ``seconds`` before running pair ``key`` (a wedged task)."""
    if _key(task) == key:
        time.sleep(seconds)
    return process_one(task, on_stage)


def raise_in_stage(key: str, err: int, task: Task,
                   on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Make pair ``key`` fail inside its first stage with ``OSError(err)`` on its output
    folder (a full or read-only disk met half-way)."""
    if _key(task) != key:
        return process_one(task, on_stage)
    target = os.path.join(task[2]["output_dir"], task[0], task[1], "tiff", ".x.tmp-1")

    def failing(stage: int, event: str) -> None:
        if on_stage is not None:
            on_stage(stage, event)
        if event == "start":
            raise OSError(err, os.strerror(err), target)

    return process_one(task, failing)


def tick_forever(task: Task, on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Never finish: every 0.1 s rewrite ``<output_dir>/<sample>-<dye>.alive`` (this pid and a
    counter; a process still writing into the output folder) and report a stage start (a
    stage boundary, where a thread-mode task can be stopped)."""
    alive = os.path.join(task[2]["output_dir"], f"{task[0]}-{task[1]}.alive")
    n = 0
    while True:
        n += 1
        with open(alive, "w") as fh:
            fh.write(f"{os.getpid()} {n}\n")
        if on_stage is not None:
            on_stage(1, "start")
        time.sleep(0.1)
