"""The alignment pyramid: small box-averaged copies of a full-resolution signal image.

Level ``f`` is the full image averaged over ``f × f`` boxes: level pixel ``(i, j)`` covers
full-resolution rows ``i·f … i·f+f−1`` and columns ``j·f … j·f+f−1``, so its centre is at
full-resolution ``(x, y) = (j·f + (f−1)/2, i·f + (f−1)/2)`` (boxes at the right and bottom edge
may be partial). Factors are powers of two; the first level is the finest whose longer side is
at most :data:`FIRST_LEVEL_MAX_SIDE`, and levels halve down to :data:`LAST_LEVEL_MIN_SIDE`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import cv2
import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io.tiffio import read_pages, write_pages

FIRST_LEVEL_MAX_SIDE = 4096
LAST_LEVEL_MIN_SIDE = 64


def first_factor(height: int, width: int) -> int:
    """The box size of the finest pyramid level for an image of ``height × width`` px."""
    f = 1
    while max(height, width) / f > FIRST_LEVEL_MAX_SIDE:
        f *= 2
    return f


def box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor × factor`` boxes (partial boxes at the edges averaged over what they
    cover), as float32. ``image`` is 2-D with any real dtype."""
    if factor == 1:
        return image.astype(np.float32)
    h, w = image.shape
    # float32 sums are exact for up to 256 16-bit values and within 1e-7 beyond: ample for
    # a pyramid, at half the memory of float64 on full-width 512-row blocks
    src = image.astype(np.float32, copy=False)
    ch = np.minimum(factor, h - np.arange(0, h, factor))
    cw = np.minimum(factor, w - np.arange(0, w, factor))
    if factor == 2:
        # pairs added in one step, as reduceat adds them; the counts (1, 2 or 4) divide
        # exactly in float32
        return _pair_sums(_pair_sums(src, 0), 1) / np.outer(ch, cw).astype(np.float32)
    rows = np.add.reduceat(src, np.arange(0, h, factor), axis=0)
    sums = np.add.reduceat(rows, np.arange(0, w, factor), axis=1)
    return (sums / np.outer(ch, cw)).astype(np.float32)


def _pair_sums(a: np.ndarray, axis: int) -> np.ndarray:
    """Sums of neighbouring pairs along ``axis`` (0 or 1) of a 2-D array, a lone last element
    kept: ``np.add.reduceat(a, range(0, n, 2), axis)`` in half its time."""
    view = a if axis == 0 else a.T
    n = view.shape[0]
    out = np.empty(((n + 1) // 2, view.shape[1]), a.dtype)
    np.add(view[0:n - 1:2], view[1::2], out=out[:n // 2])
    if n % 2:
        out[-1] = view[-1]
    return out if axis == 0 else out.T


def _halve(level: np.ndarray, factor: int, full_shape: tuple[int, int]) -> np.ndarray:
    """The level of box size ``2·factor`` from the level of box size ``factor``. Each box is
    weighted by the full-resolution pixels it covers, so partial boxes at the bottom and right
    edges stay exact means (an unweighted mean of means would not be)."""
    h, w = full_shape
    # the weights (whole numbers ≤ factor², exact in float32 for factor ≤ 4096, i.e. any
    # image below a million px on its shorter side) make each product rounded once, as it
    # would be from float64
    weights = np.outer(np.minimum(factor, h - np.arange(0, h, factor)),
                       np.minimum(factor, w - np.arange(0, w, factor))).astype(np.float32)
    return box_reduce(level * weights, 2) / box_reduce(weights, 2)


@dataclass
class Pyramid:
    """Levels of one image: ``levels[i]`` is the box average over ``factors[i]`` px."""

    factors: list[int]
    levels: list[np.ndarray]
    full_shape: tuple[int, int]

    @classmethod
    def from_first_level(cls, first: np.ndarray, factor: int, full_shape: tuple[int, int]
                         ) -> Pyramid:
        factors, levels = [factor], [first]
        while min(levels[-1].shape) // 2 >= LAST_LEVEL_MIN_SIDE:
            levels.append(_halve(levels[-1], factors[-1], full_shape))
            factors.append(factors[-1] * 2)
        return cls(factors, levels, full_shape)

    def level_for(self, max_side: int) -> tuple[np.ndarray, int]:
        """The finest level whose longer side is at most ``max_side`` (or the coarsest)."""
        for level, f in zip(self.levels, self.factors):
            if max(level.shape) <= max_side:
                return level, f
        return self.levels[-1], self.factors[-1]

    def save(self, path: str | os.PathLike[str]) -> None:
        meta = json.dumps({"factors": self.factors, "full_shape": list(self.full_shape)})
        write_pages(path, self.levels, description=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Pyramid:
        import tifffile

        levels = read_pages(path)
        with tifffile.TiffFile(path) as tif:
            meta = json.loads(tif.pages.first.description)
        return cls(list(meta["factors"]), levels, tuple(meta["full_shape"]))


def level_to_full(factor: int) -> np.ndarray:
    """3×3 map from level pixel coordinates (box size ``factor``) to full-resolution ones."""
    off = (factor - 1) / 2.0
    return np.array([[factor, 0, off], [0, factor, off], [0, 0, 1]], float)


def to_full(a_level: np.ndarray, f_pre: int, f_post: int) -> np.ndarray:
    """``post_to_pre`` between levels → between full-resolution frames."""
    return level_to_full(f_pre) @ a_level @ np.linalg.inv(level_to_full(f_post))


def to_level(a_full: np.ndarray, f_pre: int, f_post: int) -> np.ndarray:
    """``post_to_pre`` between full-resolution frames → between levels."""
    return np.linalg.inv(level_to_full(f_pre)) @ a_full @ level_to_full(f_post)


def common_level(pre: Pyramid, post: Pyramid, max_side: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The finest level with the same box size in both pyramids whose longer side (of the
    larger image) is ≤ ``max_side``; falls back to the coarsest common level."""
    shared = [f for f in post.factors if f in pre.factors]
    if not shared:
        raise InputDataError("pre and post pyramids share no level; re-run stage 1")
    pick = shared[-1]
    for f in shared:
        i, j = pre.factors.index(f), post.factors.index(f)
        if max(*pre.levels[i].shape, *post.levels[j].shape) <= max_side:
            pick = f
            break
    return pre.levels[pre.factors.index(pick)], post.levels[post.factors.index(pick)], pick


def level_texture(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Log intensity of a pyramid level, high-passed (minus its blur of σ ``8·sigma``),
    smoothed by ``sigma`` px and divided by its standard deviation: the texture stage 2's
    ``fine_ecc`` matches and :mod:`exo2micro.numerics.review` compares. (Stage 3's patches use
    :func:`exo2micro.stages.align_interior.patch_texture`.)"""
    logv = np.log1p(np.maximum(img, 0)).astype(np.float32)
    hp = logv - cv2.GaussianBlur(logv, (0, 0), 8 * sigma)
    hp = cv2.GaussianBlur(hp, (0, 0), sigma)
    sd = float(hp.std()) or 1.0
    return hp / sd
