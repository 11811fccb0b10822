"""The Nextflow code parses with the real strict-syntax parser and follows the house rules, and
every check of the checker fires on a planted mistake (so a clean result means something)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, CheckResult, project_files, run_checker


def test_project_has_no_findings(project_check: CheckResult) -> None:
    findings = project_check.findings.get("project", [])
    assert not findings, "static Nextflow check failed:\n" + "\n".join(map(str, findings))


def test_checker_saw_every_file(project_dump: dict) -> None:
    processes = {p["name"] for p in project_dump["processes"]}
    assert processes == {
        "SYNTH",
        "DISCOVER",
        "LOAD",
        "ALIGN_BOUNDARY",
        "ALIGN_INTERIOR",
        "SUBTRACT",
        "DETECT",
        "SUMMARY",
    }
    workflows = {w["name"] for w in project_dump["workflows"]}
    assert workflows == {"", "EXO2MICRO"}  # "" is the entry workflow
    configs = {c["file"] for c in project_dump["config"]}
    assert {
        "nextflow.config",
        "conf/base.config",
        "conf/modules.config",
        "conf/test.config",
        "conf/slurm.config",
    } <= configs


def test_one_module_per_process() -> None:
    for name in [
        "synth",
        "discover",
        "load",
        "align_boundary",
        "align_interior",
        "subtract",
        "summary",
    ]:
        module = REPO / "modules" / "local" / name / "main.nf"
        assert module.is_file(), module
        assert f"process {name.upper()} {{" in module.read_text()


# ------------------------------------------------------------------------------------------
# planted mistakes


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    rule: str  # the finding that must appear
    kind: str = "scripts"  # which files the case checks: scripts or configs


MUTATIONS = [
    Mutation(
        "directive-typo",
        "modules/local/load/main.nf",
        "    label 'process_pair'",
        "    lable 'process_pair'",
        "nf-error",
    ),
    Mutation(
        "syntax-error",
        "main.nf",
        "error(\"Invalid parameters:\\n  \" + errors.join('\\n  '))",
        "error(\"Invalid parameters:\\n  \" + errors.join('\\n  ')",
        "nf-error",
    ),
    Mutation(
        "wrong-process-emit",
        "workflows/exo2micro.nf",
        "ch_done1 = LOAD.out.state.filter",
        "ch_done1 = LOAD.out.states.filter",
        "emit",
    ),
    Mutation(
        "wrong-emit-in-emit-block",
        "workflows/exo2micro.nf",
        "summary  = SUMMARY.out.tsv",
        "summary  = SUMMARY.out.table",
        "emit",
    ),
    Mutation(
        "wrong-workflow-emit",
        "main.nf",
        "    workflow.onComplete = {",
        "    EXO2MICRO.out.reports.view { report -> report }\n\n    workflow.onComplete = {",
        "emit",
    ),
    Mutation(
        "stray-brace",
        "modules/local/load/main.nf",
        '    """\n}\n',
        '    """\n}\n}\n',
        "groovy-parse",
    ),
    Mutation(
        "stray-brace-config",
        "conf/modules.config",
        "        ]\n    }\n}\n",
        "        ]\n    }\n}\n}\n",
        "groovy-parse",
        kind="configs",
    ),
    Mutation(
        "undefined-process",
        "workflows/exo2micro.nf",
        "SUMMARY(ch_samplesheet.join(ch_skipped)",
        "SUMMARISE(ch_samplesheet.join(ch_skipped)",
        "undefined-call",
    ),
    Mutation(
        "undefined-include",
        "workflows/exo2micro.nf",
        "include { SUBTRACT       } from '../modules/local/subtract'",
        "include { SUBTRACTION    } from '../modules/local/subtract'",
        "nf-error",
    ),
    Mutation(
        "broken-config",
        "conf/base.config",
        "    withLabel: 'process_single' {",
        "    withLabel: 'process_single' {{",
        "config-error",
        kind="configs",
    ),
    Mutation(
        "config-option-typo",
        "conf/base.config",
        "    maxRetries    = params.max_retries",
        "    maxRetry      = params.max_retries",
        "config-option",
        kind="configs",
    ),
    Mutation(
        "missing-stub",
        "modules/local/summary/main.nf",
        '    stub:\n    """\n    printf \'sample\\\\tdye\\\\tstatus\\\\n\' > summary.tsv\n'
        "    printf '# exo2micro summary\\\\n' > summary.md\n"
        "    printf 'sample\\\\n' > counts.tsv\n"
        "    printf '{\"pairs\": []}\\\\n' > manifest.json\n"
        "    printf '<html><body>exo2micro summary</body></html>\\\\n' > report.html\n"
        "    printf 'exo2micro: stub\\\\n' > versions.yml\n"
        '    """\n',
        "",
        "process-stub",
    ),
    Mutation(
        "missing-tag", "modules/local/discover/main.nf", '    tag "${meta.id}"\n', "", "process-tag"
    ),
    Mutation(
        "missing-label",
        "modules/local/synth/main.nf",
        "    label 'process_single'\n",
        "",
        "process-label",
    ),
    Mutation(
        "capital-channel",
        "main.nf",
        "ch_source = channel.of([batch, raw, [], []])",
        "ch_source = Channel.of([batch, raw, [], []])",
        "channel-capital",
    ),
    Mutation(
        "implicit-it",
        "workflows/exo2micro.nf",
        ".map { row, code -> pairFromRow(row, code) }",
        ".map { pairFromRow(it[0], it[1]) }",
        "implicit-it",
    ),
    Mutation(
        "shell-block",
        "modules/local/synth/main.nf",
        "    script:\n",
        "    shell:\n",
        "process-shell",
    ),
    Mutation(
        "params-in-module",
        "modules/local/load/main.nf",
        "def args = task.ext.args ?: ''",
        "def args = task.ext.args ?: params.load_args",
        "params-scope",
    ),
    Mutation(
        "no-ext-args",
        "modules/local/summary/main.nf",
        "        ${args} \\\\\n",
        "",
        "process-ext-args",
    ),
    Mutation(
        "no-threads",
        "modules/local/subtract/main.nf",
        "        --threads ${task.cpus} \\\\\n",
        "",
        "process-threads",
    ),
    Mutation(
        "no-emit-name",
        "modules/local/summary/main.nf",
        "path('report.html'), emit: html",
        "path('report.html')",
        "process-emit",
    ),
]


