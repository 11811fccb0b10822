"""``e2m-align-boundary`` / ``exo2micro align-boundary``: stage 2 for one pair
(see :mod:`exo2micro.stages.align_boundary`)."""

from __future__ import annotations

from typing import Any

import click

from exo2micro.cli.common import echo_stage_done, run_pair_stage, run_tool, stage_options
from exo2micro.stages.align_boundary import run_align_boundary


@click.command("align-boundary")
@stage_options
@run_tool
def align_boundary(pair: dict[str, Any], sample: str, dye: str, pair_dir: str,
                   checkpoint_format: str, force: bool,
                   param_values: tuple[str, ...], threads: int | None) -> None:
    """Stage 2: similarity transform overlaying the tissue footprints (coarse alignment)."""
    _, rec, skipped = run_pair_stage(
        2, lambda layout, n: run_align_boundary(layout, sample=sample, dye=dye, threads=n,
                                                checkpoint_format=checkpoint_format),
        pair_dir=pair_dir, param_values=param_values, threads=threads, force=force,
        checkpoint_format=checkpoint_format, pair=pair)
    echo_stage_done(sample, dye, 2, skipped,
                    f"{rec['transform_status']}, rotation {rec['rotation_deg']:.3f}°, scale "
                    f"{rec['scale']:.4f}", rec.get("reason"))
