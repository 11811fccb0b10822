"""Stage 2 — align-boundary: the similarity that overlays the two tissue footprints.

The interiors of pre and post differ (that is the point of staining) but the outline of the
sample does not, so this stage matches footprints, not intensities:

The three steps are :func:`search`, :func:`refine` and :func:`gate`:

1. **Grid search** on a small pyramid level (longer side ≤ :data:`SEARCH_SIDE` px): for every
   rotation in ±``angle_range`` (step ``angle_step``) and scale in [``scale_min``,
   ``scale_max``] (step ``scale_step``) the pre footprint's boundary band (``boundary_width``
   px wide, smoothed by ``boundary_smooth`` px) is rotated/scaled about its centroid and the
   best translation is found by FFT cross-correlation with the post band. The whole
   translation range is covered (zero-padded correlation), so no prior on the shift is needed.
   Candidates are ranked at half that resolution and only the leading ones, and the grid
   neighbours of the best, are scored at the search level (:func:`grid_search`).
2. **Refinement** beyond the grid: a Gauss–Newton (Lucas–Kanade) fit of the 4 similarity
   parameters on smoothed footprints, coarse to fine over pyramid levels (``multiscale``), up
   to ``stopit`` iterations or a parameter step below ``stopdelta``. Pixels whose pre sample
   falls outside the pre frame are ignored, so tissue cut by either frame edge does not bias
   the fit. ``fine_ecc`` adds a last pass on band-passed intensities.
3. **Gates** judge what the refinement changed by the *displacement of tissue pixels* (max
   over the post footprint, in full-resolution px) — never by a matrix's translation column,
   which grows with the distance from the origin. A rejected refinement leaves the grid result.

All coordinates follow :mod:`exo2micro.numerics.transform`; level pixel ``i`` of box size ``f`` sits
at full-resolution ``f·i + (f−1)/2``. Memory: a few images of ≤ 1 024 px side (a few MiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io.layout import PairLayout, formats, tiff_compression
from exo2micro.io.records import StageRun, product_ome, require_stage
from exo2micro.numerics.footprint import tissue_mask
from exo2micro.numerics.pyramid import (
    Pyramid,
    common_level,
    level_texture,
    to_full,
    to_level,
)
from exo2micro.numerics.transform import (
    TransformRecord,
    decompose_similarity,
    grid_points,
    max_displacement,
)
from exo2micro.stage_params import BoundaryParams

#: Longer side (px) of the pyramid level used by the grid search.
SEARCH_SIDE = 384
#: Longer sides (px) of the levels used by the refinement, coarse to fine.
REFINE_SIDES = (512, 1024)
#: Grid candidates scored at the search level: those whose half-resolution score is within
#: this fraction of the best one, and at least :data:`RANK_KEEP` (:func:`grid_search`).
RANK_MARGIN = 0.05
RANK_KEEP = 8
#: Smallest intersection-over-union of the footprints for an "ok" result.
MIN_IOU = 0.6


def soft_footprint(mask: np.ndarray, sigma: float) -> np.ndarray:
    """The filled footprint blurred by ``sigma`` px (float32 in [0, 1]); blur replicates the
    frame edge so tissue cut by the frame gets no artificial edge."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(sigma, 0.5),
                            borderType=cv2.BORDER_REPLICATE)


def boundary_band(mask: np.ndarray, width: int, smooth: float) -> np.ndarray:
    """The inner boundary band of ``mask`` (``width`` px), smoothed by ``smooth`` px."""
    m = mask.astype(np.uint8)
    k = max(1, int(width))
    eroded = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    band = (m - eroded).astype(np.float32)
    if smooth > 0:
        band = cv2.GaussianBlur(band, (0, 0), smooth)
    return band


# ------------------------------------------------------------------------------ grid search
@dataclass(frozen=True)
class GridResult:
    """Best grid candidate: ``post_to_pre`` at the search level, and how it scored."""

    post_to_pre: np.ndarray
    rotation_deg: float
    scale: float
    score: float
    second_score: float
    candidates: int


def _grid(low: float, high: float, step: float) -> np.ndarray:
    n = max(0, math.floor((high - low) / step + 1e-9))
    values = low + step * np.arange(n + 1)
    return np.unique(np.append(values, high)) if values[-1] < high - 1e-9 else values


