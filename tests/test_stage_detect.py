"""Stage 5 (detect) on synthetic pairs with known microbes (positions, fluxes).

Each pair is built like the stage-4 tests (true transform, so alignment errors are absent),
then stage 4 and stage 5 run; detections are compared with the truth JSON of
:mod:`exo2micro.synth`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from scipy.spatial import cKDTree

from exo2micro import params as P
from exo2micro.cli.detect import detect as detect_cmd
from exo2micro.errors import EXIT_DATA, EXIT_USAGE
from exo2micro.io.layout import PairLayout
from exo2micro.pipeline import run_stage
from exo2micro.stages import detect as D
from exo2micro.stages.subtract import run_subtract
from tests.test_stage_subtract import DYE, SAMPLE, build_pair, read_all

#: rms position error (px) of detected microbes with integrated SNR ≥ 20 on the faint pair: the
#: code reaches ≈ 0.50 px; the tolerance fails a 2× degradation.
POSITION_RMS_PX = 0.7
#: rms of the position error over its Cramér–Rao bound (√2 σ / SNR per axis) of the detected
#: microbes with SNR ≥ 5 on the faint pair: the code reaches ≈ 1.16 (1 is the noise limit); the
#: tolerance fails a 2× degradation.
POSITION_OVER_CRB = 1.8
#: Matching radius (px) of a detection to a true microbe.
MATCH_PX = 2.0


def _run(layout: PairLayout, **kw: Any) -> tuple[dict[str, Any], bool]:
    return run_stage(5, layout, lambda: D.run_detect(layout, sample=SAMPLE, dye=DYE, **kw),
                     checkpoint_format=kw.get("checkpoint_format", "tiff"))


def _pair(root: Path, params: dict[str, Any] | None = None, **spec: Any
          ) -> tuple[PairLayout, dict[str, Any]]:
    layout, truth = build_pair(root, params, **spec)
    run_subtract(layout, sample=SAMPLE, dye=DYE)
    return layout, truth


def true_snr(layout: PairLayout, record: dict[str, Any], truth: dict[str, Any]) -> np.ndarray:
    """Integrated SNR of every true microbe under the pair's fitted noise model
    (:meth:`~exo2micro.stages.detect.NoiseModel.integrated_noise`)."""
    model = D.NoiseModel.from_json(record["noise_model"])
    k = json.loads(layout.record(4).read_text())["scales"]["moffat"]
    pre = read_all(layout.aligned_pre("tiff"))
    m = truth["microbes"]
    pad = layout.params["pad"]
    ix = np.clip(np.rint(np.asarray(m["x"]) + pad).astype(int), 0, pre.shape[1] - 1)
    iy = np.clip(np.rint(np.asarray(m["y"]) + pad).astype(int), 0, pre.shape[0] - 1)
    level = D.level_image(pre, k)[iy, ix]
    noise = np.array([float(model.integrated_noise(np.float32(lv), s))
                      for lv, s in zip(level, m["sigma"])])
    return np.asarray(m["flux"]) / noise


def read_csv(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    return header, {name: np.array([float(r[i]) for r in rows[1:]])
                    for i, name in enumerate(header)}


@pytest.fixture(scope="module")
def faint(tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[PairLayout, dict[str, Any], dict[str, Any]]:
    """Faint microbes (a tenth of the default brightness, 3 % cover), 768 × 640 (two blocks)."""
    layout, truth = _pair(tmp_path_factory.mktemp("faint"), microbe_coverage=0.03,
                          microbe_brightness=0.1, seed=3)
    record, skipped = _run(layout)
    assert not skipped
    return layout, truth, record


def _match(truth: dict[str, Any], cols: dict[str, np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    txy = np.column_stack([truth["microbes"]["x"], truth["microbes"]["y"]])
    dist, idx = cKDTree(np.column_stack([cols["x"], cols["y"]])).query(txy)
    return txy, dist, idx


def test_positions_match_truth(faint: tuple[PairLayout, dict[str, Any], dict[str, Any]]
                               ) -> None:
    layout, truth, record = faint
    _, cols = read_csv(layout.detections("csv"))
    txy, dist, idx = _match(truth, cols)
    snr = true_snr(layout, record, truth)
    sel = (dist < MATCH_PX) & (snr >= 20)
    assert sel.sum() >= 10
    err = np.column_stack([cols["x"][idx[sel]], cols["y"][idx[sel]]]) - txy[sel]
    rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
    assert rms < POSITION_RMS_PX
    assert np.all(np.abs(err.mean(axis=0)) < 0.15)  # no bias of the pixel convention
    # near the noise limit at every SNR: error / Cramér–Rao bound
    sel = (dist < MATCH_PX) & (snr >= 5)
    crb = np.sqrt(2) * np.asarray(truth["microbes"]["sigma"])[sel] / snr[sel]
    err = np.column_stack([cols["x"][idx[sel]], cols["y"][idx[sel]]]) - txy[sel]
    assert float(np.sqrt(np.mean(np.sum(err**2, axis=1) / (2 * crb**2)))) < POSITION_OVER_CRB


def test_completeness_and_purity(faint: tuple[PairLayout, dict[str, Any], dict[str, Any]]
                                 ) -> None:
    layout, truth, record = faint
    _, cols = read_csv(layout.detections("csv"))
    _, dist, _ = _match(truth, cols)
    snr = true_snr(layout, record, truth)
    bright = snr >= 10
    assert bright.sum() >= 20
    assert np.mean(dist[bright] < MATCH_PX) >= 0.9
    # purity: every unflagged detection lies near a true microbe
    txy = np.column_stack([truth["microbes"]["x"], truth["microbes"]["y"]])
    clean = cols["flags"] == 0
    d_back, _ = cKDTree(txy).query(np.column_stack([cols["x"][clean], cols["y"][clean]]))
    assert np.mean(d_back < 3 * MATCH_PX) >= 0.95
    assert record["detections"]["completeness_estimate"] >= 0.8


def test_no_detections_without_microbes(tmp_path: Path) -> None:
    layout, _ = _pair(tmp_path, microbe_coverage=0.0, seed=4)
    record, _ = _run(layout)
    assert record["detections"]["n"] <= 1
    assert read_csv(layout.detections("csv"))[1]["id"].size == record["detections"]["n"]


def test_outputs_and_columns(faint: tuple[PairLayout, dict[str, Any], dict[str, Any]]) -> None:
    layout, _, record = faint
    header, cols = read_csv(layout.detections("csv"))
    assert header[:3] == ["id", "x", "y"]
    assert {"id", "x", "y", "flux", "peak", "snr", "area_px", "flags", "a", "b",
            "theta"} <= set(header)
    assert list(cols["id"]) == list(range(1, cols["id"].size + 1))
    # one detection per source although the pair spans two blocks of TILE rows
    xy = np.column_stack([cols["x"], cols["y"]])
    assert np.all(cKDTree(xy).query(xy, k=2)[0][:, 1] > 1.0)
    table = Table.read(layout.detections("ecsv"), format="ascii.ecsv")
    assert str(table["x"].unit) == "pix" and str(table["flux"].unit) == "ct"
    assert table.meta["params"]["detect_threshold"] == P.resolve({})["detect_threshold"]
    sig = read_all(layout.significance("tiff"))
    diff = read_all(layout.difference("tiff"))
    assert sig.shape == diff.shape
    assert np.array_equal(np.isnan(sig), np.isnan(diff))
    quiet = np.abs(sig[np.isfinite(sig)])
    assert 0.8 < np.median(quiet) / 0.6745 < 1.25  # σ-normalised: robust σ ≈ 1
    for name in ("detections", "detection_snr_histogram"):
        assert layout.stage_plot(name, 5).is_file()
    result = json.loads(layout.result().read_text())
    found = result["detections"]
    assert found["n"] == record["detections"]["n"] == cols["id"].size
    assert found["catalog"] == "detections.csv"
    assert found["threshold_sigma"] == P.resolve({})["detect_threshold"]
    assert found["per_mm2"] is None and 0 <= found["completeness_estimate"] <= 1
    assert record["timings_s"]["total"] > 0 and record["peak_rss_bytes"] > 0


def test_resume_force_and_suffix(faint: tuple[PairLayout, dict[str, Any], dict[str, Any]]
                                 ) -> None:
    layout, _, record = faint
    again, skipped = _run(layout)
    assert skipped and again["run_id"] == record["run_id"]
    forced, skipped = run_stage(5, layout, lambda: D.run_detect(layout, sample=SAMPLE, dye=DYE),
                                force=True, checkpoint_format="tiff")
    assert not skipped and forced["run_id"] != record["run_id"]
    other = PairLayout(layout.root, P.resolve({"detect_threshold": 7}))
    assert other.detections("csv").name == "detections_dth7.csv"
    assert other.record(5).name == "05_detect_dth7.json"
    rec7, skipped = _run(other)
    assert not skipped and rec7["detections"]["n"] <= forced["detections"]["n"]
    assert P.fingerprint(layout.params, 5) != P.fingerprint(other.params, 5)
    # stage 4 re-run: stage 5 is stale (upstream changed)
    run_subtract(layout, sample=SAMPLE, dye=DYE)
    _, skipped = _run(layout)
    assert not skipped


def test_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--sample", SAMPLE, "--dye", DYE, "--pair-dir", str(tmp_path)]
    res = runner.invoke(detect_cmd, base)
    assert res.exit_code == EXIT_DATA, res.output
    res = runner.invoke(detect_cmd, [*base, "--param", "detect_threshold=0"])
    assert res.exit_code == EXIT_USAGE, res.output
    res = runner.invoke(detect_cmd, [*base, "--param", "detect_deblend=maybe"])
    assert res.exit_code == EXIT_USAGE, res.output


def test_noise_fit_recovers_line() -> None:
    rng = np.random.default_rng(0)
    level = np.repeat(np.linspace(0, 400, 40), 64 * 320).reshape(40 * 64, 320)
    a, b = 2.0, 0.05
    diff = (rng.standard_normal(level.shape) * np.sqrt(a + b * level)).astype(np.float32)
    lev, var_d, var_f = D.tile_stats(diff, level.astype(np.float32))
    assert var_f.shape == (lev.size, len(D.KERNEL_SIGMAS))
    fa, fb = D.fit_line(lev, var_d)
    assert fa == pytest.approx(a, rel=0.15) and fb == pytest.approx(b, rel=0.05)
    # white noise: no correlation at any kernel of the bank
    assert D.fit_noise(lev, var_d, var_f).c == pytest.approx((1.0,) * len(D.KERNEL_SIGMAS),
                                                             abs=0.15)


def _gaussian(shape: tuple[int, int], x: float, y: float, sigma: float, flux: float
              ) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (flux / (2 * np.pi * sigma**2)
            * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))).astype(np.float32)


def _block(diff: np.ndarray, tissue: np.ndarray | None = None) -> D.Block:
    return D.Block(0, diff, np.zeros_like(diff),
                   np.ones(diff.shape, bool) if tissue is None else tissue,
                   np.zeros(diff.shape, bool))


WHITE = D.NoiseModel(1.0, 0.0, (1.0,) * len(D.KERNEL_SIGMAS), 1)


@pytest.mark.parametrize("sigma", [2.0, 6.0])
def test_peak_positions_subpixel(sigma: float) -> None:
    """The log-parabola peak of the matched filter finds a noiseless Gaussian's centre."""
    x0, y0 = 40.3, 37.8
    search = D.search_map(_block(_gaussian((80, 90), x0, y0, sigma, 500.0)), WHITE,
                          np.ones((80, 90), np.float32))
    for j in range(len(D.KERNEL_SIGMAS)):
        r, c = np.unravel_index(np.argmax(search.filtered[j]), search.snr.shape)
        x, y = D.peak_positions(search.filtered, np.array([r]), np.array([c]), np.array([j]))
        assert abs(x[0] - x0) < 0.02 and abs(y[0] - y0) < 0.02


