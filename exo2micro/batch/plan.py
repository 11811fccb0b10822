"""What a batch will run: the task list, the mode, the workers and the argument checks.

A *task* is ``(sample, dye, options)``: ``options`` holds the run options (:data:`TASK_KEYS`)
and the pipeline parameters, all JSON-serialisable so that a task crosses a process boundary
(pickled for pool workers, JSON for task subprocesses) unchanged.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exo2micro import params as P
from exo2micro.errors import ParameterError
from exo2micro.sampledye import SampleDye

Task = tuple[str, str, dict[str, Any]]

MODES = ("serial", "process", "thread", "subprocess", "auto")
#: Keys of a task's options dict that the task runner consumes; the rest are parameters.
TASK_KEYS = frozenset({"output_dir", "raw_dir", "from_stage", "to_stage", "force",
                       "checkpoint_format", "pre", "post", "meta", "threads", "memory_debug",
                       "run_info"})


def normalize_mode(parallel: bool | str | None) -> str:
    """Map the public API's ``parallel`` values to a mode name (see :data:`MODES`)."""
    if parallel is False or parallel is None:
        return "serial"
    if parallel is True:
        return "process"
    if isinstance(parallel, str) and parallel.lower() in MODES:
        return parallel.lower()
    raise ParameterError(f"parallel must be False, True, 'serial', 'process', 'thread', "
                         f"'subprocess' or 'auto', got {parallel!r}")


def _positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ParameterError(f"{name} must be a whole number ≥ 1, got {value!r}")


def _finite_positive(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, numbers.Real)
            and math.isfinite(value) and value > 0)


def _names(kind: str, values: str | Sequence[str] | None) -> None:
    if values is None or isinstance(values, str):
        return
    if not isinstance(values, Sequence):
        raise ParameterError(f"{kind} must be a name, a list of names or None, got "
                             f"{type(values).__name__}")
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ParameterError(f"{kind} must be non-empty strings, got {value!r} "
                                 f"({type(value).__name__}); write e.g. [\"CD070\"]")


def validate_run_args(*, samples: Any, dyes: Any, n_workers: Any, cpus: Any,
                      timeout_per_task: Any, from_stage: Any, to_stage: Any) -> None:
    """Refuse bad ``run_batch`` arguments with a :class:`ParameterError` (exit code 2) naming
    the argument: names that are not strings, worker or CPU counts below 1, a timeout that is
    not a finite number of seconds > 0, unknown stages or ``from_stage > to_stage``."""
    _names("samples", samples)
    _names("dyes", dyes)
    _positive_int("n_workers", n_workers, optional=True)
    _positive_int("cpus", cpus, optional=True)
    if timeout_per_task is not None and not _finite_positive(timeout_per_task):
        raise ParameterError(f"timeout_per_task must be a finite number of seconds > 0, "
                             f"got {timeout_per_task!r}")
    for name, stage in (("from_stage", from_stage), ("to_stage", to_stage)):
        if stage is not None and (isinstance(stage, bool) or stage not in P.STAGE_NAMES):
            raise ParameterError(f"{name} must be one of {list(P.STAGE_NAMES)}, got {stage!r}")
    if from_stage is not None and to_stage is not None and from_stage > to_stage:
        raise ParameterError(f"from_stage ({from_stage}) must not exceed to_stage "
                             f"({to_stage})")


def build_task_list(pairs: Iterable[Any], params: Mapping[str, Any] | None = None,
                    output_dir: str | os.PathLike[str] = "processed",
                    raw_dir: str | os.PathLike[str] = "raw", from_stage: int | None = None,
                    to_stage: int | None = None, force: bool = False,
                    checkpoint_format: str = "tiff") -> list[Task]:
    """Build the ``(sample, dye, options)`` tasks for ``pairs``.

    ``pairs`` are ``(sample, dye)`` tuples — their files are found under ``raw_dir`` when the
    task runs, so a missing file becomes that task's error — or discovered
    :class:`~exo2micro.batch.discover.PairSpec` objects, whose file paths and extra samplesheet
    columns (``meta``) are carried along, and whose image facts (``PairSpec.image``: pixel
    sizes, channel, exposure times) become that task's parameter :data:`~exo2micro.params.
    PAIR_KEY` over the batch's (validated when the pair runs, so a bad value is that pair's
    error). ``options`` holds the run options (:data:`TASK_KEYS`) and the pipeline parameters.
    """
    tasks: list[Task] = []
    for pair in pairs:
        opts: dict[str, Any] = {**(params or {}), "output_dir": str(output_dir),
                                "raw_dir": str(raw_dir), "from_stage": from_stage,
                                "to_stage": to_stage, "force": force,
                                "checkpoint_format": checkpoint_format}
        if hasattr(pair, "pre"):
            opts.update(pre=str(pair.pre), post=str(pair.post), meta=dict(pair.extra))
            image = getattr(pair, "image", None)
            if image:
                opts[P.PAIR_KEY] = {**(opts.get(P.PAIR_KEY) or {}), **image}
            sample, dye = pair.sample, pair.dye
        else:
            sample, dye = pair
        tasks.append((str(sample), str(dye), opts))
    return tasks


