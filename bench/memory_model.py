#!/usr/bin/env python3
"""Calibrate and check the pre-flight memory/time model (``exo2micro/assets/memory_model.json``).

Runs synthetic pairs of four sizes (× threads × raw storage) through
:func:`exo2micro.pipeline.run_pair`, each in a fresh ``/usr/bin/time -v python`` process, and
compares the estimate of :func:`exo2micro.batch.preflight.estimate_pair` with what was measured:

* per stage: the peak RSS each stage records (the kernel's high-water mark, reset at the start
  of every stage, so one process reports each stage's own peak) and its wall time;
* per pair: the process's maximum RSS — the larger of ``/usr/bin/time -v``'s figure and the
  stage peaks. (The kernel's ``ru_maxrss`` that ``time`` reports is the high-water mark since
  the *last* reset, i.e. of the last stage only, because the pipeline resets it per stage.)

Then it fits the model's coefficients to the measurements (non-negative least squares on the
*relative* error, per stage, over the components each stage's entry in the JSON lists) and
prints the estimate-vs-measured table for the current and the fitted model. ``--write`` stores
the fitted model. Re-calibrating after a stage changes is this one command::

    .venv/bin/python bench/memory_model.py --write

Raw pairs are generated once into ``bench/out/memory/raw`` (``exo2micro.synth``); the
single-strip LZW variant (the file layout that must be decoded whole) is re-encoded from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tifffile
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro import params as P  # noqa: E402
from exo2micro.batch.preflight import (  # noqa: E402
    MODEL_PATH,
    MemoryModel,
    default_model,
    estimate_pair,
    features,
)
from exo2micro.io.records import read_record  # noqa: E402
from exo2micro.io.tiffio import ImageInfo, read_info  # noqa: E402
from exo2micro.synth import SynthSpec, generate_pair  # noqa: E402

MiB = 2**20
CHILD = """
import json, sys
from exo2micro.pipeline import run_pair
pre, post, out, threads, to_stage = sys.argv[1:6]
run_pair("M", "D", pre, post, out, threads=int(threads), to_stage=int(to_stage), force=True)
"""
BASELINE = """
import importlib, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: F401
for m in ("exo2micro.pipeline", "exo2micro.stages.load", "exo2micro.stages.align_boundary",
          "exo2micro.stages.align_interior", "exo2micro.stages.subtract"):
    try:
        importlib.import_module(m)
    except ImportError:
        pass
