"""Stage 3's fallback refinement: stage 2's similarity brought to sub-pixel on the tissue edge.

When the interior offers no texture both images share (stage 3 falls back), the tissue edge is
still there. Stage 2 matched it on pyramid levels of about 1 000 px, which leaves the
transform good to a fraction of a level pixel (0.3–0.7 px at 3 000–6 000 px on the benchmark
pairs, growing with the image).
This step measures the edge again at full resolution, in bounded memory:

1. **Windows.** Up to :data:`MAX_WINDOWS` windows of :data:`WINDOW` px centred on the post
   tissue edge (found on a :data:`PLAN_SIDE`-px level), along it a window apart (no two
   windows share pixels) and inside both frames. Only these windows are read.
2. **Soft footprints.** In each window the image becomes a soft tissue indicator: a logistic
   of log intensity about the image's own edge midpoint (halfway between its tissue and
   background medians on the level), then a Gaussian of :data:`SOFT_SIGMA` px. The midpoint
   scales with the post/pre brightness ratio k, so both indicators switch at the same height
   of the (equally blurred) edge — no dilation of one footprint against the other, which a
   similarity would read as a scale — with the sub-pixel position kept in the logistic's
   slope.
3. **Fit.** Gauss–Newton over all windows at once for the 4-parameter similarity update of
   ``post_to_pre`` (scale·rotation, shift, in post coordinates about the tissue centre): each
   edge constrains only its normal direction, the edge's curvature over the whole tissue
   constrains the rest. At most :data:`ITERATIONS` iterations, until tissue moves <
   :data:`MIN_STEP_PX` px.

The result is kept only when the fit is well conditioned and moves tissue by no more than
:data:`MAX_CORRECTION_LEVEL_PX` of stage 2's level pixels and lowers the residual; its
accuracy estimate is a jackknife over groups of windows (:func:`jackknife_error`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from exo2micro.io.tiffio import TiffImage
from exo2micro.numerics.footprint import edge_midpoint, tissue_mask
from exo2micro.numerics.pyramid import Pyramid
from exo2micro.numerics.transform import grid_points, inside_frames, max_displacement
from exo2micro.stages.warp import warp_window

#: Side (px, full resolution) of an edge window.
WINDOW = 128
#: Most edge windows.
MAX_WINDOWS = 160
#: Longer side (px) of the pyramid level on which the edge is found.
PLAN_SIDE = 1024
#: Width (in natural-log intensity) of the logistic that turns intensity into tissue.
SOFT_WIDTH = 0.15
#: Gaussian σ (px) applied to the soft footprint (smooth gradients for Gauss–Newton).
SOFT_SIGMA = 1.5
#: Most Gauss–Newton iterations, and the tissue displacement (px) below which they stop.
ITERATIONS = 12
MIN_STEP_PX = 0.002
#: Border (px) of a window left out of the sums (filter and interpolation edge effects).
BORDER = 8
#: Largest tissue displacement (px, full resolution) the refinement may add to stage 2, in
#: units of stage 2's level factor.
MAX_CORRECTION_LEVEL_PX = 2.0
#: Groups of windows of the jackknife that estimates the fit's error.
JACKKNIFE_GROUPS = 8


def edge_centres(post_pyr: Pyramid, post_to_pre: np.ndarray, post_shape: tuple[int, int],
                 pre_shape: tuple[int, int], max_windows: int = MAX_WINDOWS
                 ) -> list[tuple[float, float]]:
    """Centres (full-resolution post px) of edge windows: post tissue-edge pixels of a
    :data:`PLAN_SIDE`-px level, at most ``max_windows`` spread evenly along the edge, whose
    window lies inside the post frame and, under ``post_to_pre``, inside the pre frame."""
    level, f = post_pyr.level_for(PLAN_SIDE)
    mask = tissue_mask(level).astype(np.uint8)
    edge = mask - cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                            borderValue=0)
    points = grid_points(edge > 0, f, max_points=10**7)
    points = points[inside_frames(points, post_to_pre, post_shape, pre_shape, WINDOW / 2 + 2)]
    if len(points) == 0:
        return []
    # evenly along the edge, windows apart: greedily in order of angle about the centroid,
    # each at least a window from every one kept (windows that overlap would measure the
    # same pixels, and the jackknife would take them for independent)
    centre = points.mean(axis=0)
    order = np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]))
    step = max(1, len(order) // (8 * max_windows))
    kept: list[np.ndarray] = []
    for p in points[order[::step]]:
        if all(np.max(np.abs(p - q)) >= WINDOW for q in kept[-8:]) and (
                not kept or np.max(np.abs(p - kept[0])) >= WINDOW):
            kept.append(p)
            if len(kept) == max_windows:
                break
    return [(float(x), float(y)) for x, y in kept]


def soft_footprint(window: np.ndarray, threshold: float) -> np.ndarray:
    """The soft tissue indicator (0 … 1, float32) of an intensity window: a logistic of
    ``log(v / threshold)`` of width :data:`SOFT_WIDTH` (``v`` floored at a thousandth of the
    threshold), smoothed by a Gaussian of :data:`SOFT_SIGMA` px. Scaling the window and the
    threshold by one factor leaves it unchanged."""
    z = np.log(np.maximum(window, 1e-3 * threshold) / threshold) / SOFT_WIDTH
    soft = (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)
    return cv2.GaussianBlur(soft, (0, 0), SOFT_SIGMA)


def _similarity_step(delta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The 3×3 map x → x + u(x) of post coordinates, with u the similarity displacement of
    parameters ``delta = (da, db, dtx, dty)`` about ``centre``: u = [da·X − db·Y + dtx,
    db·X + da·Y + dty], (X, Y) = x − centre."""
    da, db, dtx, dty = delta
    cx, cy = centre
    return np.array([[1 + da, -db, dtx - da * cx + db * cy],
                     [db, 1 + da, dty - db * cx - da * cy], [0.0, 0.0, 1.0]])


