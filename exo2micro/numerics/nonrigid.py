"""The non-rigid part of an alignment: a smooth residual field, used only when the data ask.

Stage 3 measures, at up to a hundred patch centres ``c`` (raw post px), where each lands in pre
(``dst``). An affine map explains these correspondences when both acquisitions saw the sample
through the same geometry; lens distortion that differs between them, or a sample that swelled
after staining, leaves a smooth pattern in the residuals. This module fits polynomial maps
``post → pre`` of degree 1 (affine) up to 5 to the correspondences and chooses among them by
the Bayesian information criterion, so a rigid pair stays rigid: a higher degree must lower
the residuals by more than its extra parameters explain. The chosen map is then split into
the best affine approximation over the measured points (``post_to_pre``, the global part that
every reader understands) and a :class:`~exo2micro.numerics.transform.ResidualField` sampled on a
coarse grid of the post frame, held constant outside the measured area so that it never
extrapolates a polynomial into the corners.

All coordinates are raw pixels (x = column, y = row, OpenCV convention); polynomial terms use
coordinates centred and scaled to about ±1 over the measured points, for conditioning.
Pure numerics: no I/O, no threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from exo2micro.numerics.transform import ResidualField

#: Degrees tried; 1 is the affine model. A degree needs twice as many measured patches as it
#: has terms (degree 5: 42 patches), so small tissue areas try fewer.
DEGREES = (1, 2, 3, 4, 5)
#: Smallest field (px, largest node over the measured area) that is worth using.
MIN_FIELD_PX = 0.05
#: Grid nodes along the longer side of the post frame (the field is smooth — a polynomial of
#: low degree — so a coarse grid interpolated bicubically represents it closely).
GRID_NODES = 33
#: Huber constant (in robust standard deviations) and the outlier cut of the robust fit.
HUBER = 1.5
OUTLIER_SIGMA = 4.0
#: Smallest robust residual spread assumed (px): below it every patch would look like an
#: outlier of a perfect fit.
MIN_SIGMA_PX = 0.01


def terms(xy: np.ndarray, degree: int, centre: np.ndarray, scale: float) -> np.ndarray:
    """Design matrix (N × T) of the monomials ``u^i v^j`` (i + j ≤ ``degree``) of the
    normalised coordinates ``(xy − centre) / scale``; the first three columns are 1, u, v."""
    u = (xy[:, 0] - centre[0]) / scale
    v = (xy[:, 1] - centre[1]) / scale
    cols = [u ** (d - j) * v ** j for d in range(degree + 1) for j in range(d + 1)]
    return np.column_stack(cols)


def n_terms(degree: int) -> int:
    return (degree + 1) * (degree + 2) // 2


@dataclass(frozen=True)
class PolyMap:
    """A polynomial map post → pre of one degree, fitted to correspondences."""

    degree: int
    coef: np.ndarray  # (T, 2): pre x and pre y
    centre: np.ndarray
    scale: float
    inliers: np.ndarray  # over the correspondences it was fitted to
    residual_rms_px: float
    design_inv: np.ndarray  # (FᵀF)⁻¹ of the inliers, for the predicted error
    bic: float

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return terms(xy, self.degree, self.centre, self.scale) @ self.coef

    def predicted_error(self, xy: np.ndarray) -> float:
        """Mean over ``xy`` of the fit's predicted 2-D standard error (px)."""
        f = terms(xy, self.degree, self.centre, self.scale)
        var = np.einsum("ij,jk,ik->i", f, self.design_inv, f)
        return float(np.mean(self.residual_rms_px * np.sqrt(2.0 * np.maximum(var, 0.0))))


def _robust_inliers(src: np.ndarray, dst: np.ndarray, degree: int, centre: np.ndarray,
                    scale: float) -> np.ndarray:
    """Inliers of an IRLS (Huber) fit of ``degree``: residual within ``OUTLIER_SIGMA`` robust
    standard deviations (patches on microbes or on moved content fall out)."""
    f = terms(src, degree, centre, scale)
    w = np.ones(len(src))
    sigma, res = MIN_SIGMA_PX, np.zeros(len(src))
    for _ in range(6):
        coef, *_ = np.linalg.lstsq(f * w[:, None], dst * w[:, None], rcond=None)
        res = np.hypot(*(dst - f @ coef).T)
        sigma = _per_axis_sigma(res)
        w = np.sqrt(np.minimum(1.0, HUBER * sigma / np.maximum(res, 1e-12)))
    return res <= OUTLIER_SIGMA * sigma


def _per_axis_sigma(distances: np.ndarray) -> float:
    """Robust spread (px) of 2-D residuals from their lengths: the median length over
    √(2 ln 2) (a 2-D Gaussian's per-axis σ) times 1.4826, which widens it on purpose so that
    the Huber weights and the outlier cut spare the inliers; at least :data:`MIN_SIGMA_PX`."""
    return max(MIN_SIGMA_PX,
               1.4826 * float(np.median(distances)) / math.sqrt(2 * math.log(2)))


