"""The local runner's Python API: discovery strictness, the four modes, killed and wedged
tasks, the CPU budget, memory_debug, SampleDye, and resume after a killed batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tifffile

from exo2micro import params as P
from exo2micro.batch.discover import DiscoveryError, discover
from exo2micro.errors import ParameterError
from exo2micro.io.layout import PairLayout
from exo2micro.io.records import read_record
from exo2micro.parallel import (
    SUBPROCESS_KILLED,
    WORKER_DIED,
    build_task_list,
    choose_auto_mode,
    plan_workers,
    print_summary,
    process_one,
    run_batch,
)
from exo2micro.sampledye import SampleDye
from tests.faults import kill_pair, sleep_pair
from tests.runner_helpers import child_env, exo2micro_cmd, make_raw


@pytest.fixture(scope="module")
def raw3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw3")
    make_raw(raw, 3)
    return raw


def _by_key(results: list[dict]) -> dict[str, dict]:
    return {f"{r['sample']}/{r['dye']}": r for r in results}


def _quiet(**kw: object) -> dict:
    return {"show_progress": False, **kw}


# ------------------------------------------------------------------------------ discovery
def test_strict_lists_every_missing_pair(raw3: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DiscoveryError) as info:
        run_batch(["SYN01", "SYN02", "NOPE"], ["SybrGld", "DAPI"], output_dir=out,
                  raw_dir=raw3, **_quiet())
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # what exo2micro 2.4 raised
    for missing in ("SYN01/DAPI", "SYN02/DAPI", "NOPE/SybrGld", "NOPE/DAPI"):
        assert missing in msg
    assert "SYN01/SybrGld" not in msg
    assert not out.exists()  # refused before anything was written


def test_lenient_skips_reports_and_runs_the_rest(raw3: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    results = run_batch(["SYN01", "NOPE"], ["SybrGld", "DAPI"], output_dir=out, raw_dir=raw3,
                        strict_dyes=False, to_stage=1, **_quiet())
    assert [(r["sample"], r["dye"], r["status"]) for r in results] == [
        ("SYN01", "SybrGld", "complete")]
    text = capsys.readouterr().out
    problems = text[text.index("Problems"):]
    for skipped in ("SYN01/DAPI: skipped", "NOPE/SybrGld: skipped", "NOPE/DAPI: skipped"):
        assert skipped in problems
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"complete": 1, "needs-review": 0, "error": 0, "skipped": 3}
    assert not (out / ".exo2micro.lock").exists()


def test_zero_runnable_pairs_writes_an_empty_summary_then_fails(raw3: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DiscoveryError, match="nothing to run in"):
        run_batch(["NOPE"], None, output_dir=out, raw_dir=raw3, strict_dyes=False, **_quiet())
    assert not (out / ".exo2micro.lock").exists()
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == {"complete": 0, "needs-review": 0, "error": 0, "skipped": 1}
    assert "NOPE" in (out / "report.html").read_text()


# ------------------------------------------------------------------------------ modes
@pytest.mark.parametrize("mode", ["serial", "thread", "process"])
def test_modes_complete_every_pair(mode: str, raw3: Path, tmp_path: Path) -> None:
    results = run_batch(None, None, parallel=mode if mode != "serial" else False, n_workers=2,
                        output_dir=tmp_path, raw_dir=raw3, to_stage=1, **_quiet())
    assert [r["status"] for r in results] == ["complete"] * 3
    assert [r["sample"] for r in results] == ["SYN01", "SYN02", "SYN03"]  # task order
    for r in results:
        assert r["runner"]["mode"] == mode
        assert r["runner"]["last_stage"] == 1
        on_disk = json.loads((tmp_path / r["sample"] / r["dye"] / "result.json").read_text())
        assert on_disk["status"] == "complete"


@pytest.mark.parametrize("mode, expected", [("process", WORKER_DIED),
                                            ("subprocess", SUBPROCESS_KILLED)])
def test_sigkilled_task_is_reported_and_the_batch_goes_on(
        mode: str, expected: str, raw3: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    results = _by_key(run_batch(None, None, parallel=mode, n_workers=2, output_dir=tmp_path,
                                raw_dir=raw3, to_stage=1,  # the OOM killer, simulated:
                                task_fn=partial(kill_pair, "SYN02/SybrGld"), **_quiet()))
    assert time.monotonic() - t0 < 120  # never hangs
    assert results["SYN02/SybrGld"]["status"] == f"error: {expected}"
    assert results["SYN01/SybrGld"]["status"] == "complete"
    assert results["SYN03/SybrGld"]["status"] == "complete"
    written = json.loads((tmp_path / "SYN02" / "SybrGld" / "result.json").read_text())
    assert written["status"] == f"error: {expected}"
    assert written["error"]["exit_code"] == 137  # what Nextflow retries with more memory
    assert written["error"]["attempts"] == 1
    if mode == "subprocess":
        assert written["error"]["signal"] == "SIGKILL"
    problems = (tmp_path / "summary.md").read_text().split("## Problems")[1]
    assert "SYN02/SybrGld" in problems and expected in problems


def test_subprocess_timeout_kills_the_wedged_task(raw3: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    results = _by_key(run_batch(["SYN01", "SYN02"], None, parallel="subprocess",
                                output_dir=tmp_path, raw_dir=raw3, to_stage=1,
                                timeout_per_task=3,
                                task_fn=partial(sleep_pair, "SYN01/SybrGld", 60), **_quiet()))
    assert time.monotonic() - t0 < 45
    assert results["SYN01/SybrGld"]["status"] == "error: timed out after 3s"
    assert results["SYN02/SybrGld"]["status"] == "complete"


# ------------------------------------------------------------------------------ CPU budget
def test_cpu_budget_honours_slurm_and_never_oversubscribes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert plan_workers("process", 4, 10)[:2] == (4, 1)
    assert plan_workers("process", 2, 10)[:2] == (2, 2)
    assert plan_workers("process", 3, 10)[:2] == (3, 1)   # 3 × 1 ≤ 4
    assert plan_workers("process", 16, 10)[:2] == (4, 1)  # capped by the budget
    assert plan_workers("process", 4, 2)[:2] == (2, 2)    # capped by the task count
    assert plan_workers("serial", 4, 10)[:2] == (1, 4)
    assert plan_workers("process", 2, 10, cpus=6)[:2] == (2, 3)  # explicit wins
    assert "SLURM_CPUS_PER_TASK" in plan_workers("thread", 2, 10)[2]


def test_cpu_budget_follows_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr("exo2micro.resources._cgroup_cpu_quota", lambda: None)
    workers, threads, note = plan_workers("process", 2, 10)
    assert (workers, threads) == (2, 3) and "affinity" in note


def test_auto_mode_uses_the_pool_only_when_pairs_fit(raw3: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = discover(raw3).pairs
    plenty = (64 << 30, "injected")
    monkeypatch.setattr("exo2micro.batch.preflight.available_memory", lambda: plenty)
    assert choose_auto_mode(pairs, tmp_path, None, "tiff", 4, 2)[:2] == ("process", 2)
    assert choose_auto_mode(pairs, tmp_path, None, "tiff", 4, 8)[:2] == ("process", 3)
    assert choose_auto_mode(pairs, tmp_path, None, "tiff", 4, 1)[:2] == ("serial", 1)
    assert choose_auto_mode(pairs[:1], tmp_path, None, "tiff", 4, 2)[:2] == ("serial", 1)
    # without n_workers auto is capped by the CPU budget, not by the pool modes' default of 4
    many = discover(raw3).pairs * 8  # 24 equal pairs: 8 workers run them in 3 rounds
    assert choose_auto_mode(many, tmp_path, None, "tiff", None, 8)[:2] == ("process", 8)
    assert choose_auto_mode(many, tmp_path, None, "tiff", 4, 8)[:2] == ("process", 4)
    monkeypatch.setattr("exo2micro.batch.preflight.available_memory", lambda: (300 << 20, "x"))
    mode, workers, why = choose_auto_mode(pairs, tmp_path, None, "tiff", 4, 2)
    assert (mode, workers) == ("serial", 1) and "would not fit" in why
    monkeypatch.setattr("exo2micro.batch.preflight.available_memory", lambda: plenty)
    results = run_batch(None, None, parallel="auto", cpus=2, output_dir=tmp_path,
                        raw_dir=raw3, to_stage=1, **_quiet())
    assert {r["runner"]["mode"] for r in results} == {"process"}
    assert {r["runner"]["workers"] for r in results} == {2}


def test_threads_reach_every_task(raw3: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    seen: list[int | None] = []
    real = SampleDye.execute

    def spy(self: SampleDye, *args: object, **kw: object) -> dict:
        seen.append(kw.get("threads"))  # type: ignore[arg-type]
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SampleDye, "execute", spy)
    results = run_batch(["SYN01", "SYN02"], None, parallel="thread", n_workers=2,
                        output_dir=tmp_path, raw_dir=raw3, to_stage=1, **_quiet())
    assert seen == [1, 1]  # 2 CPUs / 2 workers
    assert all(r["runner"]["threads"] == 1 and r["runner"]["workers"] == 2 for r in results)


# ------------------------------------------------------------------------------ memory debug
def test_memory_debug_tracks_each_task(raw3: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    results = run_batch(["SYN01", "SYN02"], None, output_dir=tmp_path, raw_dir=raw3,
                        to_stage=1, memory_debug=True, **_quiet())
    out = capsys.readouterr().out
    assert "[mem]" in out and "batch start" in out
    assert "before SYN01/SybrGld" in out and "after gc SYN02/SybrGld" in out
    assert "=== memory summary ===" in out and "baseline:" in out
    # two small stage-1 tasks in one process: memory returns to the baseline between them
    assert "no leak: RSS returns to within" in out and "leak (" not in out, out
    for r in results:
        mem = r["runner"]["memory"]
        assert mem["pid"] == os.getpid() and mem["after"] > 0 and mem["peak"] > 0


def test_memory_debug_in_pool_workers(raw3: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    results = run_batch(["SYN01", "SYN02"], None, parallel=True, n_workers=2,
                        output_dir=tmp_path, raw_dir=raw3, to_stage=1, memory_debug=True,
                        **_quiet())
    out = capsys.readouterr().out
    pids = {r["runner"]["memory"]["pid"] for r in results}
    assert os.getpid() not in pids  # measured inside the workers
    for pid in pids:
        assert f"[pid {pid}]" in out
    assert "one task per process" in out or "no leak" in out


# ------------------------------------------------------------------------------ seed API
def test_build_task_list_and_process_one(raw3: Path, tmp_path: Path) -> None:
    tasks = build_task_list([("SYN01", "SybrGld"), ("SYN01", "DAPI")], {"pad": 0},
                            output_dir=tmp_path, raw_dir=raw3, to_stage=1)
    assert tasks[0][:2] == ("SYN01", "SybrGld") and tasks[0][2]["pad"] == 0
    ok, missing = (process_one(t) for t in tasks)
    assert ok["status"] == "complete" and ok["scale_estimate"] is None
    assert missing["status"].startswith("error: ") and "DAPI" in missing["status"]


def test_bad_parameter_is_refused_before_any_task(raw3: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="boundry_width"):
        run_batch(None, None, params={"boundry_width": 3}, output_dir=tmp_path / "o",
                  raw_dir=raw3, **_quiet())
    with pytest.raises(ParameterError, match="parallel"):
        run_batch(None, None, parallel="gpu", output_dir=tmp_path / "o", raw_dir=raw3)


def test_sampledye_set_params_and_run(raw3: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    sd = SampleDye("SYN01", "SybrGld", output_dir=tmp_path, raw_dir=raw3)
    with pytest.raises(ParameterError, match="valid names"):
        sd.set_params(no_such_param=1)
    assert sd.set_params(boundary_width=20) is sd and sd.params == {"boundary_width": 20}
    result = sd.run(to_stage=1)
    assert result["status"] == "complete" and sd.scale_estimate is None
    assert "Pre-flight resource check" in capsys.readouterr().out
    assert PairLayout(tmp_path / "SYN01" / "SybrGld", P.resolve(sd.params)).record(1).is_file()


def test_print_summary_columns_and_problems(capsys: pytest.CaptureFixture[str]) -> None:
    results = [{"sample": "A", "dye": "X", "status": "complete", "scale_estimate": 1.35,
                "scale_percentile_value": 1.3},
               {"sample": "B", "dye": "X", "status": "error: boom at stage 3",
                "scale_estimate": None, "error": {"class": "RuntimeError", "stage": 3,
                                                  "exit_code": 1, "attempts": 2}}]
    print_summary(results, [("C", "Y", "no pre/post file")])
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["Sample", "Dye", "Moffat", "Percentile", "Status"]
    assert "1.3500" in out and "1.3000" in out
    problems = out[out.index("Problems (2)"):]
    assert "B/X: error (stage 3, exit code 1, 2 attempts, RuntimeError): boom at stage 3" in \
        problems
    assert "C/Y: skipped: no pre/post file" in problems


# ------------------------------------------------------------------------------ resume
def _images(pair_dir: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(pair_dir)): tifffile.imread(p)
            for p in sorted(pair_dir.rglob("*.tif")) if not p.name.startswith(".")}


def _transforms(pair_dir: Path) -> dict[str, list]:
    return {p.name: json.loads(p.read_text())["post_to_pre"]
            for p in sorted((pair_dir / "transforms").glob("*.json"))}


def test_killed_batch_resumes_to_the_same_outputs(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    pairs = make_raw(raw, 2)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    args = ["run", "--raw-dir", str(raw), "--parallel", "serial", "--cpus", "1"]
    done = subprocess.run(exo2micro_cmd(*args, "--outdir", str(clean)), env=child_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    # Kill the batch (SIGKILL, whole process group) once the second pair is under way.
    proc = subprocess.Popen(exo2micro_cmd(*args, "--outdir", str(resumed)), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    second = resumed / pairs[1][0] / pairs[1][1] / "stages" / "01_load.json"
    deadline = time.monotonic() + 240
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_dir = resumed / pairs[0][0] / pairs[0][1]
    second_dir = resumed / pairs[1][0] / pairs[1][1]
    last = max(P.STAGE_NAMES)
    before = read_record(PairLayout(first_dir, P.resolve({})).record(last))
    assert before is not None  # the first pair had finished
    # the kill came while the second pair was under way: its last stage had not run
    assert read_record(PairLayout(second_dir, P.resolve({})).record(last)) is None
    assert not (second_dir / "result.json").exists()
    done = subprocess.run(exo2micro_cmd(*args, "--outdir", str(resumed)), env=child_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    # The finished pair was not re-run; the interrupted one was completed.
    after = read_record(PairLayout(first_dir, P.resolve({})).record(last))
    assert after is not None and after.run_id == before.run_id
    for sample, dye in pairs:
        a, b = clean / sample / dye, resumed / sample / dye
        images_a, images_b = _images(a), _images(b)
        assert images_a.keys() == images_b.keys() and images_a
        for name, arr in images_a.items():
            np.testing.assert_array_equal(arr, images_b[name], err_msg=name)
        assert _transforms(a) == _transforms(b)
        assert not list(b.rglob(".*.tmp-*"))
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["counts"] == {"complete": 2, "needs-review": 0, "error": 0, "skipped": 0}
