"""``exo2micro schema``: print the JSON Schema of ``result.json`` (docs/output.md holds it)."""

from __future__ import annotations

import click

from exo2micro.io.contracts import format_json
from exo2micro.io.result_model import json_schema


def schema_text() -> str:
    """The JSON Schema of ``result.json`` (:func:`exo2micro.io.contracts.format_json`)."""
    return format_json(json_schema())


@click.command("schema")
@click.option("--markdown", is_flag=True, help="Print it as a fenced JSON block (as in "
                                                "docs/output.md).")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of a pair's result.json."""
    click.echo(f"```json\n{schema_text()}\n```" if markdown else schema_text())
