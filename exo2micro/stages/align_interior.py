"""Stage 3 — align-interior: sub-pixel refinement from interior texture, then the warp.

Stage 2 overlays the footprints to about a pyramid pixel. This stage measures the remaining
misalignment *locally at full resolution* and fits one transform to all measurements:

1. **Patches.** Up to :data:`MAX_PATCHES` square patches of :data:`PATCH` px are placed on a
   grid over the post tissue, away from its edge and inside the pre frame; where fewer than
   :data:`MIN_INLIERS` fit (little tissue, a small image), half-size patches
   (:data:`FIELD_PATCH`), which reach closer to the edge, are used instead (``patch_px`` in the
   metrics). Only these windows are ever read (decoding just the tiles they touch), so memory
   does not grow with the image.
2. **Matching.** Each post patch and the pre image warped onto it by the current transform are
   band-passed (log intensity, Gaussian σ 1 px minus σ ``interior_blur_base`` px) — which
   removes the post/pre brightness ratio k (an offset in log space) and the slow illumination —
   and normalised by a robust (MAD) spread. The residual shift is measured by phase correlation
   in the first round (any shift up to a quarter patch) and by Huber-weighted Lucas–Kanade
   steps afterwards (accurate to ≈ 0.01 px on mineral texture; phase correlation's own
   sub-pixel estimate is biased by up to ≈ 0.25 px). Huber weights and the robust fit below
   make microbes, which exist only in post, outliers rather than pulls.
3. **Fit.** Each patch gives a correspondence ``c → post_to_pre(c + d)``; an affine
   ``post_to_pre`` is fitted by RANSAC (1 px threshold) + least squares on the inliers, and the
   loop repeats (:data:`ROUNDS` rounds at most, stopping when tissue moves < 0.01 px).
4. **Rotation rescue.** When no fit is found or too few patches agree, stage 2's rotation may
   be off (a round footprint does not fix it): :func:`rotation_rescue` turns pre about the
   tissue centre to the angle whose texture matches post best, and the rounds start again
   from there; the metrics record what it found and whether it was kept. When the patches
   still disagree — stage 2 more than a quarter patch off, a rotation beyond
   ``angle_range`` — :func:`feature_rescue` matches SIFT keypoints of the two images on a
   pyramid level, a second measurement independent of stage 2, and the rounds start again
   from its similarity (``feature_rescue`` in the metrics).
5. **Checks.** At least ``interior_min_inlier_ratio`` of the measured patches must agree, and
   no tissue pixel may move more than ``interior_max_correction`` px from stage 2; otherwise
   stage 2's transform is kept (status ``fallback``) and the reason recorded — refined to
   sub-pixel on the tissue edge at full resolution where the edge allows it
   (:mod:`exo2micro.stages.boundary_refine`; ``edge_*`` in the metrics).
   ``estimated_accuracy_px`` is the mean, over tissue, of the fit's predicted standard error
   (least-squares covariance of the affine fit with the residual spread of the inliers; the
   edge fit's jackknife error after a fallback).
6. **Non-rigid residual, when the data ask.** The last round's correspondences are offered to
   :func:`exo2micro.numerics.nonrigid.select`: when a polynomial map of higher degree explains them
   better than the affine by the information criterion (lens distortion, swelling), the map is
   split into the affine ``post_to_pre`` and a smooth
   :class:`~exo2micro.numerics.transform.ResidualField`, and the patches are measured again through
   both until tissue moves < 0.01 px. A rigid pair keeps no field, and its result is the affine fit
   above unchanged.
7. **Warp.** Pre is warped into the post frame once, from the stage-1 image, in tiles
   (:mod:`exo2micro.stages.warp`, through the field when there is one), to
   ``03_interior_aligned_pre`` (float32).

Patches are measured in a thread pool of ``threads`` workers (OpenCV and numpy release the GIL).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from exo2micro.io.layout import PairLayout, formats, tiff_compression
from exo2micro.io.records import StageRun, product_ome, require_stage, stage1_physical
from exo2micro.io.tiffio import TiffImage
from exo2micro.numerics import nonrigid
from exo2micro.numerics.footprint import erode_ellipse, tissue_mask
from exo2micro.numerics.pyramid import Pyramid, common_level, to_full, to_level
from exo2micro.numerics.transform import (
    ResidualField,
    TransformRecord,
    apply,
    decompose_similarity,
    grid_points,
    inside_frames,
    map_points,
    max_displacement,
)
from exo2micro.stage_params import InteriorParams
from exo2micro.stages.boundary_refine import refine_on_edge
from exo2micro.stages.warp import output_shape, warp_to_files, warp_window

#: Side (px, full resolution) of the square patches that are matched.
PATCH = 256
#: Largest number of patches measured.
MAX_PATCHES = 96
#: Largest number of measure-and-fit rounds.
ROUNDS = 5
#: Largest number of re-measuring rounds through a residual field.
FIELD_ROUNDS = 4
#: The denser grid of smaller patches a residual field is measured on: half-size patches,
#: overlapping by a quarter, reaching to within half a patch plus :data:`FIELD_EDGE_MARGIN` of
#: the tissue edge (a field is least known on the rim, which the large patches never reach).
FIELD_PATCH = PATCH // 2
FIELD_MAX_PATCHES = 4 * MAX_PATCHES
FIELD_MIN_SPACING = 0.75 * FIELD_PATCH
FIELD_EDGE_MARGIN = 16
#: Tissue edge left out of the rotation rescue's texture comparison (px of a 512-px level:
#: twice the reach of its high pass).
RESCUE_EDGE_PX = 24
#: Longer side (px) of the pyramid level on which the feature rescue matches SIFT keypoints.
FEATURE_SIDE = 1024
#: Lowe's ratio test of the feature rescue: a match is kept when its descriptor distance is
#: below this fraction of the second-best match's.
FEATURE_RATIO = 0.75
#: Fewest RANSAC inliers (and RANSAC threshold, px of the feature level) of a feature match.
FEATURE_MIN_INLIERS = 12
FEATURE_RANSAC_PX = 2.0
#: Seed of OpenCV's random generator for the feature rescue's RANSAC.
FEATURE_SEED = 0
#: Magnifications a feature match may have (those the registry allows stage 2 to search).
FEATURE_SCALES = (0.2, 5.0)
#: Border (px) of a patch left out of the Lucas–Kanade sums (filter edge effects).
BORDER = 12
#: RANSAC inlier threshold (px in the pre frame).
RANSAC_PX = 1.0
#: Fewest inlier patches for a fit.
MIN_INLIERS = 6
#: Distance (px) kept between a patch and the tissue edge (soft edge + mask uncertainty).
EDGE_MARGIN = 32
#: Level (longer side, px) on which patch positions are chosen.
PLAN_SIDE = 1024
#: Smallest correlation of a patch's band-passed post and aligned pre for it to be used: below
#: it the patch has no texture shared by both images (featureless, or dominated by microbes).
MIN_PATCH_CORRELATION = 0.2
#: Systematic error floor (px) added in quadrature to the predicted errors: the error left on
#: benchmark pairs whose statistical error is negligible (interpolation, quantisation).
ACCURACY_FLOOR_PX = 0.001
#: An estimated accuracy worse than this (px) makes the pair need review.
REVIEW_ACCURACY_PX = 0.5
#: Factor from the statistical error to the expected mean error over the tissue (the patches'
#: errors are not quite independent); calibrated with the floor on the benchmark pairs.
ACCURACY_GAIN = 1.5


def patch_texture(patch: np.ndarray, sigma_hi: float) -> np.ndarray:
    """Log intensity of a patch, band-passed (σ 1 px minus σ ``sigma_hi`` px), divided by its
    robust spread (1.4826 · MAD). Multiplicative brightness changes become offsets and
    vanish. (Whole levels use :func:`exo2micro.numerics.pyramid.level_texture`.)"""
    logv = np.log1p(np.maximum(patch, 0.0)).astype(np.float32)
    hp = cv2.GaussianBlur(logv, (0, 0), 1.0) - cv2.GaussianBlur(logv, (0, 0), sigma_hi)
    spread = 1.4826 * float(np.median(np.abs(hp - np.median(hp))))
    return hp / spread if spread > 1e-9 else hp


@dataclass
class Measurement:
    """The shift ``d`` (px) such that post(x) ≈ warped_pre(x + d) around patch centre ``c``."""

    centre: tuple[float, float]
    shift: tuple[float, float]
    quality: float


def plan_patches(post_pyr: Pyramid, pre_pyr: Pyramid, post_to_pre: np.ndarray,
                 post_shape: tuple[int, int], pre_shape: tuple[int, int],
                 max_patches: int = MAX_PATCHES, min_spacing: float = 0.75 * PATCH,
                 patch: int = PATCH, edge_margin: float = EDGE_MARGIN
                 ) -> list[tuple[float, float]]:
    """Centres (full-res post px) of ``patch``-px patches on a grid over tissue that is tissue
    in both images, ``edge_margin`` px plus half a patch from the tissue edge, and inside both
    frames."""
    post_l, f = post_pyr.level_for(PLAN_SIDE)
    pre_l, fp = pre_pyr.level_for(PLAN_SIDE)
    post_m = tissue_mask(post_l)
    a_level = to_level(post_to_pre, fp, f)
    h, w = post_m.shape
    pre_m = cv2.warpAffine(tissue_mask(pre_l).astype(np.uint8), a_level[:2], (w, h),
                           flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    both = (post_m & pre_m).astype(np.uint8)
    # half a patch plus the width of the soft tissue edge, so patches see interior texture only
    r = max(1, math.ceil((patch / 2 + edge_margin) / f) + 1)
    inner = erode_ellipse(both, r)
    candidates = grid_points(inner, f, max_points=10**7)
    if candidates.size == 0:
        return []
    # keep centres whose patch lies inside both full-resolution frames
    ok = inside_frames(candidates, post_to_pre, post_shape, pre_shape, patch / 2 + 2)
    candidates = candidates[ok]
    if candidates.size == 0:
        return []
    # spread: a square grid over the candidates, keeping per cell the candidate nearest to the
    # cell centre (vectorised: there can be hundreds of thousands of candidates)
    origin = candidates.min(axis=0)
    area = max(len(candidates) * f * f, 1.0)
    spacing = max(min_spacing, math.sqrt(area / max_patches))
    cell = np.floor((candidates - origin) / spacing).astype(np.int64)
    dist = np.hypot(*(candidates - origin - (cell + 0.5) * spacing).T)
    key = cell[:, 0] * (cell[:, 1].max() + 1) + cell[:, 1]
    order = np.lexsort((dist, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    chosen = candidates[np.sort(first)]
    if len(chosen) > max_patches:
        chosen = chosen[np.linspace(0, len(chosen) - 1, max_patches).astype(int)]
    return [(float(x), float(y)) for x, y in chosen]


def _lk_shift(post_f: np.ndarray, pre_f: np.ndarray) -> tuple[np.ndarray, float]:
    """Huber-weighted Gauss–Newton estimate of d with post_f(x) ≈ pre_f(x + d)."""
    gx = cv2.Sobel(pre_f, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(pre_f, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    s = slice(BORDER, -BORDER)
    jac = np.stack([gx[s, s].ravel(), gy[s, s].ravel()], axis=1).astype(np.float64)
    r = (pre_f[s, s] - post_f[s, s]).ravel().astype(np.float64)
    w = np.ones_like(r)
    d = np.zeros(2)
    for _ in range(3):  # IRLS: Huber weights down-weight microbes (post-only structure)
        jw = jac * w[:, None]
        h = jw.T @ jac
        if abs(np.linalg.det(h)) < 1e-9:
            return np.zeros(2), 0.0
        d = -np.linalg.solve(h, jw.T @ r)
        res = r + jac @ d
        scale = 1.4826 * float(np.median(np.abs(res))) or 1.0
        w = np.minimum(1.0, 1.5 * scale / np.maximum(np.abs(res), 1e-12))
    return d, _correlation(post_f[s, s], pre_f[s, s])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two patches (the texture both images share)."""
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


