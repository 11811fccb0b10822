"""Batch processing on one machine: the seed's ``run_batch`` API and its four execution modes.

::

    from exo2micro.parallel import run_batch

    results = run_batch(samples=["CD070", "CD063"], dyes=["SybrGld", "DAPI"],
                        parallel=True, n_workers=2, output_dir="processed", raw_dir="raw")

A *task* is ``(sample, dye, options)`` (:func:`build_task_list`); :func:`process_one` runs one
task through :class:`~exo2micro.sampledye.SampleDye` and returns its result dict (``sample``,
``dye``, ``status`` = ``complete`` or ``error: <reason>``, ``scale_estimate`` and the other
``result.json`` keys). A failing pair never stops the batch.

Execution modes (``parallel=``)
-------------------------------
``False`` / ``'serial'`` (default)
    One task after the other in this process; matplotlib figures are closed and the garbage
    collector runs between tasks. Each task gets the whole CPU budget as threads.
``True`` / ``'process'``
    A :class:`~concurrent.futures.ProcessPoolExecutor` of ``n_workers`` *spawned* workers
    (spawn, not fork: OpenCV's and tifffile's threads are not fork-safe, and a spawned worker
    starts small). When the OOM killer SIGKILLs a worker, the pool breaks
    (:class:`~concurrent.futures.process.BrokenProcessPool`) instead of hanging. Each worker
    keeps a small status file naming the task it is running; when the pool breaks, the
    surviving workers are terminated (their SIGTERM handler marks their task as interrupted),
    so the task whose status still says *running* is the one that died: it gets
    ``error: worker process died (likely out of memory)`` and every unfinished task is
    resubmitted to a fresh pool. If no task can be blamed, the unfinished tasks are retried a
    bounded number of times, so the batch always ends.
``'thread'``
    A thread pool of ``n_workers`` in this process (the heavy work in numpy/OpenCV/tifffile
    releases the GIL); memory is shared, so a crash takes the whole batch down.
``'subprocess'``
    One fresh ``python`` process per task, one at a time, its output relayed live. The OS
    reclaims everything between tasks, the cure for slow leaks. ``timeout_per_task`` kills a
    wedged task (``error: timed out after Ns``); a task killed by signal 9 is reported as
    ``error: subprocess killed (likely OOM)``.
``'auto'`` (the default of ``exo2micro run``)
    The process pool when at least two pairs can run at once — two CPUs in the budget and the
    pre-flight estimate of two concurrent pairs within 80 % of the available memory — with as
    many workers (≤ ``n_workers``) as both allow; serial otherwise. Serial mode keeps a 2-CPU
    machine only about two-thirds busy (plotting and I/O are single-threaded), the pool keeps
    it busy.

CPU budget
----------
:func:`exo2micro.resources.cpu_budget` (explicit ``cpus`` > ``SLURM_CPUS_PER_TASK`` > CPU
affinity > cgroup quota > host count). Pool modes run ``min(n_workers, budget, tasks)``
workers with ``budget // workers`` threads each, so workers × threads never exceeds the
budget; serial and subprocess modes give the one running task the whole budget.

Before any task: discovery (strict or lenient), the output-folder lock
(:mod:`exo2micro.lock`), the pre-flight check (:mod:`exo2micro.preflight`); after the last:
``summary.tsv``, ``summary.md``, ``manifest.json`` and ``report.html`` (:mod:`exo2micro.summary`)
and the summary table with its Problems section.

Test hooks
----------
Two environment variables let the tests simulate failures that cannot be produced on demand.
They act only inside pool workers and task subprocesses, never in the calling process:
``EXO2MICRO_TEST_KILL_PAIR=<sample>/<dye>`` makes the process running that pair SIGKILL itself
(as the OOM killer would), and ``EXO2MICRO_TEST_SLEEP_PAIR=<sample>/<dye>=<seconds>`` makes it
sleep first (a wedged task).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TextIO

from exo2micro import params as P
from exo2micro.errors import ParameterError
from exo2micro.layout import PairLayout
from exo2micro.memory import MemoryTracker, TaskMemory
from exo2micro.sampledye import SampleDye, StageCallback

log = logging.getLogger("exo2micro")

Task = tuple[str, str, dict[str, Any]]

MODES = ("serial", "process", "thread", "subprocess", "auto")
#: Keys of a task's options dict that :func:`process_one` consumes; the rest are parameters.
TASK_KEYS = frozenset({"output_dir", "raw_dir", "from_stage", "to_stage", "force",
                       "checkpoint_format", "pre", "post", "meta", "threads", "memory_debug",
                       "run_info"})
TEST_KILL_ENV = "EXO2MICRO_TEST_KILL_PAIR"
TEST_SLEEP_ENV = "EXO2MICRO_TEST_SLEEP_PAIR"
#: Seconds between polls of the pool workers' status files (progress, and never a hang).
POLL_S = 0.5
#: Seconds a timed-out subprocess gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0
WORKER_DIED = "worker process died (likely out of memory)"
SUBPROCESS_KILLED = "subprocess killed (likely OOM)"

_in_child = False  # set in pool workers and task subprocesses: enables the test hooks


class WorkerDiedError(MemoryError):
    """A pool worker or task subprocess was killed (by the OOM killer, most likely)."""


class TaskTimeoutError(TimeoutError):
    """A task subprocess ran longer than ``timeout_per_task``."""


# ------------------------------------------------------------------------------ tasks
def normalize_mode(parallel: bool | str) -> str:
    """Map the seed's ``parallel`` values to a mode name (see :data:`MODES`)."""
    if parallel is False or parallel is None:
        return "serial"
    if parallel is True:
        return "process"
    if isinstance(parallel, str) and parallel.lower() in MODES:
        return parallel.lower()
    raise ParameterError(f"parallel must be False, True, 'serial', 'process', 'thread', "
                         f"'subprocess' or 'auto', got {parallel!r}")