def _fit(src: np.ndarray, dst: np.ndarray, inl: np.ndarray, degree: int, centre: np.ndarray,
         scale: float) -> PolyMap:
    f = terms(src[inl], degree, centre, scale)
    coef, *_ = np.linalg.lstsq(f, dst[inl], rcond=None)
    rss = float(((dst[inl] - f @ coef) ** 2).sum())
    m = 2 * int(inl.sum())
    p = 2 * n_terms(degree)
    rms = math.sqrt(rss / max(1, m - p))
    bic = m * math.log(max(rss, 1e-12) / m) + p * math.log(m)
    return PolyMap(degree, coef, centre, scale, inl, rms, np.linalg.pinv(f.T @ f), bic)


def select(src: np.ndarray, dst: np.ndarray) -> PolyMap | None:
    """The polynomial map among :data:`DEGREES` that the correspondences ``src → dst`` support
    best (lowest BIC over the inliers of the highest degree that can be fitted); ``None`` with
    fewer correspondences than an affine fit needs."""
    n = len(src)
    usable = [d for d in DEGREES if n >= 2 * n_terms(d)]
    if not usable:
        return None
    centre = src.mean(axis=0)
    scale = float(np.abs(src - centre).max()) or 1.0
    inl = _robust_inliers(src, dst, usable[-1], centre, scale)
    usable = [d for d in usable if inl.sum() >= 2 * n_terms(d)]
    if not usable:
        return None
    fits = [_fit(src, dst, inl, d, centre, scale) for d in usable]
    return min(fits, key=lambda f: f.bic)


def split(model: PolyMap, frame: tuple[int, int]) -> tuple[np.ndarray, ResidualField | None]:
    """``model`` as the affine ``post_to_pre`` (3×3, least squares over the measured points'
    bounding box) plus the residual field on a grid over the post ``frame`` (h, w); the field is
    ``None`` for an affine model or when it stays below :data:`MIN_FIELD_PX`."""
    lo = model.centre - model.scale
    hi = model.centre + model.scale
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 24), np.linspace(lo[1], hi[1], 24))
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    target = model(pts)
    x = np.column_stack([pts, np.ones(len(pts))])
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    affine = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    if model.degree == 1:
        return affine, None
    step = _grid_step(frame)
    xs = np.arange(0.0, frame[1] + step, step)
    ys = np.arange(0.0, frame[0] + step, step)
    nx, ny = np.meshgrid(xs, ys)
    nodes = _within_reach(model, frame, np.column_stack([nx.ravel(), ny.ravel()]))
    resid = model(nodes) - nodes @ affine[:2, :2].T - affine[:2, 2]
    dx = resid[:, 0].reshape(nx.shape).astype(np.float32)
    dy = resid[:, 1].reshape(nx.shape).astype(np.float32)
    field = ResidualField(f"polynomial-{model.degree}", step, (0.0, 0.0), dx, dy)
    return affine, field if field.max_px() >= MIN_FIELD_PX else None


def _grid_step(frame: tuple[int, int]) -> float:
    """Node spacing (px) of the residual field's grid over a post ``frame`` (h, w)."""
    return float(math.ceil(max(frame) / (GRID_NODES - 1)))


def _within_reach(model: PolyMap, frame: tuple[int, int], xy: np.ndarray) -> np.ndarray:
    """``xy`` moved to the nearest point of the area the field follows ``model`` over: the
    measured points' box and four grid nodes around it (so that interpolation inside the box
    sees the polynomial itself, and the tissue rim that no patch covers follows it a little
    way); beyond, the field is held constant."""
    reach = 4 * _grid_step(frame)
    lo, hi = model.centre - model.scale - reach, model.centre + model.scale + reach
    return np.column_stack([np.clip(xy[:, 0], lo[0], hi[0]), np.clip(xy[:, 1], lo[1], hi[1])])


def extrapolation_error(model: PolyMap, src: np.ndarray, dst: np.ndarray,
                        frame: tuple[int, int], tissue_xy: np.ndarray) -> float:
    """How far the field is a guess where no patch measured it (px, mean over the tissue
    points ``tissue_xy``): the disagreement between ``model`` and the next higher degree fitted
    to the same inliers, both held as the field holds them (:func:`_within_reach`). Two maps
    that explain the patches equally well but part between them on the rim say how well the
    rim is known; 0 for an affine model or when the next degree cannot be fitted."""
    degree = model.degree + 1
    if model.degree == 1 or model.inliers.sum() < 2 * n_terms(degree):
        return 0.0
    alt = _fit(src, dst, model.inliers, degree, model.centre, model.scale)
    pts = _within_reach(model, frame, tissue_xy)
    return float(np.mean(np.hypot(*(model(pts) - alt(pts)).T)))