def measure(post: TiffImage, pre: TiffImage, post_to_pre: np.ndarray,
            centres: Sequence[tuple[float, float]], sigma_hi: float, coarse: bool,
            threads: int, field: ResidualField | None = None, patch: int = PATCH
            ) -> list[Measurement]:
    """Measure the residual shift at every centre of a ``patch``-px patch under
    ``post_to_pre`` (plus ``field``)."""
    half = patch // 2
    window = cv2.createHanningWindow((patch, patch), cv2.CV_32F)

    def one(c: tuple[float, float]) -> Measurement:
        x0, y0 = round(c[0]) - half, round(c[1]) - half
        post_p = post.read_window(y0, y0 + patch, x0, x0 + patch)[:, :, 0].astype(np.float32)
        pre_p = warp_window(pre, post_to_pre, y0, y0 + patch, x0, x0 + patch, field=field)
        pf, qf = patch_texture(post_p, sigma_hi), patch_texture(pre_p, sigma_hi)
        centre = (x0 + (patch - 1) / 2.0, y0 + (patch - 1) / 2.0)
        if coarse:
            (dx, dy), _ = cv2.phaseCorrelate(pf * 1.0, qf * 1.0, window)
            if max(abs(dx), abs(dy)) > patch / 4:  # beyond what one patch can measure
                return Measurement(centre, (dx, dy), 0.0)
            # phaseCorrelate(a, b) reports s with b(x) = a(x − s); for (a, b) = (post, pre)
            # that is post(x) = pre(x + s), so d = s
            shifted = cv2.warpAffine(qf, np.float32([[1, 0, dx], [0, 1, dy]]), (patch, patch),
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            b = slice(BORDER + int(abs(dy)) + 1, -(BORDER + int(abs(dy)) + 1))
            c = slice(BORDER + int(abs(dx)) + 1, -(BORDER + int(abs(dx)) + 1))
            return Measurement(centre, (dx, dy), _correlation(pf[b, c], shifted[b, c]))
        d, quality = _lk_shift(pf, qf)
        return Measurement(centre, (float(d[0]), float(d[1])), quality)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, centres))


