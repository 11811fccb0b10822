"""The Nextflow side's copies of the package's constants are generated, and stay in sync."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exo2micro import nfconstants
from exo2micro.errors import (
    EXIT_DATA,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_OOM,
    EXIT_USAGE,
    RETRY_EXIT_CODES,
)

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_files_are_what_the_generator_writes() -> None:
    assert nfconstants.stale_files(ROOT) == [], "run: python -m exo2micro.nfconstants"


def test_check_names_a_stale_file_and_writing_fixes_it(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    for rel in nfconstants.GENERATED:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    assert nfconstants.main(["--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "conf" / "constants.config"
    edited.write_text(edited.read_text().replace("137, ", ""))
    assert nfconstants.main(["--check", "--root", str(tmp_path)]) == 1
    assert "conf/constants.config is stale" in capsys.readouterr().err
    assert nfconstants.main(["--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "wrote conf/constants.config\n"
    assert nfconstants.stale_files(tmp_path) == []


def test_retry_codes_are_the_kill_codes_only() -> None:
    """Killed for memory (137 is ours too), time or by a signal; never a deterministic
    failure or success."""
    assert set(RETRY_EXIT_CODES) == {104, 175, *range(130, 146)}
    assert EXIT_OOM in RETRY_EXIT_CODES
    assert not {EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DATA} & set(RETRY_EXIT_CODES)
    assert f"ext.retry_exit_codes = {nfconstants.groovy_list(RETRY_EXIT_CODES)}\n" in (
        nfconstants.constants_config())


def test_groovy_list_quotes_strings_and_refuses_other_values() -> None:
    assert nfconstants.groovy_list(["a", "it's", "b\\c", 7]) == "['a', 'it\\'s', 'b\\\\c', 7]"
    assert nfconstants.groovy_list([]) == "[]"
    with pytest.raises(TypeError):
        nfconstants.groovy_list([True])
    with pytest.raises(TypeError):
        nfconstants.groovy_list([1.5])  # type: ignore[list-item]


def test_stages_are_listed_in_stage_order_without_gaps() -> None:
    assert nfconstants.stages_in_order({2: "b", 1: "a"}) == ["a", "b"]
    with pytest.raises(ValueError, match=r"numbered 1\.\.2"):
        nfconstants.stages_in_order({1: "a", 3: "c"})
