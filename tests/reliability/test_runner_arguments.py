"""Bad arguments of the runner (Python API and ``exo2micro run``) and of every tool: a clear
ParameterError / exit code 2 whose first stderr line is the error, before anything is
written; a stage-2 grid that would run for days is refused, and pre-flight's time follows the
grid size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from exo2micro import params as P
from exo2micro.batch.preflight import estimate_pair
from exo2micro.errors import ParameterError
from exo2micro.parallel import run_batch
from tests.reliability.runner_cases import first_line
from tests.runner_helpers import ROOT, exo2micro_cmd, make_raw, run_exo2micro


@pytest.fixture(scope="module")
def raw1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw1")
    make_raw(raw, 1, size=(240, 200))
    return raw


BAD_API = [
    ({"timeout_per_task": math.nan, "parallel": "subprocess"}, "timeout_per_task"),
    ({"timeout_per_task": math.inf, "parallel": "subprocess"}, "timeout_per_task"),
    ({"timeout_per_task": -1, "parallel": "subprocess"}, "timeout_per_task"),
    ({"from_stage": 3, "to_stage": 2}, "from_stage"),
    ({"from_stage": 0}, "from_stage"),
    ({"n_workers": 0, "parallel": True}, "n_workers"),
    ({"n_workers": 2.5, "parallel": True}, "n_workers"),
    ({"cpus": 0}, "cpus"),
    ({"cpus": -2}, "cpus"),
    ({"samples": [1, 2]}, "samples"),
    ({"samples": ["SYN01", None]}, "samples"),
    ({"dyes": [b"SybrGld"]}, "dyes"),
    ({"params": {"angle_step": 0.05, "angle_range": 180, "scale_step": 0.001}},
     "angle_step"),
]


@pytest.mark.parametrize("kwargs, names", BAD_API,
                         ids=[f"{next(iter(k))}={next(iter(k.values()))!r}" for k, _ in BAD_API])
def test_bad_api_argument_is_a_parameter_error(kwargs: dict, names: str, raw1: Path,
                                               tmp_path: Path) -> None:
    args = {"samples": None, "dyes": None, **kwargs}
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=names) as info:
        run_batch(args.pop("samples"), args.pop("dyes"), raw_dir=raw1, output_dir=out,
                  show_progress=False, **args)
    assert "\n" not in str(info.value)  # one line
    assert not out.exists()  # refused before anything was written


BAD_CLI = [
    (["--parallel", "subprocess", "--timeout-per-task", "nan"], "timeout_per_task"),
    (["--parallel", "subprocess", "--timeout-per-task", "inf"], "timeout_per_task"),
    (["--parallel", "subprocess", "--timeout-per-task", "-5"], "--timeout-per-task"),
    (["--from-stage", "4", "--to-stage", "1"], "from_stage"),
    (["--cpus", "0"], "--cpus"),
    (["--workers", "0"], "--workers"),
    (["-p", "angle_step=0.05", "-p", "scale_step=0.001"], "angle_step"),
    (["--bogus-option"], "--bogus-option"),
]


@pytest.mark.parametrize("args, names", BAD_CLI, ids=[" ".join(a) for a, _ in BAD_CLI])
def test_bad_cli_argument_exits_2_error_first(args: list[str], names: str, raw1: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_exo2micro("run", "--raw-dir", str(raw1), "--outdir", str(out), *args)
    assert done.returncode == 2, done.stderr
    line = first_line(done.stderr)
    assert line.startswith("error: ") and names in line, done.stderr
    assert not out.exists()


TOOLS = ["e2m-load", "e2m-align-boundary", "e2m-align-interior", "e2m-subtract",
         "e2m-discover", "e2m-summary", "e2m-synth"]


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_usage_error_first_line_is_the_error(tool: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "bin" / tool), "--no-such-option"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert first_line(done.stderr).startswith("error: No such option '--no-such-option'")
    assert "Usage:" in done.stderr  # the usage line still follows


@pytest.mark.parametrize("args", [["nope"], ["run", "--workers", "many"], ["params", "-x"]])
def test_exo2micro_usage_error_first_line_is_the_error(args: list[str]) -> None:
    import subprocess

    done = subprocess.run(exo2micro_cmd(*args), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert first_line(done.stderr).startswith("error: "), done.stderr


def test_help_and_version_still_exit_0() -> None:
    for args in (["--help"], ["run", "--help"], ["--version"]):
        done = run_exo2micro(*args)
        assert done.returncode == 0 and done.stdout.strip(), args


def test_preflight_time_follows_the_grid(raw1: Path) -> None:
    pre, post = sorted((raw1 / "SYN01").glob("*.tif"))
    fine = {"angle_step": 0.1, "scale_step": 0.01}
    default = estimate_pair(pre, post).stages[2].time_s
    cells = math.prod(P.grid_cells(P.resolve(fine))) / math.prod(P.grid_cells(P.DEFAULTS))
    assert cells > 40
    assert estimate_pair(pre, post, fine).stages[2].time_s == pytest.approx(default * cells)
    assert math.prod(P.grid_cells(P.resolve(fine))) <= P.MAX_GRID_CELLS
