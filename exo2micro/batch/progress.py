"""What a batch tells its user while it runs: messages, progress bars or lines, memory records.

:class:`Reporter` carries the runner's messages (pre-flight report, skipped pairs, the chosen
mode) to a stream, standard output by default, one flushed line each. :class:`Progress` shows
per-task and per-stage progress: two tqdm bars on a terminal, plain lines otherwise (standard
error, so a redirected standard output holds only the messages and the summary table).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

from exo2micro import params as P
from exo2micro.batch.memory import MemoryTracker, TaskMemory
from exo2micro.pipeline import StageCallback


class Reporter:
    """The runner's messages: one flushed line each to ``stream`` (default: the current
    ``sys.stdout``, looked up per line so that redirections made later apply)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def info(self, line: str) -> None:
        print(line, file=self._stream or sys.stdout, flush=True)

    def warning(self, line: str) -> None:
        self.info(f"WARNING: {line}")


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


def stage_callback(progress: Progress | None, key: str) -> StageCallback | None:
    """The ``on_stage`` callback reporting task ``key``'s stages to ``progress``."""
    if progress is None:
        return None
    return lambda stage, event: progress.stage(key, stage, event)


def record_memory(tracker: MemoryTracker | None, key: str, result: Mapping[str, Any]) -> None:
    """Add the RSS a worker measured for its task (``result["runner"]["memory"]``)."""
    mem = (result.get("runner") or {}).get("memory")
    if tracker is None or not mem or mem.get("after") is None:
        return
    tracker.add(TaskMemory(key, int(mem["pid"]), int(mem.get("before") or mem["after"]),
                           int(mem["after"]), mem.get("peak")))
