"""The four ways to run a task list: serial, thread pool, process pool, one subprocess per task.

Every runner takes the tasks and a *task function* (:data:`~exo2micro.batch.tasks.TaskFn`,
default :func:`~exo2micro.batch.tasks.process_one`) and returns one result per task, in task
order. A failing pair never stops the others. On Ctrl-C or SIGTERM (a :class:`KeyboardInterrupt`)
each runner stops what it started — and waits until it has stopped — before re-raising, so the
caller's output lock is held as long as anything writes.

``run_serial``
    One task after the other in this process; matplotlib figures are closed and the garbage
    collector runs between tasks, so one task's arrays do not overlap the next one's.
``run_parallel(use_threads=True)``
    A thread pool in this process (the heavy work in numpy/OpenCV/tifffile releases the GIL);
    memory is shared, so a crash takes the whole batch down. Threads cannot be killed: on an
    interrupt queued tasks are dropped and running ones stop at their next stage boundary
    (their ``on_stage`` callback raises), which bounds the wait to one stage.
``run_parallel``
    A :class:`~concurrent.futures.ProcessPoolExecutor` of *spawned* workers (spawn, not fork:
    OpenCV's and tifffile's threads are not fork-safe, and a spawned worker starts small).
    When the OOM killer SIGKILLs a worker, the pool breaks
    (:class:`~concurrent.futures.process.BrokenProcessPool`) instead of hanging. Each worker
    keeps a small status file naming the task it is running; when the pool breaks, the
    surviving workers are terminated (their SIGTERM handler marks their task as interrupted),
    so the task whose status still says *running* is the one that died: it gets
    ``error: worker process died (likely out of memory)`` and every unfinished task is
    resubmitted to a fresh pool. If no task can be blamed, the unfinished tasks are retried a
    bounded number of times, so the batch always ends.
``run_subprocess``
    One fresh ``python`` process per task, one at a time, its output relayed live. The OS
    reclaims everything between tasks, the cure for slow leaks. ``timeout_per_task`` kills a
    wedged task (``error: timed out after Ns``); a task killed by signal 9 is reported as
    ``error: subprocess killed (likely OOM)``.

Workers and task subprocesses die with the runner (:mod:`exo2micro.batch.lifecycle`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
import pickle
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

from exo2micro.batch import lifecycle
from exo2micro.batch.memory import MemoryTracker
from exo2micro.batch.plan import Task, task_key, with_run_info
from exo2micro.batch.progress import Progress, record_memory, stage_callback
from exo2micro.batch.tasks import (
    SUBPROCESS_KILLED,
    WORKER_DIED,
    TaskFn,
    TaskTimeoutError,
    WorkerDiedError,
    lost_result,
    process_one,
    stage_in_progress,
)
from exo2micro.pipeline import StageCallback

log = logging.getLogger("exo2micro")

#: Seconds between polls of the pool workers' status files (progress, and never a hang).
POLL_S = 0.5
#: Seconds a timed-out subprocess gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0


# ------------------------------------------------------------------------------ serial
def _release_memory() -> None:
    """Close matplotlib figures (if pyplot was used) and collect garbage between tasks."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    gc.collect()


def run_serial(tasks: Sequence[Task], tracker: MemoryTracker | None = None, *,
               progress: Progress | None = None,
               task_fn: TaskFn = process_one) -> list[dict[str, Any]]:
    """Run the tasks one after the other in this process.

    Between tasks, matplotlib figures are closed and the garbage collector runs, so one task's
    arrays do not overlap the next task's. With a ``tracker``, RSS is recorded before and
    after (post-gc) each task.
    """
    results = []
    for task in tasks:
        key = task_key(task)
        before = tracker.before(key) if tracker is not None else None
        if tracker is not None:
            task = (task[0], task[1], {**task[2], "memory_debug": True})  # the task's peak
        result = task_fn(with_run_info(task, mode="serial", attempts=1),
                         stage_callback(progress, key))
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
                 progress: Progress | None = None, tracker: MemoryTracker | None = None,
                 task_fn: TaskFn = process_one) -> list[dict[str, Any]]:
    """Run the tasks on ``n_workers`` spawned processes (or threads with ``use_threads``).

    Results come back in task order. A worker killed by the OOM killer costs only its own
    task (see the module docstring); the pool never hangs.
    """
    if use_threads:
        return _run_threads(tasks, n_workers, progress, tracker, task_fn)
    return _run_processes(tasks, n_workers, progress, tracker, task_fn)


