"""Stage 2 (align-boundary): coarse similarity from tissue footprints, refined beyond the grid,
gated on tissue-pixel displacement."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from alignment_helpers import make_aligned

import exo2micro.stages.align_boundary as ab
from exo2micro.numerics.pyramid import to_full, to_level
from exo2micro.numerics.transform import decompose_similarity, similarity_post_to_pre
from exo2micro.stages.align_boundary import _grid, boundary_band


@pytest.mark.parametrize(("rotation", "scale"), [(3.4, 1.03), (-17.6, 0.88), (19.5, 1.13)])
def test_off_grid_rotation_and_scale_are_refined_beyond_the_grid(tmp_path: Path, rotation: float,
                                                                 scale: float) -> None:
    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=rotation, scale=scale, k=1.35)
    tr = pair.transform(2)
    assert tr.status == "ok", tr.reason
    dec = decompose_similarity(tr.post_to_pre)
    # the grid has 1° and 0.05 steps: the result must be much closer than half a step
    assert abs(dec["rotation_deg"] - rotation) < 0.1
    assert abs(dec["scale"] - scale) < 0.005
    assert pair.error(2)["mean"] < 2.0


def test_diverged_refinement_is_caught_by_tissue_displacement(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A refinement that runs away (here: ≥ 400 px added) is rejected by the displacement of
    tissue pixels, and the grid result is kept."""
    real = ab.refine_similarity

    def runaway(*args, **kwargs):  # type: ignore[no-untyped-def]
        matrix, info = real(*args, **kwargs)
        matrix = matrix.copy()
        matrix[0, 2] += 200  # level px: ≥ 400 full-resolution px at any refinement level
        return matrix, info

    monkeypatch.setattr(ab, "refine_similarity", runaway)
    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=3.5, scale=1.02)
    tr = pair.transform(2)
    assert tr.status == "grid_only" and "max_translation" in tr.reason, tr.reason
    assert tr.metrics["refinement_moved_tissue_px"] > tr.metrics["grid_resolution_px"] + 200


def test_rotation_gate_keeps_grid_result_with_reason(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=3.5, scale=1.0,
                        params={"max_rotation": 0.1})
    tr = pair.transform(2)
    assert tr.status == "grid_only" and "max_rotation" in tr.reason


def test_grid_quantisation_at_coarse_levels_does_not_trip_the_gate(tmp_path: Path) -> None:
    """exo2micro 2.4's mistake in another form: at a coarse search level the grid is off by
    more than max_translation; the refinement that fixes it must be accepted."""
    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=3.5, scale=1.02,
                        params={"max_translation": 0, "angle_step": 2.0})
    tr = pair.transform(2)
    assert tr.status == "ok", tr.reason
    assert tr.metrics["refinement_moved_tissue_px"] > 0 and pair.error(2)["mean"] < 2.0


def test_no_rotation_search_still_finds_small_rotation_by_refinement(tmp_path: Path) -> None:
    pair = make_aligned(tmp_path, to_stage=2, rotation_deg=1.5, scale=1.0,
                        params={"rotation_search": False, "scale_search": False})
    assert pair.transform(2).metrics["candidates"] == 1
    assert abs(decompose_similarity(pair.transform(2).post_to_pre)["rotation_deg"] - 1.5) < 0.2


def test_level_conversion_round_trips_and_grid_includes_ends() -> None:
    m = similarity_post_to_pre(7.0, 1.04, (500.0, 400.0), (510.0, 380.0))
    np.testing.assert_allclose(to_full(to_level(m, 8, 8), 8, 8), m, atol=1e-9)
    g = _grid(0.85, 1.15, 0.05)
    assert g[0] == pytest.approx(0.85) and g[-1] == pytest.approx(1.15) and len(g) == 7
    assert _grid(-20, 20, 1.0).size == 41


def test_boundary_band_ignores_frame_edges() -> None:
    mask = np.zeros((100, 100), bool)
    mask[:, :60] = True  # tissue cut by the left, top and bottom frame edges
    band = boundary_band(mask, 5, 0)
    assert band[:, :50].sum() == 0 and band[50, 55:60].all()


def _exhaustive_grid(pre: np.ndarray, post: np.ndarray, angles: np.ndarray,
                     scales: np.ndarray) -> list[tuple[float, float, float, np.ndarray]]:
    """Every grid candidate scored at the search level: ``(score, scale, angle, post_to_pre)``
    in grid order (the search the two-pass one must agree with)."""
    cy_pre, cx_pre = ab._centroid(pre)
    cy_post, cx_post = ab._centroid(post)
    corr = ab._Correlator(post)
    out = []
    for s in scales:
        for theta in angles:
            rot = cv2.getRotationMatrix2D((cx_pre, cy_pre), float(theta), float(s))
            rot[:, 2] += (cx_post - cx_pre, cy_post - cy_pre)
            warped = cv2.warpAffine(pre, rot, post.shape[::-1], flags=cv2.INTER_LINEAR)
            score, dy, dx = corr.peak(warped, float(np.linalg.norm(warped)))
            m = np.vstack([rot, [0, 0, 1]])
            m[:2, 2] += (dx, dy)
            out.append((score, float(s), float(theta), np.linalg.inv(m)))
    return out


@pytest.mark.parametrize(("axes", "rotation", "scale", "lobe"), [
    ((60, 40), 7.3, 1.04, True), ((55, 50), -12.6, 0.93, False), ((65, 28), 0.4, 1.0, True)])
def test_two_pass_grid_search_finds_the_exhaustive_best(axes: tuple[int, int], rotation: float,
                                                        scale: float, lobe: bool) -> None:
    pre_mask = np.zeros((160, 200), np.uint8)
    cv2.ellipse(pre_mask, (100, 80), axes, 20, 0, 360, 1, -1)
    if lobe:  # an asymmetric footprint
        cv2.circle(pre_mask, (100 + axes[0] - 8, 80), 20, 1, -1)
    m = cv2.getRotationMatrix2D((100, 80), rotation, scale)
    m[:, 2] += (7, -5)
    post_mask = cv2.warpAffine(pre_mask, m, (200, 160), flags=cv2.INTER_NEAREST)
    pre, post = (boundary_band(k.astype(bool), 10, 2.5) for k in (pre_mask, post_mask))
    angles, scales = _grid(-20, 20, 1), _grid(0.85, 1.15, 0.05)
    result = ab.grid_search(pre, post, angles, scales)
    every = _exhaustive_grid(pre, post, angles, scales)
    ranked = sorted(range(len(every)), key=lambda i: (-every[i][0], i))
    best, second = every[ranked[0]], every[ranked[1]]
    assert (result.score, result.scale, result.rotation_deg) == best[:3]
    assert result.second_score == second[0]
    np.testing.assert_array_equal(result.post_to_pre, best[3])
    assert result.candidates == len(every)