def build_task_list(pairs: Iterable[Any], params: Mapping[str, Any] | None = None,
                    output_dir: str | os.PathLike[str] = "processed",
                    raw_dir: str | os.PathLike[str] = "raw", from_stage: int | None = None,
                    to_stage: int | None = None, force: bool = False,
                    checkpoint_format: str = "tiff") -> list[Task]:
    """Build the ``(sample, dye, options)`` tasks for ``pairs``.

    ``pairs`` are ``(sample, dye)`` tuples — their files are found under ``raw_dir`` when the
    task runs, so a missing file becomes that task's error — or discovered
    :class:`~exo2micro.discover.PairSpec` objects, whose file paths and extra samplesheet
    columns (``meta``) are carried along. ``options`` holds the run options (:data:`TASK_KEYS`)
    and the pipeline parameters.
    """
    tasks: list[Task] = []
    for pair in pairs:
        opts: dict[str, Any] = {**(params or {}), "output_dir": str(output_dir),
                                "raw_dir": str(raw_dir), "from_stage": from_stage,
                                "to_stage": to_stage, "force": force,
                                "checkpoint_format": checkpoint_format}
        if hasattr(pair, "pre"):
            opts.update(pre=str(pair.pre), post=str(pair.post), meta=dict(pair.extra))
            sample, dye = pair.sample, pair.dye
        else:
            sample, dye = pair
        tasks.append((str(sample), str(dye), opts))
    return tasks


