"""``run_batch``: validate -> discover -> plan -> execute -> summarise.

The steps, each a function of this module:

1. :func:`validate` — argument types and ranges, the parameters, the checkpoint format and
   whether the output folder can be written (:class:`~exo2micro.errors.ParameterError` /
   :class:`~exo2micro.io.oserrors.StorageError`, exit code 2), before anything is read or written;
2. :func:`discover_pairs` — the runnable pairs of the raw folder or samplesheet, the skipped
   ones and the TIFFs whose names do not classify (strict: one error listing all of them);
3. under the output lock (:mod:`exo2micro.batch.lock`): :func:`plan` — the mode (``auto`` chooses),
   workers × threads within the CPU budget, the pre-flight check (:mod:`exo2micro.batch.preflight`)
   and the task list;
4. :func:`execute` — the runner of the mode (:mod:`exo2micro.batch.runners`) with progress;
5. :func:`summarise` — ``summary.tsv``, ``summary.md``, ``manifest.json``, ``report.html``
   (:mod:`exo2micro.report.summary`, skipped with a warning when the folder cannot take them) and
   the summary table.

SIGTERM is handled like Ctrl-C for the whole call (:mod:`exo2micro.batch.lifecycle`), and the
lock is released only after every worker has stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exo2micro import params as P
from exo2micro.batch import lifecycle
from exo2micro.batch.memory import MemoryTracker
from exo2micro.batch.plan import (
    Task,
    build_task_list,
    choose_auto_mode,
    normalize_mode,
    plan_workers,
    validate_run_args,
)
from exo2micro.batch.progress import Progress, Reporter
from exo2micro.batch.report import print_summary, write_batch_summary
from exo2micro.batch.runners import run_parallel, run_serial, run_subprocess
from exo2micro.batch.tasks import TaskFn, process_one
from exo2micro.errors import ParameterError
from exo2micro.stage_params import PairParams

Skipped = tuple[str, str, str]


@dataclass
class Found:
    """What discovery returned: runnable pairs, skipped entries (``sample, dye, reason``; an
    unusable file appears with its file name in the dye column) and where they came from."""

    source: str
    pairs: list[Any]
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class Plan:
    """How the batch runs: mode, workers × threads, the pre-flight report and the tasks."""

    mode: str
    workers: int
    threads: int
    tasks: list[Task]
    preflight: Any


def validate(*, samples: Any, dyes: Any, parallel: bool | str, n_workers: Any, cpus: Any,
             params: Mapping[str, Any] | None, output_dir: str | os.PathLike[str],
             from_stage: Any, to_stage: Any, checkpoint_format: str,
             timeout_per_task: Any) -> tuple[str, PairParams]:
    """Check every argument before anything is read or written; return the mode name and the
    resolved parameters (the one place a batch resolves them)."""
    from exo2micro.io.layout import formats

    lifecycle.refuse_worker_reentry()
    mode = normalize_mode(parallel)
    validate_run_args(samples=samples, dyes=dyes, n_workers=n_workers, cpus=cpus,
                      timeout_per_task=timeout_per_task, from_stage=from_stage,
                      to_stage=to_stage)
    try:
        formats(checkpoint_format)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    values = P.resolve(params)
    if os.path.lexists(output_dir) and not Path(output_dir).is_dir():
        from exo2micro.io.oserrors import StorageError

        raise StorageError(f"cannot write {output_dir}: it is not a folder")
    return mode, values


def _unusable_files(raw_dir: str | os.PathLike[str], samples: Sequence[str] | None,
                    found_skipped: Sequence[Any]) -> list[Skipped]:
    """The TIFFs of the requested sample folders whose names do not classify (no pre/post
    marker, both markers, an invalid dye), as skipped entries. A folder without any marked
    TIFF is left out (discovery already skipped it with a reason naming its files), and so is
    an ambiguous file of a pair discovery already skipped."""
    from exo2micro.batch.discover import scan_raw_dir

    requested = set(samples) if samples else None
    named = {(s.sample, s.dye) for s in found_skipped}
    out: list[Skipped] = []
    for name, folder in scan_raw_dir(raw_dir).folders.items():
        if requested is not None and name not in requested:
            continue
        if not any(v.kind in ("pre", "post", "ambiguous") for v in folder.tiffs):
            continue
        out += [(name, v.name, f"file not used: {v.reason}") for v in folder.tiffs
                if not v.usable and not (v.kind == "ambiguous" and (name, v.dye) in named)]
    return out


def _strict_refusal(source: str, problems: Sequence[Skipped], epilogue: str) -> Exception:
    from exo2micro.batch.discover import DiscoveryError

    n = len(problems)
    lines = [f"{source}: {n} requested pair{'s' if n > 1 else ''} or file{'s' if n > 1 else ''}"
             f" cannot run (strict mode; use --lenient / strict_dyes=False to skip them and "
             f"run the rest):"]
    lines += [f"  {s}/{d}: {reason}" for s, d, reason in problems]
    if epilogue:
        lines.append(epilogue)
    return DiscoveryError("\n".join(lines))


def discover_pairs(samples: str | Sequence[str] | None, dyes: str | Sequence[str] | None, *,
                   raw_dir: str | os.PathLike[str],
                   samplesheet: str | os.PathLike[str] | None, strict: bool) -> Found:
    """Resolve the request (:mod:`exo2micro.batch.discover`). In strict mode one
    :class:`~exo2micro.batch.discover.DiscoveryError` lists every problem pair and unusable file."""
    from exo2micro.batch.discover import discover, expected_layout, load_samplesheet

    if samplesheet is not None:
        sheet = load_samplesheet(samplesheet, samples, dyes, strict=strict)
        return Found(sheet.source, sheet.pairs, [(s.sample, s.dye, s.reason)
                                                 for s in sheet.skipped])
    found = discover(raw_dir, samples, dyes, strict=False)
    names = [samples] if isinstance(samples, str) else samples
    skipped = [(s.sample, s.dye, s.reason) for s in found.skipped]
    skipped += _unusable_files(raw_dir, names, found.skipped)
    if strict and skipped:
        raise _strict_refusal(found.source, skipped,
                              expected_layout(Path(raw_dir).name or str(raw_dir)))
    return Found(found.source, found.pairs, skipped)


def plan(found: Found, mode: str, *, n_workers: int | None, cpus: int | None,
         params: Mapping[str, Any] | None, values: PairParams,
         output_dir: str | os.PathLike[str],
         raw_dir: str | os.PathLike[str], from_stage: int | None, to_stage: int | None,
         force: bool, checkpoint_format: str, memory_debug: bool, force_run: bool,
         report: Reporter) -> Plan:
    """Choose the mode and workers, run the pre-flight check (raises when the batch does not
    fit, unless ``force_run``) and build the tasks. ``values`` are the resolved ``params``
    (planning reads them); each task carries the overrides ``params`` with its pair's own image
    facts, resolved in the worker that runs it. Stale temporary files of killed writers
    are removed from the pair folders first (the lock is held, so none is being written)."""
    from exo2micro.batch.preflight import check, plan_batch
    from exo2micro.io.atomic import remove_stale_temps

    for pair in found.pairs:
        pair_dir = Path(output_dir) / pair.sample / pair.dye
        if pair_dir.is_dir():
            remove_stale_temps(pair_dir)
    stages = {"from_stage": from_stage, "to_stage": to_stage, "force": force}
    if mode == "auto":
        mode, n_workers, why = choose_auto_mode(found.pairs, output_dir, values,
                                                checkpoint_format, n_workers, cpus, **stages)
        report.info(f"parallel='auto' chose {mode}: {why}")
    workers, threads, note = plan_workers(mode, n_workers, len(found.pairs), cpus)
    plans = plan_batch(found.pairs, output_dir, values, checkpoint_format, threads=threads,
                       **stages)
    preflight = check(plans, output_dir=output_dir, mode=mode, workers=workers, params=values,
                      checkpoint_format=checkpoint_format, force_run=force_run)
    report.info(preflight.report)
    for warning in preflight.warnings:
        report.warning(warning)
    report.info(f"{len(found.pairs)} pair(s), mode {mode}; {note}")
    tasks = [(s, d, {**o, "threads": threads, "memory_debug": memory_debug,
                     "run_info": {"preflight": preflight.to_json(), "workers": workers}})
             for s, d, o in build_task_list(found.pairs, params, output_dir, raw_dir,
                                            from_stage, to_stage, force, checkpoint_format)]
    return Plan(mode, workers, threads, tasks, preflight)


def execute(run: Plan, *, memory_debug: bool, timeout_per_task: float | None,
            to_stage: int | None, show_progress: bool,
            task_fn: TaskFn) -> tuple[list[dict[str, Any]], MemoryTracker | None]:
    """Run the tasks in the planned mode; return the results and the memory tracker."""
    tracker = MemoryTracker() if memory_debug else None
    progress = Progress(len(run.tasks), to_stage or max(P.STAGE_NAMES), enabled=show_progress)
    try:
        if run.mode == "serial":
            results = run_serial(run.tasks, tracker, progress=progress, task_fn=task_fn)
        elif run.mode == "subprocess":
            results = run_subprocess(run.tasks, memory_debug, timeout_per_task,
                                     tracker=tracker, progress=progress, task_fn=task_fn)
        else:
            _size_native_threads(run.threads)
            results = run_parallel(run.tasks, run.workers, use_threads=run.mode == "thread",
                                   progress=progress, tracker=tracker, task_fn=task_fn)
    finally:
        progress.close()
    if tracker is not None:
        tracker.finish()
    return results, tracker


def summarise(output_dir: str | os.PathLike[str], results: Sequence[Mapping[str, Any]],
              skipped: Sequence[Skipped], run: Plan | None, report: Reporter) -> None:
    """Write the summary files (a warning, not an error, when the folder cannot take them:
    the per-pair results are already on disk) and print the summary table."""
    from exo2micro.io.oserrors import describe_os_error

    extra = None if run is None else {"mode": run.mode, "workers": run.workers,
                                      "threads": run.threads,
                                      "preflight": run.preflight.to_json()}
    threads = 1 if run is None else run.workers * run.threads
    try:
        write_batch_summary(output_dir, results, skipped, extra, threads=threads)
    except OSError as exc:
        report.warning(f"batch summary not written: {describe_os_error(exc)}")
    print_summary(results, skipped)


def _size_native_threads(threads: int) -> None:
    """Size native thread pools before a pool starts: spawned workers inherit the environment
    (OMP/BLAS variables take effect at their numpy import), threads share this process."""
    from exo2micro.resources import configure_threads

    configure_threads(threads)


def run_batch(samples: str | Sequence[str] | None, dyes: str | Sequence[str] | None,
              parallel: bool | str = False, n_workers: int | None = None,
              params: Mapping[str, Any] | None = None,
              output_dir: str | os.PathLike[str] = "processed",
              raw_dir: str | os.PathLike[str] = "raw", from_stage: int | None = None,
              to_stage: int | None = None, force: bool = False,
              checkpoint_format: str = "tiff", strict_dyes: bool = True,
              memory_debug: bool = False, timeout_per_task: float | None = None,
              force_run: bool = False, *, samplesheet: str | os.PathLike[str] | None = None,
              cpus: int | None = None, show_progress: bool = True,
              task_fn: TaskFn = process_one,
              reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Resolve ``samples × dyes`` on disk and process every runnable pair; return the results.

    ``samples``/``dyes`` ``None`` mean everything found. ``samplesheet`` (``sample,dye,pre,
    post`` CSV) replaces ``raw_dir``. ``strict_dyes=True`` raises
    :class:`~exo2micro.batch.discover.DiscoveryError` (a :class:`FileNotFoundError`) listing every
    missing/incomplete/duplicate pair and every TIFF whose name does not classify; ``False``
    skips them and reports them in the summary. ``parallel`` picks the mode
    (:mod:`exo2micro.parallel`; ``'auto'`` chooses between the process pool and serial from
    the CPU budget and the memory estimate); ``n_workers`` caps the pool modes (``None``: 4
    workers for ``process``/``thread``, the CPU budget for ``auto``); ``cpus``
    overrides the CPU budget; ``timeout_per_task`` (seconds) applies to subprocess mode;
    ``show_progress=False`` turns the progress bars (or lines) off. ``task_fn`` replaces
    :func:`~exo2micro.batch.tasks.process_one` (fault injection in the tests); ``reporter``
    receives the runner's messages (default: standard output).

    Raises before any task: :class:`~exo2micro.errors.ParameterError` for bad arguments,
    :class:`~exo2micro.io.oserrors.StorageError` for an output folder that cannot be written,
    :class:`~exo2micro.errors.LockError` when another run writes ``output_dir``, and
    :class:`~exo2micro.batch.preflight.PreflightMemoryError` (a :class:`MemoryError`) or
    :class:`~exo2micro.batch.preflight.PreflightDiskError` (an :class:`OSError`) when the batch does
    not fit, unless ``force_run`` (recorded in every result). Returns one result per runnable
    pair, in order; failed pairs have ``status = "error: …"``.
    """
    from exo2micro.batch.lock import OutputLock

    report = reporter or Reporter()
    mode, values = validate(samples=samples, dyes=dyes, parallel=parallel,
                            n_workers=n_workers, cpus=cpus, params=params,
                            output_dir=output_dir, from_stage=from_stage, to_stage=to_stage,
                            checkpoint_format=checkpoint_format,
                            timeout_per_task=timeout_per_task)
    found = discover_pairs(samples, dyes, raw_dir=raw_dir, samplesheet=samplesheet,
                           strict=strict_dyes)
    if timeout_per_task is not None and mode != "subprocess":
        report.info(f"note: timeout_per_task is used by parallel='subprocess' only; ignored in "
                    f"{mode} mode")
    for sample, dye, reason in found.skipped:
        report.info(f"skipped {sample}/{dye}: {reason}")
    with lifecycle.sigterm_as_interrupt(), OutputLock(output_dir):
        if not found.pairs:
            # the summary lists what was skipped and why; then the batch is an error
            summarise(output_dir, [], found.skipped, None, report)
            from exo2micro.batch.discover import nothing_to_run

            raise nothing_to_run(found.source, found.skipped)
        run = plan(found, mode, n_workers=n_workers, cpus=cpus, params=params, values=values,
                   output_dir=output_dir, raw_dir=raw_dir, from_stage=from_stage,
                   to_stage=to_stage, force=force, checkpoint_format=checkpoint_format,
                   memory_debug=memory_debug, force_run=force_run, report=report)
        results, _ = execute(run, memory_debug=memory_debug, timeout_per_task=timeout_per_task,
                             to_stage=to_stage, show_progress=show_progress, task_fn=task_fn)
        summarise(output_dir, results, found.skipped, run, report)
    return results
