"""Entry points of the command-line tools: click's standalone mode, with the error first.

Click prints a usage error as ``Usage: …`` / ``Try … for help.`` / ``Error: …``; the README
promises that the first stderr line of every tool says what is wrong. :func:`standalone` runs a
command with ``standalone_mode=False`` and prints ``error: …`` first, then the usage line and
the hint, with click's exit codes (2 for usage errors). This module imports only click, so
``exo2micro --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click


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
    (:func:`standalone`)."""
    standalone(lambda: command.main(prog_name=prog_name, standalone_mode=False))
