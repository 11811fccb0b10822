"""The README stays true: its parameter table is the registry's, its quickstart scripts exist."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from exo2micro.cli.params import params

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_parameter_table_is_generated_from_the_registry() -> None:
    table = re.search(r"<!-- params-table:start.*?-->\n(.*?)\n<!-- params-table:end -->",
                      README, re.S)
    assert table is not None
    generated = CliRunner().invoke(params, ["--markdown"]).output.strip()
    assert table.group(1).strip() == generated


def test_quickstart_has_exactly_two_commands_and_they_exist() -> None:
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for cmd in commands:
        assert (ROOT / cmd.split()[1]).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
