"""``MemoryTracker``: resident memory around each task, and a summary that tells a leak from a
peak (``run_batch(memory_debug=True)``, ``exo2micro run --memory-debug``).

For every task it records the RSS *before* the task, the RSS *after* the task and a
``gc.collect()`` pass, and the task's *peak* (the kernel's high-water mark per stage). Two
patterns matter:

* RSS after gc keeps climbing from task to task and never returns to the baseline: a **leak**
  (something survives the task). Only a fresh process per task cures it:
  ``parallel='subprocess'``.
* RSS after gc returns near the baseline but the per-task peak is large: **no leak**, the peak
  itself is the problem: fewer workers, ``pad=0``, or more memory.

Snapshots are grouped by process: in serial and thread modes all tasks share the calling
process; pool workers and task subprocesses measure themselves and report the numbers with
their result (``result["runner"]["memory"]``), so the verdict is per process that ran tasks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from exo2micro.resources import current_rss_bytes

#: Growth of after-gc RSS above the baseline that is reported as a leak (exo2micro 2.4's 0.5 GB).
LEAK_BYTES = 512 << 20
GiB = float(1 << 30)


@dataclass(frozen=True)
class TaskMemory:
    """Memory of one task in one process (bytes)."""

    label: str
    pid: int
    before: int
    after: int
    peak: int | None = None


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


class MemoryTracker:
    """Collect RSS snapshots and print them as ``[mem] …`` lines.

    ``echo`` receives each line (default :func:`print`); ``None`` collects silently. The RSS
    reader is ``/proc/self/status`` (or psutil elsewhere); without psutil on a non-Linux
    system the tracker turns itself off with one warning.
    """

    def __init__(self, echo: Callable[[str], None] | None = print) -> None:
        self.echo = echo
        self.tasks: list[TaskMemory] = []
        self.baseline: int | None = None
        self.final: int | None = None
        self.enabled = True
        try:
            self.baseline = current_rss_bytes()
        except ImportError:
            warnings.warn("memory_debug needs psutil on this system; memory tracking is off",
                          stacklevel=2)
            self.enabled = False
        else:
            self._say(f"{_gib(self.baseline)} batch start")

    def _say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(f"[mem] {text}")

    def now(self) -> int | None:
        """The current RSS of this process, or None when tracking is off."""
        return current_rss_bytes() if self.enabled else None

    def before(self, label: str) -> int | None:
        """Snapshot before a task run in this process."""
        rss = self.now()
        if rss is not None:
            self._say(f"{_gib(rss)} before {label}")
        return rss

    def after(self, label: str, before: int | None, peak: int | None = None) -> None:
        """Snapshot after a task run in this process (the caller has collected garbage)."""
        rss = self.now()
        if rss is not None:
            self.add(TaskMemory(label, os.getpid(), rss if before is None else before, rss,
                                peak))

    def add(self, task: TaskMemory) -> None:
        """Record a finished task (measured here or reported by a worker process)."""
        if not self.enabled:
            return
        self.tasks.append(task)
        where = "" if task.pid == os.getpid() else f" [pid {task.pid}]"
        peak = f" (task peak {_gib(task.peak)})" if task.peak else ""
        self._say(f"{_gib(task.after)} after gc {task.label}{peak}{where}")

    def finish(self) -> list[str]:
        """Print and return the summary lines."""
        if not self.enabled or self.baseline is None:
            return []
        self.final = current_rss_bytes()
        lines = ["=== memory summary ==="]
        procs: dict[int, list[TaskMemory]] = {}
        for t in self.tasks:
            procs.setdefault(t.pid, []).append(t)
        local = procs.get(os.getpid(), [])
        base = local[0].before if local else self.baseline
        top = max([self.final, *(t.after for t in local)])
        lines.append(f"baseline: {_gib(base)}")
        lines.append(f"peak after gc: {_gib(top)} ({(top - base) / GiB:+.2f} GiB)")
        lines.append(f"final: {_gib(self.final)} ({(self.final - base) / GiB:+.2f} GiB)")
        peaks = [t for t in self.tasks if t.peak]
        if peaks:
            worst = max(peaks, key=lambda t: t.peak or 0)
            lines.append(f"largest task peak: {_gib(worst.peak or 0)} ({worst.label})")
        lines += self._verdict(procs)
        for line in lines:
            self._say(line)
        return lines

    @staticmethod
    def _verdict(procs: dict[int, list[TaskMemory]]) -> list[str]:
        leaks = []
        for pid, tasks in procs.items():
            growth = tasks[-1].after - tasks[0].before
            if len(tasks) > 1 and growth > LEAK_BYTES:
                leaks.append(f"process {pid}: RSS after gc grew {growth / GiB:+.2f} GiB over "
                             f"{len(tasks)} tasks")
        if leaks:
            return [f"WARNING: final RSS is >{LEAK_BYTES / GiB:.1f} GiB above baseline — a "
                    f"leak ({'; '.join(leaks)}). Memory is not returned between tasks; "
                    f"parallel='subprocess' runs each task in a fresh process and cures it."]
        if any(len(t) > 1 for t in procs.values()):
            return ["no leak: RSS returns to within "
                    f"{LEAK_BYTES / GiB:.1f} GiB of the baseline between tasks; if memory runs "
                    "out, the per-task peak is the cause: fewer workers, pad=0, more memory."]
        return ["one task per process: no leak can build up; compare the task peaks with "
                "the available memory."]