from exo2micro.resources import current_rss_bytes
print(current_rss_bytes())
"""


@dataclass
class Run:
    size: tuple[int, int]
    layout: str
    threads: int
    pre: Path
    post: Path
    stage_peak: dict[int, int]
    stage_time: dict[int, float]
    process_peak: int
    disk: int
    png_bytes: int


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def raw_pair(workdir: Path, size: tuple[int, int], layout: str) -> tuple[Path, Path]:
    """The raw pair of ``size`` (w, h) in ``layout``: 'strips' (synth default) or
    'single-lzw' (the same pixels as one LZW-compressed strip per file)."""
    w, h = size
    spec = SynthSpec(sample=f"M{w}x{h}", dye="D", width=w, height=h)
    raw = workdir / "raw"
    names = spec.file_names()
    src = {k: raw / spec.sample / names[k] for k in ("pre", "post")}
    if not all(p.is_file() for p in src.values()):
        generate_pair(spec, raw)
    if layout == "strips":
        return src["pre"], src["post"]
    out = {}
    for which, path in src.items():
        dst = workdir / "single-lzw" / f"{spec.sample}_{which}.tif"
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            data = tifffile.imread(path)
            tmp = dst.with_suffix(".tmp")
            tifffile.imwrite(tmp, data, photometric="rgb" if data.ndim == 3 else "minisblack",
                             compression="lzw", rowsperstrip=data.shape[0])
            tmp.rename(dst)
        out[which] = dst
    return out["pre"], out["post"]


def measure(workdir: Path, size: tuple[int, int], layout: str, threads: int,
            to_stage: int) -> Run:
    pre, post = raw_pair(workdir, size, layout)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "pair"
        cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(pre), str(post),
               str(out), str(threads), str(to_stage)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({size}, {layout}, {threads}):\n{proc.stderr[-3000:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak = int(m.group(1)) * 1024 if m else 0
        values = P.resolve({})
        from exo2micro.io.layout import PairLayout

        layout_ = PairLayout(out, values)
        stage_peak, stage_time = {}, {}
        for stage in P.STAGE_NAMES:
            rec = read_record(layout_.record(stage))
            if rec:
                stage_peak[stage] = int(rec.peak_rss_bytes or 0)
                stage_time[stage] = float(rec.timings_s["total"])
        files = [p for p in out.rglob("*") if p.is_file()]
        disk = sum(p.stat().st_size for p in files)
        pngs = sum(p.stat().st_size for p in files if p.suffix == ".png")
    peak = max([peak, *stage_peak.values()])
    return Run(size, layout, threads, pre, post, stage_peak, stage_time, peak, disk, pngs)


def baseline_rss() -> int:
    out = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                         env=_env(), check=True).stdout
    return int(out.strip().splitlines()[-1])


def _relative_nnls(names: list[str], rows: list[tuple[dict[str, float], float]]
                   ) -> dict[str, float]:
    """Non-negative coefficients of ``names`` minimising the relative error of
    ``sum(c[n] * features[n]) ≈ measured`` over ``rows`` of ``(features, measured)``."""
    a = np.array([[f[n] / y for n in names] for f, y in rows])
    coef, _ = nnls(a, np.ones(len(rows)))
    return {n: float(c) for n, c in zip(names, coef)}


def fit(runs: list[Run], model: MemoryModel, baseline: int) -> MemoryModel:
    """Fit every stage's listed coefficients to the runs (relative least squares, ≥ 0)."""
    values = P.resolve({})
    memory, timing = {}, {}
    for stage, current in model.memory.items():
        rows = [(features(read_info(r.pre), read_info(r.post), values, r.threads),
                 r.stage_peak[stage]) for r in runs if stage in r.stage_peak]
        if not rows:
            memory[stage] = current
            continue
        memory[stage] = _relative_nnls(list(current), rows)
    for stage, current in model.time.items():
        rows = []
        for r in runs:
            if stage not in r.stage_time or r.threads != 1:
                continue
            pre, post = read_info(r.pre), read_info(r.post)
            tf = {"one": 1.0, "raw_px": float(pre.height * pre.width * pre.samples
                                              + post.height * post.width * post.samples),
                  "out_px": float(post.height * post.width)}
            rows.append((tf, max(r.stage_time[stage], 0.05)))
        if not rows:
            timing[stage] = current
            continue
        timing[stage] = _relative_nnls(list(current), rows)
    png = max((r.png_bytes for r in runs), default=0) * 1.25 or model.png_bytes
    return replace(model, memory=memory, time=timing, baseline_bytes=float(baseline),
                   png_bytes=float(png))


def table(runs: list[Run], model: MemoryModel, title: str) -> float:
    """Print estimate vs measured; return the worst relative error of the pair peaks."""
    print(f"\n== {title} ==")
    print(f"{'size':>11} {'layout':>10} {'thr':>3} | " + " ".join(
        f"{'st' + str(s) + ' est/meas MiB':>22}" for s in P.STAGE_NAMES)
        + f" | {'pair est':>9} {'/usr/bin/time':>13} {'err':>6} | {'disk est/meas MiB':>18}"
        + f" | {'time est/meas s':>16}")
    worst = 0.0
    for r in runs:
        est = estimate_pair(r.pre, r.post, {}, "tiff", threads=r.threads,
                            stages=sorted(r.stage_peak), model=model)
        cells = []
        for s in P.STAGE_NAMES:
            if s in r.stage_peak:
                cells.append(f"{est.stages[s].mem_bytes / MiB:9.0f}/{r.stage_peak[s] / MiB:<9.0f}"
                             f"{(est.stages[s].mem_bytes / r.stage_peak[s] - 1):+4.0%}")
            else:
                cells.append(f"{'-':>22}")
        err = est.mem_bytes / r.process_peak - 1
        worst = max(worst, abs(err))
        w, h = r.size
        print(f"{w:>5}×{h:<5} {r.layout:>10} {r.threads:>3} | " + " ".join(
            f"{c:>22}" for c in cells)
            + f" | {est.mem_bytes / MiB:9.0f} {r.process_peak / MiB:13.0f} {err:+6.0%}"
            + f" | {est.disk_bytes / MiB:8.1f}/{r.disk / MiB:<9.1f}"
            + f" | {est.time_s:7.1f}/{sum(r.stage_time.values()):<8.1f}")
    print(f"worst pair-peak error: {worst:.0%} (target ≤ 25 %)")
    return worst


