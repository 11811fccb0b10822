"""Stage 3 (align-interior) and the streamed warp: accuracy vs ground truth, fallbacks, gates,
resume from transforms on disk, and images wider than OpenCV's 32 767 px limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from alignment_helpers import make_aligned

from exo2micro.io.records import read_record, stage_is_current
from exo2micro.io.tiffio import TiffImage
from exo2micro.numerics.transform import similarity_post_to_pre
from exo2micro.params import resolve
from exo2micro.pipeline import run_pair
from exo2micro.stages.warp import iter_warped_blocks, warp_to_files

ROOT = Path(__file__).resolve().parent.parent

# Issue 3's grid, covered by cases that combine its values (not the full product, to stay fast):
# rotations {-15, -5, 0, 3, 12}°, scales {0.9, 0.97, 1.0, 1.03, 1.1}, translations up to 5 % of
# the width, k in {0.6, 1.35, 3}, microbes up to 5 %, unequal frames, tissue leaving the frame.
CASES = [
    dict(rotation_deg=3, scale=1.03, k=1.35, microbe_coverage=0.02),
    dict(rotation_deg=-15, scale=0.9, k=0.6, tx=60, ty=-40, microbe_coverage=0.0),
    dict(rotation_deg=12, scale=1.1, k=3.0, microbe_coverage=0.05),
    dict(rotation_deg=-5, scale=0.97, k=1.35, pre_width=1100, pre_height=1150, tx=-55),
    dict(rotation_deg=0, scale=1.0, k=0.6, tissue_offset=(330.0, 0.0), microbe_coverage=0.05),
    dict(rotation_deg=3, scale=1.1, k=3.0, channel_mode="gray16", ty=60),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_final_alignment_is_subpixel(tmp_path: Path, case: dict) -> None:
    pair = make_aligned(tmp_path, seed=len(str(case)), **case)
    tr = pair.transform(3)
    assert tr.status == "ok", tr.reason
    err = pair.error(3)
    # what the code achieves on these cases: mean 0.004–0.016 px, p95 ≤ 0.034 px
    assert err["mean"] <= 0.03 and err["p95"] <= 0.06, err
    # the estimate is honest: within a factor of 3 of the measured error, never below half
    assert err["mean"] / 2 <= tr.metrics["estimated_accuracy_px"] <= 3 * err["mean"], err
    rec = read_record(pair.layout.record(3))
    assert rec is not None and rec.is_complete
    assert (pair.layout.root / "pipeline_output" / "registration.png").stat().st_size > 10_000


def test_aligned_pre_reproduces_post_over_clean_tissue(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, rotation_deg=7, scale=1.05, k=1.35, microbe_coverage=0.0,
                        noise=0.0)
    with (TiffImage(pair.layout.aligned_pre("tiff")) as a,
          TiffImage(pair.layout.signal("post")) as p):
        aligned = a.read_window(0, 10**6, 0, 10**6)[:, :, 0]
        post = p.read_window(0, 10**6, 0, 10**6)[:, :, 0].astype(np.float32)
    assert aligned.dtype == np.float32 and aligned.shape == post.shape
    inner = (aligned > 30) & (post > 30)
    ratio = post[inner] / aligned[inner]
    assert abs(np.median(ratio) - 1.35) < 0.01
    # misaligning by one pixel makes the residual clearly worse: the check can fail
    resid = np.std(post[inner] - 1.35 * aligned[inner])
    shifted = np.roll(aligned, 1, axis=1)
    resid_shifted = np.std(post[inner] - 1.35 * shifted[inner])
    assert resid_shifted > 1.5 * resid


def test_featureless_interior_falls_back_to_stage2_refined_on_the_edge(tmp_path: Path) -> None:
    """No interior texture: stage 3 keeps stage 2's similarity with a reason, refined on the
    tissue edge at full resolution (stage 2 alone is 0.21 px off here, 0.68 px at 6 000 px)."""
    pair = make_aligned(tmp_path, texture="featureless", rotation_deg=4, scale=1.02)
    s3 = pair.transform(3)
    assert s3.status == "fallback"
    assert "patches" in s3.reason and "stage 2" in s3.reason and "tissue edge" in s3.reason
    result_warnings = read_record(pair.layout.record(3)).warnings
    assert any("fallback" in w for w in result_warnings)
    assert pair.error(2)["mean"] > 0.15, pair.error(2)
    err = pair.error(3)
    # what it achieves: mean 0.013 px, max 0.025 px
    assert err["mean"] <= 0.025 and err["max"] <= 0.05, err
    estimate = s3.metrics["estimated_accuracy_px"]
    assert err["mean"] / 2 <= estimate <= 3 * err["mean"], (estimate, err)
    assert s3.metrics["edge_windows"] >= 12, s3.metrics


@pytest.mark.slow
def test_a_larger_featureless_pair_is_refined_on_the_edge_without_a_feature_crash(
        tmp_path: Path) -> None:
    """At 3 000 px stage 2 is 0.3-0.6 px off; on this pair the SIFT matches of featureless
    tissue collapse to a zero-scale fit, which the feature rescue must refuse (it raised
    'Singular matrix' before)."""
    pair = make_aligned(tmp_path, texture="featureless", rotation_deg=4, scale=1.02,
                        width=3000, height=2500, seed=7)
    s3 = pair.transform(3)
    assert s3.status == "fallback" and "tissue edge" in s3.reason, s3.reason
    err = pair.error(3)
    # what it achieves: mean 0.033 px, max 0.060 px
    assert err["mean"] <= 0.06 and err["max"] <= 0.12, err
    assert err["mean"] / 2 <= s3.metrics["estimated_accuracy_px"] <= 3 * err["mean"]


def test_edge_refinement_leaves_a_uniform_brightness_ratio_alone() -> None:
    """The soft footprint is unchanged when window and threshold scale together (the
    post/pre k), so both images' edges are crossed at the same height."""
    from exo2micro.stages.boundary_refine import soft_footprint

    rng = np.random.default_rng(3)
    window = np.where(np.arange(64)[None, :] < 30, 100.0, 2.0) + rng.normal(0, 1, (64, 64))
    window = window.astype(np.float32)
    np.testing.assert_allclose(soft_footprint(2.7 * window, 2.7 * 51.0),
                               soft_footprint(window, 51.0), atol=1e-5)


