"""``e2m-align-interior`` / ``exo2micro align-interior``: stage 3 for one pair
(see :mod:`exo2micro.stages.align_interior`)."""

from __future__ import annotations

from typing import Any

import click

from exo2micro.cli.common import echo_stage_done, run_pair_stage, run_tool, stage_options
from exo2micro.stages.align_interior import run_align_interior


@click.command("align-interior")
@stage_options
@run_tool
def align_interior(pair: dict[str, Any], sample: str, dye: str, pair_dir: str,
                   checkpoint_format: str, force: bool,
                   param_values: tuple[str, ...], threads: int | None) -> None:
    """Stage 3: sub-pixel refinement from interior texture, then warp pre into the post frame."""
    _, rec, skipped = run_pair_stage(
        3, lambda layout, n: run_align_interior(layout, sample=sample, dye=dye, threads=n,
                                                checkpoint_format=checkpoint_format),
        pair_dir=pair_dir, param_values=param_values, threads=threads, force=force,
        checkpoint_format=checkpoint_format, pair=pair)
    echo_stage_done(sample, dye, 3, skipped,
                    f"{rec['transform_status']}, estimated accuracy "
                    f"{rec['estimated_accuracy_px']:.3f} px", rec.get("reason"))
