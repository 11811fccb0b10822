"""``SampleDye``: one (sample, dye) pair, the object-style entry point of exo2micro 2.4's API.

::

    from exo2micro import SampleDye

    sd = SampleDye("CD070", "SybrGld", output_dir="processed", raw_dir="raw")
    sd.set_params(boundary_width=20, scale_percentile=40)
    result = sd.run()                 # stages 1-5, resume-aware
    result = sd.run(from_stage=3)     # re-run stages 3-5
    sd.scale_estimate                 # Moffat k of the last run

:meth:`SampleDye.run` is for interactive use: it takes the output-folder lock, runs the
pre-flight check for this pair and then :meth:`SampleDye.execute`. Batch runners call
:meth:`execute` directly (the batch holds the lock and did the pre-flight for all pairs).

:meth:`execute` never raises for a failed pair (only for ``KeyboardInterrupt``): the exception
becomes ``status = "error: <reason>"`` in the returned dict and in ``result.json``
(:func:`exo2micro.report.result.error_result`), so a batch always goes on. Whatever happens, the
result records how it ran (``result["runner"]``: mode, threads, wall time, attempt, process,
pre-flight outcome, memory if requested).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exo2micro import params as P
from exo2micro.io.layout import PairLayout, formats
from exo2micro.pipeline import StageCallback
from exo2micro.resources import current_rss_bytes, peak_rss_bytes

if TYPE_CHECKING:
    from exo2micro.io.result_model import PairResult
    from exo2micro.stage_params import PairParams

class SampleDye:
    """One pair: where its raw files are, its parameters, and how to run its stages.

    ``pre``/``post`` default to the pair's files in ``raw_dir/<sample>/`` (found with the
    discovery rules when the pair runs); ``meta`` holds extra samplesheet columns, copied into
    ``result.json``; ``threads`` defaults to the CPU budget
    (:func:`exo2micro.resources.cpu_budget`). ``params`` are parameter overrides like
    :meth:`set_params`, but validated only when the pair runs (so that in a batch a bad value
    becomes that pair's error).
    """

    def __init__(self, sample: str, dye: str, output_dir: str | os.PathLike[str] = "processed",
                 raw_dir: str | os.PathLike[str] = "raw", checkpoint_format: str = "tiff", *,
                 pre: str | os.PathLike[str] | None = None,
                 post: str | os.PathLike[str] | None = None,
                 meta: Mapping[str, str] | None = None, threads: int | None = None,
                 params: Mapping[str, Any] | None = None) -> None:
        formats(checkpoint_format)  # validates
        self.sample, self.dye = str(sample), str(dye)
        self.output_dir, self.raw_dir = Path(output_dir), Path(raw_dir)
        self.checkpoint_format = checkpoint_format
        self.pre = Path(pre) if pre is not None else None
        self.post = Path(post) if post is not None else None
        self.meta = dict(meta or {})
        self.threads = threads
        self._overrides: dict[str, Any] = dict(params or {})
        self._values: PairParams | None = None
        self.result: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"SampleDye({self.sample!r}, {self.dye!r}, output_dir={str(self.output_dir)!r})"

    # -------------------------------------------------------------------- parameters
    def set_params(self, **params: Any) -> SampleDye:
        """Set pipeline parameters by name (validated now; unknown names list the valid ones).

        Returns ``self`` so calls chain. Later calls add to and override earlier ones.
        """
        merged = {**self._overrides, **params}
        self._values = P.resolve(merged)
        self._overrides = merged
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The parameter overrides set so far (non-default values)."""
        return dict(self._overrides)

    @property
    def pair_dir(self) -> Path:
        return self.output_dir / self.sample / self.dye

    @property
    def layout(self) -> PairLayout:
        if self._values is None:  # resolved once, when first needed
            self._values = P.resolve(self._overrides)
        return PairLayout(self.pair_dir, self._values)

    @property
    def scale_estimate(self) -> float | None:
        """Moffat k of the last run (``None`` before a run, on error or before stage 4)."""
        return (self.result or {}).get("scale_estimate")

    def inputs(self) -> tuple[Path, Path]:
        """The raw pre and post files (discovered under ``raw_dir`` unless given)."""
        if self.pre is None or self.post is None:
            from exo2micro.batch.discover import DiscoveryError, discover

            found = discover(self.raw_dir, [self.sample], [self.dye], strict=False)
            if not found.pairs:
                raise DiscoveryError("; ".join(str(s) for s in found.skipped))
            pair = found.pairs[0]
            self.pre, self.post = self.pre or pair.pre, self.post or pair.post
        return self.pre, self.post

    # -------------------------------------------------------------------- running
    def run(self, from_stage: int | None = None, to_stage: int | None = None,
            force: bool = False, force_run: bool = False) -> dict[str, Any]:
        """Lock the output folder, check resources for this pair, run it; return the result.

        Raises :class:`~exo2micro.errors.LockError` when another run holds the output folder,
        and the pre-flight errors (:class:`MemoryError` / :class:`OSError` subclasses) when
        the pair does not fit, unless ``force_run``. A failing pair does not raise: its result
        has ``status = "error: …"``.
        """
        from exo2micro.batch.discover import PairSpec
        from exo2micro.batch.lock import OutputLock
        from exo2micro.batch.preflight import check, plan_batch
        from exo2micro.resources import cpu_budget

        threads = cpu_budget(self.threads)[0]
        values = self.layout.params
        with OutputLock(self.output_dir):
            pre, post = self.inputs()
            plans = plan_batch([PairSpec(self.sample, self.dye, pre, post)], self.output_dir,
                               values, self.checkpoint_format, from_stage=from_stage,
                               to_stage=to_stage, force=force, threads=threads)
            report = check(plans, output_dir=self.output_dir, mode="serial", workers=1,
                           params=values, checkpoint_format=self.checkpoint_format,
                           force_run=force_run)
            print(report.report, flush=True)
            return self.execute(from_stage, to_stage, force, threads=threads,
                                run_info={"mode": "SampleDye.run",
                                          "preflight": report.to_json()})

    def execute(self, from_stage: int | None = None, to_stage: int | None = None,
                force: bool = False, *, threads: int | None = None,
                on_stage: StageCallback | None = None,
                run_info: Mapping[str, Any] | None = None,
                memory_debug: bool = False) -> dict[str, Any]:
        """Run the pair's stages (resume-aware, :func:`exo2micro.pipeline.run_pair`) without
        lock or pre-flight; return the result dict (also in ``result.json``). Never raises for
        a failed pair.

        ``threads`` defaults to the instance's. ``run_info`` is stored under
        ``result["runner"]`` (with the wall time, thread count, process and host added).
        ``memory_debug`` adds RSS before/after (with a ``gc.collect()`` pass) and the task's
        peak under ``result["runner"]["memory"]``.
        """
        from exo2micro.pipeline import run_pair
        from exo2micro.report.result import write_result

        t0 = time.perf_counter()
        threads = threads if threads is not None else self.threads
        last = to_stage or max(P.STAGE_NAMES)
        current: dict[str, Any] = {"stage": None, "peak": 0}
        rss_before = current_rss_bytes() if memory_debug else None

        def hook(stage: int, event: str) -> None:
            if event == "start":
                current["stage"] = stage
            elif event == "done":
                current["peak"] = max(current["peak"], peak_rss_bytes())
            if on_stage is not None:
                on_stage(stage, event)

        layout: PairLayout | None = None
        try:
            layout = self.layout
            pre, post = self.inputs()
            run_pair(self.sample, self.dye, pre, post, self.pair_dir, params=layout.params,
                     from_stage=from_stage, to_stage=to_stage, force=force, threads=threads,
                     checkpoint_format=self.checkpoint_format, meta=self.meta, on_stage=hook)
            result = self._complete_result(layout, last)
        except Exception as exc:
            result = self.failure_result(exc, layout, current["stage"],
                                         (run_info or {}).get("attempts"))
        runner: dict[str, Any] = {**(run_info or {}), "threads": threads,
                                  "last_stage": last, "wall_s": round(time.perf_counter() - t0, 3),
                                  "pid": os.getpid(), "host": socket.gethostname()}
        if memory_debug:
            gc.collect()
            runner["memory"] = {"pid": os.getpid(), "before": rss_before,
                                "after": current_rss_bytes(), "peak": current["peak"] or None}
        result.runner = runner
        if layout is not None and result.is_written:
            with contextlib.suppress(OSError):
                write_result(layout, result)
        self.result = result.to_json()
        return self.result

    def failure_result(self, exc: BaseException, layout: PairLayout | None,
                       stage: int | None, attempts: int | None) -> PairResult:
        """The error result of a failed run (``status = "error: <reason>"``), written to
        ``result.json`` when ``layout`` is known and writable."""
        from exo2micro.io.oserrors import is_storage_error, storage_error
        from exo2micro.io.result_model import PairResult
        from exo2micro.report.result import error_info, error_result, error_status

        if is_storage_error(exc):  # disk full, read-only...: say so, not "[Errno 28] …/tmp-x"
            exc = storage_error(  # type: ignore[arg-type]
                exc, None if getattr(exc, "filename", None) else self.pair_dir)
        if layout is not None:
            try:
                return error_result(layout, self.sample, self.dye, exc, stage=stage,
                                    meta=self.meta, attempts=attempts)
            except Exception:  # the folder is unwritable: still report the original error
                pass
        return PairResult(status=error_status(exc), sample=self.sample, dye=self.dye,
                          meta=dict(self.meta), error=error_info(exc, stage, attempts))

    def _complete_result(self, layout: PairLayout, last: int) -> PairResult:
        """The result of a successful run: stage 4's ``result.json`` when it belongs to these
        parameters, else one assembled from the stage records (runs that stop early, and a
        ``result.json`` that is unreadable or not a valid result)."""
        from exo2micro.report.result import build_result, read_result

        if last >= max(P.STAGE_NAMES):
            try:
                existing = read_result(layout)
            except (OSError, ValueError):
                existing = None
            if (existing is not None and existing.status == "complete"
                    and existing.fingerprint == P.fingerprint(layout.params, 4)):
                return existing
        return build_result(layout, self.sample, self.dye, "complete", self.meta)