@dataclass
class FitResult:
    post_to_pre: np.ndarray
    inliers: np.ndarray
    residual_rms_px: float
    design_inv: np.ndarray


def fit_affine(post_to_pre: np.ndarray, ms: Sequence[Measurement]) -> FitResult | None:
    """Robust affine ``post_to_pre`` from the correspondences c → post_to_pre(c + d) of the
    patches with shared texture (``quality ≥ MIN_PATCH_CORRELATION``)."""
    ms = [m for m in ms if m.quality >= MIN_PATCH_CORRELATION]
    if len(ms) < MIN_INLIERS:
        return None
    src = np.array([m.centre for m in ms], np.float64)
    dst = apply(post_to_pre, src + np.array([m.shift for m in ms]))
    model, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                       ransacReprojThreshold=RANSAC_PX, maxIters=4000,
                                       confidence=0.999, refineIters=20)
    if model is None or mask is None:
        return None
    inl = mask.ravel().astype(bool)
    if inl.sum() < MIN_INLIERS:
        return None
    # least squares on the inliers (exact, with the covariance for the accuracy estimate)
    x = np.column_stack([src[inl], np.ones(inl.sum())])
    coef, *_ = np.linalg.lstsq(x, dst[inl], rcond=None)
    resid = dst[inl] - x @ coef
    dof = max(1, 2 * int(inl.sum()) - 6)
    rms = float(math.sqrt(float((resid ** 2).sum()) / dof))
    matrix = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    return FitResult(matrix, inl, rms, np.linalg.inv(x.T @ x))