def test_interior_ecc_false_keeps_stage2(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, params={"interior_ecc": False})
    assert pair.transform(3).status == "skipped"
    np.testing.assert_array_equal(pair.transform(3).post_to_pre, pair.transform(2).post_to_pre)
    assert pair.layout.aligned_pre("tiff").name == "03_interior_aligned_pre_ieccFalse.tif"


def test_max_correction_gate_rejects_with_reason(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, rotation_deg=-9, scale=0.93,
                        params={"interior_max_correction": 0})
    tr = pair.transform(3)
    assert tr.status == "fallback" and "interior_max_correction" in tr.reason


def test_resume_reads_transforms_from_disk_and_reruns_only_what_is_missing(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, rotation_deg=2)
    lay = pair.layout
    before = {s: read_record(lay.record(s)).run_id for s in (1, 2, 3)}
    lay.aligned_pre("tiff").unlink()
    assert stage_is_current(lay, 2)[0] and not stage_is_current(lay, 3)[0]
    run_pair(pair.spec.sample, pair.spec.dye, pair.pre, pair.post, lay.root, to_stage=3)
    after = {s: read_record(lay.record(s)).run_id for s in (1, 2, 3)}
    assert after[1] == before[1] and after[2] == before[2] and after[3] != before[3]
    assert lay.aligned_pre("tiff").is_file()
    # from_stage forces a re-run from that stage on
    run_pair(pair.spec.sample, pair.spec.dye, pair.pre, pair.post, lay.root, to_stage=3,
             from_stage=2)
    again = {s: read_record(lay.record(s)).run_id for s in (1, 2, 3)}
    assert again[1] == after[1] and again[2] != after[2] and again[3] != after[3]


