"""Alignment benchmark: stages 1–3 on synthetic pairs over a grid of sizes and transforms.

Every case is a synthetic pair with a known ``post_to_pre`` (our generator, exo2micro.synth);
the stage tools run each in its own process under ``/usr/bin/time -v`` (bench/e2e.py), and the
final stage-3 transform is compared with the truth over the tissue pixels of the post frame.
Printed per case: mean / p95 / max displacement error (px), stage 3's own accuracy estimate,
wall time of stages 2 + 3 (stage 3 includes the full-resolution warp) and their peak RSS.

Usage (generated data goes to --work, never into the repository)::

    python bench/align_accuracy.py                       # 2000, 6000 and 9000 px, all cases
    python bench/align_accuracy.py --sizes 30000 --cases reference
    python bench/align_accuracy.py --sizes 1200 3000 6000 --cases featureless

The table is also written to --out/align_accuracy.md (+ .json). Not part of the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import STAGES, bench_spec, parser, run_case, save

#: name -> synthetic transform and scale (rotation °, isotropic scale, shift as a fraction of
#: the width, k); "reference" is the public package's benchmark case (docs/benchmarks.md).
CASES: dict[str, dict[str, float]] = {
    "reference": {"rotation_deg": 3.0, "scale": 1.03, "tx": 0.0, "k": 1.35},
    "rot-15-shrink": {"rotation_deg": -15.0, "scale": 0.9, "tx": 0.03, "k": 0.6},
    "rot-5-k3": {"rotation_deg": -5.0, "scale": 0.97, "tx": -0.05, "k": 3.0},
    "identity": {"rotation_deg": 0.0, "scale": 1.0, "tx": 0.0, "k": 1.0},
    "rot12-grow": {"rotation_deg": 12.0, "scale": 1.1, "tx": 0.05, "k": 1.35},
    "featureless": {"rotation_deg": 4.0, "scale": 1.02, "tx": 0.0, "k": 1.35},
}
#: Cases whose tissue has no interior texture: stage 3 falls back to stage 2 refined on the
#: tissue edge.
TEXTURE: dict[str, str] = {"featureless": "featureless"}


def run(size: int, case: str, work: Path, threads: int, keep: bool) -> dict[str, Any]:
    c = CASES[case]
    spec = bench_spec(size, sample=f"A{size}{case.replace('-', '')}",
                      rotation_deg=c["rotation_deg"], scale=c["scale"], k=c["k"],
                      tx=c["tx"] * size, ty=-c["tx"] * size / 2,
                      **({"texture": TEXTURE[case]} if case in TEXTURE else {}))
    row = run_case(spec, work, threads, "tiff", STAGES[:3], keep=keep)
    row["case"] = case
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | case | error mean / p95 / max px | estimated px | stages 2+3 wall s "
             "| stages 2+3 peak RSS GiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        st = r["stages"]
        err = r.get("alignment_error_px")
        err_s = f"{err['mean']:.3f} / {err['p95']:.3f} / {err['max']:.3f}" if err else "failed"
        est = r.get("estimated_accuracy_px")
        aligned = [st[s] for s in STAGES[1:3] if s in st]
        wall = sum(s["wall_s"] for s in aligned)
        rss = max((s["peak_rss_bytes"] or 0) for s in aligned) / 2**30 if aligned else 0.0
        lines.append(f"| {r['size'][0]} × {r['size'][1]} | {r['case']} | {err_s} | "
                     f"{'–' if est is None else f'{est:.3f}'} | {wall:.1f} | {rss:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        for case in args.cases:
            rows.append(run(size, case, args.work, args.threads, args.keep))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    print(save(args.out, "align_accuracy", table(rows), rows))


if __name__ == "__main__":
    main()
