"""The one transform convention of exo2micro, and helpers around it.

Coordinates: x = column, y = row, pixel centres at integer coordinates (OpenCV's convention).
A transform is a 3×3 float64 matrix ``post_to_pre``: it maps a raw post pixel ``(x, y, 1)`` to
the raw pre pixel that lands there, so ``aligned_pre(x, y) = pre(post_to_pre @ (x, y, 1))``.
This is exactly the matrix OpenCV's ``warpAffine``/``warpPerspective`` expect with
``WARP_INVERSE_MAP``.

*Scale* (magnification) is the post/pre size ratio: a feature ``L`` px long in pre is
``scale·L`` px long in post. *Rotation* ``θ`` (degrees, counter-clockwise in the image as
displayed, i.e. with y pointing down it is the OpenCV ``getRotationMatrix2D`` sense) turns pre
into post.

A pair whose two acquisitions differ by more than an affine map (lens distortion, swelling)
carries a :class:`ResidualField` on top: the pre pixel of post pixel ``x`` is then
``post_to_pre(x) + field(x)``, the field interpolated bicubically from a coarse grid.
``post_to_pre`` stays the global part, so every reader that ignores the field still gets the
best affine approximation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, get_type_hints

import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io import contracts
from exo2micro.io.atomic import write_json_atomic


def similarity_pre_to_post(rotation_deg: float, scale: float, centre_pre: tuple[float, float],
                           centre_post: tuple[float, float]) -> np.ndarray:
    """3×3 matrix mapping pre → post: rotate by ``rotation_deg`` and magnify by ``scale`` about
    ``centre_pre``, which lands on ``centre_post``."""
    theta = math.radians(rotation_deg)
    # OpenCV sense (y down): x' = a x + b y, y' = -b x + a y with a = s cos, b = s sin.
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    cx, cy = centre_pre
    px, py = centre_post
    return np.array([[a, b, px - a * cx - b * cy],
                     [-b, a, py + b * cx - a * cy],
                     [0.0, 0.0, 1.0]])


def similarity_post_to_pre(rotation_deg: float, scale: float, centre_pre: tuple[float, float],
                           centre_post: tuple[float, float]) -> np.ndarray:
    """The ``post_to_pre`` matrix of :func:`similarity_pre_to_post` (its inverse)."""
    return np.linalg.inv(similarity_pre_to_post(rotation_deg, scale, centre_pre, centre_post))


def decompose_similarity(post_to_pre: np.ndarray) -> dict[str, float]:
    """Rotation (deg), scale (post/pre) and shear/anisotropy of the affine part of pre → post.

    For a pure similarity ``anisotropy`` is 1 and ``shear_deg`` 0.
    """
    pre_to_post = np.linalg.inv(np.asarray(post_to_pre, dtype=np.float64))
    lin = pre_to_post[:2, :2]
    u, s, vt = np.linalg.svd(lin)
    rot = u @ vt
    rotation = math.degrees(math.atan2(rot[0, 1], rot[0, 0]))
    scale = float(math.sqrt(abs(np.linalg.det(lin))))
    col0, col1 = lin[:, 0], lin[:, 1]
    cosang = float(np.dot(col0, col1) / (np.linalg.norm(col0) * np.linalg.norm(col1)))
    return {"rotation_deg": rotation, "scale": scale, "anisotropy": float(s[0] / s[1]),
            "shear_deg": math.degrees(math.asin(max(-1.0, min(1.0, cosang))))}


def apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map points ``xy`` (N×2, columns x, y) through a 3×3 ``matrix`` (projective divide)."""
    pts = np.asarray(xy, dtype=np.float64)
    out = pts @ matrix[:2, :2].T + matrix[:2, 2]
    w = pts @ matrix[2, :2] + matrix[2, 2]
    return out / w[:, None]


