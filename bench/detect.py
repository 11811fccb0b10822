#!/usr/bin/env python3
"""Benchmark of stage 5 (detect): completeness, purity, positions and false detections on
synthetic pairs with known microbes, and its time and memory on a large pair.

Pairs are built by ``bench/stage4.py``'s ``prepare`` (synthetic raw → stage 1 → aligned pre
with the TRUE transform), so only stages 4 and 5 act; the truth JSON lists every microbe
(position, σ, flux). A true microbe's *integrated SNR* is its flux over
:meth:`exo2micro.stages.detect.NoiseModel.integrated_noise` at its position (the pair's fitted
noise model, correlated noise included: the optimal SNR). True microbes and detections are
matched one to one (closest pairs first) within a radius of three times the Cramér–Rao
position error per axis, ``3 · √2 · σ / SNR``, at least ``MATCH_PX`` and at most the
microbe's covered radius ``1.5 σ`` (a faint broad microbe found 3 px off is found, a blend of
two is one detection); the old rule (any detection within ``MATCH_PX``, not one to one) is
reported too. A detection is pure when a true microbe lies within its match radius or
``PURE_PX``. Position errors are compared with the Cramér–Rao bound of a Gaussian source in
white noise, ``2σ / SNR`` radial rms.

    .venv/bin/python bench/detect.py                       the grid (k × noise × density ×
                                                           brightness) + microbe-free pairs
    .venv/bin/python bench/detect.py --timing 12000x10000  stage 5 alone under /usr/bin/time -v

Results: a table on stdout and ``<workdir>/detect.json`` (``detect_detect_threshold4.json``
with ``--threshold 4``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from stage4 import DYE, SAMPLE, parse_size, prepare  # noqa: E402

MATCH_PX = 2.0
#: Match radius in Cramér–Rao position errors per axis, and its cap in microbe σ.
MATCH_CRB = 3.0
MATCH_COVER_SIGMA = 1.5
#: A true microbe is isolated when no other lies within this distance (px): its position
#: error is not a blend's.
ISOLATED_PX = 15.0
PURE_PX = 4.0
SNR_BINS = (3.0, 5.0, 7.0, 10.0, 20.0, np.inf)
GRID = {"k": (0.8, 2.0), "noise": (1.0, 2.0), "coverage": (0.005, 0.02),
        "brightness": (0.04, 0.12)}
FREE = {"k": (0.8, 2.0), "noise": (1.0, 2.0)}


#: Stage-5 parameter overrides of this run (``--threshold``).
OVERRIDES: dict[str, Any] = {}


def run_stages(pair_dir: Path) -> dict[str, Any]:
    """Stage 4 (resume-aware) and stage 5 (always, with :data:`OVERRIDES`); its record."""
    from exo2micro import params as P
    from exo2micro.io.layout import PairLayout
    from exo2micro.pipeline import run_stage
    from exo2micro.stages.detect import run_detect
    from exo2micro.stages.subtract import run_subtract

    layout = PairLayout(pair_dir, P.resolve(OVERRIDES))
    run_stage(4, layout, lambda: run_subtract(layout, sample=SAMPLE, dye=DYE, threads=2),
              checkpoint_format="tiff")
    rec, _ = run_stage(5, layout, lambda: run_detect(layout, sample=SAMPLE, dye=DYE),
                       force=True, checkpoint_format="tiff")
    return rec


def evaluate(pair_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Truth vs catalogue of one pair (see the module docstring)."""
    from scipy.spatial import cKDTree

    from exo2micro import params as P
    from exo2micro.io.layout import PairLayout
    from exo2micro.io.tiffio import TiffImage
    from exo2micro.stages import detect as D

    layout = PairLayout(pair_dir, P.resolve(OVERRIDES))
    truth = json.loads(next((pair_dir.parent / "raw").rglob("*_truth.json")).read_text())
    m = truth["microbes"]
    txy = np.column_stack([m["x"], m["y"]]) if m["x"] else np.empty((0, 2))
    table = np.genfromtxt(layout.detections("csv"), delimiter=",", names=True, ndmin=1)
    dxy = (np.column_stack([table["x"], table["y"]]) if table.size else np.empty((0, 2)))
    flags = table["flags"].astype(int) if table.size else np.empty(0, int)
    out: dict[str, Any] = {"n_true": len(txy), "n_detected": len(dxy),
                           "tissue_mpx": record["tissue_px"] / 1e6,
                           "noise_model": record["noise_model"],
                           "completeness_estimate": record["detections"]
                           ["completeness_estimate"]}
    out["false_per_mpx"] = None
    if len(txy) == 0:
        out["false_per_mpx"] = len(dxy) / out["tissue_mpx"]
        out["false_unflagged_per_mpx"] = int(np.sum(flags == 0)) / out["tissue_mpx"]
        return out
    model = D.NoiseModel.from_json(record["noise_model"])
    k = json.loads(layout.record(4).read_text())["scales"]["moffat"]
    with TiffImage(layout.aligned_pre("tiff")) as img:
        pre = img.read_window(0, img.shape[0], 0, img.shape[1])[:, :, 0]
    level_img = D.level_image(pre, k)
    ix = np.clip(np.rint(txy[:, 0]).astype(int), 0, pre.shape[1] - 1)
    iy = np.clip(np.rint(txy[:, 1]).astype(int), 0, pre.shape[0] - 1)
    level = level_img[iy, ix]
    sigma = np.asarray(m["sigma"])
    snr = np.asarray(m["flux"]) / np.array([float(model.integrated_noise(np.float32(lv), s))
                                            for lv, s in zip(level, sigma)])
    # the same SNR with the noise correlation of a 3-px filter for every microbe
    snr_c3 = snr * np.sqrt([model.correlation(s) / model.correlation(3.0) for s in sigma])
    crb = np.sqrt(2) * sigma / np.maximum(snr, 1e-9)  # per axis (px)
    radius = np.maximum(np.minimum(MATCH_CRB * crb, MATCH_COVER_SIGMA * sigma), MATCH_PX)
    idx = match(txy, dxy, radius)
    found = idx >= 0
    near = (cKDTree(dxy).query(txy)[0] < MATCH_PX if len(dxy) else np.zeros(len(txy), bool))
    reach = np.maximum(radius, PURE_PX)
    pure = sum(bool(np.any(np.hypot(*(txy - d).T) < reach)) for d in dxy)
    neighbour = (cKDTree(txy).query(txy, k=2)[0][:, 1] if len(txy) > 1
                 else np.full(len(txy), np.inf))
    out.update({"snr": snr.tolist(), "snr_c3": snr_c3.tolist(), "found": found.tolist(),
                "found_2px": near.tolist(), "level": level.tolist(),
                "err": (dxy[idx[found]] - txy[found]).tolist() if found.any() else [],
                "err_snr": snr[found].tolist(), "err_crb": crb[found].tolist(),
                "err_isolated": (neighbour[found] >= ISOLATED_PX).tolist(),
                "pure": int(pure), "flux_ratio": (
                    (table["flux"][idx[found]] / np.asarray(m["flux"])[found]).tolist()
                    if found.any() else [])})
    return out


