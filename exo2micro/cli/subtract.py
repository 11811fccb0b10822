"""``e2m-subtract`` / ``exo2micro subtract``: stage 4 for one pair (see
:mod:`exo2micro.stages.subtract`)."""

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
from exo2micro.stages.subtract import run_subtract


@click.command("subtract")
@stage_options
@meta_option
@run_tool
def subtract(pair: dict[str, Any], sample: str, dye: str, pair_dir: str,
             checkpoint_format: str, force: bool, param_values: tuple[str, ...],
             threads: int | None, meta_values: tuple[str, ...]) -> None:
    """Stage 4: estimate k, write post − k·aligned pre, the diagnostics and result.json.

    Reads the stage-1 post signal and pyramids, the stage-3 aligned pre and final transform
    from the pair folder. The exposure options are the pair's own image facts (docs/usage.md,
    "A samplesheet"): part of the stage's fingerprint, never of file names. Exit codes: 0
    success, 2 usage error, 65 missing or unusable input, 137 out of memory, 1 internal error.
    """
    rec, skipped = run_result_stage(
        4, lambda layout, n, meta: run_subtract(layout, sample=sample, dye=dye, threads=n,
                                                checkpoint_format=checkpoint_format, meta=meta),
        sample=sample, dye=dye, meta_values=meta_values, pair_dir=pair_dir,
        param_values=param_values, threads=threads, force=force,
        checkpoint_format=checkpoint_format, pair=pair)
    scales = rec.get("scales", {})
    extra = "".join(f", {kind} {scales[kind]:.4f}" for kind in ("percentile", "manual")
                    if scales.get(kind) is not None)
    echo_stage_done(sample, dye, 4, skipped,
                    f"k (Moffat) {scales.get('moffat', float('nan')):.4f}{extra}")