def test_bank_keeps_broad_sources() -> None:
    """The searched significance of a broad (σ 6 px) source is that of the large kernel, near
    its integrated SNR; one 2.5-px kernel alone would keep ≈ 75 % of it."""
    flux = 20.0 * float(WHITE.integrated_noise(np.float32(0), 6.0))
    diff = _gaussian((120, 120), 60.0, 60.0, 6.0, flux)
    search = D.search_map(_block(diff), WHITE, np.ones(diff.shape, np.float32))
    small, large = (float(k[60, 60]) for k in search.per_kernel)
    assert search.snr[60, 60] == large
    assert 0.9 * 20 < large <= 20.2 and small < 0.8 * 20


def test_search_only_near_tissue() -> None:
    """A bright spot on the bare slide far from tissue is not searched; one at the tissue's
    edge is."""
    diff = _gaussian((100, 200), 30.0, 50.0, 3.0, 2000.0) + _gaussian((100, 200), 150.0, 50.0,
                                                                        3.0, 2000.0)
    tissue = np.zeros(diff.shape, bool)
    tissue[:, 100:] = True
    cols = D.detect_block(_block(diff, tissue), WHITE, 5.0, 5, True)
    assert cols["x"].size == 1 and abs(cols["x"][0] - 150.0) < 0.1
    tissue[:, 100:] = False
    tissue[:, 152:] = True  # the spot's centre 2 px off the tissue: found, flagged edge
    cols = D.detect_block(_block(diff, tissue), WHITE, 5.0, 5, True)
    assert cols["x"].size == 1 and cols["flags"][0] & D.FLAG_EDGE