def match(txy: np.ndarray, dxy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """One-to-one matching, closest pairs first: per true position, the index of its detection
    within its ``radius`` (px), −1 where none is left."""
    from scipy.spatial import cKDTree

    idx = np.full(len(txy), -1)
    if not len(txy) or not len(dxy):
        return idx
    pairs = [(float(np.hypot(*(dxy[j] - txy[i]))), i, j)
             for i, cand in enumerate(cKDTree(dxy).query_ball_point(txy, radius))
             for j in cand]
    used: set[int] = set()
    for _, i, j in sorted(pairs):
        if idx[i] < 0 and j not in used:
            idx[i] = j
            used.add(j)
    return idx


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Completeness per SNR bin, in bright and dim grains, purity, positions, flux and false
    detections over all pairs."""
    with_truth = [r for r in results if r["n_true"]]
    snr = np.concatenate([r["snr"] for r in with_truth])
    found = np.concatenate([r["found"] for r in with_truth]).astype(bool)
    found_2px = np.concatenate([r["found_2px"] for r in with_truth]).astype(bool)
    snr_c3 = np.concatenate([r["snr_c3"] for r in with_truth])
    level = np.concatenate([r["level"] for r in with_truth])
    bins = {}
    for lo, hi in itertools.pairwise(SNR_BINS):
        sel = (snr >= lo) & (snr < hi)
        bins[f"{lo:g}-{hi:g}"] = {"n": int(sel.sum()),
                                  "completeness": float(found[sel].mean()) if sel.any() else None}
    ge5 = snr >= 5
    bright = level >= np.median(level[ge5])
    err = np.concatenate([np.reshape(r["err"], (-1, 2)) for r in with_truth])
    err_snr = np.concatenate([r["err_snr"] for r in with_truth])
    err_crb = np.concatenate([r["err_crb"] for r in with_truth])
    isolated = np.concatenate([r["err_isolated"] for r in with_truth]).astype(bool)

    def rms(sel: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum(err[sel] ** 2, axis=1)))) if sel.any() else None

    free = [r for r in results if not r["n_true"]]
    tissue = sum(r["tissue_mpx"] for r in free)
    return {
        "completeness_by_snr": bins,
        "completeness_snr_ge5": float(found[ge5].mean()),
        "completeness_snr_ge10": float(found[snr >= 10].mean()),
        "completeness_snr_ge20": float(found[snr >= 20].mean()),
        "completeness_snr_ge5_match2px": float(found_2px[ge5].mean()),
        "completeness_snr_ge5_c3": float(found[snr_c3 >= 5].mean()),
        "completeness_snr_ge5_bright_grains": float(found[ge5 & bright].mean()),
        "completeness_snr_ge5_dim_grains": float(found[ge5 & ~bright].mean()),
        "purity": sum(r["pure"] for r in with_truth) / max(1, sum(r["n_detected"]
                                                                   for r in with_truth)),
        "position_rms_px_snr_ge5": rms(err_snr >= 5),
        "position_rms_px_snr_ge10": rms(err_snr >= 10),
        "position_rms_px_snr_ge5_isolated": rms((err_snr >= 5) & isolated),
        "position_crb_rms_px_snr_ge5": float(np.sqrt(np.mean(2 * err_crb[err_snr >= 5] ** 2))),
        "position_crb_rms_px_snr_ge10": float(np.sqrt(np.mean(
            2 * err_crb[err_snr >= 10] ** 2))),
        "position_rms_over_crb_snr_ge5": float(np.sqrt(np.mean(
            np.sum(err[err_snr >= 5] ** 2, axis=1) / (2 * err_crb[err_snr >= 5] ** 2)))),
        "position_median_px_snr_ge5": (float(np.median(np.hypot(*err[err_snr >= 5].T)))
                                       if np.any(err_snr >= 5) else None),
        "position_mean_px": err.mean(axis=0).tolist() if err.size else None,
        "flux_ratio_median": float(np.median(np.concatenate(
            [r["flux_ratio"] for r in with_truth]))),
        "false_per_mpx_tissue": sum(r["n_detected"] for r in free) / tissue if tissue else None,
        "false_unflagged_per_mpx_tissue": (sum(r["false_unflagged_per_mpx"] * r["tissue_mpx"]
                                               for r in free) / tissue if tissue else None),
        "tissue_mpx_free": tissue,
    }


def grid(workdir: Path, size: tuple[int, int], free_size: tuple[int, int]) -> None:
    results = []
    for i, (k, noise, cov, bright) in enumerate(itertools.product(*GRID.values())):
        pair_dir, _ = prepare(workdir, *size, k, cov, 10 + i, noise, bright)
        r = evaluate(pair_dir, run_stages(pair_dir))
        r["settings"] = {"k": k, "noise": noise, "coverage": cov, "brightness": bright}
        found = np.asarray(r["found"], bool)
        snr = np.asarray(r["snr"])
        print(f"k {k:<4g} noise {noise:<3g} cover {cov:<6g} bright {bright:<5g}: "
              f"{r['n_true']:4d} true, {r['n_detected']:4d} detected, completeness "
              f"SNR≥5 {found[snr >= 5].mean():.3f} (n {int((snr >= 5).sum())}), "
              f"c {'/'.join(f'{c:.2f}' for c in r['noise_model']['c'])}", flush=True)
        results.append(r)
    for i, (k, noise) in enumerate(itertools.product(*FREE.values())):
        pair_dir, _ = prepare(workdir, *free_size, k, 0.0, 50 + i, noise)
        r = evaluate(pair_dir, run_stages(pair_dir))
        r["settings"] = {"k": k, "noise": noise, "coverage": 0.0}
        print(f"microbe-free k {k:<4g} noise {noise:<3g}: {r['n_detected']} detections on "
              f"{r['tissue_mpx']:.2f} Mpx of tissue", flush=True)
        results.append(r)
    summary = summarise(results)
    print(json.dumps(summary, indent=1))
    suffix = "".join(f"_{name}{value:g}" for name, value in OVERRIDES.items())
    (workdir / f"detect{suffix}.json").write_text(json.dumps(
        {"summary": summary, "pairs": [{key: r[key] for key in
                                        ("settings", "n_true", "n_detected", "tissue_mpx",
                                         "noise_model", "completeness_estimate")}
                                       for r in results]}, indent=1))


def timing(workdir: Path, size: tuple[int, int], threads: int) -> None:
    """Stage 5 alone on a large pair (default microbes), under ``/usr/bin/time -v``."""
    pair_dir, _ = prepare(workdir, *size, 1.35, 0.02, 0)
    run_stages(pair_dir)  # builds stage 4 when missing (and warms the file cache)
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, "--child",
                           str(pair_dir), "--threads", str(threads)],
                          capture_output=True, text=True, check=True)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
                     proc.stderr)[1]
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr)[1])
              for kind in ("User", "System"))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{size[0]}x{size[1]}: stage 5 {report['total']:.1f} s ({report}), process wall "
          f"{wall}, CPU (user + sys) {cpu:.1f} s, peak RSS {rss / 2**20:.2f} GiB, "
          f"{report['n']} sources, {report['threads']} threads")


def child(pair_dir: Path, threads: int) -> None:
    """Stage 5 forced, once; prints its timings as JSON (the measured process)."""
    from exo2micro import params as P
    from exo2micro.io.layout import PairLayout
    from exo2micro.pipeline import prepare as prepare_pair
    from exo2micro.stages.detect import run_detect

    layout, n = prepare_pair(pair_dir, {}, threads)
    del layout
    rec = run_detect(PairLayout(pair_dir, P.resolve({})), sample=SAMPLE, dye=DYE, threads=n)
    print(json.dumps({**rec["timings_s"], "n": rec["detections"]["n"], "threads": n}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=(1024, 1024),
                    help="WIDTHxHEIGHT of the grid's pairs (default 1024x1024)")
    ap.add_argument("--free-size", type=parse_size, default=(2048, 2048),
                    help="WIDTHxHEIGHT of the microbe-free pairs (default 2048x2048)")
    ap.add_argument("--timing", type=parse_size, help="measure stage 5 on this size instead")
    ap.add_argument("--threshold", type=float, default=None,
                    help="detect_threshold of the grid (default: the registry's)")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "detect")
    ap.add_argument("--threads", type=int, default=2,
                    help="thread budget of the --timing run (default 2)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threshold is not None:
        OVERRIDES["detect_threshold"] = args.threshold
    if args.child:
        child(args.child, args.threads)
    elif args.timing:
        timing(args.workdir, args.timing, args.threads)
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        grid(args.workdir, args.size, args.free_size)


if __name__ == "__main__":
    main()