def refine_on_edge(post: TiffImage, pre: TiffImage, post_pyr: Pyramid, pre_pyr: Pyramid,
                   start: np.ndarray, level_factor: float, threads: int = 1
                   ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Refine the similarity ``start`` (full-resolution ``post_to_pre``) on the tissue edge
    (module docstring). ``level_factor`` is the factor of the finest level stage 2 used: the
    refinement may move tissue by at most :data:`MAX_CORRECTION_LEVEL_PX` of those. Returns
    the refined ``post_to_pre`` and its metrics (windows, iterations, the tissue
    displacement it added, its standard error in px), or ``None`` when there is no usable
    edge or the fit is not trusted."""
    centres = edge_centres(post_pyr, start, post.shape, pre.shape)
    if len(centres) < 8:
        return None
    thresholds = [edge_midpoint(pyr.level_for(PLAN_SIDE)[0]) for pyr in (post_pyr, pre_pyr)]
    if not all(math.isfinite(t) and t > 0 for t in thresholds):
        return None
    half = WINDOW // 2
    origins = [(round(x) - half, round(y) - half) for x, y in centres]
    posts = [soft_footprint(post.read_window(y0, y0 + WINDOW, x0, x0 + WINDOW)[:, :, 0]
                            .astype(np.float32), thresholds[0]) for x0, y0 in origins]
    centre = np.mean(np.asarray(centres), axis=0)
    yy, xx = np.mgrid[0:WINDOW, 0:WINDOW].astype(np.float64)
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    tissue_xy = np.asarray(centres)

    def normal_equations(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        x0, y0 = origins[k]
        q = soft_footprint(warp_window(pre, a, y0, y0 + WINDOW, x0, x0 + WINDOW),
                           thresholds[1])
        gx = cv2.Sobel(q, cv2.CV_32F, 1, 0, ksize=3)[inner].astype(np.float64) / 8.0
        gy = cv2.Sobel(q, cv2.CV_32F, 0, 1, ksize=3)[inner].astype(np.float64) / 8.0
        r = (q - posts[k])[inner].astype(np.float64).ravel()
        big_x = (xx[inner] + x0 - centre[0]).ravel()
        big_y = (yy[inner] + y0 - centre[1]).ravel()
        gx, gy = gx.ravel(), gy.ravel()
        jac = np.stack([gx * big_x + gy * big_y, -gx * big_y + gy * big_x, gx, gy], axis=1)
        return jac.T @ jac, jac.T @ r, float(r @ r)

    current = start
    it, moved = 0, math.inf
    first_rss: float | None = None
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for it in range(1, ITERATIONS + 1):  # noqa: B007 - `it` is reported below
            parts = list(pool.map(normal_equations, [current] * len(origins),
                                  range(len(origins))))
            h = sum(p[0] for p in parts)
            g = sum(p[1] for p in parts)
            rss = sum(p[2] for p in parts)
            first_rss = rss if first_rss is None else first_rss
            if not np.all(np.isfinite(h)) or np.linalg.cond(h) > 1e12:
                return None
            delta = -np.linalg.solve(h, g)
            step = current @ _similarity_step(delta, centre)
            moved = max_displacement(step, current, tissue_xy)
            current = step
            if moved < MIN_STEP_PX:
                break
        final = list(pool.map(normal_equations, [current] * len(origins), range(len(origins))))
    final_rss = sum(p[2] for p in final)
    correction = max_displacement(current, start, tissue_xy)
    if (not np.all(np.isfinite(current)) or first_rss is None or final_rss > first_rss
            or correction > MAX_CORRECTION_LEVEL_PX * level_factor):
        return None
    return current, {"edge_windows": len(origins), "edge_iterations": it,
                     "edge_correction_px": correction,
                     "edge_statistical_error_px": jackknife_error(
                         [p[0] for p in final], [p[1] for p in final], tissue_xy - centre)}


def jackknife_error(hessians: Sequence[np.ndarray], gradients: Sequence[np.ndarray],
                    points: np.ndarray, groups: int = JACKKNIFE_GROUPS) -> float:
    """The standard error (px, RMS over ``points``, relative to the fit's centre) of the
    similarity fitted to per-window normal equations (``hessians``, ``gradients``), by a
    delete-a-group jackknife over ``groups`` interleaved groups of windows: it counts what
    varies from window to window (edge shape, texture, noise correlated across pixels),
    which the pixels' residual scatter alone would take for independent noise (10–30 ×
    too optimistic on the benchmark pairs)."""
    h_all, g_all = sum(hessians), sum(gradients)
    fits = []
    for j in range(groups):
        h = h_all - sum(hessians[j::groups])
        g = g_all - sum(gradients[j::groups])
        fits.append(-np.linalg.solve(h, g))
    deltas = np.asarray(fits) - np.mean(fits, axis=0)
    x, y = points[:, 0], points[:, 1]
    var = np.zeros(len(points))
    for da, db, dtx, dty in deltas:
        var += (da * x - db * y + dtx) ** 2 + (db * x + da * y + dty) ** 2
    return float(math.sqrt(np.mean(var) * (groups - 1) / groups))
