"""``-profile slurm`` for real: the pipeline on a one-node Slurm cluster started on localhost.

``slurm_cluster.py`` starts munged, slurmctld and slurmd; the real Nextflow (``runtime.py``) runs
``nextflow run <repo> -profile slurm`` on a small raw batch, with a test-only config that polls
every second and caps the requests to what the node has. Every task must have been an ``sbatch``
job (numeric ``native_id``) whose ``.command.run`` asks for the CPUs, memory and time that the
trace reports for it, and whose Slurm environment (written by a ``beforeScript``) shows that
Slurm gave it that job id, CPUs and memory.

What Nextflow 25.04's ``SlurmExecutor`` writes (``getDirectives``): ``#SBATCH -c N`` only when
``cpus > 1``, ``#SBATCH -t HH:mm:ss``, ``#SBATCH --mem <MiB>M`` (``MemoryUnit.toMega()``; no
``perCpuMemAllocation`` here). ``SLURM_CPUS_PER_TASK`` is set only with ``-c``;
``SLURM_MEM_PER_NODE`` is the ``--mem`` value in MiB. The trace is written with ``trace.raw`` so
that memory is in bytes and time in milliseconds, not rounded to ``2.5 GB``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runner_helpers import make_raw

from .runtime import explain, process_name, run_pipeline, trace_rows
from .slurm_cluster import SlurmCluster, slurm_cluster

pytestmark = [pytest.mark.nextflow, pytest.mark.slow]

#: Requests are capped to this (the test node has 2 cores; the profile's own limits are 32/256 GB).
LIMIT_CPUS = 2
LIMIT_MEMORY_GB = 4
#: The per-pair stages, and the process names that every run of one raw batch has.
STAGES = ("LOAD", "ALIGN_BOUNDARY", "ALIGN_INTERIOR", "SUBTRACT", "DETECT")
PROCESSES = {"DISCOVER", *STAGES, "SUMMARY"}
SLURM_ENV = "slurm.env"

TEST_CONFIG = """\
// test_slurm_run.py only: fast polling, requests that fit the one-node test cluster, and the
// Slurm environment of every job recorded in its work dir.
executor {{
    pollInterval      = '1 sec'
    queueStatInterval = '1 sec'
    submitRateLimit   = '50 sec'
}}
process {{
    resourceLimits = [cpus: {cpus}, memory: {memory}.GB, time: 1.h]
    beforeScript   = 'env | grep "^SLURM_" > {env_file} || true'
}}
trace.raw = true
"""


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """The cluster, with no Slurm/sbatch variables inherited from an enclosing job."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")):
                mp.delenv(name)
        with slurm_cluster() as cluster:
            yield cluster


