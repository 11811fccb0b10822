"""``e2m-discover`` / ``exo2micro discover``: resolve the (sample, dye) pairs to process.

Reads a raw directory (``--raw-dir``) or a samplesheet (``--input``), resolves the requested
samples × dyes (see :mod:`exo2micro.batch.discover`), prints a short report to stderr and optionally
writes the runnable pairs as a samplesheet (``--out``) and the skipped ones as a TSV
(``--skipped``). With ``--estimates`` the samplesheet also gets each pair's resource estimate
from the TIFF headers (the pre-flight model, :mod:`exo2micro.batch.preflight`): ``mem_bytes`` (peak
RSS of the largest stage), ``time_s`` (wall seconds of the longest stage at one thread) and
``disk_bytes`` (all stages); the Nextflow pipeline sizes each stage task from them.
``--param`` values are validated here, so a bad parameter fails the batch before any pair runs.
A pair whose TIFF header cannot be read gets empty estimate cells (it fails in stage 1,
where the reason is recorded). Exit codes: 0 (also when lenient mode leaves nothing to run),
2 usage error or bad parameter, 65 bad layout or, in strict mode, any problem pair.
"""

from __future__ import annotations

from pathlib import Path

import click

import exo2micro.batch.discover as disc
from exo2micro import params as P
from exo2micro.batch.preflight import estimate_pair
from exo2micro.cli.common import (
    UsageExit,
    checkpoint_format_option,
    param_option,
    parse_param_options,
    run_tool,
    setup_logging,
    threads_option,
)
from exo2micro.errors import InputDataError
from exo2micro.resources import configure_threads, cpu_budget


def split_names(values: tuple[str, ...]) -> list[str]:
    """Flatten repeated, comma-separated option values (``-s A,B -s C``) into a list."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@click.command("discover", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--raw-dir", type=click.Path(path_type=Path), default=None,
              help="Raw directory: one folder per sample holding its pre/post TIFFs.")
@click.option("--input", "sheet", type=click.Path(path_type=Path), default=None,
              help="Samplesheet CSV with columns sample,dye,pre,post (instead of --raw-dir).")
@click.option("--samples", "-s", multiple=True, metavar="A,B,...",
              help="Samples to process (comma-separated, repeatable); default: all found.")
@click.option("--dyes", "-d", multiple=True, metavar="X,Y,...",
              help="Dyes to process (comma-separated, repeatable); default: all found per sample.")
@click.option("--lenient", is_flag=True,
              help="Skip missing/incomplete/duplicate pairs instead of failing (default: strict).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the runnable pairs as a samplesheet CSV here.")
@click.option("--skipped", "skipped_out", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write skipped pairs (sample, dye, reason) as a TSV here.")
@click.option("--estimates", is_flag=True,
              help="Add mem_bytes, time_s and disk_bytes columns (estimates from the TIFF "
                   "headers) to the --out samplesheet.")
@checkpoint_format_option("Checkpoint format the estimates assume (disk_bytes).")
@click.option("--estimate-threads", type=click.IntRange(1, 4096), default=None,
              help="Threads the pairs will run with, which their memory estimates count "
                   "(default: --threads). Nextflow passes the pair tasks' CPUs.")
@param_option
@threads_option
@click.option("--verbose", "-v", is_flag=True, help="Also log every ignored non-TIFF file.")
@run_tool
def discover(raw_dir: Path | None, sheet: Path | None, samples: tuple[str, ...],
             dyes: tuple[str, ...], lenient: bool, out: Path | None, skipped_out: Path | None,
             estimates: bool, checkpoint_format: str, estimate_threads: int | None,
             param_values: tuple[str, ...], threads: int | None, verbose: bool) -> None:
    """Find the (sample, dye) pairs to process and report what cannot run."""
    setup_logging(verbose)
    if raw_dir is not None and sheet is not None:
        raise UsageExit("give either --raw-dir or --input, not both")
    values = P.resolve(parse_param_options(param_values))
    n_threads, _ = cpu_budget(threads)
    configure_threads(n_threads)
    sample_list, dye_list = split_names(samples), split_names(dyes)
    if sheet is not None:
        found = disc.load_samplesheet(sheet, sample_list, dye_list, strict=not lenient)
    elif raw_dir is not None:
        found = disc.discover(raw_dir, sample_list, dye_list, strict=not lenient)
    else:
        raise UsageExit("give --raw-dir DIR or --input SAMPLESHEET.csv")
    click.echo(disc.format_report(found), err=True)
    if out is not None:
        rows = None
        if estimates:
            rows = []
            for pair in found.pairs:
                try:
                    est = estimate_pair(pair.pre, pair.post, values, checkpoint_format,
                                        threads=estimate_threads or n_threads)
                except InputDataError as exc:
                    # the pair still runs, and fails in stage 1 with this reason (as locally)
                    click.echo(f"  {pair.sample}/{pair.dye}: no estimate: {exc}", err=True)
                    rows.append(None)
                    continue
                rows.append({"mem_bytes": est.mem_bytes, "disk_bytes": est.disk_bytes,
                             "time_s": max((st.time_s for st in est.stages.values()), default=0)})
        disc.write_samplesheet(found.pairs, out, estimates=rows)
        click.echo(f"  wrote {len(found.pairs)} pair(s) to {out}", err=True)
    if skipped_out is not None:
        disc.write_skipped(found.skipped, skipped_out)
    if not found.pairs:
        raise disc.nothing_to_run(found.source, [(s.sample, s.dye, s.reason)
                                                 for s in found.skipped])
