"""Running stages with resume: the one code path both orchestrators and every tool use.

Stages 1 … 5 (load … detect). :func:`run_stage` skips a stage whose record is current
(docs/contracts.md, "Resume": outputs exist, fingerprint matches, files read cleanly, upstream
unchanged) and otherwise runs it with the peak-RSS counter reset, so each record reports that
stage's own peak.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from exo2micro import params as P
from exo2micro.io.layout import PairLayout, tiff_compression
from exo2micro.io.records import read_record, stage_is_current
from exo2micro.resources import configure_threads, cpu_budget, reset_peak_rss

log = logging.getLogger("exo2micro")

#: ``on_stage(stage, event)``: told ``"start"``, ``"done"`` or ``"skipped"`` for each stage.
StageCallback = Callable[[int, str], None]


def prepare(pair_dir: str | Path, overrides: Mapping[str, Any] | None,
            threads: int | None = None) -> tuple[PairLayout, int]:
    """Validate parameters, size thread pools and return the pair layout and thread count.

    Accepted-but-ignored parameters are reported once on the log.
    """
    values = P.resolve(overrides)
    for notice in P.ignored_notices(values):
        log.warning(notice)
    n, _ = cpu_budget(threads)
    configure_threads(n)
    return PairLayout(Path(pair_dir), values), n


def run_stage(stage: int, layout: PairLayout, func: Callable[[], dict[str, Any]], *,
              force: bool = False, checkpoint_format: str | None = None,
              inputs: Mapping[str, Path] | None = None) -> tuple[dict[str, Any], bool]:
    """Run ``func`` (which writes stage ``stage``'s outputs and record) unless the stage is
    current. ``inputs`` are the raw ``{"pre", "post"}`` TIFFs of stage 1 (their identity is
    part of its resume check). Returns ``(record, skipped)``."""
    if not force:
        current, why = stage_is_current(layout, stage, checkpoint_format, inputs)
        if current:
            log.info("stage %d (%s) is current: %s", stage, P.STAGE_NAMES[stage], why)
            rec = read_record(layout.record(stage))
            return (rec.to_json() if rec else {}), True
        log.info("stage %d (%s) runs: %s", stage, P.STAGE_NAMES[stage], why)
    reset_peak_rss()
    return func(), False


STAGES = (1, 2, 3, 4, 5)


def _stage_call(stage: int, layout: PairLayout, pre_raw: Path, post_raw: Path, *, sample: str,
                dye: str, threads: int, checkpoint_format: str,
                meta: Mapping[str, str]) -> Callable[[], dict[str, Any]]:
    """The zero-argument call that runs stage ``stage`` for one pair."""
    if stage == 1:
        from exo2micro.stages.load import run_load

        return lambda: run_load(pre_raw, post_raw, layout, threads=threads,
                                compression=tiff_compression(checkpoint_format), dye=dye)
    if stage == 2:
        from exo2micro.stages.align_boundary import run_align_boundary

        return lambda: run_align_boundary(layout, sample=sample, dye=dye, threads=threads,
                                          checkpoint_format=checkpoint_format)
    if stage == 3:
        from exo2micro.stages.align_interior import run_align_interior

        return lambda: run_align_interior(layout, sample=sample, dye=dye, threads=threads,
                                          checkpoint_format=checkpoint_format)
    if stage == 4:
        from exo2micro.stages.subtract import run_subtract

        return lambda: run_subtract(layout, sample=sample, dye=dye, threads=threads,
                                    checkpoint_format=checkpoint_format, meta=meta)
    from exo2micro.stages.detect import run_detect

    return lambda: run_detect(layout, sample=sample, dye=dye, threads=threads,
                              checkpoint_format=checkpoint_format, meta=meta)


def run_pair(sample: str, dye: str, pre_raw: str | Path, post_raw: str | Path,
             pair_dir: str | Path, *, params: Mapping[str, Any] | None = None,
             from_stage: int | None = None, to_stage: int | None = None, force: bool = False,
             threads: int | None = None, checkpoint_format: str = "tiff",
             meta: Mapping[str, str] | None = None,
             on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Run stages ``from_stage … to_stage`` (default 1 … 5) of one pair, resume-aware.

    A stage re-runs when it is not current, when ``force`` is set, when it is ≥ ``from_stage``
    (``from_stage`` forces a re-run from that stage on), or when an earlier stage re-ran in this
    call. Exceptions propagate (the caller decides how to report them); see
    :func:`exo2micro.report.result.error_result` for the failed-pair ``result.json``.
    ``on_stage(stage, event)`` is called with ``"start"``/``"done"``/``"skipped"`` for progress.
    Returns the last stage's record.
    """
    layout, n = prepare(pair_dir, params, threads)
    forced_from = from_stage if from_stage is not None else len(STAGES) + 1
    last = to_stage or len(STAGES)
    rerun = force
    record: dict[str, Any] = {}
    for stage in STAGES:
        if stage > last:
            break
        call = _stage_call(stage, layout, Path(pre_raw), Path(post_raw), sample=sample, dye=dye,
                           threads=n, checkpoint_format=checkpoint_format, meta=meta or {})
        if on_stage:
            on_stage(stage, "start")
        record, skipped = run_stage(stage, layout, call, force=rerun or stage >= forced_from,
                                    checkpoint_format=checkpoint_format,
                                    inputs={"pre": Path(pre_raw), "post": Path(post_raw)})
        rerun = rerun or not skipped
        if on_stage:
            on_stage(stage, "skipped" if skipped else "done")
    return record
