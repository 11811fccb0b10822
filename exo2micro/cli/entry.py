"""Entry points of the command-line tools: click's standalone mode, with the error first.

Click prints a usage error as ``Usage: …`` / ``Try … for help.`` / ``Error: …``; the README
promises that the first stderr line of every tool says what is wrong. :func:`standalone` runs a
command with ``standalone_mode=False`` and prints ``error: …`` first, then the usage line and
the hint, with click's exit codes (2 for usage errors). This module imports only click, so
``exo2micro --help`` stays fast.

Before a tool imports numpy, :func:`size_native_pools` sets the OpenMP/BLAS thread variables
to the tool's CPU budget (``--threads`` of the stage tools, ``--cpus`` of ``exo2micro run``,
else :func:`exo2micro.resources.cpu_budget`), so those libraries never start one thread per
host core (docs/architecture.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

#: Options whose value is the CPU budget of a tool.
_BUDGET_OPTIONS = ("--threads", "--cpus")


def budget_from_argv(argv: Sequence[str]) -> int | None:
    """The positive integer given to ``--threads`` or ``--cpus`` in ``argv`` (the last one
    wins, as in click), or None when neither is given or the value is not a positive integer
    (click reports that later)."""
    value: int | None = None
    for i, arg in enumerate(argv):
        name, sep, text = arg.partition("=")
        if name not in _BUDGET_OPTIONS:
            continue
        if not sep:
            text = argv[i + 1] if i + 1 < len(argv) else ""
        if text.isdigit() and int(text) > 0:
            value = int(text)
    return value


def size_native_pools(argv: Sequence[str] | None = None) -> None:
    """Set the OpenMP/BLAS thread variables to the CPU budget named in ``argv`` (default
    ``sys.argv[1:]``) or found by :func:`exo2micro.resources.cpu_budget`. Call it before numpy
    is imported: those libraries read the variables when they load."""
    from exo2micro.resources import cpu_budget, set_thread_env

    args = sys.argv[1:] if argv is None else argv
    set_thread_env(cpu_budget(budget_from_argv(args))[0])


def standalone(main: Callable[[], Any]) -> NoReturn:
    """Run a click ``main`` (called with ``standalone_mode=False``) and exit the way click's
    standalone mode does, except that a usage error's first stderr line is the error itself
    (``error: …``), then the usage line and the ``--help`` hint; exit code 2 as in click."""
    try:
        rv = main()
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for "
                       f"help.", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


def run_command(command: click.Command, prog_name: str) -> NoReturn:
    """The ``bin/`` tools' entry point: ``command`` with first-line usage errors
    (:func:`standalone`). A tool calls :func:`size_native_pools` before it imports its
    command's module, which imports numpy."""
    standalone(lambda: command.main(prog_name=prog_name, standalone_mode=False))
