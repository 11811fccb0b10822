"""``e2m-summary`` / ``exo2micro summary``: the batch summary from ``result.json`` files.

This is the final step of the Nextflow pipeline (and works on any finished output folder):
it reads the per-pair results — the files given as arguments, or ``OUTDIR/*/*/result.json`` —
and writes ``summary.tsv``, ``summary.md``, ``counts.tsv``, ``manifest.json`` and
``report.html`` into ``--outdir`` (see :mod:`exo2micro.report.summary`), then prints the summary
table with its Problems section.

* ``--samplesheet``: the pairs that were meant to run; one without a result is reported as
  failed, and the sheet's extra columns appear in the tables.
* ``--skipped``: ``sample, dye, reason`` rows (``e2m-discover --skipped``), reported as skipped.
* ``--failures``: ``sample, dye, stage, exit_code, attempts, reason`` rows recorded by the
  workflow for pairs that crashed or were killed; they complete the failed pairs' reasons.
* ``--provenance KEY=VALUE`` (repeatable): recorded under ``provenance`` in manifest.json (the
  pipeline passes the code version, commit, container, Nextflow version and run name).
* ``--versions FILE``: also write the software versions of this environment as YAML.
* ``--threads``: threads that make the report's thumbnails (default: the CPU budget).

Exit codes: 0 (also for zero pairs: an empty summary is written), 2 usage error.
"""

from __future__ import annotations

from pathlib import Path

import click

from exo2micro.cli.common import run_tool, threads_option


@click.command("summary", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the summary files into (and to search for results).")
@click.option("--samplesheet", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Samplesheet of the pairs that were meant to run.")
@click.option("--skipped", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="TSV of skipped pairs: sample, dye, reason.")
@click.option("--failures", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None,
              help="TSV of failed pairs: sample, dye, stage, exit_code, attempts, reason.")
@click.option("--provenance", "provenance", multiple=True, metavar="KEY=VALUE",
              help="Recorded under 'provenance' in manifest.json (repeatable).")
@click.option("--versions", "versions_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the software versions of this environment (YAML).")
@threads_option
@click.argument("results", nargs=-1, type=click.Path(dir_okay=False, exists=True,
                                                      path_type=Path))
@run_tool
def summary(outdir: Path, samplesheet: Path | None, skipped: Path | None,
            failures: Path | None, provenance: tuple[str, ...], versions_file: Path | None,
            threads: int | None, results: tuple[Path, ...]) -> None:
    """Write summary.tsv, summary.md, counts.tsv, manifest.json and report.html for a batch."""
    from exo2micro.batch.discover import read_expected
    from exo2micro.io.atomic import write_text_atomic
    from exo2micro.io.provenance import software_versions, versions_yaml
    from exo2micro.report import summary as S
    from exo2micro.resources import cpu_budget

    recorded: dict[str, str] = {}
    for item in provenance:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--provenance")
        recorded[key] = value
    versions = software_versions()
    if versions_file is not None:
        write_text_atomic(versions_file, versions_yaml(versions))

    paths = list(results) or sorted(outdir.glob("*/*/result.json"))
    rows = S.collect_rows(S.read_result_files(paths),
                          S.read_skipped(skipped) if skipped else (),
                          read_expected(samplesheet) if samplesheet else (),
                          S.read_failures(failures) if failures else ())
    extra = {"provenance": {**recorded, "software": versions}} if provenance else None
    written = S.write_summary(outdir, rows, extra, threads=cpu_budget(threads)[0])
    click.echo(S.format_text(rows))
    click.echo(f"wrote {', '.join(str(p) for p in written.values())}", err=True)
