#!/usr/bin/env python3
"""Benchmark of stage 4 (subtract): wall time, peak RSS and scale error on a synthetic pair.

The pair is generated once per (size, k, coverage, seed) under ``--workdir`` and reused:
synthetic raw TIFFs → stage 1 → aligned pre warped with the TRUE transform (also written as
the stage-3 transform), so only stage 4 is measured. Each repetition runs ``run_subtract`` in a
fresh child process; the parent reads the child's own peak RSS from ``os.wait4``.

    .venv/bin/python bench/stage4.py --size 6000x5000 --threads 1 --threads 2
    .venv/bin/python bench/stage4.py --size 2000x1600 --size 9000x7500 --format both

Columns: ``stage_s`` is ``run_subtract`` alone, ``process_s`` includes interpreter start-up
and imports; ``peak_rss`` is the child's maximum resident set (whole process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SAMPLE, DYE = "BENCH", "SybrGld"


def prepare(workdir: Path, width: int, height: int, k: float, coverage: float, seed: int,
            noise: float = 1.0, brightness: float = 1.0) -> tuple[Path, float]:
    """The pair folder for these settings (built when missing) and the true k; ``noise`` and
    ``brightness`` (microbe amplitudes) are :class:`~exo2micro.synth.SynthSpec` fields."""
    import numpy as np

    from exo2micro import params as P
    from exo2micro import synth
    from exo2micro.io.layout import PairLayout
    from exo2micro.io.tiffio import TiffImage
    from exo2micro.numerics.transform import TransformRecord
    from exo2micro.stages.load import run_load
    from exo2micro.stages.warp import output_shape, warp_to_files

    extra = (f"_n{noise:g}" if noise != 1.0 else "") + (
        f"_b{brightness:g}" if brightness != 1.0 else "")
    root = workdir / f"{width}x{height}_k{k:g}_c{coverage:g}_s{seed}{extra}"
    layout = PairLayout(root / "pair", P.resolve({}))
    done = root / "prepared.json"
    if done.is_file():
        return layout.root, json.loads(done.read_text())["k"]
    t0 = time.perf_counter()
    spec = synth.SynthSpec(sample=SAMPLE, dye=DYE, width=width, height=height, k=k,
                           microbe_coverage=coverage, seed=seed, noise=noise,
                           microbe_brightness=brightness)
    result = synth.generate_pair(spec, root / "raw")
    t1 = time.perf_counter()
    run_load(result.pre_path, result.post_path, layout, threads=2)
    t2 = time.perf_counter()
    matrix = np.asarray(result.truth["post_to_pre"])
    with TiffImage(layout.signal("pre")) as pre, TiffImage(layout.signal("post")) as post:
        warp_to_files(pre, matrix, output_shape(post.shape, 0), 0,
                      {"tiff": layout.aligned_pre("tiff")})
    TransformRecord(matrix, "ok", 3, {"estimated_accuracy_px": 0.0}).save(
        layout.interior_transform())
    t3 = time.perf_counter()
    print(f"prepared {root.name}: synth {t1 - t0:.1f} s, load {t2 - t1:.1f} s, "
          f"warp {t3 - t2:.1f} s", file=sys.stderr)
    done.write_text(json.dumps({"k": k}))
    return layout.root, k


def child(pair_dir: Path, threads: int, checkpoint_format: str) -> None:
    """Run stage 4 once and print its timings as JSON (the child process)."""
    from exo2micro import params as P
    from exo2micro.io.layout import PairLayout
    from exo2micro.stages.subtract import run_subtract

    layout = PairLayout(pair_dir, P.resolve({}))
    t0 = time.perf_counter()
    record = run_subtract(layout, sample=SAMPLE, dye=DYE, threads=threads,
                          checkpoint_format=checkpoint_format)
    print(json.dumps({"stage_s": time.perf_counter() - t0, "k": record["scales"]["moffat"],
                      "timings_s": record["timings_s"],
                      "method": record["scale_fit"]["method"]}))


def measure(pair_dir: Path, threads: int, checkpoint_format: str) -> dict[str, float]:
    """One child run: its JSON report plus process wall time and peak RSS (bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(pair_dir),
                             "--threads", str(threads), "--format", checkpoint_format],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage 4 child failed with exit code {proc.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - t0
    report["peak_rss"] = usage.ru_maxrss * 1024
    return report


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main() -> None:
    from exo2micro.io.layout import CHECKPOINT_FORMATS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", action="append", type=parse_size,
                    help="WIDTHxHEIGHT of the post image (repeatable; default 2000x1600 and "
                         "6000x5000)")
    ap.add_argument("--threads", action="append", type=int, help="(repeatable; default 1)")
    ap.add_argument("--k", type=float, default=1.35)
    ap.add_argument("--coverage", type=float, default=0.02, help="microbe coverage (0–0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--format", default="tiff", choices=CHECKPOINT_FORMATS)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "stage4")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, (args.threads or [1])[0], args.format)
        return
    sizes = args.size or [(2000, 1600), (6000, 5000)]
    print(f"{'size':>12} {'thr':>3} {'stage_s':>8} {'process_s':>9} {'peak_rss':>9} "
          f"{'k_err_%':>8}  breakdown (s)")
    for width, height in sizes:
        pair_dir, k_true = prepare(args.workdir, width, height, args.k, args.coverage,
                                   args.seed)
        for threads in args.threads or [1]:
            for _ in range(args.repeat):
                r = measure(pair_dir, threads, args.format)
                steps = ", ".join(f"{name} {v:.2f}" for name, v in r["timings_s"].items()
                                  if name != "total")
                print(f"{width:>6}x{height:<5} {threads:>3} {r['stage_s']:>8.2f} "
                      f"{r['process_s']:>9.2f} {r['peak_rss'] / 2**30:>7.2f}Gi "
                      f"{100 * (r['k'] / k_true - 1):>+8.3f}  {steps} [{r['method']}]",
                      flush=True)


if __name__ == "__main__":
    main()