def test_cli_tools_chain_and_fits_output(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, to_stage=1, rotation_deg=6)
    common = ["--sample", pair.spec.sample, "--dye", pair.spec.dye, "--pair-dir",
              str(pair.layout.root), "--threads", "1", "--checkpoint-format", "both"]
    for tool in ("e2m-align-boundary", "e2m-align-interior"):
        proc = subprocess.run([sys.executable, str(ROOT / "bin" / tool), *common],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    fits_path = pair.layout.aligned_pre("fits")
    from astropy.io import fits

    with fits.open(fits_path) as hdul, TiffImage(pair.layout.aligned_pre("tiff")) as tif:
        assert hdul[0].header["STAGE"] == 3 and hdul[0].header["SAMPLE"] == pair.spec.sample
        assert hdul[0].header["IACC"] > 0
        np.testing.assert_array_equal(hdul[0].data[100:140, 200:260],
                                      tif.read_window(100, 140, 200, 260)[:, :, 0])
    data = json.loads(pair.layout.interior_transform().read_text())
    assert np.asarray(data["post_to_pre"]).shape == (3, 3) and "convention" in data


def test_missing_stage2_is_exit_65_naming_what_to_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "e2m-align-interior"), "--sample",
                           "S", "--dye", "D", "--pair-dir", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 65
    first = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    assert "stage 2" in first and "run it first" in first


def test_warp_streams_images_wider_than_opencv_limit(tmp_path: Path) -> None:
    """OpenCV's warp refuses widths ≥ 32 767 px; the tiled warp does not, and is exact."""
    w, h = 40_000, 96
    x = np.arange(w, dtype=np.float32)
    pre_img = np.tile(np.sin(x / 37.0) * 50 + 100, (h, 1)).astype(np.float32)
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, pre_img, tile=(64, 512))
    shift = similarity_post_to_pre(0.0, 1.0, (0.0, 0.0), (-1.5, 0.0))  # post x ↔ pre x + 1.5
    with TiffImage(path) as pre:
        out = np.vstack(list(iter_warped_blocks(pre, shift, (h, w - 10), block_rows=64)))
    expected = np.sin((x[: w - 10] + 1.5) / 37.0) * 50 + 100
    np.testing.assert_allclose(out[h // 2, 5:-5], expected[5:-5], atol=0.05)


def test_warp_to_both_formats_writes_identical_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 200, (700, 900), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "pre.tif", img, tile=(256, 256))
    from exo2micro.io.fitsio import FitsImage, make_header

    matrix = similarity_post_to_pre(11.0, 1.07, (450, 350), (440, 360))
    outs = {"tiff": tmp_path / "a.tif", "fits": tmp_path / "a.fits"}
    with TiffImage(tmp_path / "pre.tif") as pre:
        warp_to_files(pre, matrix, (720, 910), 5, outs, fits_header=lambda: make_header(
            sample="S", dye="D", stage=3, params=resolve({"pad": 5})))
    with TiffImage(outs["tiff"]) as t, FitsImage(outs["fits"]) as f:
        np.testing.assert_array_equal(t.read_window(0, 720, 0, 910), f.read_window(0, 720, 0, 910))


def test_a_stage2_rotation_that_is_off_is_rescued_by_the_texture(tmp_path: Path) -> None:
    """A round footprint leaves stage 2's rotation to chance; when the patches then disagree,
    stage 3 turns pre to the rotation whose texture matches and measures again."""
    from exo2micro.numerics.pyramid import Pyramid
    from exo2micro.numerics.transform import TransformRecord, displacement_stats, grid_points
    from exo2micro.stages.align_interior import _turn, align_interior
    from exo2micro.synth import truth_tissue_mask_post

    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=4, scale=1.02, k=1.35,
                        width=1600, height=1300)
    s2 = pair.transform(2)
    off = TransformRecord(s2.post_to_pre @ _turn((800.0, 650.0), 8.0), "ok", 2, s2.metrics)
    lay = pair.layout
    pre_pyr, post_pyr = (Pyramid.load(lay.pyramid(w)) for w in ("pre", "post"))
    with TiffImage(lay.signal("pre")) as pre, TiffImage(lay.signal("post")) as post:
        tr = align_interior(post, pre, post_pyr, pre_pyr, off, lay.params.interior, 2)
    assert tr.status == "ok", tr.reason
    rescue = tr.metrics["rotation_rescue"]
    assert rescue["accepted"] and abs(rescue["rotation_deg"] + 8.0) <= 0.15, rescue
    xy = grid_points(truth_tissue_mask_post(pair.truth, 4), 4)
    err = displacement_stats(tr.post_to_pre, np.asarray(pair.truth["post_to_pre"]), xy)
    assert err["mean"] < 0.01 and err["max"] < 0.03, err