def test_block_without_tissue_has_no_sources() -> None:
    """A chunk of bare slide (nothing to search) gives an empty catalogue, not an error."""
    diff = _gaussian((64, 64), 30.0, 30.0, 3.0, 2000.0)
    cols = D.detect_block(_block(diff, np.zeros(diff.shape, bool)), WHITE, 5.0, 5, True)
    assert set(cols) == set(D.COLUMNS) and cols["x"].size == 0


def test_deblend_splits_pairs_not_noise() -> None:
    """Two equal Gaussians (σ 4 px, SNR 40) 12 px apart are two sources, each pulled ≈ 0.65 px
    towards the other by its neighbour's light under the kernel (the tolerance fails twice
    that); a broad noisy source is one."""
    rng = np.random.default_rng(1)
    flux = 40.0 * float(WHITE.integrated_noise(np.float32(0), 4.0))
    pair = (_gaussian((100, 120), 54.0, 50.0, 4.0, flux)
            + _gaussian((100, 120), 66.0, 50.0, 4.0, flux))
    cols = D.detect_block(_block(pair), WHITE, 5.0, 5, True)
    assert np.sort(cols["x"]) == pytest.approx([54.0, 66.0], abs=1.0)
    assert np.all(cols["flags"] & D.FLAG_DEBLENDED)
    broad = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        flux = 9.0 * float(WHITE.integrated_noise(np.float32(0), 6.0))
        noisy = (_gaussian((100, 120), 60.0, 50.0, 6.0, flux)
                 + rng.standard_normal((100, 120)).astype(np.float32))
        broad += D.detect_block(_block(noisy), WHITE, 5.0, 5, True)["x"].size == 1
    assert broad >= 9


