#!/usr/bin/env python3
"""Stage-1 memory benchmark: peak RSS and wall time of ``e2m-load`` on a synthetic RGB pair.

Generates (once) a synthetic RGB 8-bit pair of the requested size with :mod:`exo2micro.synth`,
runs ``bin/e2m-load --force`` on it under ``/usr/bin/time -v`` in a fresh process and compares
the process's maximum resident set size with the stage-1 target

    peak RSS ≤ 1.5 × (decoded bytes of one raw image) + 300 MiB

Usage (generated data goes under WORKDIR, never into the repository)::

    .venv/bin/python bench/stage1_memory.py [--width 12000] [--height 10000]
        [--workdir /tmp/exo2micro-bench] [--threads N]

Exit status 0 when the target is met, 1 when it is not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro.io.records import read_record  # noqa: E402
from exo2micro.io.tiffio import read_info  # noqa: E402
from exo2micro.synth import SynthSpec, generate_pair  # noqa: E402

MiB = 2**20
TARGET_FACTOR = 1.5
TARGET_EXTRA = 300 * MiB


def ensure_pair(spec: SynthSpec, raw_dir: Path) -> tuple[Path, Path]:
    """The pair's raw files, generated unless a previous run completed them (the truth JSON
    is written last, so its presence means both TIFFs are complete)."""
    folder = raw_dir / spec.sample
    names = spec.file_names()
    if not (folder / names["truth"]).is_file():
        t0 = time.perf_counter()
        print(f"generating {spec.width}×{spec.height} RGB pair in {folder} …", flush=True)
        generate_pair(spec, raw_dir)
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return folder / names["pre"], folder / names["post"]


def time_v(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd`` under ``/usr/bin/time -v``; return (wall seconds, max RSS bytes)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"e2m-load failed (exit {proc.returncode}):\n{proc.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr)
    if rss is None or wall is None:
        sys.exit(f"cannot parse /usr/bin/time -v output:\n{proc.stderr}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds, int(rss.group(1)) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=12000, help="post width (px)")
    parser.add_argument("--height", type=int, default=10000, help="post height (px)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/exo2micro-bench"),
                        help="where raw pairs and outputs go (outside the repository)")
    parser.add_argument("--threads", type=int, default=None,
                        help="--threads passed to e2m-load (default: its CPU budget)")
    args = parser.parse_args()
    if args.workdir.resolve().is_relative_to(ROOT):
        parser.error(f"--workdir must be outside the repository ({ROOT})")

    spec = SynthSpec(sample=f"B{args.width}x{args.height}", dye="SybrGld", width=args.width,
                     height=args.height, channel_mode="rgb8")
    pre, post = ensure_pair(spec, args.workdir / "raw")
    pair_dir = args.workdir / "pairs" / spec.sample
    cmd = [sys.executable, str(ROOT / "bin" / "e2m-load"), "--pre", str(pre), "--post",
           str(post), "--sample", spec.sample, "--dye", spec.dye, "--pair-dir", str(pair_dir),
           "--force"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    wall, max_rss = time_v(cmd)

    record = read_record(pair_dir / "stages" / "01_load.json")
    total_s = record.timings_s.get("total", float("nan")) if record else float("nan")
    peak = (record.peak_rss_bytes or 0) if record else 0
    raw_bytes = max(read_info(pre).decoded_bytes, read_info(post).decoded_bytes)
    target = TARGET_FACTOR * raw_bytes + TARGET_EXTRA
    ok = max_rss <= target
    print(f"stage 1 (e2m-load) on {args.width}×{args.height} RGB 8-bit, "
          f"threads {args.threads or 'default'}")
    print(f"  wall time                  {wall:8.1f} s"
          f"   (stage record: {total_s:.1f} s)")
    print(f"  maximum resident set size  {max_rss / MiB:8.0f} MiB"
          f"   (stage record peak: {peak / MiB:.0f} MiB)")
    print(f"  one raw image              {raw_bytes / MiB:8.0f} MiB")
    print(f"  target 1.5 × raw + 300 MiB {target / MiB:8.0f} MiB   "
          f"{'OK' if ok else 'EXCEEDED'} ({max_rss / target:.0%} of target)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
