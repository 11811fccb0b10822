"""The contract between the Nextflow modules and the bin/ tools.

- every tool a module calls exists in bin/, is executable, has a shebang, and its click command
  accepts every option the module passes (and the module passes every required option);
- every stub writes the outputs the process declares;
- the bash that turns a stage tool's exit status into a retry, a recorded failure or success
  behaves as docs/usage.md says.

The tools are written in parallel with the Nextflow layer: a test skips, naming the tool, only
while bin/<tool> does not exist. Once it exists the test runs in full.
"""

from __future__ import annotations

import glob
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from .conftest import REPO

BIN = REPO / "bin"
TOOL_RE = re.compile(r"\be2m-[a-z][a-z-]*[a-z]\b")
OPTION_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

# Sample values for the Groovy expressions used in stubs.
STUB_VALUES = {"meta.id": "S01/DAPI", "meta.sample": "S01", "meta.dye": "DAPI"}


def _processes(project_dump: dict) -> dict[str, dict]:
    return {p["name"]: p for p in project_dump["processes"]}


def _functions(project_dump: dict) -> dict[str, dict]:
    return {f["name"]: f for f in project_dump["functions"]}


def module_invocations(project_dump: dict) -> dict[str, tuple[str, set[str]]]:
    """process -> (tool, options it can pass): from the strings its script is built of,
    including those of the helper functions it calls (e.g. paramOptions -> --param)."""
    functions = _functions(project_dump)
    result = {}
    for name, proc in _processes(project_dump).items():
        strings = list(proc["script_strings"])
        for called in proc["script_calls"]:
            strings += functions.get(called, {}).get("strings", [])
        text = "\n".join(strings)
        tools = sorted(set(TOOL_RE.findall(text)))
        assert len(tools) == 1, f"process {name} should call exactly one e2m-* tool, found {tools}"
        result[name] = (tools[0], set(OPTION_RE.findall(text)))
    return result


def load_click_command(tool: Path) -> click.Command:
    """The click command a bin/ shim exposes (without running it)."""
    try:
        namespace = runpy.run_path(str(tool), run_name="__e2m_contract__")
    except SystemExit as exc:  # pragma: no cover - reported as a test failure
        pytest.fail(
            f"{tool.name} ran its command on import (exit {exc.code}); guard the call with "
            f"`if __name__ == '__main__':`"
        )
    commands = [v for v in namespace.values() if isinstance(v, click.Command)]
    assert commands, f"{tool.name} exposes no click command"
    return commands[-1] if len(commands) == 1 else _pick(tool, commands)


def _pick(tool: Path, commands: list[click.Command]) -> click.Command:
    text = tool.read_text()
    for command in commands:
        callback = getattr(command.callback, "__name__", "")
        if callback and re.search(rf"\b{re.escape(callback)}\s*\(", text):
            return command
    return commands[0]


def click_options(command: click.Command) -> tuple[set[str], set[str]]:
    """(every option string, the required ones' primary strings)."""
    names: set[str] = set()
    required: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
            if param.required:
                required.add(max(param.opts, key=len))
    names.add("--help")
    return names, required


def _tool(tool: str) -> Path:
    """``bin/<tool>``, which must exist: a module that calls a missing tool is a failure."""
    path = BIN / tool
    assert path.is_file(), f"bin/{tool} is missing, but a Nextflow module runs it"
    return path


@pytest.fixture(scope="session")
def invocations(project_dump: dict) -> dict[str, tuple[str, set[str]]]:
    return module_invocations(project_dump)


EXPECTED_TOOLS = {
    "SYNTH": "e2m-synth",
    "DISCOVER": "e2m-discover",
    "LOAD": "e2m-load",
    "ALIGN_BOUNDARY": "e2m-align-boundary",
    "ALIGN_INTERIOR": "e2m-align-interior",
    "SUBTRACT": "e2m-subtract",
    "DETECT": "e2m-detect",
    "SUMMARY": "e2m-summary",
}


def test_each_process_calls_its_tool(invocations: dict) -> None:
    assert {name: tool for name, (tool, _opts) in invocations.items()} == EXPECTED_TOOLS


