"""Release and packaging files stay true to each other (fast, no network, no Docker).

The GitHub workflows (.github/workflows), the Dockerfile, environment.yml, README, LICENSE,
CHANGELOG.md and CITATIONS.md all name the package version, the image
ghcr.io/exo2micro/exo2micro:<version> or the test command; these tests keep them in step with
pyproject.toml and scripts/test.sh, and check that every third-party action is pinned to a
commit.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
OWNER = "exo2micro"
IMAGE = f"ghcr.io/{OWNER}/exo2micro"

#: Actions used by tag instead of a commit SHA, each with the reason. Empty: every SHA in the
#: workflows was read from the action's repository (the commit its release tag points at).
PINNED_BY_TAG: dict[str, str] = {}

USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
TAG_COMMENT = re.compile(r"^\s*#\s*v\d+\.\d+\.\d+\s*$")


def load_workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True
    if True in data:
        data["on"] = data.pop(True)
    return data


def run_lines(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


@pytest.fixture(scope="module")
def ci() -> dict:
    return load_workflow("ci.yml")


@pytest.fixture(scope="module")
def release() -> dict:
    return load_workflow("release.yml")


def test_the_version_is_one() -> None:
    init = (ROOT / "exo2micro" / "__init__.py").read_text()
    assert f'__version__ = "{VERSION}"' in init


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflows_are_valid_with_minimal_permissions_and_concurrency(name: str) -> None:
    wf = load_workflow(name)
    assert wf["name"] and wf["on"] and wf["jobs"]
    assert wf["permissions"] == {"contents": "read"}, "top-level permissions must be minimal"
    assert wf["concurrency"]["cancel-in-progress"] is True
    assert "${{ github.workflow }}" in wf["concurrency"]["group"]
    for job_id, job in wf["jobs"].items():
        assert job.get("runs-on"), job_id
        assert job["steps"], job_id
        for perm in job.get("permissions", {}).values():
            assert perm in {"read", "write", "none"}, job_id


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_every_action_is_pinned_to_a_commit(name: str) -> None:
    found = 0
    for number, line in enumerate((WORKFLOWS / name).read_text().splitlines(), 1):
        match = USES.match(line)
        if not match:
            continue
        found += 1
        ref = match["ref"]
        action = ref.split("@")[0]
        where = f"{name}:{number}: {ref}"
        if ref.startswith("./"):
            continue  # a local action is the repository's own code
        if action in PINNED_BY_TAG:
            assert re.search(r"@v\d+(\.\d+)*$", ref), where
            continue
        assert PINNED.match(ref), f"{where}: pin to a full 40-hex commit SHA"
        assert TAG_COMMENT.match(match["rest"]), f"{where}: add the release as `# vX.Y.Z`"
    assert found, f"{name} uses no action"


def test_one_release_per_action_across_workflows() -> None:
    refs: dict[str, set[str]] = {}
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for line in path.read_text().splitlines():
            if match := USES.match(line):
                action, _, sha = match["ref"].partition("@")
                refs.setdefault(action, set()).add(sha + match["rest"].strip())
    for action, pins in refs.items():
        assert len(pins) == 1, f"{action} is pinned to different commits: {sorted(pins)}"


def test_ci_runs_the_readme_test_command(ci: dict) -> None:
    assert set(ci["on"]) >= {"push", "pull_request"}
    job = ci["jobs"]["test-suite"]
    script = run_lines(job)
    # the README's command, on the whole suite (no --quick: CI runs everything)
    assert re.search(r"bash scripts/test\.sh(\s|$)", script)
    assert "--quick" not in script
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()
    usage = (ROOT / "scripts" / "test.sh").read_text()
    assert "bash scripts/test.sh              everything (what CI runs)" in usage
    # under CI=true the Nextflow runs must run, not skip (scripts/test.sh)
    assert '"${CI:-}" = "true"' in usage and "CI=true" in script
    java = steps_using(job, "actions/setup-java")
    assert java and java[0]["with"]["distribution"] == "temurin"
    assert str(java[0]["with"]["java-version"]) == "17"
    assert "mvn" in script, "scripts/setup-nextflow.sh needs Maven (on the ubuntu runners)"
    assert job["runs-on"].startswith("ubuntu")
    # the -profile slurm test needs these packages and root (tests/nextflow/README.md)
    for package in ["procps", "slurmctld", "slurmd", "slurm-client", "munge"]:
        assert package in script, package
    assert "sudo" in script


def test_ci_nextflow_matrix(ci: dict) -> None:
    job = ci["jobs"]["nextflow"]
    versions = job["strategy"]["matrix"]["nextflow"]
    assert [str(v) for v in versions] == ["25.04.0", "latest-everything"]
    config = (ROOT / "nextflow.config").read_text()
    assert "nextflowVersion = '!>=25.04.0'" in config, "the matrix tests the oldest supported"
    setup = steps_using(job, "nf-core/setup-nextflow")
    assert setup and setup[0]["with"]["version"] == "${{ matrix.nextflow }}"
    assert steps_using(job, "nf-core/setup-nf-test")
    script = run_lines(job)
    build = script.index('docker build -t "ghcr.io/exo2micro/exo2micro:${version}" .')
    assert "tomllib" in script and '["project"]["version"]' in script
    assert build < script.index("nf-test test --profile test,docker")
    assert build < script.index(
        "nextflow run . -profile test,docker -stub-run --outdir results-stub"
    )


def test_release_publishes_the_image_the_pipeline_names(release: dict) -> None:
    assert set(release["on"]) == {"release", "workflow_dispatch"}
    assert release["on"]["release"]["types"] == ["published"]
    jobs = release["jobs"]
    check = run_lines(jobs["version"])
    # the tag (v<version> or <version>) must be pyproject.toml's version
    assert "pyproject.toml" in check and '"${TAG#v}" != "$version"' in check
    assert "exit 1" in check
    image = jobs["image"]
    assert image["needs"] == "version"
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    for action in ["docker/setup-qemu-action", "docker/setup-buildx-action",
                   "docker/login-action", "docker/build-push-action"]:
        assert steps_using(image, action), action
    login = steps_using(image, "docker/login-action")[0]["with"]
    assert login["registry"] == "ghcr.io"
    assert login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    build = steps_using(image, "docker/build-push-action")[0]["with"]
    assert build["push"] is True
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert "VERSION=${{ needs.version.outputs.version }}" in build["build-args"]
    tags = build["tags"].strip().splitlines()
    template = "ghcr.io/${{ github.repository_owner }}/exo2micro"
    assert tags == [f"{template}:${{{{ needs.version.outputs.version }}}}", f"{template}:latest"]
    # for the exo2micro organisation that is the image of the Dockerfile, README and docs
    published = template.replace("${{ github.repository_owner }}", OWNER)
    assert published == IMAGE
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'org.opencontainers.image.source="https://github.com/{OWNER}/exo2micro"' in dockerfile
    assert f"docker build -t {IMAGE}:{VERSION} ." in dockerfile
    readme = (ROOT / "README.md").read_text()
    assert f"{IMAGE}:<version>" in readme and f"docker://{IMAGE}:<version>" in readme
    assert f"docker build -t {IMAGE}:{VERSION} ." in readme
    # the containers paragraph comes before the first docker command of the README
    assert readme.index("**Containers.**") < readme.index("-profile test,docker")
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert f"docker build -t {IMAGE}:{VERSION} ." in usage


def test_release_publishes_the_package_environment_yml_installs(release: dict) -> None:
    job = release["jobs"]["pypi"]
    assert job["needs"] == "version"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert job["environment"]["name"] == "pypi"
    assert "python -m build" in run_lines(job)
    assert steps_using(job, "pypa/gh-action-pypi-publish")


def test_dockerfile_installs_the_package_and_puts_bin_on_path() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = re.sub(r"\\\n", " ", "\n".join(
        ln for ln in text.splitlines() if not ln.lstrip().startswith("#")
    ))
    assert re.search(r"^FROM python:3\.11-slim\b", instructions, flags=re.M)
    assert re.search(r"apt-get install .*\bprocps\b", instructions)
    pip = re.findall(r"pip install [^\n&]*", instructions)
    assert pip, "the Dockerfile must pip install the package"
    for command in pip:
        assert not re.search(r"(\s-e\b|--editable)", command), f"editable install: {command}"
    # installed from a throw-away copy of the sources, which is removed
    assert "pip install --no-cache-dir /tmp/exo2micro-src" in instructions
    assert "rm -rf /tmp/exo2micro-src" in instructions
    assert "COPY bin /opt/exo2micro/bin" in instructions
    assert 'ENV PATH="/opt/exo2micro/bin:${PATH}"' in instructions
    # the image's version label defaults to the package version; release.yml overrides it
    assert f"ARG VERSION={VERSION}" in instructions
    for label, value in [
        ("source", f"https://github.com/{OWNER}/exo2micro"),
        ("version", "${VERSION}"),
        ("licenses", "MIT"),
        ("description", PYPROJECT["project"]["description"]),
    ]:
        assert f'org.opencontainers.image.{label}="{value}"' in instructions, label


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", ".dockerignore is an allowlist"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for match in re.finditer(r"^COPY (.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M):
        copied.update(match[1].split())
    assert copied == allowed
    for path in copied:
        assert (ROOT / path).exists(), path


def environment() -> tuple[list[str], list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return conda, pip


def test_environment_yml_installs_the_release_not_the_checkout() -> None:
    conda, pip = environment()
    assert "python=3.11" in conda and "pip" in conda and "procps-ng" in conda
    for entry in pip:
        assert not re.match(r"^(\.|/|-e\b|file:|git\+)", entry), f"installs a path: {entry}"
    assert f"exo2micro=={VERSION}" in pip
    text = (ROOT / "environment.yml").read_text()
    assert "release.yml" in text, "say where exo2micro==<version> comes from"


def test_environment_yml_pins_every_runtime_dependency() -> None:
    _, pip = environment()
    pins = {}
    for entry in pip:
        req = Requirement(entry)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"pin exactly: {entry}"
        pins[req.name.lower()] = Version(specs[0].version)
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = req.name.lower()
        assert name in pins, f"{name} is not pinned in environment.yml"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {dep}"
    assert set(pins) == {Requirement(d).name.lower()
                         for d in PYPROJECT["project"]["dependencies"]} | {"exo2micro"}


def test_license_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    match = re.search(r"^Copyright \(c\) (\d{4})(?:-(\d{4}))? the exo2micro developers$",
                      text, re.M)
    assert match, "Copyright (c) <year> the exo2micro developers"
    first, last = int(match[1]), int(match[2] or match[1])
    # 2026: the year of the first commit; never a year still to come
    assert first == 2026 and first <= last <= datetime.date.today().year
    assert "license" not in PYPROJECT["project"] or "MIT" in str(PYPROJECT["project"]["license"])


def test_changelog_has_the_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in text
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)
    assert re.search(rf"^\[{re.escape(VERSION)}\]: https://", text, re.M)
    unreleased = text.split("## [Unreleased]", 1)[1].split(f"## [{VERSION}]", 1)[0]
    for topic in ["Real Nextflow runs", "65", "kill codes", "tee", "--help"]:
        assert topic in unreleased, topic
    # the release workflow refuses a tag without an entry
    assert "CHANGELOG.md" in (WORKFLOWS / "release.yml").read_text()


def test_citations() -> None:
    text = (ROOT / "CITATIONS.md").read_text()
    for needed in [
        "Di Tommaso", "2017", "10.1038/nbt.3820",
        "OpenCV", "astropy", "tifffile", "NumPy", "SciPy", "matplotlib",
        "Moffat", "1969", "Astronomy and Astrophysics* 3, 455",
        "exo2micro 2.4", "measured and compatible with",
    ]:
        assert needed in text, needed
    assert "not copied from" in text
