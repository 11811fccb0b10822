#!/usr/bin/env python3
"""Scaling of the local runner over CPUs and workers: a batch of small pairs and one large pair.

Every configuration runs ``python -m exo2micro run`` in a fresh process on a fresh output
folder. Measured per run: wall time (clock), CPU time (user + sys of the run and of every
process it started, ``getrusage(RUSAGE_CHILDREN)``), the CPUs kept busy on average (CPU ÷
wall) and the peak RSS of the whole process tree (the runner, its pool workers and task
subprocesses, summed, sampled every ``--sample-s`` seconds with psutil — a sampled peak,
so short spikes can be missed).

Configurations, for each CPU budget of ``--cpus``:

* the batch (``--pairs`` pairs of ``--size``) serially (``--parallel serial``), in the process
  pool and the thread pool with ``--workers`` (default: the budget) workers, and as ``auto``
  chooses;
* the single pair (``--single-size``) serially, its threads being the whole budget, beside its
  **I/O floor** measured in the same run (:func:`io_floor`: read both raw TIFFs' bytes and write
  one float32 image of the post frame, fsynced — what no implementation of the pipeline can
  avoid); the table gives each single-pair wall as a multiple of it.

The markdown table goes to ``--out`` (and stdout), headed by the machine: its CPU count, the
CPU capacity actually free at the start (busy loops, one per CPU: other load shows here) and
its memory. ::

    .venv/bin/python bench/scaling.py --cpus 1 2 [--pairs 4] [--size 2000x1600]
        [--single-size 6000x5000] [--out bench/out/scaling.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro.synth import SynthSpec, batch_specs, make_batch  # noqa: E402

PROBE = """
import time
t, c = time.perf_counter(), time.process_time()
while time.perf_counter() - t < 2:
    pass
