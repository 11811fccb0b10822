"""Shared plumbing of the command-line tools: exit codes, ``--param``, ``--threads``.

Every tool's click command is wrapped by :func:`run_tool`, which turns the library's exceptions
into the documented exit codes (:mod:`exo2micro.errors`) with one clear first line on stderr.
No tool ever reads stdin or prompts.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from exo2micro.errors import EXIT_INTERNAL, EXIT_USAGE, exit_code_for
from exo2micro.io.layout import CHECKPOINT_FORMATS, PairLayout
from exo2micro.params import PAIR_KEY
from exo2micro.pipeline import prepare, run_stage
from exo2micro.suggest import closest

F = TypeVar("F", bound=Callable[..., Any])


def run_tool(func: F) -> F:
    """Decorate a click callback so exceptions become documented exit codes (README, "Exit codes of
    the tools")."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            code = exit_code_for(exc)
            name = type(exc).__name__
            first = f"error: {exc}" if code != EXIT_INTERNAL else f"internal error: {name}: {exc}"
            click.echo(first, err=True)
            if code == EXIT_INTERNAL:
                traceback.print_exc(file=sys.stderr)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def parse_param_options(values: tuple[str, ...]) -> dict[str, str]:
    """Turn repeated ``--param name=value`` options into a dict of raw strings.

    Values are validated later against the registry (:func:`exo2micro.params.resolve`).
    """
    out: dict[str, str] = {}
    for item in values:
        if "=" not in item:
            raise click.UsageError(f"--param expects name=value, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = value.strip()
    return out


def param_option(func: F) -> F:
    """The ``--param name=value`` option (repeatable) shared by every stage tool."""
    return click.option(
        "--param", "-p", "param_values", multiple=True, metavar="NAME=VALUE",
        help="Pipeline parameter (repeatable); see `exo2micro params` for names and ranges.",
    )(func)


def threads_option(func: F) -> F:
    """The ``--threads N`` option: native thread pools (OpenCV) are sized to N."""
    return click.option(
        "--threads", type=click.IntRange(min=1), default=None,
        help="Threads for native code (default: the CPU budget; Nextflow passes task.cpus).",
    )(func)


class SuggestingChoice(click.Choice):
    """A :class:`click.Choice` whose error names the closest valid choice of a mistyped one."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            near = closest(str(value), [str(c) for c in self.choices])
            if near is None:
                raise
            self.fail(f"{exc.message} Did you mean '{near}'?", param, ctx)


def checkpoint_format_option(help_text: str) -> Callable[[F], F]:
    """The ``--checkpoint-format`` option (:data:`exo2micro.io.layout.CHECKPOINT_FORMATS`)."""
    return click.option("--checkpoint-format", type=SuggestingChoice(CHECKPOINT_FORMATS),
                        default="tiff", show_default=True, help=help_text)


class UsageExit(click.UsageError):
    """A usage error with exit code 2 (click's default for usage errors)."""

    exit_code = EXIT_USAGE


#: The pair's own image facts as tool options (samplesheet columns of the same names,
#: docs/usage.md "A samplesheet"): option name → (type, help).
IMAGE_FACT_OPTIONS: dict[str, tuple[type, str]] = {
    "pixel_size_um": (float, "This pair's pixel size (µm) of both images; over --param "
                             "pixel_size_um and the files' metadata."),
    "pre_pixel_size_um": (float, "This pair's pixel size (µm) of the pre image; over "
                                 "--pixel-size-um."),
    "post_pixel_size_um": (float, "This pair's pixel size (µm) of the post image; over "
                                  "--pixel-size-um."),
    "channel": (str, "This pair's signal channel: an index or an OME channel name; over "
                     "--param channel."),
    "pre_exposure_s": (float, "This pair's exposure time (s) of the pre image; over --param "
                              "pre_exposure_s and the OME-XML."),
    "post_exposure_s": (float, "This pair's exposure time (s) of the post image; over --param "
                               "post_exposure_s and the OME-XML."),
}


def image_fact_options(func: F) -> F:
    """The :data:`IMAGE_FACT_OPTIONS`, handed to ``func`` as one ``pair`` dict
    (:func:`exo2micro.batch.discover.image_facts`). Every stage tool takes them all — each stage
    uses the facts it needs — so that every stage's fingerprint is the same whichever
    orchestrator ran it."""
    from exo2micro.batch.discover import image_facts

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in IMAGE_FACT_OPTIONS}
        return func(*args, pair=image_facts(given), **kwargs)

    decorated: Any = wrapper
    for name, (kind, help_text) in reversed(IMAGE_FACT_OPTIONS.items()):
        decorated = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None,
                                 help=help_text)(decorated)
    return decorated  # type: ignore[no-any-return]


def stage_options(func: F) -> F:
    """Options shared by the stage tools (docs/architecture.md): pair folder, sample/dye,
    parameters, threads, checkpoint format, force, and the pair's image facts
    (:func:`image_fact_options`)."""
    func = image_fact_options(func)
    options = [
        click.option("--sample", required=True, help="Sample id (folder name in the raw layout)."),
        click.option("--dye", required=True, help="Dye name (text after the last '_')."),
        click.option("--pair-dir", type=click.Path(file_okay=False), default=".",
                     show_default=True, help="The pair's output folder (inputs are read from it)."),
        checkpoint_format_option("Image format(s) of checkpoints and difference images; "
                                 "-zstd/-deflate compress the TIFF tiles."),
        click.option("--force", is_flag=True, help="Re-run even if current outputs exist."),
        param_option,
        threads_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr, one line per message, for the command-line tools.

    Only warnings unless ``verbose``: when a tool fails, its first stderr line must be the
    error (README, "Exit codes of the tools"), not progress chatter logged before it.
    """
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)


def run_pair_stage(stage: int, work: Callable[[PairLayout, int], dict[str, Any]], *,
                   pair_dir: str, param_values: tuple[str, ...], threads: int | None,
                   force: bool, checkpoint_format: str,
                   inputs: Mapping[str, Path] | None = None,
                   pair: Mapping[str, Any] | None = None
                   ) -> tuple[PairLayout, dict[str, Any], bool]:
    """The body every stage tool shares: logging, then parameters and thread pools
    (:func:`exo2micro.pipeline.prepare`), then ``work(layout, n_threads)`` under
    :func:`exo2micro.pipeline.run_stage` (resume check, stage record, peak RSS).

    ``inputs`` are stage 1's raw ``{"pre", "post"}`` TIFFs (part of its resume check); ``pair``
    the pair's own image facts (:data:`exo2micro.params.PAIR_KEY`, part of the fingerprint).
    Returns the pair layout, the stage record and whether the stage was skipped as current.
    """
    setup_logging()
    overrides: dict[str, Any] = dict(parse_param_options(param_values))
    if pair:
        overrides[PAIR_KEY] = dict(pair)
    layout, n = prepare(pair_dir, overrides, threads)
    rec, skipped = run_stage(stage, layout, lambda: work(layout, n), force=force,
                             checkpoint_format=checkpoint_format, inputs=inputs)
    return layout, rec, skipped


#: ``--meta KEY=VALUE`` of the stages that write result.json (4 and 5).
meta_option = click.option("--meta", "meta_values", multiple=True, metavar="KEY=VALUE",
                           help="Extra metadata copied into result.json 'meta' (repeatable).")


def parse_meta(values: tuple[str, ...]) -> dict[str, str]:
    """Turn repeated ``--meta KEY=VALUE`` options into a dict (later keys win)."""
    meta: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--meta expects KEY=VALUE, got {item!r}")
        meta[key.strip()] = value.strip()
    return meta


def run_result_stage(stage: int, work: Callable[[PairLayout, int, dict[str, str]],
                                                dict[str, Any]], *,
                     sample: str, dye: str, meta_values: tuple[str, ...], pair_dir: str,
                     param_values: tuple[str, ...], threads: int | None, force: bool,
                     checkpoint_format: str, pair: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """:func:`run_pair_stage` for a stage that writes the pair's result.json:
    ``work(layout, n_threads, meta)``; when the stage is skipped as current, result.json is
    rebuilt (cheap) so that it carries this call's ``--meta``. ``pair``: as for
    :func:`run_pair_stage`. Returns the stage record and whether the stage was skipped."""
    from exo2micro.report.result import build_result, write_result

    meta = parse_meta(meta_values)
    layout, rec, skipped = run_pair_stage(
        stage, lambda layout, n: work(layout, n, meta), pair_dir=pair_dir,
        param_values=param_values, threads=threads, force=force,
        checkpoint_format=checkpoint_format, pair=pair)
    if skipped:
        write_result(layout, build_result(layout, sample, dye, "complete", meta))
    return rec, skipped


def echo_stage_done(sample: str, dye: str, stage: int, skipped: bool, detail: str,
                    reason: str | None = None) -> None:
    """The one stderr line a stage tool ends with: ``SAMPLE/DYE stage N done: detail[; reason]``
    (``reason``: why a stage kept a fallback result, from its record)."""
    state = "skipped (current)" if skipped else "done"
    click.echo(f"{sample}/{dye} stage {stage} {state}: {detail}"
               f"{'; ' + reason if reason else ''}", err=True)


def transform_stage_command(name: str, stage: int, work: Callable[..., dict[str, Any]],
                            help_text: str, detail: Callable[[dict[str, Any]], str]
                            ) -> click.Command:
    """The tool of a stage that finds a transform from the pair folder alone (2 align-boundary,
    3 align-interior): :func:`stage_options`, then
    ``work(layout, sample=, dye=, threads=, checkpoint_format=)`` under :func:`run_pair_stage`,
    then :func:`echo_stage_done` with ``detail(record)`` and the record's ``reason``."""

    @click.command(name, help=help_text)
    @stage_options
    @run_tool
    def command(pair: dict[str, Any], sample: str, dye: str, pair_dir: str,
                checkpoint_format: str, force: bool,
                param_values: tuple[str, ...], threads: int | None) -> None:
        _, rec, skipped = run_pair_stage(
            stage, lambda layout, n: work(layout, sample=sample, dye=dye, threads=n,
                                          checkpoint_format=checkpoint_format),
            pair_dir=pair_dir, param_values=param_values, threads=threads, force=force,
            checkpoint_format=checkpoint_format, pair=pair)
        echo_stage_done(sample, dye, stage, skipped, detail(rec), rec.get("reason"))

    return command
