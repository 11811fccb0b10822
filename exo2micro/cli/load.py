"""``e2m-load`` / ``exo2micro load``: stage 1 for one pair (see :mod:`exo2micro.stages.load`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exo2micro.cli.common import echo_stage_done, run_pair_stage, run_tool, stage_options
from exo2micro.io.layout import tiff_compression
from exo2micro.stages.load import run_load


@click.command("load")
@click.option("--pre", "pre_raw", required=True, type=click.Path(dir_okay=False),
              help="Raw pre-stain TIFF.")
@click.option("--post", "post_raw", required=True, type=click.Path(dir_okay=False),
              help="Raw post-stain TIFF.")
@stage_options
@run_tool
def load(pre_raw: str, post_raw: str, pair: dict[str, Any], sample: str, dye: str,
         pair_dir: str, checkpoint_format: str, force: bool, param_values: tuple[str, ...],
         threads: int | None) -> None:
    """Stage 1: read both raw TIFFs once, keep the signal channel, build the pyramids.

    The per-pair options are the pair's own image facts (docs/usage.md, "A samplesheet"):
    part of the stage's fingerprint, so a changed value re-runs it, never of file names.
    """
    _, rec, skipped = run_pair_stage(
        1, lambda layout, n: run_load(pre_raw, post_raw, layout, threads=n,
                                      compression=tiff_compression(checkpoint_format),
                                      dye=dye),
        pair_dir=pair_dir, param_values=param_values, threads=threads, force=force,
        checkpoint_format=checkpoint_format,
        inputs={"pre": Path(pre_raw), "post": Path(post_raw)}, pair=pair)
    shapes = {w: rec["images"][w]["shape"] for w in ("pre", "post")}
    echo_stage_done(sample, dye, 1, skipped,
                    f"pre {shapes['pre'][1]}×{shapes['pre'][0]}, post {shapes['post'][1]}×"
                    f"{shapes['post'][0]}, channels {rec['channels']['channels']}")