class _Cancelled(BaseException):
    """Raised by a thread-mode task's stage callback once the batch is interrupted (a
    BaseException, so that the pair's own error handling does not turn it into a result)."""


def _cancellable(callback: StageCallback | None, cancel: threading.Event) -> StageCallback:
    def on_stage(stage: int, event: str) -> None:
        if cancel.is_set():
            raise _Cancelled
        if callback is not None:
            callback(stage, event)
    return on_stage


def _run_threads(tasks: Sequence[Task], n_workers: int, progress: Progress | None,
                 tracker: MemoryTracker | None, task_fn: TaskFn) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="exo2micro")
    try:
        futures = {pool.submit(task_fn, with_run_info(t, mode="thread", attempts=1),
                               _cancellable(stage_callback(progress, task_key(t)), cancel)): i
                   for i, t in enumerate(tasks)}
        for future in _as_done(futures):
            i = futures[future]
            results[i] = future.result()
            record_memory(tracker, task_key(tasks[i]), results[i])
            if progress is not None:
                progress.task_done(results[i])
    except KeyboardInterrupt:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)  # running tasks stop at a stage boundary
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


def _init_worker(status_dir: str, parent_pid: int) -> None:
    global _status_file
    lifecycle.die_with_parent(parent_pid)
    _status_file = Path(status_dir) / f"{os.getpid()}.json"
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (and terminates us)


def _pool_task(task: Task, index: int, task_fn: TaskFn) -> dict[str, Any]:
    _write_status(index=index, key=task_key(task), event="running", stage=None,
                  stage_event=None)

    def on_stage(stage: int, event: str) -> None:
        _write_status(stage=stage, stage_event=event)

    result = task_fn(task, on_stage)
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
                   tracker: MemoryTracker | None, task_fn: TaskFn) -> list[dict[str, Any]]:
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
                                 status_dir, results, progress, tracker, task_fn)
            if not broken:
                continue
            lifecycle.raise_for_guard_note(status_dir)
            statuses = [s for s in _read_statuses(status_dir) if s.get("index") in pending
                        and s["index"] not in results]
        for s in statuses:
            started[s["index"]] += 1
        culprits = [s for s in statuses if s.get("event") == "running"]
        for s in culprits:
            i = s["index"]
            results[i] = lost_result(tasks[i], WorkerDiedError(WORKER_DIED), s.get("stage"),
                                     started[i], {"worker_pid": s.get("pid")})
            log.warning("%s: %s", s.get("key"), WORKER_DIED)
            if progress is not None:
                progress.task_done(results[i])
        if not culprits:
            blameless_breaks += 1
            if blameless_breaks > len(tasks):
                for i in [i for i in range(len(tasks)) if i not in results]:
                    results[i] = lost_result(tasks[i], WorkerDiedError(WORKER_DIED), None,
                                             started[i])
                    if progress is not None:
                        progress.task_done(results[i])
    return [results[i] for i in range(len(tasks))]


