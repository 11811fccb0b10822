"""``exo2micro schema``: print the JSON Schema of ``result.json`` or of a stage record's envelope
(docs/output.md holds both)."""

from __future__ import annotations

import click

from exo2micro.io import record_model, result_model
from exo2micro.io.contracts import format_json


def schema_text(record: bool = False) -> str:
    """The JSON Schema of ``result.json``, or with ``record`` of a stage record's envelope
    (:func:`exo2micro.io.contracts.format_json`)."""
    return format_json(record_model.json_schema() if record else result_model.json_schema())


@click.command("schema")
@click.option("--markdown", is_flag=True, help="Print it as a fenced JSON block (as in "
                                                "docs/output.md).")
@click.option("--record", is_flag=True, help="The envelope of a stage record (stages/) "
                                              "instead of result.json.")
def schema(markdown: bool, record: bool) -> None:
    """Print the JSON Schema of a pair's result.json (or, with --record, of a stage record)."""
    text = schema_text(record)
    click.echo(f"```json\n{text}\n```" if markdown else text)
