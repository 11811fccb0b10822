"""Batch processing on one machine: the public ``run_batch`` API (exo2micro 2.x names) and
its execution modes.

::

    from exo2micro.parallel import run_batch

    if __name__ == "__main__":          # required with parallel=True/'process' in a script
        results = run_batch(samples=["CD070", "CD063"], dyes=["SybrGld", "DAPI"],
                            parallel=True, n_workers=2, output_dir="processed", raw_dir="raw")

This module is the stable public face of :mod:`exo2micro.batch`, which holds the code by
concern (``docs/architecture.md``): it re-exports the public names — :func:`run_batch`,
:func:`build_task_list`, :func:`process_one`, :func:`run_serial`, :func:`run_parallel`,
:func:`run_subprocess`, :func:`print_summary` — and the helpers the tools and tests use.

A *task* is ``(sample, dye, options)`` (:func:`build_task_list`); :func:`process_one` runs one
task through :class:`~exo2micro.sampledye.SampleDye` and returns its result dict (``sample``,
``dye``, ``status`` = ``complete`` or ``error: <reason>``, ``scale_estimate`` and the other
``result.json`` keys). A failing pair never stops the batch.

Execution modes (``parallel=``)
-------------------------------
``False`` / ``'serial'`` (default)
    One task after the other in this process; each task gets the whole CPU budget as threads.
``True`` / ``'process'``
    A pool of ``n_workers`` *spawned* worker processes; a worker killed by the OOM killer
    costs only its own task (``error: worker process died (likely out of memory)``).
``'thread'``
    A thread pool of ``n_workers`` in this process; memory is shared.
``'subprocess'``
    One fresh ``python`` process per task, one at a time; ``timeout_per_task`` kills a wedged
    task, a task killed by signal 9 is ``error: subprocess killed (likely OOM)``.
``'auto'`` (the default of ``exo2micro run``)
    The process pool when at least two pairs fit the CPU budget and 80 % of the available
    memory, serial otherwise.

:mod:`exo2micro.batch.runners` details each mode (memory, concurrency, interrupts);
:mod:`exo2micro.batch.lifecycle` how workers die with the runner and why a script must guard
its ``run_batch`` call with ``if __name__ == "__main__":`` (a worker that re-imports an
unguarded script is stopped with that advice, exit code 2).

CPU budget
----------
:func:`exo2micro.resources.cpu_budget` (explicit ``cpus`` > ``SLURM_CPUS_PER_TASK`` > CPU
affinity > cgroup quota > host count). Pool modes run ``min(n_workers, budget, tasks)``
workers with ``budget // workers`` threads each, so workers × threads never exceeds the
budget; serial and subprocess modes give the one running task the whole budget.
"""

from __future__ import annotations

from exo2micro.batch.api import run_batch
from exo2micro.batch.plan import (
    MODES,
    TASK_KEYS,
    Task,
    build_task_list,
    choose_auto_mode,
    normalize_mode,
    plan_workers,
)
from exo2micro.batch.progress import Progress, Reporter
from exo2micro.batch.report import print_summary, write_batch_summary
from exo2micro.batch.runners import run_parallel, run_serial, run_subprocess
from exo2micro.batch.tasks import (
    SUBPROCESS_KILLED,
    WORKER_DIED,
    TaskFn,
    TaskTimeoutError,
    WorkerDiedError,
    process_one,
)

__all__ = [
    "MODES", "SUBPROCESS_KILLED", "TASK_KEYS", "WORKER_DIED", "Progress", "Reporter", "Task",
    "TaskFn", "TaskTimeoutError", "WorkerDiedError", "build_task_list", "choose_auto_mode",
    "normalize_mode", "plan_workers", "print_summary", "process_one", "run_batch",
    "run_parallel", "run_serial", "run_subprocess", "write_batch_summary",
]
