"""Running one task, and the result of a task whose process died.

:func:`process_one` is the default *task function* of every runner: it runs one task through
:class:`~exo2micro.sampledye.SampleDye` and returns its result dict; it never raises for a failed
pair. The runners accept another task function with the same signature (:data:`TaskFn`): the
tests inject faults that way (a function that SIGKILLs its process, sleeps, or raises before
calling :func:`process_one`), so no production code path knows about tests. A task function
must be importable by name (a module-level function or a :func:`functools.partial` of one):
pool workers and task subprocesses receive it pickled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from exo2micro.batch.plan import Task, sample_dye, split_options
from exo2micro.errors import ParameterError
from exo2micro.io.layout import PairLayout
from exo2micro.pipeline import StageCallback

#: ``fn(task, on_stage) -> result dict``: what a runner calls for each task.
TaskFn = Callable[[Task, StageCallback | None], dict[str, Any]]

WORKER_DIED = "worker process died (likely out of memory)"
SUBPROCESS_KILLED = "subprocess killed (likely OOM)"


class WorkerDiedError(MemoryError):
    """A pool worker or task subprocess was killed (by the OOM killer, most likely)."""


class TaskTimeoutError(TimeoutError):
    """A task subprocess ran longer than ``timeout_per_task``."""


def process_one(args: Task, on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Process one ``(sample, dye, options)`` task; return its result dict (never raises for a
    failed pair). Importable by name, as spawned pool workers require."""
    run, _ = split_options(args[2])
    return sample_dye(args).execute(
        run.get("from_stage"), run.get("to_stage"), bool(run.get("force")),
        threads=run.get("threads"), on_stage=on_stage, run_info=run.get("run_info"),
        memory_debug=bool(run.get("memory_debug")))


def lost_result(task: Task, exc: BaseException, stage: int | None, attempts: int,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The error result of a task whose process died (written by the parent)."""
    from exo2micro.report.result import write_result

    sd = sample_dye(task)
    try:
        layout: PairLayout | None = sd.layout
    except ParameterError:
        layout = None
    result = sd.failure_result(exc, layout, stage, attempts)
    result.error = {**(result.error or {}), **(extra or {})}
    result.runner = {**(task[2].get("run_info") or {}), "attempts": attempts}
    if layout is not None and result.is_written:
        with contextlib.suppress(OSError):
            write_result(layout, result)
    return result.to_json()


def stage_in_progress(task: Task) -> int | None:
    """The first stage of a task whose outputs are not current (where a killed run was)."""
    from exo2micro.batch.preflight import stages_to_run

    sd = sample_dye(task)
    try:
        todo = stages_to_run(sd.pair_dir, sd.layout.params, to_stage=task[2].get("to_stage"))
    except (ParameterError, OSError):
        return None
    return todo[0] if todo else None