def statistical_error(fit: FitResult, xy: np.ndarray) -> float:
    """Mean over ``xy`` of the affine fit's predicted 2-D standard error (px): the inliers'
    residual scatter through the least-squares covariance."""
    x = np.column_stack([xy, np.ones(len(xy))])
    var = np.einsum("ij,jk,ik->i", x, fit.design_inv, x)
    return float(np.mean(fit.residual_rms_px * np.sqrt(2.0 * var)))


def estimated_accuracy(statistical_px: float, extrapolation_px: float = 0.0) -> float:
    """``estimated_accuracy_px``, the expected mean error over the tissue: the fit's
    statistical error scaled by :data:`ACCURACY_GAIN`, a residual field's extrapolation error
    (:func:`exo2micro.numerics.nonrigid.extrapolation_error`) and the floor
    :data:`ACCURACY_FLOOR_PX`, in quadrature. Calibrated on the synthetic and real-texture benchmark
    pairs (docs/benchmarks.md): within a factor of 3 of the true error, never below half of it."""
    return float(math.hypot(ACCURACY_GAIN * statistical_px, extrapolation_px,
                            ACCURACY_FLOOR_PX))


def _tissue_points(post_pyr: Pyramid) -> np.ndarray:
    """Full-resolution post tissue points (x, y), from the planning level."""
    level, f = post_pyr.level_for(PLAN_SIDE)
    return grid_points(tissue_mask(level), f, max_points=5000)


