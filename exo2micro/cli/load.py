"""``e2m-load`` / ``exo2micro load``: stage 1 for one pair (see :mod:`exo2micro.stages.load`)."""

from __future__ import annotations

import click

from exo2micro.cli.common import parse_param_options, run_tool, setup_logging, stage_options
from exo2micro.layout import tiff_compression
from exo2micro.pipeline import prepare, run_stage
from exo2micro.stages.load import run_load


@click.command("load")
@click.option("--pre", "pre_raw", required=True, type=click.Path(dir_okay=False),
              help="Raw pre-stain TIFF.")
@click.option("--post", "post_raw", required=True, type=click.Path(dir_okay=False),
              help="Raw post-stain TIFF.")
@stage_options
@run_tool
def load(pre_raw: str, post_raw: str, sample: str, dye: str, pair_dir: str,
         checkpoint_format: str, force: bool, param_values: tuple[str, ...],
         threads: int | None) -> None:
    """Stage 1: read both raw TIFFs once, keep the signal channel, build the pyramids."""
    setup_logging()
    layout, n = prepare(pair_dir, parse_param_options(param_values), threads)
    rec, skipped = run_stage(1, layout, lambda: run_load(
        pre_raw, post_raw, layout, threads=n, compression=tiff_compression(checkpoint_format)),
        force=force, checkpoint_format=checkpoint_format)
    shapes = {w: rec["images"][w]["shape"] for w in ("pre", "post")}
    click.echo(f"{sample}/{dye} stage 1 {'skipped (current)' if skipped else 'done'}: "
               f"pre {shapes['pre'][1]}×{shapes['pre'][0]}, post {shapes['post'][1]}×"
               f"{shapes['post'][0]}, channels {rec['channels']['channels']}", err=True)
