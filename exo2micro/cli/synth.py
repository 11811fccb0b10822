"""``exo2micro synth`` / ``e2m-synth``: write synthetic raw pairs with ground truth.

One pair by default (sample ``SYN01``); ``--pairs N`` writes N pairs ``SYN01``… whose seed,
rotation, scale, k and shift vary per pair; ``--broken`` adds a pair with a truncated post
TIFF and a pair with pre only, for demonstrating lenient discovery. Prints one line per pair
naming its files and truth JSON. Exit codes as every tool (:mod:`exo2micro.errors`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from exo2micro import synth as lib
from exo2micro.cli.common import run_tool, threads_option
from exo2micro.resources import configure_threads, cpu_budget

_DEFAULTS = {f.name: f.default for f in fields(lib.SynthSpec)}
#: Options that --pairs draws per pair, so they cannot be given with it.
_VARIED = {"rotation": "rotation_deg", "scale": "scale", "k": "k", "tx": "tx", "ty": "ty"}


@click.command(name="synth", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--raw-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Raw directory to write into (<raw-dir>/<sample>/...).")
@click.option("--sample", default=None,
              help="Sample name (default SYN01); with --pairs, the name prefix (default SYN).")
@click.option("--dye", default=_DEFAULTS["dye"], show_default=True,
              help="Dye name; picks the RGB signal channel (SYBR/FITC/GFP green, DAPI/Hoechst "
                   "blue, Cy5/PI/TRITC/mCherry red, others green).")
@click.option("--width", type=click.IntRange(16), default=_DEFAULTS["width"], show_default=True,
              help="Post image width (px).")
@click.option("--height", type=click.IntRange(16), default=_DEFAULTS["height"],
              show_default=True, help="Post image height (px).")
@click.option("--pre-width", type=click.IntRange(16), default=None,
              help="Pre image width (px; default: --width).")
@click.option("--pre-height", type=click.IntRange(16), default=None,
              help="Pre image height (px; default: --height).")
@click.option("--rotation", type=float, default=_DEFAULTS["rotation_deg"], show_default=True,
              help="Rotation pre → post (degrees, counter-clockwise as displayed).")
@click.option("--scale", type=float, default=_DEFAULTS["scale"], show_default=True,
              help="Magnification post/pre.")
@click.option("--tx", type=float, default=_DEFAULTS["tx"], show_default=True,
              help="Extra shift of post along x (post px).")
@click.option("--ty", type=float, default=_DEFAULTS["ty"], show_default=True,
              help="Extra shift of post along y (post px).")
@click.option("--k", type=float, default=_DEFAULTS["k"], show_default=True,
              help="True post/pre brightness ratio of the autofluorescence.")
@click.option("--microbes", type=float, default=_DEFAULTS["microbe_coverage"],
              show_default=True, help="Fraction of the post tissue area covered by microbes.")
@click.option("--microbe-brightness", type=float, default=_DEFAULTS["microbe_brightness"],
              show_default=True,
              help="Scale of the microbes' amplitudes (1 = as bright as the autofluorescence).")
@click.option("--channel-mode", type=click.Choice(lib.CHANNEL_MODES),
              default=_DEFAULTS["channel_mode"], show_default=True, help="Output pixel format.")
@click.option("--signal-channels", default=None,
              help="RGB channel(s) carrying the signal, e.g. 'g' or 'rg' for a two-channel dye "
                   "(default: from the dye).")
@click.option("--seed", type=click.IntRange(0), default=_DEFAULTS["seed"], show_default=True,
              help="Random seed; the same options and seed give identical files.")
@click.option("--noise", type=float, default=_DEFAULTS["noise"], show_default=True,
              help="Noise level (1 = realistic 8-bit camera noise, 0 = quantisation only).")
@click.option("--texture", type=click.Choice(lib.TEXTURES), default=_DEFAULTS["texture"],
              show_default=True,
              help="'featureless' gives tissue without interior structure.")
@click.option("--tissue-offset", type=(float, float), default=_DEFAULTS["tissue_offset"],
              show_default=True, metavar="DX DY",
              help="Shift of the tissue centre (pre px), e.g. to push it out of the frame.")
@click.option("--layout", type=click.Choice(lib.LAYOUTS), default=_DEFAULTS["layout"],
              show_default=True,
              help="TIFF structure: ~256 KiB strips, one uncompressed strip, or 512×512 tiles.")
@click.option("--compression", type=click.Choice(["none", "lzw", "deflate", "zstd"]),
              default="none", show_default=True, help="TIFF compression.")
@click.option("--pairs", type=click.IntRange(1, 9999), default=None,
              help="Write N pairs SYN01.. with per-pair seed, rotation, scale, k and shift.")
@click.option("--broken", is_flag=True,
              help="Also write one pair with a truncated post TIFF and one with pre only.")
@threads_option
@click.pass_context
@run_tool
def synth(ctx: click.Context, raw_dir: Path, sample: str | None, dye: str, width: int,
          height: int, pre_width: int | None, pre_height: int | None, rotation: float,
          scale: float, tx: float, ty: float, k: float, microbes: float,
          microbe_brightness: float, channel_mode: str,
          signal_channels: str | None, seed: int, noise: float, texture: str,
          tissue_offset: tuple[float, float], layout: str, compression: str, pairs: int | None,
          broken: bool, threads: int | None) -> None:
    """Write synthetic pre/post-stain pairs with a ground-truth JSON per pair."""
    configure_threads(cpu_budget(threads)[0])
    base = lib.SynthSpec(
        sample=sample or "SYN01", dye=dye, width=width, height=height, pre_width=pre_width,
        pre_height=pre_height, rotation_deg=rotation, scale=scale, tx=tx, ty=ty, k=k,
        microbe_coverage=microbes, microbe_brightness=microbe_brightness,
        channel_mode=channel_mode, signal_channels=signal_channels,
        seed=seed, noise=noise, texture=texture, tissue_offset=tissue_offset, layout=layout,
        compression=None if compression == "none" else compression)
    if pairs is None:
        specs = [base]
    else:
        given = [f"--{name}" for name in _VARIED
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} cannot be combined with --pairs "
                                   "(each pair draws its own)")
        specs = lib.batch_specs(pairs, base, prefix=sample or "SYN")
    for result in lib.make_batch(raw_dir, specs, broken=broken):
        click.echo(result.describe(raw_dir))
