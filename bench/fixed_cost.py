"""Fixed cost of one small pair: CPU and wall seconds per stage at one thread, and per tool.

A batch of many small pairs spends its time in what every pair pays whatever its size:
imports, process start, plots, searches on a fixed grid. This script generates one synthetic
pair (default 2 000 × 1 600, our generator), then

* **in one process** (as the local runner does): imports the stage modules, then runs
  stages 1–5 with :func:`exo2micro.pipeline.run_pair` at one thread, timing each stage
  between its ``start`` and ``done`` events (``time.process_time`` for CPU, which a busy
  machine barely moves; ``time.perf_counter`` for wall);
* **per tool** (as Nextflow runs them, one process per stage): the CPU seconds of a fresh
  interpreter importing each stage tool's module (``exo2micro.cli.<tool>``), i.e. what every
  task pays before its first pixel.

Each measurement is repeated ``--repeat`` times on fresh outputs; the table gives the median.
Usage (generated data goes to --work, never into the repository)::

    python bench/fixed_cost.py --size 2000x1600 --repeat 3 --work /tmp/e2m-fixed
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro.params import STAGE_NAMES  # noqa: E402

TOOLS = {1: "load", 2: "align_boundary", 3: "align_interior", 4: "subtract", 5: "detect"}
STAGE_MODULES = [f"exo2micro.stages.{name}" for name in TOOLS.values()]


def size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def imports_cpu(modules: list[str]) -> float:
    """CPU seconds (user + sys) of a fresh interpreter that imports ``modules``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], check=True,
                   cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def pair_run(pre: Path, post: Path, out: Path, sample: str, dye: str
             ) -> dict[str, tuple[float, float]]:
    """(CPU s, wall s) of each stage of one in-process run at one thread, keyed by name."""
    from exo2micro.pipeline import run_pair

    marks: dict[int, tuple[float, float]] = {}
    spent: dict[str, tuple[float, float]] = {}

    def on_stage(stage: int, event: str) -> None:
        if event == "start":
            marks[stage] = (time.process_time(), time.perf_counter())
        elif event == "done":
            cpu0, wall0 = marks[stage]
            spent[STAGE_NAMES[stage]] = (time.process_time() - cpu0,
                                         time.perf_counter() - wall0)

    shutil.rmtree(out, ignore_errors=True)
    run_pair(sample, dye, pre, post, out, threads=1, on_stage=on_stage)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=size, default=(2000, 1600), help="WxH of the post image")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/e2m-fixed"))
    args = ap.parse_args()

    from exo2micro.synth import SynthSpec, generate_pair

    spec = SynthSpec(width=args.size[0], height=args.size[1])
    res = generate_pair(spec, args.work / "raw")
    assert res.pre_path is not None and res.post_path is not None

    t0 = time.process_time()
    for name in STAGE_MODULES:
        __import__(name)
    in_process_imports = time.process_time() - t0
    runs = [pair_run(res.pre_path, res.post_path, args.work / "out", spec.sample, spec.dye)
            for _ in range(args.repeat)]
    tools = {stage: statistics.median(imports_cpu([f"exo2micro.cli.{name}"])
                                      for _ in range(args.repeat))
             for stage, name in TOOLS.items()}

    print(f"Pair {args.size[0]} × {args.size[1]}, one thread, median of {args.repeat} runs; "
          f"stage modules imported in the runner's process: {in_process_imports:.2f} CPU s")
    print()
    print("| stage | CPU s (in one process) | wall s | a tool's imports, CPU s |")
    print("|---|---|---|---|")
    total_cpu = total_wall = 0.0
    for stage, name in STAGE_NAMES.items():
        cpu = statistics.median(r[name][0] for r in runs)
        wall = statistics.median(r[name][1] for r in runs)
        total_cpu, total_wall = total_cpu + cpu, total_wall + wall
        print(f"| {stage} {name} | {cpu:.2f} | {wall:.2f} | {tools[stage]:.2f} |")
    print(f"| all five | {total_cpu:.2f} | {total_wall:.2f} | {sum(tools.values()):.2f} |")


if __name__ == "__main__":
    main()
