"""Pre-flight: the estimate from TIFF headers, the 80 %/100 % bands, remediation, force_run,
resume-awareness and the cgroup memory limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exo2micro.batch import preflight
from exo2micro.batch.discover import discover
from exo2micro.batch.preflight import (
    PreflightDiskError,
    PreflightMemoryError,
    check,
    estimate_pair,
    plan_batch,
    stages_to_run,
)
from exo2micro.errors import ResourceError
from exo2micro.io.tiffio import TiffImage
from exo2micro.parallel import run_batch
from exo2micro.resources import cgroup_memory_headroom
from exo2micro.synth import SynthSpec, generate_pair
from tests.runner_helpers import make_raw

GiB = 1 << 30


@pytest.fixture(scope="module")
def raw2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw2")
    make_raw(raw, 2)
    return raw


@pytest.fixture(scope="module")
def pairs(raw2: Path) -> list:
    return discover(raw2).pairs


# ------------------------------------------------------------------------------ estimate
def test_estimate_reads_headers_only(pairs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pixels(*args: object, **kw: object) -> None:
        raise AssertionError("the estimate must not read pixels")

    monkeypatch.setattr(TiffImage, "read_window", no_pixels)
    est = estimate_pair(pairs[0].pre, pairs[0].post)
    assert set(est.stages) == {1, 2, 3, 4, 5}
    assert est.mem_bytes == max(s.mem_bytes for s in est.stages.values()) > 50 << 20
    assert est.disk_bytes == sum(s.disk_bytes for s in est.stages.values()) > 0
    assert est.time_s > 0
    json.dumps(est.to_json())


def test_estimate_grows_with_size_formats_and_scales(tmp_path: Path) -> None:
    small = generate_pair(SynthSpec(sample="S", width=400, height=320), tmp_path)
    large = generate_pair(SynthSpec(sample="L", width=1600, height=1280), tmp_path)
    s = estimate_pair(small.pre_path, small.post_path)
    big = estimate_pair(large.pre_path, large.post_path)
    assert big.mem_bytes > s.mem_bytes and big.disk_bytes > 4 * s.disk_bytes
    both = estimate_pair(large.pre_path, large.post_path, checkpoint_format="both")
    fits = estimate_pair(large.pre_path, large.post_path, checkpoint_format="fits")
    assert fits.stages[3].disk_bytes > 1600 * 1280 * 4  # one float32 image
    small_files = 64 << 10  # records, transforms
    assert both.stages[3].disk_bytes == (big.stages[3].disk_bytes + fits.stages[3].disk_bytes
                                         - small_files)
    extra = estimate_pair(large.pre_path, large.post_path,
                          {"scale_percentile": 40, "manual_scale": 1.2})
    assert extra.stages[4].disk_bytes > 2.5 * big.stages[4].disk_bytes - 2 * (8 << 20)
    assert estimate_pair(large.pre_path, large.post_path, stages=[2]).disk_bytes < (1 << 20)


def test_disk_estimate_matches_what_stage_1_writes(pairs: list, tmp_path: Path) -> None:
    run_batch(None, None, output_dir=tmp_path, raw_dir=pairs[0].pre.parent.parent,
              to_stage=1, show_progress=False)
    for p in pairs:
        written = sum(f.stat().st_size for f in (tmp_path / p.sample / p.dye).rglob("*")
                      if f.is_file() and f.name != "result.json")
        est = estimate_pair(p.pre, p.post, stages=[1]).disk_bytes
        assert 0.75 * written <= est <= 1.5 * written + (64 << 10)


def test_stages_to_run_is_resume_aware(pairs: list, tmp_path: Path) -> None:
    values = preflight.P.resolve({})
    pair_dir = tmp_path / pairs[0].sample / pairs[0].dye
    assert stages_to_run(pair_dir, values) == [1, 2, 3, 4, 5]
    run_batch([pairs[0].sample], None, output_dir=tmp_path,
              raw_dir=pairs[0].pre.parent.parent, to_stage=1, show_progress=False)
    assert stages_to_run(pair_dir, values) == [2, 3, 4, 5]
    assert stages_to_run(pair_dir, values, to_stage=1) == []
    assert stages_to_run(pair_dir, values, force=True) == [1, 2, 3, 4, 5]
    assert stages_to_run(pair_dir, values, from_stage=1, to_stage=1) == [1]
    plans = plan_batch(pairs, tmp_path, to_stage=1)
    assert [p.stages for p in plans] == [[], [1]]
    assert plans[0].estimate.mem_bytes == 0 and plans[1].estimate.mem_bytes > 0


# ------------------------------------------------------------------------------ bands
def _plans(pairs: list, tmp_path: Path) -> list:
    return plan_batch(pairs, tmp_path / "out")


def test_bands_ok_high_and_refusal(pairs: list, tmp_path: Path) -> None:
    plans = _plans(pairs, tmp_path)
    need = sum(p.estimate.mem_bytes for p in plans)  # 2 workers, 2 pairs: both at once
    kw = {"output_dir": tmp_path, "mode": "process", "workers": 2, "disk": 100 * GiB}
    ok = check(plans, memory=(int(need / 0.5), "test"), **kw)
    assert ok.mem_band == "ok" and not ok.warnings and "✓" in ok.lines[1]
    high = check(plans, memory=(int(need / 0.9), "test"), **kw)
    assert high.mem_band == "high" and "HIGH" in high.report and high.warnings
    with pytest.raises(PreflightMemoryError) as info:
        check(plans, memory=(int(need / 1.5), "test"), **kw)
    err = info.value
    assert isinstance(err, MemoryError) and isinstance(err, ResourceError)
    msg = str(err)
    assert "EXCEEDS AVAILABLE" in msg and "To fix, any of:" in msg
    assert "reduce n_workers (--workers) from 2 to 1" in msg
    assert "use serial mode" in msg and "force_run=True" in msg


def test_force_run_downgrades_to_a_warning(pairs: list, tmp_path: Path) -> None:
    plans = _plans(pairs, tmp_path)
    result = check(plans, output_dir=tmp_path, mode="subprocess", workers=1,
                   memory=(1 << 20, "test"), disk=1 << 20, force_run=True)
    assert result.forced and result.mem_band == "exceeds" and result.disk_band == "exceeds"
    assert any("force_run" in w for w in result.warnings)
    assert result.to_json()["forced"] is True


def test_disk_refusal_is_an_oserror_with_remedies(pairs: list, tmp_path: Path) -> None:
    plans = plan_batch(pairs, tmp_path / "out", checkpoint_format="both")
    with pytest.raises(PreflightDiskError) as info:
        check(plans, output_dir=tmp_path, mode="serial", workers=1,
              memory=(100 * GiB, "test"), disk=1 << 20, checkpoint_format="both")
    assert isinstance(info.value, OSError)
    msg = str(info.value)
    assert "free at least" in msg and "checkpoint_format='tiff' or 'fits'" in msg
    assert "currently 'both'" in msg


def test_run_batch_refuses_before_any_task_and_force_run_reaches_tasks(
        raw2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: (8 << 20, "injected 8 MiB"))
    out = tmp_path / "out"
    kw = {"output_dir": out, "raw_dir": raw2, "to_stage": 1, "parallel": "subprocess",
          "show_progress": False}
    with pytest.raises(MemoryError, match="injected 8 MiB"):
        run_batch(None, None, **kw)
    assert not any(p.is_dir() for p in out.iterdir())  # no task ran
    assert not (out / ".exo2micro.lock").exists()
    results = run_batch(None, None, force_run=True, **kw)  # tasks in fresh processes
    assert "EXCEEDS AVAILABLE" in capsys.readouterr().out
    for r in results:
        assert r["status"] == "complete"
        assert r["runner"]["preflight"]["forced"] is True
        on_disk = json.loads((out / r["sample"] / r["dye"] / "result.json").read_text())
        assert on_disk["runner"]["preflight"]["memory"] == "exceeds"


# ------------------------------------------------------------------------------ cgroups
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_minus_usage(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(tmp_path / "self", "0::/job/step\n")
    _write(root / "job" / "step" / "memory.max", "max\n")
    _write(root / "job" / "step" / "memory.current", str(1 * GiB))
    _write(root / "job" / "memory.max", str(4 * GiB))
    _write(root / "job" / "memory.current", str(3 * GiB))
    _write(root / "job" / "memory.stat", f"anon 1\ninactive_file {GiB // 2}\n")
    limit, headroom = cgroup_memory_headroom(root, tmp_path / "self")
    assert limit == 4 * GiB and headroom == 4 * GiB - (3 * GiB - GiB // 2)


def test_cgroup_v1_and_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(tmp_path / "self", "4:memory:/slurm/job1\n1:cpu:/\n")
    d = root / "memory" / "slurm" / "job1"
    _write(d / "memory.limit_in_bytes", str(2 * GiB))
    _write(d / "memory.usage_in_bytes", str(GiB))
    _write(d / "memory.stat", "total_inactive_file 0\n")
    assert cgroup_memory_headroom(root, tmp_path / "self") == (2 * GiB, GiB)
    _write(d / "memory.limit_in_bytes", "9223372036854771712")
    assert cgroup_memory_headroom(root, tmp_path / "self") is None
    assert cgroup_memory_headroom(root, tmp_path / "missing") is None


# ------------------------------------------------------------------ auto: workers × threads
def test_pair_seconds_divides_only_the_thread_share() -> None:
    assert preflight.pair_seconds(10.0, 1) == pytest.approx(10.0)
    assert preflight.pair_seconds(10.0, 4) == pytest.approx(
        10.0 * (1 - preflight.THREAD_SHARE + preflight.THREAD_SHARE / 4))


def test_batch_seconds_schedules_the_longest_first() -> None:
    # 3 on one worker, 1 + 1 + 1 on the other: 3 s, not the 4 s of the order given
    assert preflight.batch_seconds([1, 1, 1, 3], 2, 1) == pytest.approx(3.0)


@pytest.mark.parametrize(("times", "budget", "limit", "workers"), [
    ([6.0] * 16, 16, 16, 16),    # many small pairs: one single-thread worker per CPU
    ([6.0] * 500, 16, 16, 16),
    ([40.0] * 2, 16, 16, 2),     # two large pairs: two workers of 8 threads
    ([40.0] * 3, 16, 2, 2),      # memory lets two run at once
    ([40.0] * 20, 16, 16, 10),   # two rounds either way: the fewest workers, more threads
    ([40.0] * 3, 16, 1, 1),
])
def test_fastest_workers_follows_the_pair_sizes(times: list[float], budget: int, limit: int,
                                                workers: int) -> None:
    assert preflight.fastest_workers(times, budget, limit) == workers


def test_stage_5_has_memory_and_time_that_grow_with_threads(pairs: list) -> None:
    one, two = (estimate_pair(pairs[0].pre, pairs[0].post, threads=t, stages=[5])
                for t in (1, 2))
    model = preflight.default_model()
    assert one.stages[5].mem_bytes > model.baseline_bytes and one.stages[5].time_s > 0
    assert two.stages[5].mem_bytes - one.stages[5].mem_bytes >= model.memory[5]["threads"] > 0
    assert estimate_pair(pairs[0].pre, pairs[0].post, threads=2).mem_bytes >= (
        two.stages[5].mem_bytes)


def test_stage_1_estimate_counts_the_raw_strips_its_threads_hold(pairs: list) -> None:
    """Beyond 3 threads stage 1 reads each image's strips in a pool: the raw blocks its
    memory model counts grow with the strips in flight (exo2micro.resources)."""
    from exo2micro.io.tiffio import read_info
    from exo2micro.params import resolve

    pre, post = read_info(pairs[0].pre), read_info(pairs[0].post)
    feats = {t: preflight.features(pre, post, resolve(), t) for t in (2, 3, 8)}
    assert feats[3]["raw_block_conc"] == feats[2]["raw_block_conc"]  # one strip thread each
    assert feats[8]["raw_block_conc"] == 5 * feats[2]["raw_block_conc"]  # 4 threads + 1