def cross_validate(runs: list[Run], model: MemoryModel, baseline: int) -> float:
    """Fit without each size in turn and report the error on the held-out size."""
    worst = 0.0
    for size in sorted({r.size for r in runs}):
        held = [r for r in runs if r.size == size]
        fitted = fit([r for r in runs if r.size != size], model, baseline)
        errs = [estimate_pair(r.pre, r.post, {}, "tiff", threads=r.threads,
                              stages=sorted(r.stage_peak), model=fitted).mem_bytes
                / r.process_peak - 1 for r in held]
        worst = max(worst, *(abs(e) for e in errs))
        print(f"held out {size[0]}×{size[1]}: pair-peak errors "
              + " ".join(f"{e:+.0%}" for e in errs))
    print(f"worst held-out error: {worst:.0%}")
    return worst


def extrapolate(model: MemoryModel) -> None:
    """The model's estimate for the largest image of docs/benchmarks.md (no file needed: headers
    only)."""
    for label, compression, memmappable, rows in (("uncompressed strips", "NONE", True, 1),
                                                  ("LZW, one strip", "LZW", False, 25000)):
        info = ImageInfo(path="", height=25000, width=30000, samples=3, dtype="uint8",
                         photometric="RGB", compression=compression, tiled=False,
                         segment_shape=(rows, 30000), n_segments=25000 // rows,
                         memmappable=memmappable, file_bytes=25000 * 30000 * 3)
        for threads in (1, 2):
            est = estimate_pair(info, info, {}, "tiff", threads=threads, model=model)
            print(f"30000×25000 RGB8 {label}, threads={threads}: peak "
                  f"{est.mem_bytes / 2**30:.2f} GiB (" + ", ".join(
                      f"st{s} {e.mem_bytes / 2**30:.2f}" for s, e in est.stages.items())
                  + f"), disk {est.disk_bytes / 2**30:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000x1600,4000x3200,6000x5000,9000x7500",
                    help="comma-separated WxH post sizes (default: the sizes of "
                         "docs/benchmarks.md and 4000x3200, the largest pyramid level)")
    ap.add_argument("--threads", default="1,2,4", help="thread counts to measure")
    ap.add_argument("--layouts", default="strips,single-lzw", help="raw storage variants")
    ap.add_argument("--to-stage", type=int, default=4, help="last stage to run (default 4)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "memory")
    ap.add_argument("--write", action="store_true", help=f"store the fitted model in {MODEL_PATH}")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for size in sizes:
        for layout in args.layouts.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                t0 = time.perf_counter()
                runs.append(measure(args.workdir, size, layout, threads, args.to_stage))
                print(f"measured {size[0]}×{size[1]} {layout} threads={threads} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    baseline = baseline_rss()
    print(f"baseline RSS after imports: {baseline / MiB:.0f} MiB")
    current = default_model()
    table(runs, current, f"current model ({MODEL_PATH.name})")
    fitted = fit(runs, current, baseline)
    worst = table(runs, fitted, "fitted model")
    print("\nfitted coefficients:")
    print(json.dumps(fitted.to_json()["memory"], indent=1))
    print("\n== leave-one-size-out ==")
    held_out = cross_validate(runs, current, baseline) if len(sizes) > 1 else None
    print("\n== extrapolation (fitted model) ==")
    extrapolate(fitted)
    if args.write:
        fitted = replace(fitted, calibration={
            "date": time.strftime("%Y-%m-%d"), "command": "bench/memory_model.py --write",
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "sizes": args.sizes, "threads": args.threads, "layouts": args.layouts,
            "to_stage": args.to_stage, "worst_pair_error": round(worst, 3),
            "worst_held_out_error": None if held_out is None else round(held_out, 3)})
        MODEL_PATH.write_text(json.dumps(fitted.to_json(), indent=2) + "\n")
        print(f"wrote {MODEL_PATH}")


if __name__ == "__main__":
    main()