def split_options(opts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run options, pipeline parameters)`` of a task's options."""
    run = {k: v for k, v in opts.items() if k in TASK_KEYS}
    return run, {k: v for k, v in opts.items() if k not in TASK_KEYS}


def sample_dye(task: Task) -> SampleDye:
    """The :class:`~exo2micro.sampledye.SampleDye` a task runs."""
    sample, dye, opts = task
    run, params = split_options(opts)
    return SampleDye(sample, dye, run.get("output_dir", "processed"), run.get("raw_dir", "raw"),
                     run.get("checkpoint_format", "tiff"), pre=run.get("pre"),
                     post=run.get("post"), meta=run.get("meta"), threads=run.get("threads"),
                     params=params)


def with_run_info(task: Task, **info: Any) -> Task:
    """The task with ``info`` merged into its ``run_info`` (stored in ``result["runner"]``)."""
    sample, dye, opts = task
    return sample, dye, {**opts, "run_info": {**(opts.get("run_info") or {}), **info}}


def task_key(task: Task) -> str:
    """``sample/dye`` of a task (progress lines, memory records)."""
    return f"{task[0]}/{task[1]}"


#: Pool size of the process and thread modes when ``n_workers`` is not given (exo2micro 2.4's
#: default); ``auto`` is capped by the CPU budget instead.
DEFAULT_WORKERS = 4


def plan_workers(mode: str, n_workers: int | None, n_tasks: int, cpus: int | None = None
                 ) -> tuple[int, int, str]:
    """``(workers, threads per worker, explanation)`` for a mode within the CPU budget.

    Pool modes run ``min(n_workers, budget, tasks)`` workers (``n_workers`` ``None``:
    :data:`DEFAULT_WORKERS`) with ``budget // workers`` native threads each, so workers ×
    threads never exceeds the budget; serial and subprocess modes give the one running task
    the whole budget.
    """
    from exo2micro.resources import cpu_budget

    budget, source = cpu_budget(cpus)
    n_workers = DEFAULT_WORKERS if n_workers is None else n_workers
    if mode in ("process", "thread"):
        workers = max(1, min(n_workers, budget, max(1, n_tasks)))
    else:
        workers = 1
    threads = max(1, budget // workers)
    note = f"CPU budget {budget} ({source}): {workers} worker(s) × {threads} thread(s)"
    if mode in ("process", "thread") and workers < n_workers:
        note += f" (n_workers={n_workers} capped by the budget/task count)"
    return workers, threads, note


def choose_auto_mode(pairs: Sequence[Any], output_dir: str | os.PathLike[str],
                     params: Mapping[str, Any] | None, checkpoint_format: str,
                     n_workers: int | None, cpus: int | None, **stages: Any
                     ) -> tuple[str, int, str]:
    """``(mode, workers, reason)`` for ``parallel='auto'``: the process pool when at least two
    pairs can run at once — two CPUs in the budget and the pre-flight estimate of two
    concurrent pairs within :data:`~exo2micro.batch.preflight.WARN_FRACTION` of the available
    memory — with the worker count (≤ ``n_workers``, the CPU budget when it is ``None``, and
    what both allow) whose estimated batch wall time is least
    (:func:`exo2micro.batch.preflight.fastest_workers`: many small pairs, many single-thread
    workers; a few large ones, fewer workers with more threads each); serial otherwise."""
    from exo2micro.batch import preflight
    from exo2micro.resources import cpu_budget

    budget = cpu_budget(cpus)[0]
    cap = min(budget, budget if n_workers is None else n_workers, len(pairs))
    if cap < 2:
        return "serial", 1, f"CPU budget {budget}, {len(pairs)} pair(s), n_workers {n_workers}"
    plans = preflight.plan_batch(pairs, output_dir, params, checkpoint_format,
                                 threads=max(1, budget // cap), **stages)
    mems = [p.estimate.mem_bytes for p in plans if p.estimate is not None and p.stages]
    if len(mems) < 2:
        return "serial", 1, f"{len(mems)} pair(s) left to run"
    avail, _ = preflight.available_memory()
    fit = preflight.max_workers_fitting(mems, avail, cap)
    if fit < 2:
        return "serial", 1, (f"two pairs at once would not fit in {preflight.WARN_PERCENT} of "
                             f"the available {preflight.fmt_bytes(avail)}")
    times = [p.estimate.time_s for p in plans if p.estimate is not None and p.stages]
    workers = preflight.fastest_workers(times, budget, fit)
    if workers < 2:
        return "serial", 1, (f"one pair at a time on all {budget} CPUs is estimated fastest "
                             f"for these pair sizes")
    return "process", workers, (f"{workers} workers × {budget // workers} thread(s) is estimated "
                                f"fastest for these pair sizes; {fit} pairs at once fit the CPU "
                                f"budget ({budget}) and {preflight.WARN_PERCENT} of the "
                                f"available {preflight.fmt_bytes(avail)}")
