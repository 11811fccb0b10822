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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exo2micro.atomic import write_json_atomic
from exo2micro.errors import InputDataError


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


@dataclass
class TransformRecord:
    """A transform on disk: ``post_to_pre`` plus what produced it and how good it is."""

    post_to_pre: np.ndarray
    status: str
    stage: int
    metrics: dict[str, Any]
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"convention": "post_to_pre: raw post pixel (x=col, y=row, integer centres) -> "
                              "raw pre pixel",
                "stage": self.stage, "status": self.status, "reason": self.reason,
                "post_to_pre": np.asarray(self.post_to_pre, dtype=float).tolist(),
                "decomposition": decompose_similarity(self.post_to_pre),
                "metrics": self.metrics}

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TransformRecord:
        try:
            data: Mapping[str, Any] = json.loads(Path(path).read_text())
            matrix = np.array(data["post_to_pre"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputDataError(f"{path}: not a readable transform JSON ({exc})") from None
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
            raise InputDataError(f"{path}: post_to_pre must be a finite 3×3 matrix")
        return cls(matrix, str(data.get("status", "")), int(data.get("stage", 0)),
                   dict(data.get("metrics", {})), str(data.get("reason", "")))
