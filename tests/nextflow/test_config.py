"""Consistency of the Nextflow layer's configuration, packaging and documentation."""

from __future__ import annotations

import json
import re

import pytest
import tomllib
import yaml

from .conftest import REPO


def test_both_error_strategies_read_the_generated_retry_codes(project_dump: dict) -> None:
    """No exit code is written in conf/base.config: its closures read task.ext.retry_exit_codes,
    set once, in the generated conf/constants.config that it includes (its values:
    tests/test_nfconstants.py; what the closures decide: test_groovy_functions.py)."""
    base = (REPO / "conf" / "base.config").read_text()
    strategies = re.findall(r"errorStrategy\s*=\s*\{(.*?)\}\n", base)
    assert len(strategies) == 2, "base.config: process-wide and process_pair errorStrategy"
    for strategy in strategies:
        assert "task.exitStatus in task.ext.retry_exit_codes" in strategy
        assert not re.search(r"\d", strategy), strategy
        assert "task.attempt <= params.max_retries" in strategy
    assert "'ignore'" in strategies[1], "a pair that is still killed must not stop the others"
    assert "maxRetries    = params.max_retries" in base
    config = project_dump["config"]
    includes = [e["value"] for e in config
                if e["file"] == "conf/base.config" and e["path"] == "includeConfig"]
    assert includes == ["constants.config"]
    codes = [e for e in config if e["path"].endswith("retry_exit_codes")]
    assert [(e["file"], e["path"]) for e in codes] == [
        ("conf/constants.config", "process.ext.retry_exit_codes")]