def test_stage_modules_pass_the_stage_contract(invocations: dict) -> None:
    common = {"--sample", "--dye", "--pair-dir", "--param", "--threads", "--checkpoint-format"}
    for name in ["LOAD", "ALIGN_BOUNDARY", "ALIGN_INTERIOR", "SUBTRACT", "DETECT"]:
        _tool, options = invocations[name]
        assert common <= options, f"{name} misses {sorted(common - options)}"
        assert "--force" not in options, f"{name}: a fresh work dir never needs --force"
    assert {"--pre", "--post"} <= invocations["LOAD"][1]
    assert "--meta" in invocations["SUBTRACT"][1] and "--meta" in invocations["DETECT"][1]


@pytest.mark.parametrize("process", sorted(EXPECTED_TOOLS))
def test_tool_exists_and_accepts_the_module_options(process: str, invocations: dict) -> None:
    tool_name, options = invocations[process]
    tool = _tool(tool_name)
    assert tool.is_file(), f"bin/{tool_name} is not a file"
    assert os.access(tool, os.X_OK), f"bin/{tool_name} is not executable (chmod +x)"
    first = tool.read_bytes().split(b"\n", 1)[0]
    assert first.startswith(b"#!"), f"bin/{tool_name} has no shebang line"
    command = load_click_command(tool)
    accepted, required = click_options(command)
    unknown = sorted(options - accepted)
    assert not unknown, (
        f"module {process} passes {unknown} but bin/{tool_name} only accepts {sorted(accepted)}"
    )
    missing = sorted(required - options)
    assert not missing, f"bin/{tool_name} requires {missing}, which module {process} never passes"


@pytest.mark.parametrize("process", sorted(EXPECTED_TOOLS))
def test_tool_help_runs_without_stdin(process: str, invocations: dict) -> None:
    """The tool starts, prints its help and exits 0 with stdin closed (it never prompts)."""
    tool_name, _options = invocations[process]
    tool = _tool(tool_name)
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
        f"{os.environ.get('PATH', '')}",
    )
    proc = subprocess.run(
        [str(tool), "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"bin/{tool_name} --help exited {proc.returncode}:\n{proc.stderr}"


# ------------------------------------------------------------------------------------------
# stubs


def render_stub(parts: list[dict]) -> str:
    out = []
    for part in parts:
        if "text" in part:
            out.append(part["text"])
        else:
            expr = part["expr"]
            assert expr in STUB_VALUES, f"stub uses ${{{expr}}}; add a sample value to STUB_VALUES"
            out.append(STUB_VALUES[expr])
    return "".join(out)


def declared_paths(outputs: list[dict]) -> list[tuple[str, str, dict]]:
    """(emit, pattern, options) of every path output, tuple elements included."""
    found = []
    for output in outputs:
        emit = output["options"].get("emit", "")
        elements = output["elements"] if output["qualifier"] == "tuple" else [output]
        for element in elements:
            if element["qualifier"] == "path":
                options = dict(element["options"])
                if output["options"].get("optional"):
                    options.setdefault("optional", True)
                found.append((emit, element["pattern"], options))
    return found


@pytest.mark.parametrize("process", sorted(EXPECTED_TOOLS))
def test_stub_writes_the_declared_outputs(process: str, project_dump: dict, tmp_path: Path) -> None:
    proc = _processes(project_dump)[process]
    assert proc["stub"], f"process {process}: the stub must be a plain (G)String script"
    script = render_stub(proc["stub"])
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, f"stub of {process} failed:\n{run.stderr}"
    paths = declared_paths(proc["outputs"])
    assert paths, f"process {process} declares no path outputs"
    for emit, pattern, options in paths:
        matches = [
            m for m in glob.glob(str(tmp_path / pattern)) if not Path(m).name.startswith(".")
        ]
        if emit == "failure":
            assert not matches, f"{process} stub writes {pattern}: a stub stands for a success"
            continue
        if str(options.get("arity", "1")).startswith("0"):
            continue
        assert matches, f"{process} stub does not write {pattern!r} (emit {emit})"
        if options.get("type") == "dir":
            assert all(Path(m).is_dir() for m in matches), f"{process}: {pattern} must be a dir"


def test_discover_stub_samplesheet_points_to_files(project_dump: dict, tmp_path: Path) -> None:
    """The stub pipeline run needs real files behind pairs.csv (file(..., checkIfExists: true))."""
    script = render_stub(_processes(project_dump)["DISCOVER"]["stub"])
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, check=True)
    rows = (tmp_path / "pairs.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:4] == ["sample", "dye", "pre", "post"]
    assert {"mem_bytes", "time_s"} <= set(header)
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=True))
        assert Path(values["pre"]).is_file() and Path(values["post"]).is_file()


