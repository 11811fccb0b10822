"""``exo2micro run``: the local runner — discover, check, run every pair, summarise.

The command-line face of :func:`exo2micro.parallel.run_batch`: pairs come from ``--raw-dir``
or a samplesheet (``--input``), run on this machine in one of the modes of
:mod:`exo2micro.parallel` (default ``auto``: a process pool when two or more pairs fit the CPU
budget and the memory estimate, else serial), and the summary files land in ``--outdir``.

Exit codes: 0 when the batch ran (failed pairs are reported in the summary, not by the exit
code), 2 usage errors, pre-flight refusal or a locked output folder, 65 a bad raw layout or, in
strict mode, any missing/incomplete/duplicate pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from exo2micro.cli.common import (
    UsageExit,
    checkpoint_format_option,
    param_option,
    parse_param_options,
    run_tool,
)
from exo2micro.cli.discover import split_names

STAGES = click.IntRange(1, 5)


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--raw-dir", type=click.Path(path_type=Path), default=None,
              help="Raw directory: one folder per sample holding its pre/post TIFFs.")
@click.option("--input", "sheet", type=click.Path(path_type=Path), default=None,
              help="Samplesheet CSV (sample,dye,pre,post) instead of --raw-dir.")
@click.option("--outdir", type=click.Path(path_type=Path),
              default=Path("processed"), show_default=True, help="Output folder.")
@click.option("--samples", "-s", multiple=True, metavar="A,B,...",
              help="Samples to process (comma-separated, repeatable); default: all found.")
@click.option("--dyes", "-d", multiple=True, metavar="X,Y,...",
              help="Dyes to process (comma-separated, repeatable); default: all found.")
@click.option("--lenient", is_flag=True,
              help="Skip missing/incomplete/duplicate pairs and run the rest (default: fail "
                   "listing every one).")
@click.option("--parallel", "mode", type=click.Choice(["auto", "serial", "process", "thread",
                                                       "subprocess"]),
              default="auto", show_default=True,
              help="auto: the process pool when two or more pairs fit the CPUs and memory, "
                   "else serial; serial: one pair at a time in this process; process: a pool "
                   "of --workers processes; thread: a pool of threads; subprocess: a fresh "
                   "process per pair.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Most pairs at once in auto/process/thread mode (capped by the CPU budget "
                   "and, in auto mode, by memory; default: 4 for process/thread, the CPU "
                   "budget for auto).")
@click.option("--cpus", type=click.IntRange(min=1), default=None,
              help="CPU budget (default: SLURM_CPUS_PER_TASK, CPU affinity, cgroup quota).")
@param_option
@click.option("--from-stage", type=STAGES, default=None,
              help="Re-run from this stage on (earlier stages resume).")
@click.option("--to-stage", type=STAGES, default=None, help="Stop after this stage.")
@click.option("--force", is_flag=True, help="Re-run every stage even if current.")
@click.option("--timeout-per-task", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Kill a pair that runs longer (subprocess mode).")
@checkpoint_format_option("Image format(s) written; -zstd/-deflate compress the TIFF tiles.")
@click.option("--force-run", is_flag=True,
              help="Run even if the pre-flight check says memory or disk will not suffice.")
@click.option("--memory-debug", is_flag=True,
              help="Print RSS before/after each pair and a leak-vs-peak summary.")
@click.option("--verbose", "-v", is_flag=True, help="Log what every stage does.")
@run_tool
def run(raw_dir: Path | None, sheet: Path | None, outdir: Path, samples: tuple[str, ...],
        dyes: tuple[str, ...], lenient: bool, mode: str, workers: int | None,
        cpus: int | None,
        param_values: tuple[str, ...], from_stage: int | None, to_stage: int | None,
        force: bool, timeout_per_task: float | None, checkpoint_format: str, force_run: bool,
        memory_debug: bool, verbose: bool) -> None:
    """Run every (sample, dye) pair on this machine and write the batch summary."""
    from exo2micro.parallel import run_batch

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    if (raw_dir is None) == (sheet is None):
        raise UsageExit("give either --raw-dir DIR or --input SAMPLESHEET.csv")
    if timeout_per_task is not None and mode != "subprocess":
        raise UsageExit("--timeout-per-task needs --parallel subprocess")
    run_batch(split_names(samples) or None, split_names(dyes) or None,
              parallel=mode, n_workers=workers, params=parse_param_options(param_values),
              output_dir=outdir, raw_dir=raw_dir or "raw", from_stage=from_stage,
              to_stage=to_stage, force=force, checkpoint_format=checkpoint_format,
              strict_dyes=not lenient, memory_debug=memory_debug,
              timeout_per_task=timeout_per_task, force_run=force_run, samplesheet=sheet,
              cpus=cpus)