@pytest.mark.parametrize("shift_px, turn_deg", [((150.0, -120.0), 0.0), ((0.0, 0.0), 30.0)],
                         ids=["shift-190px", "turn-30deg"])
def test_a_start_beyond_the_patches_reach_is_rescued_by_feature_matches(
        tmp_path: Path, shift_px: tuple[float, float], turn_deg: float) -> None:
    """Stage 2 190 px off, or turned by more than the rotation rescue's ±angle_range: no patch
    shares texture and stage 3 kept stage 2 (188 px off); SIFT matches on a pyramid level give
    a start from which the patches reach their sub-pixel fit."""
    from exo2micro.numerics.pyramid import Pyramid
    from exo2micro.numerics.transform import TransformRecord, displacement_stats, grid_points
    from exo2micro.stages.align_interior import _turn, align_interior
    from exo2micro.synth import truth_tissue_mask_post

    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=4, scale=1.02, k=1.35,
                        width=1600, height=1300)
    s2 = pair.transform(2)
    shift = np.array([[1.0, 0.0, shift_px[0]], [0.0, 1.0, shift_px[1]], [0.0, 0.0, 1.0]])
    off = TransformRecord(s2.post_to_pre @ _turn((800.0, 650.0), turn_deg) @ shift, "ok", 2,
                          s2.metrics)
    lay = pair.layout
    pre_pyr, post_pyr = (Pyramid.load(lay.pyramid(w)) for w in ("pre", "post"))
    with TiffImage(lay.signal("pre")) as pre, TiffImage(lay.signal("post")) as post:
        tr = align_interior(post, pre, post_pyr, pre_pyr, off, lay.params.interior, 2)
    assert tr.status == "ok", tr.reason
    assert tr.metrics["feature_rescue"]["accepted"], tr.metrics
    xy = grid_points(truth_tissue_mask_post(pair.truth, 4), 4)
    err = displacement_stats(tr.post_to_pre, np.asarray(pair.truth["post_to_pre"]), xy)
    # what it achieves: mean 0.0044 / 0.0062 px, max 0.011 / 0.016 px
    assert err["mean"] < 0.01 and err["max"] < 0.03, err


def test_little_tissue_is_measured_on_half_size_patches(tmp_path: Path) -> None:
    """A small pair whose shared tissue holds fewer than six 256-px patches (the demo's first
    pair) is refined on 128-px patches instead of keeping stage 2 (0.75 px off before)."""
    pair = make_aligned(tmp_path, width=900, height=700, rotation_deg=-5.79, scale=0.94,
                        tx=0.5, ty=19.3, k=1.798, seed=0)
    tr = pair.transform(3)
    assert tr.status == "ok", tr.reason
    assert tr.metrics["patch_px"] == 128 and tr.metrics["n_patches"] >= 20, tr.metrics
    err = pair.error(3)
    # what it achieves: mean 0.0075 px, max 0.016 px
    assert err["mean"] <= 0.015 and err["max"] <= 0.03, err
    assert err["mean"] / 2 <= tr.metrics["estimated_accuracy_px"] <= 3 * err["mean"], err