@pytest.fixture(scope="module")
def slurm_run(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``nextflow run <repo> -profile slurm`` on two pairs; its paths and trace."""
    if slurm.memory_mib < LIMIT_MEMORY_GB * 1024:
        pytest.skip(f"the Slurm node has {slurm.memory_mib} MiB, less than {LIMIT_MEMORY_GB} GB")
    tmp = tmp_path_factory.mktemp("slurm_run")
    raw, out = tmp / "raw", tmp / "out"
    pairs = make_raw(raw, n=2)
    config = tmp / "slurm-test.config"
    config.write_text(TEST_CONFIG.format(cpus=min(LIMIT_CPUS, slurm.cpus),
                                         memory=LIMIT_MEMORY_GB, env_file=SLURM_ENV))
    start = time.monotonic()
    proc = run_pipeline(tmp, "-profile", "slurm", "-c", str(config),
                        "--raw_dir", str(raw), "--outdir", str(out),
                        "--trace_report_suffix", "slurm", timeout=900, **slurm.env)
    wall = time.monotonic() - start
    assert proc.returncode == 0, explain(proc, tmp) + slurm.logs()
    return {"tmp": tmp, "out": out, "pairs": pairs, "proc": proc, "wall_s": wall,
            "rows": trace_rows(out, "slurm")}


def read_env(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a job's recorded environment."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def sbatch_directives(command_run: Path) -> dict[str, str]:
    """``#SBATCH OPT VALUE`` lines of a wrapper script: ``{OPT: VALUE}`` (``""`` if none)."""
    directives = {}
    for line in command_run.read_text().splitlines():
        if line.startswith("#SBATCH "):
            opt, _, value = line[len("#SBATCH "):].partition(" ")
            directives[opt] = value.strip()
    return directives


def hms(milliseconds: int) -> str:
    """A duration as Nextflow's ``Duration.format('HH:mm:ss')`` writes it."""
    seconds = milliseconds // 1000
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def test_every_pair_completes(slurm_run: dict) -> None:
    manifest = json.loads((slurm_run["out"] / "manifest.json").read_text())
    done = sorted((p["sample"], p["dye"]) for p in manifest["pairs"]
                  if p["status"] == "complete")
    assert done == sorted(slurm_run["pairs"]), manifest["counts"]
    assert manifest["counts"]["complete"] == len(slurm_run["pairs"])


def test_every_task_was_a_slurm_job(slurm_run: dict) -> None:
    rows = slurm_run["rows"]
    assert {process_name(r) for r in rows} == PROCESSES
    assert len(rows) == 2 + len(STAGES) * len(slurm_run["pairs"]), [r["name"] for r in rows]
    for row in rows:
        assert row["status"] == "COMPLETED", row
        assert re.fullmatch(r"\d+", row["native_id"]), f"no Slurm job id: {row}"
    ids = [r["native_id"] for r in rows]
    assert len(set(ids)) == len(ids), f"job ids reused: {ids}"


def test_sbatch_requests_are_the_traced_resources(slurm_run: dict) -> None:
    """Each wrapper's ``#SBATCH`` lines are the CPUs, memory and time in the trace."""
    for row in slurm_run["rows"]:
        cpus, mib = int(row["cpus"]), int(row["memory"]) >> 20
        assert 1 <= cpus <= LIMIT_CPUS and 0 < mib <= LIMIT_MEMORY_GB * 1024, row
        directives = sbatch_directives(Path(row["workdir"]) / ".command.run")
        assert directives.get("--mem") == f"{mib}M", (row["name"], directives)
        assert directives.get("-t") == hms(int(row["time"])), (row["name"], directives)
        # Nextflow writes -c only for more than one CPU (Slurm's default is one)
        assert directives.get("-c") == (str(cpus) if cpus > 1 else None), (row["name"],
                                                                           directives)
        assert directives.get("-o") == str(Path(row["workdir"]) / ".command.log")
    # both kinds of task ran: process_single (1 CPU) and process_pair (2 CPUs, capped)
    assert {int(r["cpus"]) for r in slurm_run["rows"]} == {1, 2}


def test_slurm_gave_each_job_what_it_asked_for(slurm_run: dict) -> None:
    """The job's own environment: its id, CPUs per task and memory (MiB) as requested."""
    for row in slurm_run["rows"]:
        recorded = Path(row["workdir"]) / SLURM_ENV
        assert recorded.is_file(), f"{row['name']}: the beforeScript wrote no {SLURM_ENV}"
        env = read_env(recorded)
        cpus, mib = int(row["cpus"]), int(row["memory"]) >> 20
        assert env.get("SLURM_JOB_ID") == row["native_id"], (row["name"], env)
        assert env.get("SLURM_MEM_PER_NODE") == str(mib), (row["name"], env)
        assert env.get("SLURM_CPUS_PER_TASK") == (str(cpus) if cpus > 1 else None), (
            row["name"], env)
        # the allocation itself: at least the CPUs asked for (a whole core when cpus=1)
        assert int(env.get("SLURM_CPUS_ON_NODE", "0")) >= cpus, (row["name"], env)
        assert env.get("SLURM_JOB_PARTITION") == "debug", (row["name"], env)