print((time.process_time() - c) / (time.perf_counter() - t))
"""


@dataclass(frozen=True)
class Row:
    """One measured run."""

    work: str
    mode: str
    cpus: int
    workers: str
    wall_s: float
    cpu_s: float
    peak_rss: int

    def markdown(self) -> str:
        return (f"| {self.work} | {self.mode} | {self.cpus} | {self.workers} | "
                f"{self.wall_s:.1f} s | {self.cpu_s:.1f} s | {self.cpu_s / self.wall_s:.2f} | "
                f"{self.peak_rss / 2**30:.2f} GiB |")


def tree_rss(proc: psutil.Process) -> int:
    """Summed RSS (bytes) of ``proc`` and all its descendants now (0 for those gone)."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def run(raw: Path, out: Path, args: list[str], sample_s: float) -> tuple[float, float, int, str]:
    """One batch: ``(wall s, CPU s, sampled peak tree RSS bytes, the runner's mode line)``."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "exo2micro", "run", "--raw-dir", str(raw),
                             "--outdir", str(out), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(sample_s)
    wall = time.perf_counter() - t0
    output = proc.stdout.read() if proc.stdout is not None else ""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or " 0 failed" not in output:
        raise SystemExit(f"run failed ({' '.join(args)}):\n{output[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mode = next((line for line in output.splitlines() if ", mode " in line), "")
    return wall, cpu, peak, mode


def cpu_capacity(n: int) -> float:
    """CPUs this machine gives us now: ``n`` busy loops, their summed CPU share."""
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    return sum(float(p.communicate()[0]) for p in procs)


def io_floor(raw: Path, out: Path, chunk: int = 64 << 20, repeats: int = 3) -> float:
    """Wall seconds to read every raw TIFF under ``raw`` (both images of its one pair) and
    write, fsynced, one float32 image of the post frame's size (``chunk``-byte reads and
    writes; the file is removed afterwards): the least of ``repeats`` tries, since the page
    cache and the disk's write-back make single tries vary by 2× on the development VM."""
    import tifffile

    tiffs = sorted(raw.rglob("*.tif"))
    post = next(p for p in tiffs if "post" in p.name.lower())
    with tifffile.TiffFile(post) as tif:
        height, width = tif.pages.first.shape[:2]
    buf = bytearray(chunk)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "io_floor.bin"
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for path in tiffs:
            with open(path, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
        left = height * width * 4
        with open(target, "wb", buffering=0) as fh:
            while left > 0:
                left -= fh.write(memoryview(buf)[:min(chunk, left)])
            os.fsync(fh.fileno())
        best = min(best, time.perf_counter() - t0)
        target.unlink()
    return best


def size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def raw_batch(work: Path, pairs: int, wh: tuple[int, int]) -> Path:
    """The synthetic raw folder of ``pairs`` pairs of post size ``wh`` (made once)."""
    raw = work / f"raw_{pairs}x{wh[0]}x{wh[1]}"
    if not raw.is_dir():
        make_batch(raw, batch_specs(pairs, SynthSpec(width=wh[0], height=wh[1])))
    return raw


def workers_of(mode_line: str) -> str:
    """``W × T`` from the runner's ``… N worker(s) × M thread(s)`` line."""
    tail = mode_line.split(":")[-1]
    parts = [p.split()[0] for p in tail.split("×")[:2]] if "×" in tail else []
    return " × ".join(parts) if len(parts) == 2 else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="CPU budgets")
    ap.add_argument("--workers", type=int, default=None,
                    help="pool workers (default: the CPU budget)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=size, default=(2000, 1600), help="WxH of the batch's pairs")
    ap.add_argument("--single-size", type=size, default=(6000, 5000),
                    help="WxH of the single pair (0x0: none)")
    ap.add_argument("--modes", nargs="+", default=["serial", "process", "thread", "auto"],
                    choices=["serial", "process", "thread", "subprocess", "auto"])
    ap.add_argument("--sample-s", type=float, default=0.1, help="RSS sampling period (s)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "scaling")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scaling.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    n_host = os.cpu_count() or 1
    capacity = cpu_capacity(n_host)
    shared = " (shared: other load)" if capacity < 0.9 * n_host else ""
    head = (f"Machine: {platform.machine()}, {n_host} CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB; CPU capacity free at the start "
            f"{capacity:.2f} of {n_host}{shared}; Python {platform.python_version()}.")
    print(head, flush=True)
    jobs: list[tuple[str, Path, str, int, list[str], bool]] = []  # …, single pair?
    batch = raw_batch(args.work, args.pairs, args.size)
    name = f"{args.pairs} pairs {args.size[0]} × {args.size[1]}"
    for cpus in args.cpus:
        for mode in args.modes:
            if mode in ("serial", "subprocess", "auto") or cpus >= 2:
                extra = ([] if mode in ("serial", "subprocess", "auto") or args.workers is None
                         else ["--workers", str(args.workers)])
                if mode in ("process", "thread") and args.workers is None:
                    extra = ["--workers", str(cpus)]
                jobs.append((name, batch, mode, cpus, ["--parallel", mode, *extra], False))
    if args.single_size != (0, 0):
        single = raw_batch(args.work, 1, args.single_size)
        for cpus in args.cpus:
            jobs.append((f"1 pair {args.single_size[0]} × {args.single_size[1]}", single,
                         "serial", cpus, ["--parallel", "serial"], True))
    rows = []
    floors: list[float] = []
    single: list[Row] = []
    for work, raw, mode, cpus, cli, is_single in jobs:
        wall, cpu, peak, line = run(raw, args.work / "out", [*cli, "--cpus", str(cpus)],
                                    args.sample_s)
        chosen = line.split(", mode ")[-1].split(";")[0] if ", mode " in line else "?"
        rows.append(Row(work, mode if mode == chosen else f"{mode} → {chosen}", cpus,
                        workers_of(line), wall, cpu, peak))
        print(rows[-1].markdown(), flush=True)
        if is_single:
            single.append(rows[-1])
            floors.append(io_floor(raw, args.work / "floor"))
            print(f"  I/O floor {floors[-1]:.1f} s: wall {wall / floors[-1]:.1f}× it", flush=True)
    lines = [head, "",
             "| work | mode | CPUs | workers × threads | wall | CPU time | CPU ÷ wall "
             "| peak RSS (process tree) |",
             "|---|---|---|---|---|---|---|---|", *(r.markdown() for r in rows)]
    if floors:
        floor = min(floors)
        lines += ["", f"I/O floor of the single pair (read both raws, write one float32 image, "
                      f"fsynced; least of 3 tries after each of its {len(floors)} run(s)): "
                      f"{floor:.1f} s; its runs take "
                      + ", ".join(f"{r.wall_s / floor:.1f}× it at {r.cpus} CPU(s)"
                                  for r in single) + "."]
    table = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(f"\n{table}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