class _Correlator:
    """Zero-padded FFT cross-correlation of images against one fixed ``post`` image."""

    def __init__(self, post_img: np.ndarray) -> None:
        ph, pw = post_img.shape
        self.shape = (cv2.getOptimalDFTSize(2 * ph), cv2.getOptimalDFTSize(2 * pw))
        self.post_f = np.fft.rfft2(post_img, s=self.shape)
        self.post_norm = float(np.linalg.norm(post_img)) or 1.0

    def peak(self, warped: np.ndarray, norm: float) -> tuple[float, int, int]:
        """``(score, dy, dx)``: the correlation peak over the two L2 norms and its shift (px),
        for every shift at once."""
        fh, fw = self.shape
        corr = np.fft.irfft2(self.post_f * np.conj(np.fft.rfft2(warped, s=self.shape)),
                             s=self.shape)
        iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
        score = float(corr[iy, ix]) / (norm * self.post_norm)
        return score, int(iy if iy < fh // 2 else iy - fh), int(ix if ix < fw // 2 else ix - fw)


def _halved(img: np.ndarray) -> np.ndarray:
    """``img`` at half resolution (2×2 box mean), the ranking pass's level."""
    h, w = img.shape
    return cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)


def grid_search(pre_img: np.ndarray, post_img: np.ndarray, angles: np.ndarray,
                scales: np.ndarray) -> GridResult:
    """Search rotation × scale; translation by zero-padded FFT cross-correlation.

    ``pre_img``/``post_img`` are non-negative feature images (boundary bands) at one level.
    The score is the correlation peak divided by the two images' L2 norms (1 = identical).

    Two passes, so that most of the grid costs a quarter of its FFT work: every candidate is
    ranked by its score at half the resolution; then candidates are scored at the search
    level — those ranked within :data:`RANK_MARGIN` of the best (at least :data:`RANK_KEEP`),
    then every grid neighbour of the best two until both are surrounded by scored candidates.
    The result is the best of the scored candidates, computed exactly as a full search
    computes it; ties go to the first in grid order (scales, then angles).
    """
    ph, pw = post_img.shape
    cy_pre, cx_pre = _centroid(pre_img)
    cy_post, cx_post = _centroid(post_img)
    grid = [(float(s), float(theta)) for s in scales for theta in angles]

    def warp(i: int) -> tuple[np.ndarray, np.ndarray, float]:
        s, theta = grid[i]
        rot = cv2.getRotationMatrix2D((cx_pre, cy_pre), theta, s)
        rot[:, 2] += (cx_post - cx_pre, cy_post - cy_pre)
        warped = cv2.warpAffine(pre_img, rot, (pw, ph), flags=cv2.INTER_LINEAR)
        return rot, warped, float(np.linalg.norm(warped))

    coarse = _Correlator(_halved(post_img))
    ranked: dict[int, float] = {}
    for i in range(len(grid)):
        _, warped, norm = warp(i)
        if norm > 0:
            small = _halved(warped)
            ranked[i] = coarse.peak(small, float(np.linalg.norm(small)) or 1.0)[0]
    if not ranked:
        raise InputDataError("pre footprint is empty at the search level")

    fine = _Correlator(post_img)
    scored: dict[int, tuple[float, np.ndarray]] = {}

    def score(i: int) -> None:
        rot, warped, norm = warp(i)
        value, dy, dx = fine.peak(warped, norm)
        shifted = np.vstack([rot, [0, 0, 1]])
        shifted[:2, 2] += (dx, dy)
        scored[i] = (value, np.linalg.inv(shifted))

    order = sorted(ranked, key=lambda i: (-ranked[i], i))
    best_rank = ranked[order[0]]
    for k, i in enumerate(order):
        if k >= RANK_KEEP and ranked[i] < best_rank - RANK_MARGIN * abs(best_rank):
            break
        score(i)
    n_angles = len(angles)
    while True:
        top = sorted(scored, key=lambda i: (-scored[i][0], i))[:2]
        todo = [j for i in top for j in _neighbours(i, len(scales), n_angles)
                if j in ranked and j not in scored]
        if not todo:
            break
        for j in todo:
            score(j)
    best, second = top[0], (top[1] if len(top) > 1 else None)
    s, theta = grid[best]
    return GridResult(scored[best][1], theta, s, scored[best][0],
                      scored[second][0] if second is not None else 0.0, len(ranked))