def align_interior(post: TiffImage, pre: TiffImage, post_pyr: Pyramid, pre_pyr: Pyramid,
                   stage2: TransformRecord, params: InteriorParams, threads: int = 1
                   ) -> TransformRecord:
    """Refine stage 2's ``post_to_pre`` from interior texture; fall back to it with a reason."""
    start = stage2.post_to_pre
    factor = float(stage2.metrics.get("refinement", [{}])[-1].get(
        "factor", stage2.metrics.get("search_factor", 1)))
    base = {"stage2_status": stage2.status, "estimated_accuracy_px": 0.5 * factor,
            "accuracy_source": "stage 2 pyramid resolution (no interior fit)"}
    if not params.interior_ecc:
        return TransformRecord(start, "skipped", 3, base, "interior_ecc is False")

    def fallback(metrics: dict[str, Any], reason: str) -> TransformRecord:
        return _fall_back(post, pre, post_pyr, pre_pyr, start, factor, metrics, reason, threads)

    centres, patch = plan_patches(post_pyr, pre_pyr, start, post.shape, pre.shape), PATCH
    small: dict[str, Any] = {}
    if len(centres) < MIN_INLIERS:  # little tissue: half-size patches fit closer to its edge
        centres, patch = plan_patches(post_pyr, pre_pyr, start, post.shape, pre.shape,
                                      MAX_PATCHES, FIELD_MIN_SPACING, FIELD_PATCH,
                                      FIELD_EDGE_MARGIN), FIELD_PATCH
        small = {"patch_px": patch}
    if len(centres) < MIN_INLIERS:
        return fallback({**base, "n_patches": len(centres), **small},
                        f"only {len(centres)} patch positions inside the shared tissue (need "
                        f"{MIN_INLIERS}); kept stage 2")
    tissue_xy = np.array(centres)
    n = len(centres)
    runs = _rounds(post, pre, start, centres, params, threads, patch)
    rescues: list[dict[str, Any]] = []
    for rescue in (lambda: rotation_rescue(pre_pyr, post_pyr, start, params.angle_range),
                   lambda: feature_rescue(pre_pyr, post_pyr, params.angle_range)):
        found = rescue() if runs.weak(n, params.interior_min_inlier_ratio) else None
        facts: dict[str, Any] = {}
        if found is not None:  # start the rounds again from it; keep it if more patches agree
            retry = _rounds(post, pre, found[0], centres, params, threads, patch)
            facts = {**found[1], "accepted": retry.inliers > runs.inliers}
            if facts["accepted"]:
                runs = retry
        rescues.append(facts)
    rescued = _rescued(*rescues)
    current, fit, ms, measured_under, history = (runs.current, runs.fit, runs.ms,
                                                 runs.measured_under, runs.history)
    if fit is None:
        textured = sum(m.quality >= MIN_PATCH_CORRELATION for m in ms)
        return fallback({**base, "n_patches": n, **small, "rounds": history,
                         "n_textured": textured, **rescued},
                        f"interior texture too weak or inconsistent: {textured} of {n} patches "
                        f"share texture between pre and post (correlation ≥ "
                        f"{MIN_PATCH_CORRELATION}); kept stage 2")
    n_inliers, rms = int(fit.inliers.sum()), fit.residual_rms_px
    stat, extrapolation = statistical_error(fit, tissue_xy), 0.0
    refined = _fit_field(post, pre, measured_under, centres, patch, ms,
                         params.interior_blur_base, threads,
                         lambda: plan_patches(post_pyr, pre_pyr, current, post.shape, pre.shape,
                                              FIELD_MAX_PATCHES, FIELD_MIN_SPACING,
                                              FIELD_PATCH, FIELD_EDGE_MARGIN),
                         lambda: _tissue_points(post_pyr))
    field = None
    field_metrics: dict[str, Any] = {}
    n_measured = n
    if refined is not None:
        current, field, model, field_metrics = refined
        n_inliers, rms = int(model.inliers.sum()), model.residual_rms_px
        n_measured = field_metrics["field_patches"]
        stat = model.predicted_error(tissue_xy)
        extrapolation = field_metrics["extrapolation_px"]
    ratio = float(n_inliers / n_measured)  # over all patches: untextured ones count against
    correction = max_displacement(current, start, tissue_xy)
    dec = decompose_similarity(current)
    metrics = {"n_patches": n, **small, "n_inliers": n_inliers, "inlier_ratio": ratio,
               "residual_rms_px": rms, "rounds": history,
               "correction_vs_stage2_px": correction, "rotation_deg": dec["rotation_deg"],
               "scale": dec["scale"], "anisotropy": dec["anisotropy"],
               "shear_deg": dec["shear_deg"], "stage2_status": stage2.status,
               "statistical_error_px": stat,
               "estimated_accuracy_px": estimated_accuracy(stat, extrapolation),
               "accuracy_source": "predicted standard error of the interior fit",
               **field_metrics, **rescued}
    if ratio < params.interior_min_inlier_ratio:
        return fallback({**metrics, **base},
                        f"only {fit.inliers.sum()} of {n} patches agree (inlier ratio "
                        f"{ratio:.2f} < interior_min_inlier_ratio "
                        f"{params.interior_min_inlier_ratio}); kept stage 2")
    if correction > params.interior_max_correction:
        return fallback({**metrics, **base},
                        f"refinement would move tissue by {correction:.1f} px > "
                        f"interior_max_correction {params.interior_max_correction}; kept "
                        f"stage 2")
    return TransformRecord(current, "ok", 3, metrics, residual_field=field)