@contextlib.contextmanager
def _pool_dir_in_environment(status_dir: Path) -> Iterable[None]:
    """Name the pool's status folder in the environment its spawned workers inherit."""
    previous = os.environ.get(lifecycle.POOL_DIR_ENV)
    os.environ[lifecycle.POOL_DIR_ENV] = str(status_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(lifecycle.POOL_DIR_ENV, None)
        else:
            os.environ[lifecycle.POOL_DIR_ENV] = previous


def _pool_round(tasks: Sequence[Task], pending: Sequence[int], started: Mapping[int, int],
                workers: int, ctx: Any, status_dir: Path, results: dict[int, dict[str, Any]],
                progress: Progress | None, tracker: MemoryTracker | None,
                task_fn: TaskFn) -> bool:
    """Run ``pending`` tasks on one fresh pool; fill ``results``; True if the pool broke."""
    seen: dict[int, tuple[Any, Any]] = {}
    others = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_init_worker,
                                   initargs=(str(status_dir), os.getpid()))
    broken = False
    try:
        with _pool_dir_in_environment(status_dir):
            futures = {executor.submit(_pool_task, with_run_info(
                tasks[i], mode="process", attempts=started[i] + 1), i, task_fn): i
                for i in pending}
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
                record_memory(tracker, task_key(tasks[i]), results[i])
                if progress is not None:
                    progress.task_done(results[i])
    except KeyboardInterrupt:
        # Workers ignore SIGINT (a terminal sends it to the whole group, Jupyter only to us):
        # stop them here, or shutdown would wait for their running tasks.
        for proc in set(multiprocessing.active_children()) - others:
            proc.terminate()
        raise
    finally:
        # After a break or an interrupt this joins the terminated workers, so their status
        # files are final and nothing of this pool writes any more.
        executor.shutdown(wait=True, cancel_futures=True)
    return broken


# ------------------------------------------------------------------------------ subprocess
_CHILD_CODE = "from exo2micro.batch.runners import subprocess_main; subprocess_main()"


def subprocess_main() -> None:
    """Entry point of a task subprocess: ``argv = [task.json, task_fn.pickle, result.json,
    parent pid]``."""
    task_path, fn_path, result_path, parent = sys.argv[1:5]
    lifecycle.die_with_parent(int(parent))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sample, dye, opts = json.loads(Path(task_path).read_text())
    task_fn = pickle.loads(Path(fn_path).read_bytes())
    result = task_fn((sample, dye, opts), None)
    Path(result_path).write_text(json.dumps(result, default=str))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
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
                   progress: Progress | None = None,
                   task_fn: TaskFn = process_one) -> list[dict[str, Any]]:
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
    fn_bytes = pickle.dumps(task_fn)
    for task in tasks:
        key = task_key(task)
        before = tracker.before(key) if tracker is not None else None
        sample, dye, opts = with_run_info(task, mode="subprocess", attempts=1)
        if tracker is not None:
            opts = {**opts, "memory_debug": True}
        result = _run_child((sample, dye, opts), key, timeout_per_task, write, fn_bytes)
        if tracker is not None:
            tracker.after(f"{key} (parent)", before)  # the OS reclaimed the child
        record_memory(tracker, key, result)
        if progress is not None:
            progress.task_done(result)
        results.append(result)
    return results


def _run_child(task: Task, key: str, timeout: float | None, write: Callable[[str], None],
               fn_bytes: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="exo2micro-task-") as tmp:
        task_path, result_path = Path(tmp) / "task.json", Path(tmp) / "result.json"
        fn_path = Path(tmp) / "task_fn.pickle"
        task_path.write_text(json.dumps(task, default=str))
        fn_path.write_bytes(fn_bytes)
        proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, str(task_path),
                                 str(fn_path), str(result_path), str(os.getpid())],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=_child_env(),
                                start_new_session=True)
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
            if proc.returncode is None:  # interrupted (Ctrl-C, SIGTERM): stop the task first
                _kill_group(proc)
            relay.join(timeout=5)
        if timed_out:
            return lost_result(task, TaskTimeoutError(f"timed out after {timeout:g}s"),
                               stage_in_progress(task), 1, {"returncode": proc.returncode})
        if result_path.is_file() and proc.returncode == 0:
            return json.loads(result_path.read_text())
        code = proc.returncode
        if code == -signal.SIGKILL:
            exc: BaseException = WorkerDiedError(SUBPROCESS_KILLED)
        elif code is not None and code < 0:
            exc = WorkerDiedError(f"subprocess killed by signal {signal.Signals(-code).name}")
        else:
            exc = RuntimeError(f"subprocess exited with code {code} without a result")
        return lost_result(task, exc, stage_in_progress(task), 1,
                           {"returncode": code,
                            "signal": signal.Signals(-code).name if code and code < 0 else None})
