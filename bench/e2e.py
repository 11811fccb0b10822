"""End-to-end benchmark: synthetic pairs through the four stage tools, per-stage cost and accuracy.

For each requested size and raw TIFF layout this script generates a synthetic pair with a known
transform (3° rotation, scale 1.03, k = 1.35 — exo2micro 2.4's benchmark case, docs/benchmarks.md),
runs
``e2m-load``, ``e2m-align-boundary``, ``e2m-align-interior`` and ``e2m-subtract`` each in its
own process under ``/usr/bin/time -v`` (so every stage's peak RSS is its own, as under
Nextflow), and records per stage: wall time, peak RSS, bytes written; per pair: mean / p95 / max
alignment error over tissue pixels against the ground truth and the error of k.

Usage (generated data goes to --work, never into the repository)::

    python bench/e2e.py --sizes 2000 6000 9000 --work /tmp/exo2micro-bench --out bench/out
    python bench/e2e.py --sizes 30000 --layouts strips tiled-zstd --threads 2

It prints a markdown table and writes it (plus the raw JSON) to --out. Nothing here runs in the
test suite; the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro.batch.preflight import estimate_pair  # noqa: E402
from exo2micro.io.layout import CHECKPOINT_FORMATS, PairLayout  # noqa: E402
from exo2micro.numerics.transform import TransformRecord, displacement_stats, grid_points  # noqa: E402
from exo2micro.params import resolve  # noqa: E402
from exo2micro.synth import SynthSpec, generate_pair, load_truth, truth_tissue_mask_post  # noqa: E402

#: raw TIFF layouts microscopes produce: name -> (synth layout, compression)
LAYOUTS = {
    "strips": ("strips", None),
    "single-strip": ("single-strip", None),
    "tiled": ("tiled", None),
    "strips-lzw": ("strips", "lzw"),
    "single-strip-lzw": ("single-strip", "lzw"),
    "tiled-deflate": ("tiled", "deflate"),
    "tiled-zstd": ("tiled", "zstd"),
}
STAGES = ("load", "align-boundary", "align-interior", "subtract")


def timed_run(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``; return wall s, peak RSS bytes, exit code."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"wall_s": round(wall, 2), "peak_rss_bytes": int(peak.group(1)) * 1024 if peak else None,
            "exit": proc.returncode, "stderr_tail": proc.stderr.splitlines()[-25:]}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_spec(size: int, layout: str = "strips", **changes: Any) -> SynthSpec:
    """The benchmark pair of width ``size`` (height 5/6 of it) in raw ``layout``; ``changes``
    override the transform, k, ... (the sample name must then be given too)."""
    synth_layout, compression = LAYOUTS[layout]
    base = {"sample": f"B{size}{layout.replace('-', '')}", "width": size,
            "height": size * 5 // 6, "rotation_deg": 3.0, "scale": 1.03, "k": 1.35, "seed": 7,
            "layout": synth_layout, "compression": compression}
    return SynthSpec(**{**base, **changes})


def run_case(spec: SynthSpec, work: Path, threads: int, fmt: str,
             stages_to_run: tuple[str, ...] = STAGES, keep: bool = False) -> dict[str, Any]:
    """Generate (or reuse) the pair of ``spec`` under ``work`` and run ``stages_to_run`` on it,
    each stage tool in its own process; the outputs are deleted afterwards unless ``keep``."""
    raw = work / "raw"
    names = spec.file_names()
    if not (raw / spec.sample / names["truth"]).is_file():
        t0 = time.perf_counter()
        generate_pair(spec, raw)
        print(f"generated {spec.sample} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    truth = load_truth(raw / spec.sample / names["truth"])
    pair_dir = work / "out" / spec.sample / spec.dye
    shutil.rmtree(pair_dir, ignore_errors=True)
    common = ["--sample", spec.sample, "--dye", spec.dye, "--pair-dir", str(pair_dir),
              "--threads", str(threads), "--checkpoint-format", fmt]
    stages: dict[str, Any] = {}
    for stage in stages_to_run:
        extra = (["--pre", str(raw / spec.sample / names["pre"]),
                  "--post", str(raw / spec.sample / names["post"])] if stage == "load" else [])
        before = folder_bytes(pair_dir) if pair_dir.exists() else 0
        res = timed_run([sys.executable, str(ROOT / "bin" / f"e2m-{stage}"), *common, *extra])
        res["written_bytes"] = folder_bytes(pair_dir) - before
        stages[stage] = res
        if res["exit"] != 0:
            print("\n".join(res["stderr_tail"]), file=sys.stderr)
            break
    layout = spec.layout + (f"-{spec.compression}" if spec.compression else "")
    out: dict[str, Any] = {"size": [spec.width, spec.height], "layout": layout, "format": fmt,
                           "threads": threads, "stages": stages,
                           "raw_bytes": (raw / spec.sample / names["post"]).stat().st_size}
    lay = PairLayout(pair_dir, resolve())
    if lay.interior_transform().is_file():
        factor = max(1, spec.width // 1500)
        xy = grid_points(truth_tissue_mask_post(truth, factor), factor)
        tr = TransformRecord.load(lay.interior_transform())
        out["alignment_error_px"] = displacement_stats(tr.post_to_pre,
                                                       np.asarray(truth["post_to_pre"]), xy)
        out["estimated_accuracy_px"] = tr.metrics.get("estimated_accuracy_px")
    if lay.result().is_file():
        k = json.loads(lay.result().read_text()).get("scale_estimate")
        out["k"] = k
        out["scale_error_pct"] = None if k is None else 100 * (k / truth["k"] - 1)
    est = estimate_pair(raw / spec.sample / names["pre"], raw / spec.sample / names["post"],
                        None, fmt, threads=threads, stages=range(1, len(stages_to_run) + 1))
    for number, stage in enumerate(stages_to_run, start=1):
        if stage in stages:
            stages[stage]["model_mem_bytes"] = est.stages[number].mem_bytes
    out["wall_s"] = round(sum(s["wall_s"] for s in stages.values()), 1)
    out["peak_rss_bytes"] = max((s["peak_rss_bytes"] or 0) for s in stages.values())
    out["written_bytes"] = folder_bytes(pair_dir)
    if not keep:  # a 30k-px pair writes ~8 GB: do not let a suite fill the disk
        shutil.rmtree(pair_dir, ignore_errors=True)
    return out


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark script shares: --sizes, --threads, --work, --out."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000, 9000])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/exo2micro-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep each pair's outputs in --work")
    return ap


def save(out: Path, name: str, md: str, rows: list[dict[str, Any]]) -> str:
    """Write ``out/<name>.md`` (the table) and ``out/<name>.json`` (the rows); return ``md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(md + "\n")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return md