def test_container_is_fully_qualified_and_versioned_with_the_package() -> None:
    """One image name, in params.container: pulled by Docker as it is, by Singularity and
    Apptainer from the same registry (docker://); its tag is the package version."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    config = (REPO / "nextflow.config").read_text()
    image = re.search(r"^\s*container\s*=\s*'([^']+)'", config, flags=re.M)
    assert image, "params.container missing in nextflow.config"
    assert re.fullmatch(r"[a-z0-9.-]+\.[a-z]+/[a-z0-9._-]+/exo2micro:" + re.escape(version),
                        image.group(1)), image.group(1)
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    spec = schema["$defs"]["generic_options"]["properties"]["container"]
    assert spec["default"] == image.group(1) and re.fullmatch(spec["pattern"], image.group(1))
    profiles = config[config.index("profiles {"):]
    assert "process.container      = params.container" in profiles
    assert profiles.count('process.container      = "docker://${params.container}"') == 2
    assert f"version         = '{version}'" in config
    assert f"ARG VERSION={version}" in (REPO / "Dockerfile").read_text()


def test_profiles(project_dump: dict) -> None:
    paths = [c["path"] for c in project_dump["config"] if c["file"] == "nextflow.config"]
    profiles = {p.split(".")[1] for p in paths if p.startswith("profiles.")}
    assert {"test", "docker", "singularity", "apptainer", "conda", "slurm"} <= profiles
    everywhere = [c["path"] for c in project_dump["config"]]
    for conf in ["conf/test.config", "conf/slurm.config"]:
        assert any(
            c["file"] == conf and c["path"] == "process.resourceLimits"
            for c in project_dump["config"]
        ), f"{conf} sets no resourceLimits"
    assert "process.resourceLimits" in everywhere
    test = {
        c["path"]: c["value"] for c in project_dump["config"] if c["file"] == "conf/test.config"
    }
    assert test["params.synth_pairs"] > 0 and test["params.synth_broken"] is True
    assert test["params.lenient"] is True
    slurm = {
        c["path"]: c["value"] for c in project_dump["config"] if c["file"] == "conf/slurm.config"
    }
    assert slurm["process.executor"] == "slurm"


def test_pipeline_info_reports(project_dump: dict) -> None:
    config = {
        c["path"]: c["value"] for c in project_dump["config"] if c["file"] == "nextflow.config"
    }
    for scope in ["trace", "report", "timeline", "dag"]:
        assert config[f"{scope}.enabled"] is True, scope
        assert "pipeline_info/" in str(config[f"{scope}.file"]), scope
    fields = config["trace.fields"].split(",")
    assert {"peak_rss", "attempt", "exit", "memory", "realtime", "tag"} <= set(fields)


def test_labels_are_defined(project_dump: dict) -> None:
    defined = {
        c["path"].split(".")[1].split(":", 1)[1]
        for c in project_dump["config"]
        if c["path"].startswith("process.withLabel:")
    }
    used = {label for p in project_dump["processes"] for label in p["labels"]}
    used = {label.strip("'\"") for label in used}
    assert used <= defined, f"labels without resources in conf/base.config: {used - defined}"


def test_every_process_is_configured_in_modules_config(project_dump: dict) -> None:
    selectors = [
        c["path"].split(".")[1].split(":", 1)[1]
        for c in project_dump["config"]
        if c["file"] == "conf/modules.config" and c["path"].startswith("process.withName:")
    ]
    names = {n for s in selectors for n in s.split("|")}
    assert {p["name"] for p in project_dump["processes"]} <= names


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.M)
    assert "procps" in text, "Nextflow needs ps in the container for its trace metrics"
    assert "pip install" in text and "bin:${PATH}" in text.replace('"', "")


def test_tower_yml_lists_the_batch_reports() -> None:
    tower = yaml.safe_load((REPO / "tower.yml").read_text())
    assert {"summary.md", "report.html", "summary.tsv"} <= set(tower["reports"])
    for spec in tower["reports"].values():
        assert spec["display"]


def test_nf_test_files_target_their_modules() -> None:
    for module in sorted((REPO / "modules" / "local").glob("*/main.nf")):
        test = module.parent / "tests" / "main.nf.test"
        assert test.is_file(), f"{test} is missing"
        text = test.read_text()
        process = re.search(r"^process (\w+) \{", module.read_text(), flags=re.M).group(1)
        assert 'script "../main.nf"' in text
        assert f'process "{process}"' in text
        assert 'options "-stub"' in text, f"{test}: no stub test"
    pipeline = (REPO / "tests" / "main.nf.test").read_text()
    assert 'script "../main.nf"' in pipeline and 'profile "test"' in pipeline
    assert (REPO / "nf-test.config").is_file()


@pytest.fixture(scope="module")
def nf_test_parse(language_server_jar, tmp_path_factory):
    from .conftest import run_checker

    files = [
        *sorted(REPO.glob("modules/local/*/tests/main.nf.test")),
        REPO / "tests" / "main.nf.test",
    ]
    return run_checker(language_server_jar, {"nf-test": files}, cwd=REPO)


def test_nf_test_files_are_valid_groovy(nf_test_parse) -> None:
    findings = nf_test_parse.findings.get("nf-test", [])
    assert not findings, "\n".join(map(str, findings))


def test_docs_describe_every_output_and_parameter() -> None:
    output = (REPO / "docs" / "output.md").read_text()
    for name in [
        "summary.tsv",
        "summary.md",
        "report.html",
        "manifest.json",
        "result.json",
        "pipeline_info",
        "transforms/02_boundary",
        "transforms/03_interior",
        "03_interior_aligned_pre",
        "04_difference",
        "stages/",
        "cache/",
        "registration<s3>.png",
        "execution_trace",
        "pairs.csv",
        "skipped.tsv",
    ]:
        assert name in output, f"docs/output.md does not mention {name}"
    usage = (REPO / "docs" / "usage.md").read_text()
    for topic in [
        "-profile test",
        "slurm",
        "singularity",
        "Seqera Platform",
        "-resume",
        "resourceLimits",
        "max_retries",
        "failures.tsv",
        "--input",
        "--raw_dir",
        "--lenient",
    ]:
        assert topic in usage, f"docs/usage.md does not mention {topic}"


@pytest.mark.parametrize("published", [
    "CD070/SybrGld/pipeline_output/registration.png",
    "CD070/SybrGld/pipeline_output/registration_bw20.png",
    "CD070/SybrGld/pipeline_output/difference_image_sp99.5_msc1.2.png",
])
def test_tower_yml_globs_match_suffixed_names(published: str) -> None:
    """Non-default parameters add a suffix to every file name (docs/output.md): the report
    globs of Seqera Platform must still find the per-pair plots."""
    from pathlib import PurePosixPath

    tower = yaml.safe_load((REPO / "tower.yml").read_text())
    assert any(PurePosixPath(published).match(glob) for glob in tower["reports"]), published
