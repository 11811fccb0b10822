"""``exo2micro params``: list every pipeline parameter (name, stage, default, range, meaning)."""

from __future__ import annotations

import click

from exo2micro.params import REGISTRY, markdown_table


@click.command("params")
@click.option("--markdown", is_flag=True, help="Print the table in Markdown (as in the README).")
def params(markdown: bool) -> None:
    """List the pipeline parameters accepted by --param NAME=VALUE."""
    if markdown:
        click.echo(markdown_table())
        return
    for p in REGISTRY:
        note = " (accepted, ignored)" if p.ignored else ""
        click.echo(f"{p.name:<26} stage {p.stage}  default {p.default!s:<6} "
                   f"[{p.abbr}]{note}  {p.help}")