def model_ratio(stages: dict[str, Any]) -> str:
    """The pre-flight estimate over the measured peak RSS, per stage (``load/…/subtract``)."""
    ratios = [f"{s['model_mem_bytes'] / s['peak_rss_bytes']:.2f}" for s in stages.values()
              if s.get("model_mem_bytes") and s.get("peak_rss_bytes")]
    return "/".join(ratios) or "–"


def table(rows: list[dict[str, Any]]) -> str:
    gib = 2**30
    lines = ["| input | raw layout | format | wall s (load/bnd/int/sub) | peak RSS GiB (max stage) "
             "| model / measured peak | written GiB | align error mean/p95/max px "
             "| scale error % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["stages"]
        walls = "/".join(f"{st[s]['wall_s']:.1f}" if s in st else "–" for s in STAGES)
        err = r.get("alignment_error_px")
        err_s = f"{err['mean']:.3f} / {err['p95']:.3f} / {err['max']:.3f}" if err else "–"
        se = r.get("scale_error_pct")
        lines.append(
            f"| {r['size'][0]} × {r['size'][1]} | {r['layout']} | {r['format']} | "
            f"{r['wall_s']:.1f} ({walls}) | {r['peak_rss_bytes'] / gib:.2f} | "
            f"{model_ratio(st)} | {r['written_bytes'] / gib:.2f} | {err_s} | "
            f"{'–' if se is None else f'{se:+.3f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--layouts", nargs="+", default=["strips"], choices=sorted(LAYOUTS))
    ap.add_argument("--formats", nargs="+", default=["tiff"], choices=CHECKPOINT_FORMATS)
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        for layout in args.layouts:
            for fmt in args.formats:
                rows.append(run_case(bench_spec(size, layout), args.work, args.threads, fmt,
                                     keep=args.keep))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    print(save(args.out, "e2e", table(rows), rows))


if __name__ == "__main__":
    main()
