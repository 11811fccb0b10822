"""``e2m-detect`` / ``exo2micro detect``: stage 5 for one pair (see
:mod:`exo2micro.stages.detect`)."""

from __future__ import annotations

from typing import Any

import click

from exo2micro.cli.common import (
    echo_stage_done,
    meta_option,
    run_result_stage,
    run_tool,
    stage_options,
)
from exo2micro.stages.detect import run_detect


@click.command("detect")
@stage_options
@meta_option
@run_tool
def detect(pair: dict[str, Any], sample: str, dye: str, pair_dir: str,
           checkpoint_format: str, force: bool,
           param_values: tuple[str, ...], threads: int | None,
           meta_values: tuple[str, ...]) -> None:
    """Stage 5: noise model, significance image and the catalogue of microbes.

    Reads the stage-4 difference image and record, the stage-3 aligned pre and the stage-1
    post signal from the pair folder; writes the significance image, detections CSV/ECSV,
    two plots, the stage record and result.json. Exit codes: 0 success, 2 usage error, 65
    missing or unusable input, 137 out of memory, 1 internal error.
    """
    rec, skipped = run_result_stage(
        5, lambda layout, n, meta: run_detect(layout, sample=sample, dye=dye, threads=n,
                                              checkpoint_format=checkpoint_format, meta=meta),
        sample=sample, dye=dye, meta_values=meta_values, pair_dir=pair_dir,
        param_values=param_values, threads=threads, force=force,
        checkpoint_format=checkpoint_format, pair=pair)
    found = rec.get("detections", {})
    echo_stage_done(sample, dye, 5, skipped,
                    f"{found.get('n', 0)} sources ({found.get('n_snr5', 0)} with SNR ≥ 5)")
