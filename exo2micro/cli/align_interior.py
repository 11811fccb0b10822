"""``e2m-align-interior`` / ``exo2micro align-interior``: stage 3 for one pair
(see :mod:`exo2micro.stages.align_interior`)."""

from __future__ import annotations

import click

from exo2micro.cli.common import parse_param_options, run_tool, setup_logging, stage_options
from exo2micro.pipeline import prepare, run_stage
from exo2micro.stages.align_interior import run_align_interior


@click.command("align-interior")
@stage_options
@run_tool
def align_interior(sample: str, dye: str, pair_dir: str, checkpoint_format: str, force: bool,
                   param_values: tuple[str, ...], threads: int | None) -> None:
    """Stage 3: sub-pixel refinement from interior texture, then warp pre into the post frame."""
    setup_logging()
    layout, n = prepare(pair_dir, parse_param_options(param_values), threads)
    rec, skipped = run_stage(3, layout, lambda: run_align_interior(
        layout, sample=sample, dye=dye, threads=n, checkpoint_format=checkpoint_format),
        force=force, checkpoint_format=checkpoint_format)
    click.echo(f"{sample}/{dye} stage 3 {'skipped (current)' if skipped else 'done'}: "
               f"{rec['transform_status']}, estimated accuracy "
               f"{rec['estimated_accuracy_px']:.3f} px"
               f"{'; ' + rec['reason'] if rec.get('reason') else ''}", err=True)
