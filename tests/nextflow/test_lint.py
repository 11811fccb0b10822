"""``nextflow lint`` of the pinned runtime on the whole tree (tests/nextflow/README.md).

The runtime's nf-lang is 25.04.0 (the only 25.04 nf-lang on Maven Central;
tests/nextflow/runtime/pom.xml): its config checker reports a process input such as ``meta``
inside a closure of a config file as "not defined", which Nextflow 25.04.4 accepts (#6097). And
25.04.4's ``lint`` command stops with a NullPointerException instead of printing the findings of
a file that has errors but no warnings (#6202). So the tree is linted in two parts:

* every file but the two configs that use ``meta`` in closures, with ``nextflow lint`` itself,
  which must report no error;
* those two configs with the same parsers through ``lint_errors.groovy``, which must find
  nothing but that one class of false finding.

The parser checks of test_static.py (a newer language server) parse every file as well.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .runtime import REPO, launcher, run_nextflow

pytestmark = pytest.mark.nextflow

#: Files whose process closures read the task's ``meta`` (the one known false finding).
META_CONFIGS = ["conf/base.config", "conf/modules.config"]
#: `nextflow lint`'s own default exclusions plus the git-ignored tool folders.
EXCLUDE = [".git", ".lineage", ".nf-test", ".nextflow", "work", ".tools", ".venv"]
KNOWN_FALSE_FINDING = re.compile(r"^`meta` is not defined @ line \d+, column \d+\.$")


def lint_findings(*files: str) -> list[list[str]]:
    """``[kind, file, line, message]`` of every finding of lint_errors.groovy in ``files``."""
    lib = Path(launcher()).resolve().parent.parent / "lib"
    proc = subprocess.run(
        ["java", "-cp", f"{lib}/*", "groovy.ui.GroovyMain",
         str(Path(__file__).with_name("lint_errors.groovy")), *files],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def test_nextflow_lint_passes_on_the_tree() -> None:
    excludes = [opt for name in EXCLUDE + [Path(c).name for c in META_CONFIGS]
                for opt in ("-exclude", name)]
    proc = run_nextflow(["lint", *excludes, "."], cwd=REPO, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nextflow lint failed:\n{output[-6000:]}"
    assert "had no errors" in output and "had errors" not in output, output[-3000:]
    linted = set(re.findall(r"^Linting: (\S+)$", output, flags=re.M))
    for expected in ["main.nf", "workflows/exo2micro.nf", "modules/local/load/main.nf",
                     "nextflow.config", "conf/test.config", "conf/slurm.config",
                     "nf-test.config"]:
        assert expected in linted, f"nextflow lint did not look at {expected}: {sorted(linted)}"


def test_configs_with_meta_closures_have_only_the_known_false_finding() -> None:
    findings = lint_findings(*META_CONFIGS)
    assert findings, "expected the known `meta` finding; if nf-lang was upgraded, lint these too"
    other = [f for f in findings if f[0] != "ERROR" or not KNOWN_FALSE_FINDING.match(f[3])]
    assert not other, f"lint findings in {META_CONFIGS}: {other}"


def test_lint_errors_script_reports_a_planted_mistake(tmp_path: Path) -> None:
    """The helper is not blind: a real error in a config is printed as an ERROR line."""
    bad = tmp_path / "bad.config"
    bad.write_text("process {\n    cpus 2\n}\n")
    errors = [f for f in lint_findings(str(bad)) if f[0] == "ERROR"]
    assert errors and "equals sign" in errors[0][3], errors