def _split(opts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    run = {k: v for k, v in opts.items() if k in TASK_KEYS}
    return run, {k: v for k, v in opts.items() if k not in TASK_KEYS}


def _sample_dye(task: Task) -> SampleDye:
    sample, dye, opts = task
    run, params = _split(opts)
    return SampleDye(sample, dye, run.get("output_dir", "processed"), run.get("raw_dir", "raw"),
                     run.get("checkpoint_format", "tiff"), pre=run.get("pre"),
                     post=run.get("post"), meta=run.get("meta"), threads=run.get("threads"),
                     params=params)


def _test_hooks(key: str) -> None:
    """The failure simulations of the module docstring (child processes only)."""
    if not _in_child:
        return
    sleep = os.environ.get(TEST_SLEEP_ENV, "")
    if sleep.rpartition("=")[0] == key:
        time.sleep(float(sleep.rpartition("=")[2]))
    if os.environ.get(TEST_KILL_ENV) == key:
        os.kill(os.getpid(), signal.SIGKILL)


def process_one(args: Task, on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Process one ``(sample, dye, options)`` task; return its result dict (never raises for a
    failed pair). Importable by name, as spawned pool workers require."""
    sample, dye, opts = args
    _test_hooks(f"{sample}/{dye}")
    run, _ = _split(opts)
    return _sample_dye(args).execute(
        run.get("from_stage"), run.get("to_stage"), bool(run.get("force")),
        threads=run.get("threads"), on_stage=on_stage, run_info=run.get("run_info"),
        memory_debug=bool(run.get("memory_debug")))


def _with_run_info(task: Task, **info: Any) -> Task:
    sample, dye, opts = task
    return sample, dye, {**opts, "run_info": {**(opts.get("run_info") or {}), **info}}


def _lost_result(task: Task, exc: BaseException, stage: int | None, attempts: int,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The error result of a task whose process died (written by the parent)."""
    from exo2micro.result import write_result

    sd = _sample_dye(task)
    try:
        layout: PairLayout | None = sd.layout
    except ParameterError:
        layout = None
    result = sd.failure_result(exc, layout, stage, attempts)
    result.setdefault("error", {}).update(extra or {})
    result["runner"] = {**(task[2].get("run_info") or {}), "attempts": attempts}
    if layout is not None and "fingerprint" in result:
        with contextlib.suppress(OSError):
            write_result(layout, result)
    return result


def _stage_in_progress(task: Task) -> int | None:
    """The first stage of a task whose outputs are not current (where a killed run was)."""
    from exo2micro.preflight import stages_to_run

    sd = _sample_dye(task)
    try:
        todo = stages_to_run(sd.pair_dir, P.resolve(sd.params), to_stage=task[2].get("to_stage"))
    except (ParameterError, OSError):
        return None
    return todo[0] if todo else None


# ------------------------------------------------------------------------------ progress
class Progress:
    """Per-task and per-stage progress: two tqdm bars on a terminal, plain lines otherwise.

    Thread-safe (thread mode reports from several threads at once). Stage events may arrive
    late or be skipped (pool workers are polled); the stage bar counts, per task, the highest
    stage reached, so it never double-counts.
    """

    def __init__(self, total: int, stages_per_task: int, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.total, self.per_task = total, stages_per_task
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.done = 0
        self._stage_count: dict[str, int] = {}
        self._lock = threading.Lock()
        self._bars: tuple[Any, Any] | None = None
        if self.tty:
            from tqdm import tqdm

            self._bars = (
                tqdm(total=total, desc="pairs ", unit="pair", position=0, file=self.stream,
                     dynamic_ncols=True),
                tqdm(total=total * stages_per_task, desc="stages", unit="stage", position=1,
                     file=self.stream, dynamic_ncols=True, leave=False))

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._bars is not None:
                self._bars[0].write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def stage(self, key: str, stage: int, event: str) -> None:
        """A stage of task ``key`` started, finished (``done``) or was current (``skipped``)."""
        if not self.enabled:
            return
        reached = stage if event in ("done", "skipped") else stage - 1
        with self._lock:
            delta = max(0, reached - self._stage_count.get(key, 0))
            self._stage_count[key] = self._stage_count.get(key, 0) + delta
            name = P.STAGE_NAMES.get(stage, str(stage))
            if self._bars is not None:
                self._bars[1].update(delta)
                self._bars[1].set_postfix_str(f"{key}: {name} {event}", refresh=True)
                return
        if event != "start":
            self.write(f"          {key}: stage {stage} {name} "
                       f"{'skipped (current)' if event == 'skipped' else 'done'}")

    def task_done(self, result: Mapping[str, Any]) -> None:
        key = f"{result.get('sample')}/{result.get('dye')}"
        with self._lock:
            self.done += 1
            rest = max(0, self.per_task - self._stage_count.get(key, 0))
            self._stage_count[key] = self.per_task
            if self._bars is not None:
                self._bars[0].update(1)
                self._bars[1].update(rest)
        wall = (result.get("runner") or {}).get("wall_s")
        took = f" ({wall:.1f} s)" if isinstance(wall, (int, float)) else ""
        self.write(f"[{self.done:>{len(str(self.total))}}/{self.total}] {key}: "
                   f"{result.get('status')}{took}")

    def close(self) -> None:
        if self._bars is not None:
            for bar in reversed(self._bars):
                bar.close()
            self._bars = None


def _stage_callback(progress: Progress | None, key: str) -> StageCallback | None:
    if progress is None:
        return None
    return lambda stage, event: progress.stage(key, stage, event)


def _record_memory(tracker: MemoryTracker | None, key: str, result: Mapping[str, Any]) -> None:
    mem = (result.get("runner") or {}).get("memory")
    if tracker is None or not mem or mem.get("after") is None:
        return
    tracker.add(TaskMemory(key, int(mem["pid"]), int(mem.get("before") or mem["after"]),
                           int(mem["after"]), mem.get("peak")))


# ------------------------------------------------------------------------------ serial
def _release_memory() -> None:
    """Close matplotlib figures (if pyplot was used) and collect garbage between tasks."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    gc.collect()


def run_serial(tasks: Sequence[Task], tracker: MemoryTracker | None = None, *,
               progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run the tasks one after the other in this process.

    Between tasks, matplotlib figures are closed and the garbage collector runs, so one task's
    arrays do not overlap the next task's. With a ``tracker``, RSS is recorded before and
    after (post-gc) each task.
    """
    results = []
    for task in tasks:
        key = f"{task[0]}/{task[1]}"
        before = tracker.before(key) if tracker is not None else None
        if tracker is not None:
            task = (task[0], task[1], {**task[2], "memory_debug": True})  # the task's peak
        result = process_one(_with_run_info(task, mode="serial", attempts=1),
                             on_stage=_stage_callback(progress, key))
        _release_memory()
        if tracker is not None:
            peak = ((result.get("runner") or {}).get("memory") or {}).get("peak")
            tracker.after(key, before, peak)
        if progress is not None:
            progress.task_done(result)
        results.append(result)
    return results


# ------------------------------------------------------------------------------ pools
def run_parallel(tasks: Sequence[Task], n_workers: int = 4, *, use_threads: bool = False,
                 progress: Progress | None = None,
                 tracker: MemoryTracker | None = None) -> list[dict[str, Any]]:
    """Run the tasks on ``n_workers`` spawned processes (or threads with ``use_threads``).

    Results come back in task order. A worker killed by the OOM killer costs only its own
    task (see the module docstring); the pool never hangs.
    """
    if use_threads:
        return _run_threads(tasks, n_workers, progress, tracker)
    return _run_processes(tasks, n_workers, progress, tracker)


def _run_threads(tasks: Sequence[Task], n_workers: int, progress: Progress | None,
                 tracker: MemoryTracker | None) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    pool = ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="exo2micro")
    try:
        futures = {pool.submit(process_one, _with_run_info(t, mode="thread", attempts=1),
                               _stage_callback(progress, f"{t[0]}/{t[1]}")): i
                   for i, t in enumerate(tasks)}
        for future in _as_done(futures):
            i = futures[future]
            results[i] = future.result()
            _record_memory(tracker, f"{tasks[i][0]}/{tasks[i][1]}", results[i])
            if progress is not None:
                progress.task_done(results[i])
    except KeyboardInterrupt:
        # Threads cannot be stopped: drop the queued tasks, let the running ones finish.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


def _as_done(futures: Iterable[Any]) -> Iterable[Any]:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from done


# --- process pool: worker side
_status_file: Path | None = None
_status: dict[str, Any] = {}


def _write_status(**fields: Any) -> None:
    """Replace this worker's status file (write + rename; status only, no fsync)."""
    if _status_file is None:
        return
    _status.update(fields, pid=os.getpid(), t=time.time())
    tmp = _status_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(_status))
    os.replace(tmp, _status_file)


def _on_sigterm(signum: int, frame: Any) -> None:
    """The pool terminates surviving workers when it breaks: mark our task as interrupted
    (so it is not blamed for the break) and exit at once."""
    if _status.get("event") == "running":
        _write_status(event="terminated")
    os._exit(128 + signum)


def _init_worker(status_dir: str) -> None:
    global _in_child, _status_file
    _in_child = True
    _status_file = Path(status_dir) / f"{os.getpid()}.json"
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (and terminates us)


def _pool_task(task: Task, index: int) -> dict[str, Any]:
    _write_status(index=index, key=f"{task[0]}/{task[1]}", event="running", stage=None,
                  stage_event=None)

    def on_stage(stage: int, event: str) -> None:
        _write_status(stage=stage, stage_event=event)

    result = process_one(task, on_stage=on_stage)
    _write_status(event="idle")
    return result


# --- process pool: parent side
def _read_statuses(status_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in status_dir.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


def _run_processes(tasks: Sequence[Task], n_workers: int, progress: Progress | None,
                   tracker: MemoryTracker | None) -> list[dict[str, Any]]:
    """Pool rounds until every task has a result: after a break, the task(s) whose worker
    died get their error and the unfinished ones go to a fresh pool (module docstring)."""
    results: dict[int, dict[str, Any]] = {}
    started: dict[int, int] = dict.fromkeys(range(len(tasks)), 0)
    blameless_breaks = 0
    ctx = multiprocessing.get_context("spawn")
    while len(results) < len(tasks):
        pending = [i for i in range(len(tasks)) if i not in results]
        with tempfile.TemporaryDirectory(prefix="exo2micro-pool-") as tmp:
            status_dir = Path(tmp)
            broken = _pool_round(tasks, pending, started, min(n_workers, len(pending)), ctx,
                                 status_dir, results, progress, tracker)
            if not broken:
                continue
            statuses = [s for s in _read_statuses(status_dir) if s.get("index") in pending
                        and s["index"] not in results]
        for s in statuses:
            started[s["index"]] += 1
        culprits = [s for s in statuses if s.get("event") == "running"]
        for s in culprits:
            i = s["index"]
            results[i] = _lost_result(
                tasks[i], WorkerDiedError(WORKER_DIED), s.get("stage"), started[i],
                {"worker_pid": s.get("pid")})
            log.warning("%s: %s", s.get("key"), WORKER_DIED)
            if progress is not None:
                progress.task_done(results[i])
        if not culprits:
            blameless_breaks += 1
            if blameless_breaks > len(tasks):
                for i in [i for i in range(len(tasks)) if i not in results]:
                    results[i] = _lost_result(tasks[i], WorkerDiedError(WORKER_DIED), None,
                                              started[i])
                    if progress is not None:
                        progress.task_done(results[i])
    return [results[i] for i in range(len(tasks))]


def _pool_round(tasks: Sequence[Task], pending: Sequence[int], started: Mapping[int, int],
                workers: int, ctx: Any, status_dir: Path, results: dict[int, dict[str, Any]],
                progress: Progress | None, tracker: MemoryTracker | None) -> bool:
    """Run ``pending`` tasks on one fresh pool; fill ``results``; True if the pool broke."""
    seen: dict[int, tuple[Any, Any]] = {}
    others = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_init_worker, initargs=(str(status_dir),))
    broken = False
    try:
        futures = {executor.submit(_pool_task, _with_run_info(
            tasks[i], mode="process", attempts=started[i] + 1), i): i for i in pending}
        not_done = set(futures)
        while not_done and not broken:
            done, not_done = wait(not_done, timeout=POLL_S, return_when=FIRST_COMPLETED)
            if progress is not None:
                for s in _read_statuses(status_dir):
                    state = (s.get("stage"), s.get("stage_event"))
                    if s.get("event") == "running" and state[0] and seen.get(s["index"]) != state:
                        seen[s["index"]] = state
                        progress.stage(s["key"], state[0], state[1])
            for future in done:
                i = futures[future]
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                _record_memory(tracker, f"{tasks[i][0]}/{tasks[i][1]}", results[i])
                if progress is not None:
                    progress.task_done(results[i])
    except KeyboardInterrupt:
        # Workers ignore SIGINT (a terminal sends it to the whole group, Jupyter only to us):
        # stop them here, or shutdown would wait for their running tasks.
        for proc in set(multiprocessing.active_children()) - others:
            proc.terminate()
        raise
    finally:
        # After a break this joins the terminated workers, so their status files are final.
        executor.shutdown(wait=True, cancel_futures=True)
    return broken


# ------------------------------------------------------------------------------ subprocess
_CHILD_CODE = "from exo2micro.parallel import _subprocess_main; _subprocess_main()"


def _subprocess_main() -> None:
    """Entry point of a task subprocess: ``argv = [task.json, result.json]``."""
    global _in_child
    _in_child = True
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    task_path, result_path = sys.argv[1:3]
    sample, dye, opts = json.loads(Path(task_path).read_text())
    result = process_one((sample, dye, opts))
    Path(result_path).write_text(json.dumps(result, default=str))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _relay(stream: TextIO, prefix: str, write: Callable[[str], None]) -> None:
    for line in stream:
        write(prefix + line.rstrip("\n"))


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the task's process group, then SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_subprocess(tasks: Sequence[Task], memory_debug: bool = False,
                   timeout_per_task: float | None = None, *,
                   tracker: MemoryTracker | None = None,
                   progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run each task in its own fresh Python process, one at a time.

    The child's output is relayed line by line (prefixed with the pair) as it comes. Failures
    of the process itself become the task's error: a timeout (the whole process group is
    killed), death by SIGKILL (``subprocess killed (likely OOM)``), any other signal or exit
    code. With ``memory_debug`` the parent's RSS is tracked around each task and the child
    reports its own.
    """
    if memory_debug and tracker is None:
        tracker = MemoryTracker()
    results = []
    write = progress.write if progress is not None else print
    for task in tasks:
        key = f"{task[0]}/{task[1]}"
        before = tracker.before(key) if tracker is not None else None
        sample, dye, opts = _with_run_info(task, mode="subprocess", attempts=1)
        if tracker is not None:
            opts = {**opts, "memory_debug": True}
        result = _run_child((sample, dye, opts), key, timeout_per_task, write)
        if tracker is not None:
            tracker.after(f"{key} (parent)", before)  # the OS reclaimed the child
        _record_memory(tracker, key, result)
        if progress is not None:
            progress.task_done(result)
        results.append(result)
    return results


def _run_child(task: Task, key: str, timeout: float | None,
               write: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="exo2micro-task-") as tmp:
        task_path, result_path = Path(tmp) / "task.json", Path(tmp) / "result.json"
        task_path.write_text(json.dumps(task, default=str))
        proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, str(task_path),
                                 str(result_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                env=_child_env(), start_new_session=True)
        relay = threading.Thread(target=_relay, args=(proc.stdout, f"[{key}] ", write),
                                 daemon=True)
        relay.start()
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        finally:
            if proc.returncode is None:  # interrupted (Ctrl-C): do not leave the task running
                _kill_group(proc)
            relay.join(timeout=5)
        if timed_out:
            return _lost_result(task, TaskTimeoutError(f"timed out after {timeout:g}s"),
                                _stage_in_progress(task), 1, {"returncode": proc.returncode})
        if result_path.is_file() and proc.returncode == 0:
            return json.loads(result_path.read_text())
        code = proc.returncode
        if code == -signal.SIGKILL:
            exc: BaseException = WorkerDiedError(SUBPROCESS_KILLED)
        elif code is not None and code < 0:
            exc = WorkerDiedError(f"subprocess killed by signal {signal.Signals(-code).name}")
        else:
            exc = RuntimeError(f"subprocess exited with code {code} without a result")
        return _lost_result(task, exc, _stage_in_progress(task), 1,
                            {"returncode": code,
                             "signal": signal.Signals(-code).name if code and code < 0 else None})


# ------------------------------------------------------------------------------ summary
def print_summary(results: Sequence[Mapping[str, Any]],
                  skipped: Iterable[tuple[str, str, str]] = (),
                  file: TextIO | None = None) -> None:
    """Print the summary table (Sample, Dye, Moffat, Percentile/Manual when any result has
    them, Status) and a Problems section with the full reason of every failed or skipped
    pair."""
    from exo2micro.summary import collect_rows, format_text

    rows = collect_rows([(r, None) for r in results], skipped)
    print(format_text(rows), file=file or sys.stdout, flush=True)


def write_batch_summary(output_dir: str | os.PathLike[str],
                        results: Sequence[Mapping[str, Any]],
                        skipped: Iterable[tuple[str, str, str]] = (),
                        extra: Mapping[str, Any] | None = None,
                        threads: int = 1) -> dict[str, Path]:
    """Write the summary files of a batch into ``output_dir`` (see :mod:`exo2micro.summary`)."""
    from exo2micro.summary import collect_rows, write_summary

    out = Path(output_dir)
    rows = collect_rows([(r, out / str(r.get("sample")) / str(r.get("dye"))) for r in results],
                        skipped)
    return write_summary(out, rows, extra, threads=threads)


# ------------------------------------------------------------------------------ run_batch
def plan_workers(mode: str, n_workers: int, n_tasks: int, cpus: int | None = None
                 ) -> tuple[int, int, str]:
    """``(workers, threads per worker, explanation)`` for a mode within the CPU budget."""
    from exo2micro.resources import cpu_budget

    budget, source = cpu_budget(cpus)
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
                     n_workers: int, cpus: int | None, **stages: Any) -> tuple[str, int, str]:
    """``(mode, workers, reason)`` for ``parallel='auto'`` (see the module docstring)."""
    from exo2micro import preflight
    from exo2micro.resources import cpu_budget

    budget = cpu_budget(cpus)[0]
    cap = min(budget, n_workers, len(pairs))
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
        return "serial", 1, (f"two pairs at once would not fit in 80 % of the available "
                             f"{preflight.fmt_bytes(avail)}")
    return "process", fit, (f"{fit} pairs at once fit the CPU budget ({budget}) and 80 % of "
                            f"the available {preflight.fmt_bytes(avail)}")


def run_batch(samples: str | Sequence[str] | None, dyes: str | Sequence[str] | None,
              parallel: bool | str = False, n_workers: int = 4,
              params: Mapping[str, Any] | None = None,
              output_dir: str | os.PathLike[str] = "processed",
              raw_dir: str | os.PathLike[str] = "raw", from_stage: int | None = None,
              to_stage: int | None = None, force: bool = False,
              checkpoint_format: str = "tiff", strict_dyes: bool = True,
              memory_debug: bool = False, timeout_per_task: float | None = None,
              force_run: bool = False, *, samplesheet: str | os.PathLike[str] | None = None,
              cpus: int | None = None, show_progress: bool = True) -> list[dict[str, Any]]:
    """Resolve ``samples × dyes`` on disk and process every runnable pair; return the results.

    ``samples``/``dyes`` ``None`` mean everything found. ``samplesheet`` (``sample,dye,pre,
    post`` CSV) replaces ``raw_dir``. ``strict_dyes=True`` raises
    :class:`~exo2micro.discover.DiscoveryError` (a :class:`FileNotFoundError`) listing every
    missing/incomplete/duplicate pair; ``False`` skips them and reports them in the summary.
    ``parallel`` picks the mode (module docstring; ``'auto'`` chooses between the process
    pool and serial from the CPU budget and the memory estimate); ``n_workers`` applies to the
    pool modes;
    ``cpus`` overrides the CPU budget; ``timeout_per_task`` applies to subprocess mode;
    ``show_progress=False`` turns the progress bars (or lines) off.

    Raises before any task: :class:`~exo2micro.errors.ParameterError` for bad arguments,
    :class:`~exo2micro.errors.LockError` when another run writes ``output_dir``, and
    :class:`~exo2micro.preflight.PreflightMemoryError` (a :class:`MemoryError`) or
    :class:`~exo2micro.preflight.PreflightDiskError` (an :class:`OSError`) when the batch does
    not fit, unless ``force_run`` (recorded in every result). Returns one result per runnable
    pair, in order; failed pairs have ``status = "error: …"``.
    """
    from exo2micro.atomic import remove_stale_temps
    from exo2micro.discover import discover, load_samplesheet
    from exo2micro.layout import formats
    from exo2micro.lock import OutputLock
    from exo2micro.preflight import check, plan_batch

    mode = normalize_mode(parallel)
    if n_workers < 1:
        raise ParameterError(f"n_workers must be ≥ 1, got {n_workers}")
    if timeout_per_task is not None and timeout_per_task <= 0:
        raise ParameterError(f"timeout_per_task must be > 0 seconds, got {timeout_per_task}")
    for name, stage in (("from_stage", from_stage), ("to_stage", to_stage)):
        if stage is not None and stage not in P.STAGE_NAMES:
            raise ParameterError(f"{name} must be one of {list(P.STAGE_NAMES)}, got {stage}")
    try:
        formats(checkpoint_format)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    P.resolve(params)
    if samplesheet is not None:
        found = load_samplesheet(samplesheet, samples, dyes, strict=strict_dyes)
    else:
        found = discover(raw_dir, samples, dyes, strict=strict_dyes)
    skipped = [(s.sample, s.dye, s.reason) for s in found.skipped]
    say = print
    if timeout_per_task is not None and mode != "subprocess":
        say(f"note: timeout_per_task is used by parallel='subprocess' only; ignored in {mode} "
            f"mode")
    for s in found.skipped:
        say(f"skipped {s}")
    with OutputLock(output_dir):
        if not found.pairs:
            say(f"no runnable pairs in {found.source}: nothing to process")
            write_batch_summary(output_dir, [], skipped)
            print_summary([], skipped)
            return []
        for pair in found.pairs:
            pair_dir = Path(output_dir) / pair.sample / pair.dye
            if pair_dir.is_dir():
                remove_stale_temps(pair_dir)
        if mode == "auto":
            mode, n_workers, why = choose_auto_mode(
                found.pairs, output_dir, params, checkpoint_format, n_workers, cpus,
                from_stage=from_stage, to_stage=to_stage, force=force)
            say(f"parallel='auto' chose {mode}: {why}")
        workers, threads, note = plan_workers(mode, n_workers, len(found.pairs), cpus)
        plans = plan_batch(found.pairs, output_dir, params, checkpoint_format,
                           from_stage=from_stage, to_stage=to_stage, force=force,
                           threads=threads)
        report = check(plans, output_dir=output_dir, mode=mode, workers=workers, params=params,
                       checkpoint_format=checkpoint_format, force_run=force_run)
        say(report.report)
        for warning in report.warnings:
            say(f"WARNING: {warning}")
        say(f"{len(found.pairs)} pair(s), mode {mode}; {note}")
        tasks = build_task_list(found.pairs, params, output_dir, raw_dir, from_stage, to_stage,
                                force, checkpoint_format)
        tasks = [(s, d, {**o, "threads": threads, "memory_debug": memory_debug,
                         "run_info": {"preflight": report.to_json(), "workers": workers}})
                 for s, d, o in tasks]
        tracker = MemoryTracker() if memory_debug else None
        progress = Progress(len(tasks), to_stage or max(P.STAGE_NAMES), enabled=show_progress)
        try:
            if mode == "serial":
                results = run_serial(tasks, tracker, progress=progress)
            elif mode == "subprocess":
                results = run_subprocess(tasks, memory_debug, timeout_per_task,
                                         tracker=tracker, progress=progress)
            else:
                _size_native_threads(threads)
                results = run_parallel(tasks, workers, use_threads=mode == "thread",
                                       progress=progress, tracker=tracker)
        finally:
            progress.close()
        if tracker is not None:
            tracker.finish()
        write_batch_summary(output_dir, results, skipped,
                            {"mode": mode, "workers": workers, "threads": threads,
                             "preflight": report.to_json()}, threads=workers * threads)
        print_summary(results, skipped)
    return results


def _size_native_threads(threads: int) -> None:
    """Size native thread pools before a pool starts: spawned workers inherit the environment
    (OMP/BLAS variables take effect at their numpy import), threads share this process."""
    from exo2micro.resources import configure_threads

    configure_threads(threads)