def _apply(root: Path, mutation: Mutation) -> None:
    path = root / mutation.file
    text = path.read_text()
    count = text.count(mutation.old)
    assert count == 1, (
        f"mutation {mutation.name}: expected the text once in {mutation.file}, "
        f"found it {count} times; update the mutation to the current code"
    )
    path.write_text(text.replace(mutation.old, mutation.new))


@pytest.fixture(scope="session")
def mutation_results(
    language_server_jar: Path, tmp_path_factory: pytest.TempPathFactory
) -> CheckResult:
    base = tmp_path_factory.mktemp("mutations")
    cases: dict[str, list[Path]] = {}
    for mutation in MUTATIONS:
        root = base / mutation.name
        for rel in project_files(REPO):
            target = root / rel.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rel, target)
        _apply(root, mutation)
        cases[mutation.name] = project_files(
            root, scripts=mutation.kind == "scripts", configs=mutation.kind == "configs"
        )
    return run_checker(language_server_jar, cases, cwd=base)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_planted_mistake_is_found(mutation: Mutation, mutation_results: CheckResult) -> None:
    rules = mutation_results.rules(mutation.name)
    found = "\n".join(map(str, mutation_results.findings.get(mutation.name, [])))
    assert mutation.rule in rules, f"{mutation.name}: no [{mutation.rule}] finding; got:\n{found}"
