"""``e2m-align-boundary`` / ``exo2micro align-boundary``: stage 2 for one pair
(see :mod:`exo2micro.stages.align_boundary`)."""

from __future__ import annotations

import click

from exo2micro.cli.common import parse_param_options, run_tool, setup_logging, stage_options
from exo2micro.pipeline import prepare, run_stage
from exo2micro.stages.align_boundary import run_align_boundary


@click.command("align-boundary")
@stage_options
@run_tool
def align_boundary(sample: str, dye: str, pair_dir: str, checkpoint_format: str, force: bool,
                   param_values: tuple[str, ...], threads: int | None) -> None:
    """Stage 2: similarity transform overlaying the tissue footprints (coarse alignment)."""
    setup_logging()
    layout, n = prepare(pair_dir, parse_param_options(param_values), threads)
    rec, skipped = run_stage(2, layout, lambda: run_align_boundary(
        layout, sample=sample, dye=dye, threads=n, checkpoint_format=checkpoint_format),
        force=force, checkpoint_format=checkpoint_format)
    click.echo(f"{sample}/{dye} stage 2 {'skipped (current)' if skipped else 'done'}: "
               f"{rec['transform_status']}, rotation {rec['rotation_deg']:.3f}°, scale "
               f"{rec['scale']:.4f}{'; ' + rec['reason'] if rec.get('reason') else ''}", err=True)