def _neighbours(i: int, n_scales: int, n_angles: int) -> list[int]:
    """Grid indices (scale-major) of the up to 8 neighbours of candidate ``i``."""
    si, ai = divmod(i, n_angles)
    return [(si + a) * n_angles + ai + b for a in (-1, 0, 1) for b in (-1, 0, 1)
            if (a or b) and 0 <= si + a < n_scales and 0 <= ai + b < n_angles]


def _centroid(img: np.ndarray) -> tuple[float, float]:
    m = cv2.moments(img.astype(np.float32))
    if m["m00"] <= 0:
        return (img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0
    return m["m01"] / m["m00"], m["m10"] / m["m00"]


# ------------------------------------------------------------------------------ refinement
def refine_similarity(pre_img: np.ndarray, post_img: np.ndarray, post_to_pre: np.ndarray, *,
                      max_iter: int, min_step: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Gauss–Newton fit of a similarity ``post_to_pre`` (x' = a·x − b·y + tx, y' = b·x + a·y +
    ty, about the post image centre) minimising ∑ (pre(A·x) − post(x))² over post pixels whose
    pre sample lies inside the pre frame. Returns the matrix and convergence facts."""
    ph, pw = post_img.shape
    c = np.array([[1, 0, (pw - 1) / 2], [0, 1, (ph - 1) / 2], [0, 0, 1]], float)
    a_c = post_to_pre @ c  # parameters are for centred post coordinates (better conditioned)
    a, b, tx, ty = a_c[0, 0], a_c[1, 0], a_c[0, 2], a_c[1, 2]
    gx = cv2.Sobel(pre_img, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(pre_img, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    ones = np.ones_like(pre_img)
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    xx -= (pw - 1) / 2
    yy -= (ph - 1) / 2
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    step = float("inf")
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported below
        m = np.array([[a, -b, tx], [b, a, ty]], np.float64) @ np.linalg.inv(c)
        warp = cv2.warpAffine(pre_img, m, (pw, ph), flags=flags)
        valid = cv2.warpAffine(ones, m, (pw, ph), flags=flags) > 0.999
        wgx = cv2.warpAffine(gx, m, (pw, ph), flags=flags)[valid]
        wgy = cv2.warpAffine(gy, m, (pw, ph), flags=flags)[valid]
        x, y = xx[valid], yy[valid]
        r = (warp[valid] - post_img[valid]).astype(np.float64)
        jac = np.stack([wgx * x + wgy * y, -wgx * y + wgy * x, wgx, wgy], axis=1).astype(
            np.float64)
        h = jac.T @ jac
        if r.size < 16 or not np.all(np.isfinite(h)) or abs(np.linalg.det(h)) < 1e-12:
            break
        delta = np.linalg.solve(h, -jac.T @ r)
        a, b, tx, ty = a + delta[0], b + delta[1], tx + delta[2], ty + delta[3]
        # the step in px at the image corner (rotation/scale terms × radius + shift)
        radius = math.hypot(pw, ph) / 2
        step = float(math.hypot(delta[0], delta[1]) * radius + math.hypot(delta[2], delta[3]))
        if step < min_step:
            break
    result = np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]], float) @ np.linalg.inv(c)
    return result, {"iterations": it, "last_step_px": step}


def iou(pre_mask: np.ndarray, post_mask: np.ndarray, post_to_pre_level: np.ndarray) -> float:
    """Intersection over union of the post footprint and the warped pre footprint, over post
    pixels whose pre sample lies inside the pre frame."""
    ph, pw = post_mask.shape
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(pre_mask.astype(np.uint8), post_to_pre_level[:2], (pw, ph),
                            flags=flags) > 0
    inside = cv2.warpAffine(np.ones(pre_mask.shape, np.uint8), post_to_pre_level[:2], (pw, ph),
                            flags=flags) > 0
    union = ((warped | post_mask) & inside).sum()
    return float(((warped & post_mask) & inside).sum() / union) if union else 0.0


# ------------------------------------------------------------------------------ the stage
@dataclass(frozen=True)
class Search:
    """What the grid search step found: the best candidate, the box size ``factor`` of the
    search level, the tissue footprints there and the smallest scale searched (for the grid's
    resolution)."""

    grid: GridResult
    factor: int
    pre_mask: np.ndarray
    post_mask: np.ndarray
    min_scale: float

    @property
    def post_to_pre(self) -> np.ndarray:
        """The grid result as a full-resolution ``post_to_pre``."""
        return to_full(self.grid.post_to_pre, self.factor, self.factor)

    def metrics(self) -> dict[str, Any]:
        """The search facts of the transform record's metrics."""
        g = self.grid
        return {"search_factor": self.factor, "candidates": g.candidates,
                "grid": {"rotation_deg": g.rotation_deg, "scale": g.scale,
                         "score": g.score, "second_score": g.second_score}}


def search(pre_pyr: Pyramid, post_pyr: Pyramid, p: BoundaryParams) -> Search:
    """Step 1: the grid search over rotation × scale on the search level (module docstring)."""
    pre_l, post_l, f = common_level(pre_pyr, post_pyr, SEARCH_SIDE)
    pre_mask, post_mask = tissue_mask(pre_l), tissue_mask(post_l)
    for name, m in (("pre", pre_mask), ("post", post_mask)):
        if not m.any():
            raise InputDataError(f"no tissue found in the {name} image at the search level")
    angles = (_grid(-p.angle_range, p.angle_range, p.angle_step)
              if p.rotation_search else np.array([0.0]))
    scales = (_grid(p.scale_min, p.scale_max, p.scale_step)
              if p.scale_search else np.array([1.0]))
    if p.use_edges:
        feats = [boundary_band(m, p.boundary_width, p.boundary_smooth / 4)
                 for m in (pre_mask, post_mask)]
    else:
        feats = [soft_footprint(m, max(1.0, p.boundary_smooth / 4))
                 for m in (pre_mask, post_mask)]
    grid = grid_search(feats[0], feats[1], angles, scales)
    return Search(grid, f, pre_mask, post_mask, float(min(scales)))


def refine(pre_pyr: Pyramid, post_pyr: Pyramid, start: np.ndarray, p: BoundaryParams
           ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Step 2: refine the full-resolution ``start`` beyond the grid, on smoothed footprints
    coarse to fine (``multiscale``), then on textures (``fine_ecc``); returns the refined
    ``post_to_pre`` and one convergence record per pass."""
    current = start
    passes: list[dict[str, Any]] = []
    options = {"max_iter": min(p.stopit, 200), "min_step": max(p.stopdelta, 1e-3)}
    sides = REFINE_SIDES if p.multiscale else REFINE_SIDES[-1:]
    for side in sides:
        pre_r, post_r, fr = common_level(pre_pyr, post_pyr, side)
        soft = [soft_footprint(tissue_mask(im), 2.0) for im in (pre_r, post_r)]
        a_level, info = refine_similarity(soft[0], soft[1], to_level(current, fr, fr), **options)
        current = to_full(a_level, fr, fr)
        passes.append({"factor": fr, "kind": "footprint", **info})
    if p.fine_ecc:
        pre_r, post_r, fr = common_level(pre_pyr, post_pyr, REFINE_SIDES[-1])
        a_level, info = refine_similarity(level_texture(pre_r), level_texture(post_r),
                                          to_level(current, fr, fr), **options)
        current = to_full(a_level, fr, fr)
        passes.append({"factor": fr, "kind": "intensity", **info})
    return current, passes


def gate(found: Search, refined: np.ndarray, p: BoundaryParams,
         metrics: dict[str, Any]) -> TransformRecord:
    """Step 3: keep the refinement only if it moves tissue pixels, rotates and rescales within
    the limits (else ``grid_only``: the grid result), then mark a scale far from 1 or a poor
    footprint overlap ``suspect``. Adds the gates' facts to ``metrics``."""
    f = found.factor
    grid_full = found.post_to_pre
    # Tissue pixels of the post footprint (full-res coordinates) for displacement gates.
    tissue_xy = grid_points(found.post_mask, f)
    status, reason = "ok", ""
    moved = max_displacement(refined, grid_full, tissue_xy)
    # The grid itself is only accurate to half a step of each axis at the search level: a
    # refinement must be allowed to move tissue that far *plus* max_translation.
    radius = float(np.max(np.linalg.norm(tissue_xy - tissue_xy.mean(axis=0), axis=1)))
    grid_px = (f + radius * math.radians(p.angle_step / 2)
               + radius * p.scale_step / 2 / found.min_scale)
    metrics["grid_resolution_px"] = grid_px
    d_grid, d_ref = decompose_similarity(grid_full), decompose_similarity(refined)
    d_rot = abs((d_ref["rotation_deg"] - d_grid["rotation_deg"] + 180) % 360 - 180)
    d_scale = abs(d_ref["scale"] / d_grid["scale"] - 1)
    metrics["refinement_moved_tissue_px"] = moved
    if not np.all(np.isfinite(refined)):
        status, reason = "grid_only", "refinement diverged"
    elif moved > p.max_translation + grid_px:
        status, reason = "grid_only", (f"refinement would move tissue pixels by up to "
                                       f"{moved:.1f} px > max_translation {p.max_translation}"
                                       f" + grid resolution {grid_px:.1f} px")
    elif d_rot > p.max_rotation:
        status, reason = "grid_only", (f"refinement would rotate by {d_rot:.2f}° > "
                                       f"max_rotation {p.max_rotation}")
    elif d_scale > p.max_scale_delta:
        status, reason = "grid_only", (f"refinement would change scale by {d_scale:.3f} > "
                                       f"max_scale_delta {p.max_scale_delta}")
    final = grid_full if status == "grid_only" else refined
    dec = decompose_similarity(final)
    overlap = iou(found.pre_mask, found.post_mask, to_level(final, f, f))
    metrics.update({"rotation_deg": dec["rotation_deg"], "scale": dec["scale"],
                    "overlap_iou": overlap})
    if status == "ok" and abs(dec["scale"] - 1) > p.max_scale_diff:
        status, reason = "suspect", (f"scale {dec['scale']:.3f} differs from 1 by more than "
                                     f"max_scale_diff {p.max_scale_diff}")
    if status == "ok" and overlap < MIN_IOU:
        status, reason = "suspect", (f"footprints overlap poorly after alignment "
                                     f"(IoU {overlap:.2f} < {MIN_IOU})")
    return TransformRecord(final, status, 2, metrics, reason)


def align_boundary(pre_pyr: Pyramid, post_pyr: Pyramid, params: BoundaryParams
                   ) -> TransformRecord:
    """Compute the stage-2 transform (full-resolution ``post_to_pre``) from two pyramids:
    :func:`search`, :func:`refine`, :func:`gate`."""
    found = search(pre_pyr, post_pyr, params)
    refined, passes = refine(pre_pyr, post_pyr, found.post_to_pre, params)
    return gate(found, refined, params, found.metrics() | {"refinement": passes})


def run_align_boundary(layout: PairLayout, *, sample: str = "", dye: str = "", threads: int = 1,
                       checkpoint_format: str = "tiff") -> dict[str, Any]:
    """Run stage 2 for one pair from its stage-1 pyramids; write the transform and record."""
    require_stage(layout, 1)
    run = StageRun(layout, 2)
    with run.timed("read"):
        pre_pyr, post_pyr = (Pyramid.load(layout.pyramid(w)) for w in ("pre", "post"))
    p = layout.params.boundary
    with run.timed("align"):
        tr = align_boundary(pre_pyr, post_pyr, p)
    if tr.reason:
        run.warn(f"stage 2 {tr.status}: {tr.reason}")
    tr.save(layout.boundary_transform())
    run.add_outputs([layout.boundary_transform()])
    if p.save_all_intermediates:
        from exo2micro.io.fitsio import make_header
        from exo2micro.io.tiffio import TiffImage
        from exo2micro.stages.warp import output_shape, warp_to_files

        with run.timed("warp"), TiffImage(layout.signal("pre")) as pre:
            pad = p.pad
            outs = {fmt: layout.icp_aligned_pre(fmt) for fmt in formats(checkpoint_format)}
            post_shape = tuple(post_pyr.full_shape)
            warp_to_files(pre, tr.post_to_pre, output_shape(post_shape, pad), pad, outs,
                          compression=tiff_compression(checkpoint_format),
                          fits_header=lambda: make_header(sample=sample, dye=dye, stage=2,
                                                          params=layout.params),
                          threads=threads, ome=product_ome(layout, "aligned pre (stage 2)", dye))
            run.add_outputs(list(outs.values()))
    run.info.update({"transform_status": tr.status, "reason": tr.reason,
                     "rotation_deg": tr.metrics["rotation_deg"], "scale": tr.metrics["scale"]})
    return run.record()

