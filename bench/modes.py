#!/usr/bin/env python3
"""Every local-runner mode on one mixed batch: same statuses, same science (issue #5).

Generates (once) a batch of ``--pairs`` synthetic pairs of mixed sizes (1 000–3 000 px wide,
transforms and k drawn per pair) plus one pair whose post TIFF is truncated, runs
``exo2micro run --lenient`` on it in each of the modes serial / process / thread / subprocess
(fresh process, fresh output folder each), and compares the modes' outputs with serial's:

* status and ``scale_estimate`` of every pair (``result.json``) — must be equal;
* the pixels of the aligned pre and of every difference image — must be bit-identical;
* the final ``post_to_pre`` — largest displacement it causes over the post frame, in px
  (reported, not required to be 0: BLAS sums in a different order with 1 thread than with 2).

Prints wall time per mode and the comparison; exits 1 if statuses, scales or pixels differ.

::

    .venv/bin/python bench/modes.py [--pairs 11] [--work /tmp/exo2micro-modes]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exo2micro.io.tiffio import TiffImage  # noqa: E402
from exo2micro.numerics.transform import max_displacement  # noqa: E402
from exo2micro.synth import SynthSpec, batch_specs, make_batch  # noqa: E402

MODES = ("serial", "process", "thread", "subprocess")
WIDTHS = (1000, 1200, 1400, 1500, 1600, 1800, 2000, 2200, 2400, 2600, 3000)


def make_raw(raw: Path, pairs: int) -> None:
    """``pairs`` good pairs of mixed sizes plus one with a truncated post TIFF."""
    if raw.is_dir():
        return
    specs = [replace(spec, width=WIDTHS[i % len(WIDTHS)], height=WIDTHS[i % len(WIDTHS)] * 5 // 6)
             for i, spec in enumerate(batch_specs(pairs, SynthSpec(seed=3), prefix="MIX"))]
    make_batch(raw, specs, broken=True)
    shutil.rmtree(raw / f"{specs[0].sample}INCOMPLETE")  # keep the batch to good + broken


def pixels_digest(paths: list[Path]) -> str | None:
    """SHA-256 of the pixel data of ``paths`` (TIFF tags such as dates are not compared)."""
    if not paths:
        return None
    h = hashlib.sha256()
    for path in paths:
        with TiffImage(path) as img:
            for _, block in img.iter_rows(1024):
                h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


def outputs(out: Path) -> dict[str, dict[str, Any]]:
    """Per pair (``sample/dye``): status, k, transform and pixel digests."""
    found: dict[str, dict[str, Any]] = {}
    for result in sorted(out.glob("*/*/result.json")):
        pair = result.parent
        data = json.loads(result.read_text())
        found[f"{pair.parent.name}/{pair.name}"] = {
            "status": data["status"], "k": data.get("scale_estimate"),
            "post_to_pre": (data.get("alignment") or {}).get("post_to_pre"),
            "aligned": pixels_digest(sorted(pair.glob("tiff/03_interior_aligned_pre*.tif"))),
            "difference": pixels_digest(sorted(pair.glob("tiff/04_difference*.tif")))}
    return found


def max_shift(a: list[list[float]] | None, b: list[list[float]] | None) -> float:
    """Largest displacement (px) between two ``post_to_pre`` over the corners of the batch's
    largest frame (``inf`` when only one of them exists)."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    w, h = max(WIDTHS), max(WIDTHS) * 5 // 6
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float)
    return max_displacement(np.asarray(a), np.asarray(b), corners)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=11, help="good pairs (one broken is added)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/exo2micro-modes"))
    args = ap.parse_args()
    raw = args.work / "raw"
    make_raw(raw, args.pairs)
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in MODES:
        out = args.work / f"out_{mode}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "exo2micro", "run", "--raw-dir", str(raw),
                               "--outdir", str(out), "--lenient", "--parallel", mode],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        last = [line for line in proc.stdout.splitlines() if "pair(s):" in line]
        print(f"{mode:10s} exit {proc.returncode}  {wall:6.1f} s  {last[-1] if last else '?'}")
        found[mode] = outputs(out)
    ok = True
    ref = found["serial"]
    for mode in MODES[1:]:
        worst = 0.0
        for pair, r in ref.items():
            o = found[mode].get(pair)
            if o is None or any(o[key] != r[key] for key in ("status", "k", "aligned",
                                                             "difference")):
                ok = False
                print(f"  {mode}: {pair} differs from serial: {o} vs {r}")
                continue
            worst = max(worst, max_shift(r["post_to_pre"], o["post_to_pre"]))
        print(f"{mode:10s} vs serial: statuses, k and pixels "
              f"{'identical' if ok else 'DIFFER'}; transforms differ by ≤ {worst:.1e} px")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
