"""The CPU budget sizes every native thread pool in every process that does pipeline work.

Inside a task of each runner mode (serial and thread in this process, process-pool workers,
task subprocesses) and inside a stage tool of ``bin/`` run as Nextflow runs it
(``--threads N``), after the task has run: every BLAS/OpenMP library loaded (threadpoolctl),
OpenCV, and :func:`exo2micro.resources.native_threads` (tifffile's codec workers) report the
thread count that the runner planned for the task — never the host's core count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exo2micro.cli.entry import budget_from_argv
from exo2micro.parallel import run_batch
from tests.native_pools import pools_after_task
from tests.runner_helpers import ROOT, child_env, make_raw

#: Small pairs: stage 1 alone loads what a task loads before the pools are read.
SIZE = (160, 128)


def assert_pools(pools: dict[str, Any], threads: int) -> None:
    assert pools["libraries"], "threadpoolctl found no BLAS/OpenMP library (numpy has one)"
    wrong = [lib for lib in pools["libraries"] if lib[1] != threads]
    assert not wrong, f"native pools not at {threads} thread(s): {wrong}"
    assert pools["opencv"] == threads
    assert pools["native_threads"] == threads


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    make_raw(folder, 2, size=SIZE)
    return folder


@pytest.mark.parametrize(("mode", "cpus", "workers", "threads"), [
    ("serial", 1, 1, 1), ("serial", 2, 1, 2),
    ("thread", 1, 1, 1), ("thread", 2, 2, 1),
    ("process", 1, 1, 1), ("process", 2, 1, 2), ("process", 2, 2, 1),
    ("subprocess", 1, 1, 1), ("subprocess", 2, 1, 2),
])
def test_every_pool_of_a_task_follows_its_threads(raw: Path, tmp_path: Path, mode: str,
                                                  cpus: int, workers: int,
                                                  threads: int) -> None:
    results = run_batch(None, None, parallel=mode, n_workers=workers, cpus=cpus,
                        output_dir=tmp_path / "out", raw_dir=raw, to_stage=1,
                        show_progress=False, task_fn=pools_after_task)
    assert len(results) == 2
    for result in results:
        assert result["status"] == "complete", result["status"]
        assert result["runner"]["threads"] == threads
        assert_pools(result["pools"], threads)


#: Runs a bin/ tool as its own script (argv[1], then its arguments) and writes the pool sizes
#: of that process when it exits to the file named by argv[2].
_TOOL_WITH_REPORT = """
import atexit, json, runpy, sys
tool, report = sys.argv[1], sys.argv[2]
def write():
    from tests.native_pools import pool_sizes
    with open(report, "w") as fh:
        json.dump(pool_sizes(), fh)
atexit.register(write)
sys.argv = [tool, *sys.argv[3:]]
runpy.run_path(tool, run_name="__main__")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_a_stage_tool_sizes_its_pools_to_threads(raw: Path, tmp_path: Path,
                                                 threads: int) -> None:
    pre, post = (raw / "SYN01" / f"SYN01_{w}Stain_SybrGld.tif" for w in ("Pre", "Post"))
    report = tmp_path / "pools.json"
    proc = subprocess.run(
        [sys.executable, "-c", _TOOL_WITH_REPORT, str(ROOT / "bin" / "e2m-load"), str(report),
         "--pre", str(pre), "--post", str(post), "--sample", "SYN01", "--dye", "SybrGld",
         "--pair-dir", str(tmp_path / "pair"), "--threads", str(threads)],
        capture_output=True, text=True, env=child_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert_pools(json.loads(report.read_text()), threads)


@pytest.mark.parametrize(("argv", "budget"), [
    (["--threads", "3"], 3), (["--cpus=4"], 4), (["--threads", "2", "--threads", "5"], 5),
    (["--sample", "A"], None), (["--threads"], None), (["--threads", "zero"], None),
    (["--threads", "0"], None),
])
def test_budget_from_argv(argv: list[str], budget: int | None) -> None:
    assert budget_from_argv(argv) == budget
