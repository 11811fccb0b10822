#!/usr/bin/env python3
"""Throughput of the local runner on a synthetic batch (default 12 pairs of 2000 × 1600 px).

Each configuration runs ``python -m exo2micro run`` in a fresh process on a fresh output
folder, ``--repeat`` times (the fastest run counts); wall time comes from the clock, CPU time
(user + sys of the run and every process it started) from ``getrusage(RUSAGE_CHILDREN)``.
Reported:

* the process pool's speed-up: ``--parallel process --workers 2 --cpus 2`` (2 workers × 1
  thread) against ``--parallel serial --cpus 1`` (target ≥ 1.7×);
* the CPU utilisation of the default mode (``--parallel auto``), and of serial mode with the
  whole CPU budget as threads (the Python API's default): (user + sys) ÷ (wall × CPUs)
  (target ≥ 85 %).

Both are only meaningful on an otherwise idle machine, so the CPU capacity actually available
(busy loops, one per CPU) is measured before and after and printed with the results.

::

    .venv/bin/python bench/throughput.py [--pairs 12] [--size 2000x1600] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro.synth import SynthSpec, batch_specs, make_batch  # noqa: E402


def run(raw: Path, out: Path, *args: str) -> tuple[float, float]:
    """Run one batch; return (wall seconds, CPU seconds of the run and its children)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "exo2micro", "run", "--raw-dir", str(raw),
                           "--outdir", str(out), *args], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or "0 failed" not in proc.stdout:
        raise SystemExit(f"batch failed ({' '.join(args)}):\n{proc.stdout[-2000:]}"
                         f"\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


PROBE = """
import time
t, c = time.perf_counter(), time.process_time()
while time.perf_counter() - t < 3:
    pass
print((time.process_time() - c) / (time.perf_counter() - t))
"""


def cpu_capacity(n: int) -> float:
    """CPUs this machine actually gives us now: ``n`` busy loops, summed CPU share. Other
    load (or a noisy neighbour VM) shows up here and explains a low speed-up."""
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    return sum(float(p.communicate()[0]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--size", default="2000x1600", help="WxH of the post images")
    ap.add_argument("--cpus", type=int, default=2, help="CPU budget of the machine")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per configuration; the fastest counts (default 2)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "throughput")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    raw = args.workdir / f"raw_{args.pairs}x{args.size}"
    if not raw.is_dir():
        make_batch(raw, batch_specs(args.pairs, SynthSpec(width=w, height=h)))
    n = args.cpus
    configs = {
        "serial, 1 thread": ("--parallel", "serial", "--cpus", "1"),
        f"process, {n} workers × 1 thread": ("--parallel", "process", "--workers", str(n),
                                             "--cpus", str(n)),
        f"default (--parallel auto), {n} CPUs": ("--cpus", str(n)),
        f"serial, {n} threads": ("--parallel", "serial", "--cpus", str(n)),
    }
    capacity = cpu_capacity(n)
    print(f"CPU capacity now: {capacity:.2f} of {n} CPUs"
          + ("" if capacity > 0.9 * n else "  (the machine is busy: results are pessimistic)"),
          flush=True)
    rows = {}
    for name, cfg in configs.items():
        wall, cpu = min(run(raw, args.workdir / "out", *cfg) for _ in range(args.repeat))
        cpus = int(cfg[cfg.index("--cpus") + 1])
        rows[name] = (wall, cpu, cpu / (wall * n))
        print(f"{name:<34} wall {wall:7.1f} s   cpu {cpu:7.1f} s   utilisation of {n} CPUs "
              f"{cpu / (wall * n):5.0%}   (of its {cpus} CPU budget {cpu / (wall * cpus):5.0%})",
              flush=True)
    serial, pool, default, serial_n = (rows[k] for k in configs)
    print(f"\n{args.pairs} pairs of {w}×{h}:")
    print(f"process pool speed-up ({n} workers × 1 thread vs serial 1 thread): "
          f"{serial[0] / pool[0]:.2f}× (target ≥ 1.7×)")
    print(f"default mode (auto) CPU utilisation (user+sys ÷ (wall × {n})): {default[2]:.0%} "
          f"(target ≥ 85 %); serial with {n} threads: {serial_n[2]:.0%}")
    print(f"CPU capacity after: {cpu_capacity(n):.2f} of {n} CPUs (before: {capacity:.2f})")


if __name__ == "__main__":
    main()