def _fall_back(post: TiffImage, pre: TiffImage, post_pyr: Pyramid, pre_pyr: Pyramid,
               start: np.ndarray, factor: float, metrics: dict[str, Any], reason: str,
               threads: int) -> TransformRecord:
    """The ``fallback`` record when the interior cannot refine stage 2 (``reason``): stage 2's
    ``start``, refined on the tissue edge at full resolution where that succeeds
    (:func:`exo2micro.stages.boundary_refine.refine_on_edge`; ``factor`` is stage 2's finest
    level), its accuracy then the edge fit's predicted error."""
    edge = refine_on_edge(post, pre, post_pyr, pre_pyr, start, factor, threads)
    if edge is None:
        return TransformRecord(start, "fallback", 3, metrics, reason)
    refined, facts = edge
    # the jackknife error is a whole error estimate already (no ACCURACY_GAIN): 0.79-2.6 x
    # the true error on the featureless benchmark pairs of 1 200-6 000 px
    accuracy = float(math.hypot(facts["edge_statistical_error_px"], ACCURACY_FLOOR_PX))
    return TransformRecord(refined, "fallback", 3, {
        **metrics, **facts, "estimated_accuracy_px": accuracy,
        "accuracy_source": "jackknife error of the tissue-edge fit"},
        f"{reason}, refined on the tissue edge at full resolution")


@dataclass
class _Rounds:
    """The measure-and-fit rounds from one start: the last transform and fit, the last
    measurements and the transform they were made under."""

    current: np.ndarray
    fit: FitResult | None
    ms: list[Measurement]
    measured_under: np.ndarray
    history: list[dict[str, Any]]

    @property
    def inliers(self) -> int:
        return 0 if self.fit is None else int(self.fit.inliers.sum())

    def weak(self, n: int, min_ratio: float) -> bool:
        """No fit, or too few of the ``n`` patches agree."""
        return self.fit is None or self.inliers / n < min_ratio


def _rounds(post: TiffImage, pre: TiffImage, start: np.ndarray,
            centres: Sequence[tuple[float, float]], params: InteriorParams, threads: int,
            patch: int = PATCH) -> _Rounds:
    """Up to :data:`ROUNDS` rounds of measuring the ``patch``-px patches at ``centres`` and a
    robust affine fit from ``start`` (phase correlation first, Lucas–Kanade after), until
    tissue moves < 0.01 px."""
    tissue_xy = np.array(centres)
    current, fit = start, None
    history: list[dict[str, Any]] = []
    measured_under, ms = current, []
    for rnd in range(ROUNDS):
        measured_under = current
        ms = measure(post, pre, current, centres, params.interior_blur_base, rnd == 0,
                     threads, patch=patch)
        new = fit_affine(current, ms)
        if new is None:
            fit = None
            break
        moved = max_displacement(new.post_to_pre, current, tissue_xy)
        history.append({"round": rnd + 1, "inliers": int(new.inliers.sum()),
                        "residual_rms_px": new.residual_rms_px, "moved_px": moved})
        current, fit = new.post_to_pre, new
        if moved < 0.01 and rnd > 0:
            break
    return _Rounds(current, fit, ms, measured_under, history)


