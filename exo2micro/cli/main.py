"""The ``exo2micro`` command: a group whose subcommands are the tools in :mod:`exo2micro.cli`.

Subcommands are imported lazily, so ``exo2micro --help`` is fast and a tool's heavy imports
(OpenCV, matplotlib) are paid only by the command that needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import click

from exo2micro.cli.entry import standalone

#: subcommand name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "run": "exo2micro.cli.run:run",
    "discover": "exo2micro.cli.discover:discover",
    "synth": "exo2micro.cli.synth:synth",
    "load": "exo2micro.cli.load:load",
    "align-boundary": "exo2micro.cli.align_boundary:align_boundary",
    "align-interior": "exo2micro.cli.align_interior:align_interior",
    "subtract": "exo2micro.cli.subtract:subtract",
    "detect": "exo2micro.cli.detect:detect",
    "summary": "exo2micro.cli.summary:summary",
    "params": "exo2micro.cli.params:params",
    "schema": "exo2micro.cli.schema:schema",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used; a usage error
    of the group or of a subcommand prints the error as its first stderr line."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        def call() -> Any:
            return super(LazyGroup, self).main(args, prog_name, complete_var,
                                               standalone_mode=False, **extra)
        if not standalone_mode:
            return call()
        standalone(call)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(cmd_name):
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


def _available(name: str) -> bool:
    module_name = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="exo2micro")
def cli() -> None:
    """exo2micro: align pre/post-stain images, subtract autofluorescence, keep the microbes."""