# ------------------------------------------------------------------------------------------
# exit status handling of the stage processes


def _handler(project_dump: dict) -> str:
    strings = _functions(project_dump)["stageStatusHandler"]["strings"]
    assert len(strings) == 1
    return strings[0]


def _run_stage(
    handler: str, tmp_path: Path, status: int, stderr: str, record: bool, attempt: int = 1
) -> subprocess.CompletedProcess:
    (tmp_path / "stages").mkdir(exist_ok=True)
    if record:
        (tmp_path / "stages" / "02_align_boundary_bw20.json").write_text("{}")
    (tmp_path / "e2m.err").write_text(stderr)
    script = (
        f"e2m_attempt={attempt}\ne2m_record=stages/02_align_boundary\n"
        f"e2m_status={status}\n{handler}\n"
    )
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_handler_success(project_dump: dict, tmp_path: Path) -> None:
    run = _run_stage(_handler(project_dump), tmp_path, 0, "warning: something\n", record=True)
    assert run.returncode == 0
    assert not (tmp_path / "failure.tsv").exists()


@pytest.mark.parametrize("status", [1, 104, 125, 127, 130, 137, 140, 143, 145, 175, 255])
def test_handler_fails_the_task_for_everything_but_data_and_usage_errors(
    status: int, project_dump: dict, tmp_path: Path
) -> None:
    """Killed, internal or environment failures fail the task: errorStrategy decides, and
    nothing is cached, so -resume runs them again (docs/usage.md, "Retries and failed pairs")."""
    run = _run_stage(
        _handler(project_dump), tmp_path, status, "error: out of memory\n", record=False
    )
    assert run.returncode == status
    assert not (tmp_path / "failure.tsv").exists()


@pytest.mark.parametrize("status", [2, 65])
def test_handler_records_data_and_usage_errors(
    status: int, project_dump: dict, tmp_path: Path
) -> None:
    stderr = (
        "some progress line\nerror: raw_pre/x.tif is truncated (read 10 of 2000 strips)\n"
        "Traceback (most recent call last):\n  boom\n"
    )
    run = _run_stage(_handler(project_dump), tmp_path, status, stderr, record=False, attempt=2)
    assert run.returncode == 0
    fields = (tmp_path / "failure.tsv").read_text().rstrip("\n").split("\t")
    assert fields == [
        str(status),
        "2",
        "error: raw_pre/x.tif is truncated (read 10 of 2000 strips)",
    ]


def test_handler_records_a_silent_failure(project_dump: dict, tmp_path: Path) -> None:
    run = _run_stage(_handler(project_dump), tmp_path, 65, "", record=False)
    assert run.returncode == 0
    fields = (tmp_path / "failure.tsv").read_text().rstrip("\n").split("\t")
    assert fields[0] == "65" and "no message" in fields[2]


def test_handler_fails_on_a_missing_stage_record(project_dump: dict, tmp_path: Path) -> None:
    run = _run_stage(_handler(project_dump), tmp_path, 0, "", record=False)
    assert run.returncode == 70
    assert not (tmp_path / "failure.tsv").exists()
    assert "stages/02_align_boundary" in run.stderr


def test_tools_run_the_installed_package_not_a_checkout_beside_them(tmp_path: Path) -> None:
    """A bin/ tool next to an `exo2micro/` folder (the checkout, under Singularity's bind of the
    project) must still import the environment's package: the container's code, not the
    checkout's, runs under the container's name."""
    (tmp_path / "bin").mkdir()
    shutil.copy2(REPO / "bin" / "e2m-discover", tmp_path / "bin" / "e2m-discover")
    fake = tmp_path / "exo2micro"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the checkout beside bin/ was used')\n")
    proc = subprocess.run([sys.executable, str(tmp_path / "bin" / "e2m-discover"), "--help"],
                          cwd=tmp_path / "bin", capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "beside bin/ was used" not in proc.stderr