def test_merge_weak_splits() -> None:
    """A split whose component barely rises above the saddle is undone; a deep one stays."""
    parents = np.zeros((5, 9), np.int32)
    parents[1:4, 1:8] = 1
    children = np.where(parents > 0, 2, 0).astype(np.int32)
    children[1:4, 5:8] = 3
    sharp = np.zeros((5, 9), np.float32)
    sharp[1:4, 1:8] = 5.0
    sharp[2, 2], sharp[2, 6] = 9.0, 5.5  # the second rises 0.5 above the saddle (5.0)
    seg, labels, split = D.merge_weak_splits(parents, children, sharp, prominence=1.0)
    assert labels.size == 1 and not split.any() and np.unique(seg[parents > 0]).size == 1
    sharp[2, 6] = 8.0
    seg, labels, split = D.merge_weak_splits(parents, children, sharp, prominence=1.0)
    assert list(labels) == [2, 3] and split.all()
    assert np.array_equal(seg, children)


def test_chunks_and_threads_give_the_same_catalogue(
        faint: tuple[PairLayout, dict[str, Any], dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Column chunks (with halos) detected in parallel threads find every source once, at the
    positions the whole block gives."""
    layout, _, _ = faint
    _, whole = read_csv(layout.detections("csv"))
    monkeypatch.setattr(D, "CHUNK_COLS", 192)  # a multiple of BG_BOX
    D.run_detect(layout, sample=SAMPLE, dye=DYE, threads=3)
    _, chunked = read_csv(layout.detections("csv"))
    assert chunked["id"].size == whole["id"].size
    dist, idx = cKDTree(np.column_stack([whole["x"], whole["y"]])).query(
        np.column_stack([chunked["x"], chunked["y"]]))
    assert np.unique(idx).size == idx.size and np.all(dist < 0.5)
    # identical but where a segment reaches past a halo (its deblending sees less of it)
    same = (dist < 1e-3) & np.isclose(chunked["flux"], whole["flux"][idx], rtol=1e-3)
    assert same.mean() >= 0.9


def test_injection_mixes_every_snr_in_one_window() -> None:
    """The completeness injection puts every SNR of the curve on one grid, in near-equal
    shares, each source with the flux of its SNR (so one detection run measures the curve)."""
    diff = np.zeros((256, 320), np.float32)
    block, xy, snr = D.inject_sources(_block(diff), WHITE, D.INJECT_SNR,
                                      np.random.default_rng(0))
    counts = [int(np.sum(snr == s)) for s in D.INJECT_SNR]
    assert sum(counts) == len(xy) and max(counts) - min(counts) <= 1
    noise = float(WHITE.integrated_noise(np.float32(0), D.INJECT_SIGMA))
    for (x, y), s in zip(xy, snr):
        ix, iy = int(np.rint(x)), int(np.rint(y))
        stamp = block.diff[iy - 12:iy + 13, ix - 12:ix + 13].sum()
        assert stamp == pytest.approx(s * noise, rel=1e-3)


@pytest.mark.parametrize(("threshold", "min_area"), [(2.0, 1), (2.5, 5), (3.5, 12), (9.0, 5)])
def test_segments_are_photutils_detect_sources(threshold: float, min_area: int) -> None:
    """find_segments gives photutils' detect_sources segmentation, label for label, on a
    smooth noise field with sources, no data (NaN) and an unsearchable region."""
    from photutils.segmentation import detect_sources

    rng = np.random.default_rng(11)
    snr = cv2.GaussianBlur(rng.normal(0, 1, (600, 700)).astype(np.float32), (0, 0), 1.5) * 5
    spikes = np.zeros(snr.shape, np.float32)
    spikes[rng.integers(0, 600, 150), rng.integers(0, 700, 150)] = rng.uniform(1, 20, 150)
    snr += cv2.GaussianBlur(spikes, (0, 0), 2.0) * 25  # sources of 1-12 sigma, some touching
    snr[:40, :] = np.nan
    searchable = np.ones(snr.shape, bool)
    searchable[300:420, 100:260] = False
    ours = D.find_segments(snr, threshold, min_area, searchable)
    theirs = detect_sources(snr, threshold, min_area,
                            connectivity=8, mask=~searchable)
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    segments, labels = ours
    assert segments.dtype == theirs.data.dtype
    assert np.array_equal(segments, theirs.data)
    assert np.array_equal(labels, theirs.labels)
    assert labels.size > 10


def test_no_segment_above_the_threshold_is_none() -> None:
    snr = np.zeros((50, 60), np.float32)
    snr[10, 10:13] = 9.0  # 3 px: below a minimum area of 5
    assert D.find_segments(snr, 5.0, 5, np.ones(snr.shape, bool)) is None
    assert D.find_segments(snr, 5.0, 3, np.ones(snr.shape, bool))[1].tolist() == [1]
    assert D.find_segments(snr, 5.0, 1, np.zeros(snr.shape, bool)) is None