def _rescued(rotation: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    """The metrics of the rescues that were tried."""
    return ({"rotation_rescue": rotation} if rotation else {}) | (
        {"feature_rescue": features} if features else {})


def _turn(centre: tuple[float, float], degrees: float) -> np.ndarray:
    """3×3 map of post level px: rotation by ``degrees`` about ``centre`` (OpenCV sense)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    cx, cy = centre
    return np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy], [0, 0, 1.0]])


def rotation_rescue(pre_pyr: Pyramid, post_pyr: Pyramid, start: np.ndarray,
                    angle_range: float) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A better start for the patches when stage 2's rotation is off (a round footprint
    leaves the rotation to the texture): the rotation of pre about the tissue centre within
    ±``angle_range``° whose band-passed texture correlates best with post's — 1° steps on a
    512-px level, then 0.1° steps on a 1024-px level — with its best shift. ``None`` unless it
    matches clearly better than ``start`` (:data:`exo2micro.numerics.review.BETTER_FACTOR` and
    :data:`exo2micro.numerics.review.MIN_CORRELATION`)."""
    from exo2micro.numerics.review import BETTER_FACTOR, MAX_SHIFT, MIN_CORRELATION, TextureView

    best_deg, before = 0.0, 0.0
    corr, shift, view = 0.0, (0, 0), None
    for side, step, reach in ((512, 1.0, angle_range), (1024, 0.1, 1.0)):
        # away from the tissue edge, whose high-passed ring would match at every rotation
        view = TextureView.of(pre_pyr, post_pyr, side, edge_px=RESCUE_EDGE_PX * side // 512)
        a0 = to_level(start, view.factor, view.factor)
        if side == 512:
            before = view.score(a0)[0]
        reach_px = MAX_SHIFT * side // 512  # the same full-resolution reach on both levels
        tried = [(*view.score(a0 @ _turn(view.centre, float(deg)), reach_px), float(deg))
                 for deg in np.arange(best_deg - reach, best_deg + reach + step / 2, step)]
        corr, shift, best_deg = max(tried, key=lambda t: t[0])
    assert view is not None
    sx, sy = shift
    if abs(best_deg) < 0.05 or corr < MIN_CORRELATION or corr < BETTER_FACTOR * before:
        return None
    a0 = to_level(start, view.factor, view.factor)
    shift_m = np.array([[1, 0, -sx], [0, 1, -sy], [0, 0, 1.0]])
    turned = to_full(a0 @ _turn(view.centre, best_deg) @ shift_m, view.factor, view.factor)
    return turned, {"rotation_deg": best_deg, "texture_correlation": corr,
                    "correlation_before": before}


def _feature_image(level: np.ndarray) -> np.ndarray:
    """A pyramid level as 8-bit for SIFT: log intensity stretched between its 1st and 99.9th
    percentiles (the post/pre brightness ratio k and the exposure drop out)."""
    logs = np.log1p(np.maximum(np.nan_to_num(level), 0)).astype(np.float32)
    lo, hi = np.percentile(logs, [1.0, 99.9])
    scaled = (logs - lo) * (255.0 / max(float(hi - lo), 1e-6))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def feature_rescue(pre_pyr: Pyramid, post_pyr: Pyramid, angle_range: float
                   ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A start for the patches independent of stage 2, for when neither stage 2 nor the
    rotation rescue brings the patches within their reach (a shift of more than a quarter
    patch): SIFT keypoints of the tissue of both images on a :data:`FEATURE_SIDE`-px level,
    matched with Lowe's ratio test (:data:`FEATURE_RATIO`), and a similarity post → pre fitted
    to the matches by RANSAC (:data:`FEATURE_RANSAC_PX`). Returns the full-resolution
    ``post_to_pre`` and the facts of the match, or ``None`` with fewer than
    :data:`FEATURE_MIN_INLIERS` inliers or a rotation outside the ±``angle_range``° that
    stage 2 was told to search (a pre mounted upside down stays a pair to review, not a
    silent 180° turn). Deterministic: the RANSAC generator is seeded (:data:`FEATURE_SEED`)
    before each fit, so a pair gives the same transform in a fresh tool process (Nextflow)
    and after other pairs in the local runner."""
    pre_l, post_l, f = common_level(pre_pyr, post_pyr, FEATURE_SIDE)
    sift = cv2.SIFT_create()
    found = [sift.detectAndCompute(_feature_image(level), tissue_mask(level).view(np.uint8))
             for level in (post_l, pre_l)]
    (post_kp, post_desc), (pre_kp, pre_desc) = found
    if post_desc is None or pre_desc is None or min(len(post_kp), len(pre_kp)) < 2:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(post_desc, pre_desc, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < FEATURE_RATIO * p[1].distance]
    if len(good) < FEATURE_MIN_INLIERS:
        return None
    src = np.float32([post_kp[m.queryIdx].pt for m in good])
    dst = np.float32([pre_kp[m.trainIdx].pt for m in good])
    cv2.setRNGSeed(FEATURE_SEED)  # RANSAC draws from this thread's generator: same samples
    fit, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                               ransacReprojThreshold=FEATURE_RANSAC_PX)
    n_inliers = 0 if inliers is None else int(inliers.sum())
    if fit is None or n_inliers < FEATURE_MIN_INLIERS or not np.all(np.isfinite(fit)):
        return None
    # matches of featureless tissue can all collapse onto one point: a zero scale
    if not FEATURE_SCALES[0] <= math.hypot(fit[0, 0], fit[1, 0]) <= FEATURE_SCALES[1]:
        return None
    level_map = np.vstack([fit, [0.0, 0.0, 1.0]])
    rotation = decompose_similarity(level_map)["rotation_deg"]
    if abs(rotation) > angle_range:
        return None
    return to_full(level_map, f, f), {"matches": len(good), "inliers": n_inliers,
                                      "rotation_deg": rotation, "level_factor": f}


def _fit_field(post: TiffImage, pre: TiffImage, affine: np.ndarray,
               centres: Sequence[tuple[float, float]], centres_patch: int,
               ms: Sequence[Measurement],
               sigma_hi: float, threads: int,
               dense: Callable[[], list[tuple[float, float]]], tissue: Callable[[], np.ndarray]
               ) -> tuple[np.ndarray, ResidualField, nonrigid.PolyMap, dict[str, Any]] | None:
    """A residual field on top of the fitted ``affine`` when the measurements ask for one
    (:func:`exo2micro.numerics.nonrigid.select` prefers a higher polynomial degree), refined by
    re-measuring through it the ``dense()`` grid of :data:`FIELD_PATCH`-px patches (more
    patches, closer to the tissue edge, follow a field of higher degree; ``centres``, with
    their ``centres_patch``-px patches, when the dense grid has fewer); ``None`` keeps the pair
    affine.
    ``tissue()`` gives the post tissue points over which the field's extrapolation error is
    judged."""
    frame = post.shape

    def correspondences(a: np.ndarray, f: ResidualField | None, found: Sequence[Measurement]
                        ) -> tuple[np.ndarray, np.ndarray]:
        good = [m for m in found if m.quality >= MIN_PATCH_CORRELATION]
        src = np.array([m.centre for m in good], np.float64).reshape(-1, 2)
        moved = src + np.array([m.shift for m in good], np.float64).reshape(-1, 2)
        return src, map_points(a, f, moved)

    src, dst = correspondences(affine, None, ms)
    model = nonrigid.select(src, dst)
    if model is None or model.degree == 1:
        return None
    patch = FIELD_PATCH
    centres_dense = dense()
    if len(centres_dense) < len(centres):
        centres_dense, patch = list(centres), centres_patch
    centres = centres_dense
    xy = np.array(centres)
    field: ResidualField | None = None
    rounds = []
    for rnd in range(FIELD_ROUNDS):
        new_affine, new_field = nonrigid.split(model, frame)
        if new_field is None:
            return None
        moved = float(np.abs(map_points(new_affine, new_field, xy)
                             - map_points(affine, field, xy)).max())
        affine, field = new_affine, new_field
        rounds.append({"round": rnd + 1, "degree": model.degree, "bic": model.bic,
                       "residual_rms_px": model.residual_rms_px, "moved_px": moved})
        if moved < 0.01 and rnd > 0:
            break
        found = measure(post, pre, affine, centres, sigma_hi, False, threads, field, patch)
        src, dst = correspondences(affine, field, found)
        refit = nonrigid.select(src, dst)
        if refit is None or refit.degree == 1:
            return None
        model = refit
    assert field is not None
    extrapolation = nonrigid.extrapolation_error(model, src, dst, frame, tissue())
    return affine, field, model, {"residual_model": field.model,
                                  "residual_field_max_px": field.max_px(),
                                  "extrapolation_px": extrapolation,
                                  "field_patches": len(centres), "field_rounds": rounds}


def run_align_interior(layout: PairLayout, *, sample: str = "", dye: str = "", threads: int = 1,
                       checkpoint_format: str = "tiff") -> dict[str, Any]:
    """Run stage 3 for one pair: refine, write the transform, warp pre, draw registration."""
    from exo2micro.io.fitsio import make_header
    from exo2micro.report.registration_plot import plot_registration

    require_stage(layout, 2)
    run = StageRun(layout, 3)
    params = layout.params.interior
    stage2 = TransformRecord.load(layout.boundary_transform())
    pre_pyr, post_pyr = (Pyramid.load(layout.pyramid(w)) for w in ("pre", "post"))
    with TiffImage(layout.signal("pre")) as pre, TiffImage(layout.signal("post")) as post:
        with run.timed("refine"):
            tr = align_interior(post, pre, post_pyr, pre_pyr, stage2, params, threads)
        if tr.reason:
            run.warn(f"stage 3 {tr.status}: {tr.reason}")
        tr.save(layout.interior_transform())
        pad = params.pad
        outs = {fmt: layout.aligned_pre(fmt) for fmt in formats(checkpoint_format)}
        acc = tr.metrics["estimated_accuracy_px"]
        if acc > REVIEW_ACCURACY_PX:
            run.warn(f"the estimated alignment accuracy {acc:.2f} px is worse than "
                     f"{REVIEW_ACCURACY_PX} px: sub-pixel structure of the difference image may "
                     f"be residue of the alignment")
        with run.timed("warp"):
            warp_to_files(pre, tr.post_to_pre, output_shape(post.shape, pad), pad, outs,
                          field=tr.residual_field,
                          compression=tiff_compression(checkpoint_format),
                          fits_header=lambda: make_header(sample=sample, dye=dye, stage=3,
                                                          params=layout.params, accuracy_px=acc),
                          threads=threads, ome=product_ome(layout, "aligned pre (stage 3)", dye))
    with run.timed("plot"):
        png = layout.stage_plot("registration", 3)
        plot_registration(pre_pyr, post_pyr, stage2.post_to_pre, tr.post_to_pre, png,
                          title=f"{sample} / {dye}" if sample else layout.root.name,
                          status=f"stage 2 {stage2.status}, stage 3 {tr.status}",
                          accuracy_px=acc,
                          pixel_size_um=stage1_physical(layout, "post")["pixel_size_um"])
    run.add_outputs([layout.interior_transform(), *outs.values(), png])
    run.info.update({"transform_status": tr.status, "reason": tr.reason,
                     "estimated_accuracy_px": acc})
    return run.record()