def inside_frames(points: np.ndarray, post_to_pre: np.ndarray, post_shape: tuple[int, int],
                  pre_shape: tuple[int, int], margin: float) -> np.ndarray:
    """Per point (N×2 full-resolution post ``x, y``): whether it lies at least ``margin`` px
    inside the post frame and its image under ``post_to_pre`` at least ``margin`` px inside
    the pre frame (frames ``(height, width)``) — where a window of half-side ``margin`` reads
    real pixels of both images."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, bool)
    ok = np.ones(len(pts), bool)
    for xy, (h, w) in ((pts, post_shape), (apply(post_to_pre, pts), pre_shape)):
        ok &= ((xy[:, 0] >= margin) & (xy[:, 0] <= w - 1 - margin)
               & (xy[:, 1] >= margin) & (xy[:, 1] <= h - 1 - margin))
    return ok


def displacement_stats(estimate: np.ndarray, truth: np.ndarray, xy: np.ndarray) -> dict[str, float]:
    """Distances (px, in the pre frame) between where ``estimate`` and ``truth`` send points
    ``xy`` of the post frame: mean, p95 and max."""
    d = np.linalg.norm(apply(estimate, xy) - apply(truth, xy), axis=1)
    if d.size == 0:
        raise ValueError("no points to compare")
    return {"mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max())}


def max_displacement(a: np.ndarray, b: np.ndarray, xy: np.ndarray) -> float:
    """Largest distance (px) between where ``a`` and ``b`` send the points ``xy``."""
    return float(np.linalg.norm(apply(a, xy) - apply(b, xy), axis=1).max())


def grid_points(mask: np.ndarray, factor: float, max_points: int = 20000) -> np.ndarray:
    """Full-resolution (x, y) coordinates of the true pixels of a downsampled ``mask``.

    ``mask`` pixel ``(i, j)`` of a 1/``factor`` image covers full-resolution pixel centre
    ``(j·factor + (factor−1)/2, i·factor + (factor−1)/2)``; at most ``max_points`` evenly
    thinned points are returned.
    """
    ys, xs = np.nonzero(mask)
    if ys.size > max_points:
        keep = np.linspace(0, ys.size - 1, max_points).astype(np.int64)
        ys, xs = ys[keep], xs[keep]
    off = (factor - 1.0) / 2.0
    return np.column_stack([xs * factor + off, ys * factor + off]).astype(np.float64)


def affine_for_window(post_to_pre: np.ndarray, post_origin: tuple[float, float],
                      pre_origin: tuple[float, float]) -> np.ndarray:
    """``post_to_pre`` re-expressed between windows: local post pixel (x, y) of a window whose
    top-left is ``post_origin`` → local pre pixel of a window whose top-left is ``pre_origin``.
    """
    shift_post = np.array([[1, 0, post_origin[0]], [0, 1, post_origin[1]], [0, 0, 1]], float)
    shift_pre = np.array([[1, 0, -pre_origin[0]], [0, 1, -pre_origin[1]], [0, 0, 1]], float)
    return shift_pre @ np.asarray(post_to_pre, dtype=np.float64) @ shift_post


def _cubic_weights(coords: np.ndarray, n: int) -> np.ndarray:
    """Catmull–Rom interpolation weights (len(coords) × n) of grid positions ``coords``
    (in node units) over ``n`` nodes, the edge nodes repeated beyond the grid. The kernel
    reproduces quadratics exactly, so a smooth field's interpolation error falls with the cube
    of the node spacing."""
    c = np.asarray(coords, np.float64).ravel()
    base = np.floor(c)
    t = c - base
    taps = ((-t ** 3 + 2 * t ** 2 - t) / 2, (3 * t ** 3 - 5 * t ** 2 + 2) / 2,
            (-3 * t ** 3 + 4 * t ** 2 + t) / 2, (t ** 3 - t ** 2) / 2)
    weights = np.zeros((c.size, n))
    rows = np.arange(c.size)
    for offset, tap in zip((-1, 0, 1, 2), taps, strict=True):
        np.add.at(weights, (rows, np.clip(base.astype(np.int64) + offset, 0, n - 1)), tap)
    return weights


@dataclass(frozen=True)
class ResidualField:
    """A smooth displacement added to ``post_to_pre``: the pre pixel of raw post pixel ``x`` is
    ``post_to_pre(x) + field(x)`` (pre px).

    The field is sampled on a regular grid of the raw post frame — node ``(i, j)`` at post pixel
    ``(origin_x + j·grid_step_px, origin_y + i·grid_step_px)`` — and interpolated bicubically
    between nodes (Catmull–Rom; the edge nodes are repeated beyond the grid). ``dx``, ``dy`` are
    float32 arrays of shape (rows, cols); ``model`` names what produced the nodes.
    """

    model: str
    grid_step_px: float
    origin: tuple[float, float]
    dx: np.ndarray
    dy: np.ndarray

    def _node_units(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((np.asarray(xs, np.float64) - self.origin[0]) / self.grid_step_px,
                (np.asarray(ys, np.float64) - self.origin[1]) / self.grid_step_px)

    def at(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The field (dx, dy) at scattered raw post coordinates ``xs``, ``ys`` (equal shapes;
        cost grows with points × nodes: for whole windows use :meth:`on_window`)."""
        u, v = self._node_units(xs, ys)
        rows, cols = self.dx.shape
        wx, wy = _cubic_weights(u, cols), _cubic_weights(v, rows)
        return tuple(((wy @ g.astype(np.float64)) * wx).sum(axis=1).reshape(np.shape(xs))
                     for g in (self.dx, self.dy))  # type: ignore[return-value]

    def on_window(self, x0: float, y0: float, width: int, height: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The field (dx, dy), each (height × width) float64, over the window of raw post pixels
        whose top-left pixel is ``(x0, y0)`` — separable, so two small matrix products."""
        u, v = self._node_units(x0 + np.arange(width), y0 + np.arange(height))
        rows, cols = self.dx.shape
        wx, wy = _cubic_weights(u, cols), _cubic_weights(v, rows)
        return wy @ self.dx.astype(np.float64) @ wx.T, wy @ self.dy.astype(np.float64) @ wx.T

    def max_px(self) -> float:
        """Largest displacement (px) over the grid nodes."""
        return float(np.hypot(self.dx, self.dy).max()) if self.dx.size else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "grid_step_px": self.grid_step_px,
                "origin": list(self.origin), "dx": np.round(self.dx, 5).tolist(),
                "dy": np.round(self.dy, 5).tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResidualField:
        dx = np.asarray(data["dx"], np.float32)
        dy = np.asarray(data["dy"], np.float32)
        step = float(data["grid_step_px"])
        if dx.ndim != 2 or dx.shape != dy.shape or step <= 0 or not (
                np.all(np.isfinite(dx)) and np.all(np.isfinite(dy))):
            raise ValueError("residual_field needs finite equal 2-D dx, dy and a positive step")
        ox, oy = (float(v) for v in data["origin"])
        return cls(str(data["model"]), step, (ox, oy), dx, dy)


def map_points(post_to_pre: np.ndarray, field: ResidualField | None, xy: np.ndarray
               ) -> np.ndarray:
    """Pre pixels of the raw post points ``xy`` (N×2) under ``post_to_pre`` plus ``field``."""
    out = apply(post_to_pre, xy)
    if field is not None:
        dx, dy = field.at(xy[:, 0], xy[:, 1])
        out = out + np.column_stack([dx, dy])
    return out


class TransformJSON(TypedDict, total=False):
    """The keys of a transform JSON (:meth:`TransformRecord.to_json`) and their JSON types;
    ``post_to_pre`` is required, the others default to empty."""

    stage: int
    status: str
    reason: str
    post_to_pre: list[list[float]]
    metrics: dict[str, Any]
    residual_field: dict[str, Any] | None


#: :class:`TransformJSON`'s key types, resolved once (its annotations are strings).
_TRANSFORM_KEYS: dict[str, Any] = get_type_hints(TransformJSON)


@dataclass
class TransformRecord:
    """A transform on disk: ``post_to_pre`` plus what produced it and how good it is, and the
    smooth ``residual_field`` on top of it when the pair needed one (``None``: rigid)."""

    post_to_pre: np.ndarray
    status: str
    stage: int
    metrics: dict[str, Any]
    reason: str = ""
    residual_field: ResidualField | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"convention": "post_to_pre: raw post pixel (x=col, y=row, integer centres) -> "
                              "raw pre pixel",
                "stage": self.stage, "status": self.status, "reason": self.reason,
                "post_to_pre": np.asarray(self.post_to_pre, dtype=float).tolist(),
                "decomposition": decompose_similarity(self.post_to_pre),
                "metrics": self.metrics}
        if self.residual_field is not None:
            data["residual_field"] = self.residual_field.to_json()
        return data

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TransformRecord:
        try:
            data: Mapping[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputDataError(f"{path}: not a readable transform JSON ({exc})") from None
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "transform") -> TransformRecord:
        """The record of :meth:`to_json`'s ``data``; :class:`InputDataError` naming ``source``
        and the key when it is not one (types of :class:`TransformJSON`)."""
        if not isinstance(data, dict) or "post_to_pre" not in data:
            raise InputDataError(f"{source}: not a readable transform JSON (no post_to_pre)")
        try:
            for key, hint in _TRANSFORM_KEYS.items():
                if key in data:
                    contracts.check(data[key], hint, f"{source}: {key}")
        except contracts.ContractError as exc:
            raise InputDataError(str(exc)) from None
        matrix = np.array(data["post_to_pre"], dtype=np.float64)
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
            raise InputDataError(f"{source}: post_to_pre must be a finite 3×3 matrix")
        try:
            field = (ResidualField.from_json(data["residual_field"])
                     if data.get("residual_field") else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputDataError(f"{source}: unreadable residual_field ({exc})") from None
        return cls(matrix, str(data.get("status", "")), int(data.get("stage", 0)),
                   dict(data.get("metrics", {})), str(data.get("reason", "")), field)
