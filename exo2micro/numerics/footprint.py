"""The tissue footprint: which pixels of a (downsampled) image belong to the sample.

Zero means "no data" only outside the tissue (docs/output.md): the mask is found on a smoothed,
log-scaled image with Otsu's threshold, then holes are filled, so genuinely dark pixels inside
the tissue (cracks, opaque grains) stay tissue. Small specks are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: Components smaller than this fraction of the largest one are dropped as specks.
MIN_COMPONENT_FRACTION = 0.02


def tissue_mask(image: np.ndarray, smooth_px: float = 2.0) -> np.ndarray:
    """Boolean tissue mask of a 2-D float image (typically a pyramid level).

    Memory: one row-major float32 copy of ``image`` (whatever its layout), worked on in
    place, a few 1-byte masks and OpenCV's int32 component labels; fresh full-level
    temporaries would each cost their page faults (the first mask of a process took twice as
    long as the next ones)."""
    img = np.nan_to_num(np.array(image, np.float32, order="C"), copy=False, nan=0.0)
    if smooth_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), smooth_px, dst=img)  # in place: the same bits
    logv = np.log1p(np.maximum(img, 0.0, out=img), out=img)
    hi = float(logv.max())
    if hi <= 0:
        return np.zeros(img.shape, bool)
    np.divide(logv, hi, out=logv)
    np.multiply(logv, 255.0, out=logv)
    u8 = np.clip(logv, 0, 255, out=logv).astype(np.uint8)
    del img, logv
    _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, np.uint8)
    keep[1:] = areas >= MIN_COMPONENT_FRACTION * areas.max()
    return fill_holes(keep[labels]).view(bool)


def edge_midpoint(image: np.ndarray) -> float:
    """The intensity halfway between the median of the tissue (:func:`tissue_mask`) and the
    median of the background of ``image`` (its units): where the tissue edge is crossed at
    half height. It scales with the image, so an edge blurred alike in two images that differ
    by a brightness factor is crossed at the same place in both. ``nan`` without tissue or
    without background."""
    mask = tissue_mask(image)
    values = np.nan_to_num(image.astype(np.float32), nan=0.0)
    if mask.all() or not mask.any():
        return math.nan
    return float((np.median(values[mask]) + np.median(values[~mask])) / 2)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (uint8 0/1 in and out)."""
    flood = np.pad(np.ascontiguousarray(mask, np.uint8), 1)  # row-major, as OpenCV needs
    ff = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff, (0, 0), 1)
    # after the fill, 0 is left only in holes: the mask or a hole is flood != 1 or mask == 1
    filled = np.not_equal(flood[1:-1, 1:-1], 1)
    filled |= np.asarray(mask, bool)
    return filled.view(np.uint8)


@dataclass(frozen=True)
class FootprintStats:
    """Summary of a tissue mask at pyramid factor ``factor`` (coordinates in full-res px)."""

    fraction: float
    area_px: float
    centroid_xy: tuple[float, float]
    bbox_xywh: tuple[float, float, float, float]
    tissue_p1: float
    tissue_p50: float
    tissue_p99: float
    background_p50: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def footprint_stats(image: np.ndarray, mask: np.ndarray, factor: int) -> FootprintStats:
    """Statistics of ``mask`` over ``image`` (a pyramid level of box size ``factor``).

    The centroid and box come from the mask's row and column counts, not from the
    coordinates of every tissue pixel (two int64 arrays of the tissue's size): the sums of
    whole-number coordinates are exact either way, so the means are the same."""
    rows = np.count_nonzero(mask, axis=1)
    n = int(rows.sum())
    off = (factor - 1) / 2.0
    if n == 0:
        return FootprintStats(0.0, 0.0, (float("nan"),) * 2, (0.0,) * 4, *(float("nan"),) * 4)
    cols = np.count_nonzero(mask, axis=0)
    y_in, x_in = np.flatnonzero(rows), np.flatnonzero(cols)
    x_mean = float(np.dot(np.arange(cols.size), cols)) / n
    y_mean = float(np.dot(np.arange(rows.size), rows)) / n
    tissue = image[mask]
    bg = image[~mask]
    p1, p50, p99 = (float(v) for v in np.percentile(tissue, [1, 50, 99]))
    return FootprintStats(
        fraction=float(n / mask.size),
        area_px=float(n * factor * factor),
        centroid_xy=(float(x_mean * factor + off), float(y_mean * factor + off)),
        bbox_xywh=(float(x_in[0] * factor), float(y_in[0] * factor),
                   float((x_in[-1] - x_in[0] + 1) * factor),
                   float((y_in[-1] - y_in[0] + 1) * factor)),
        tissue_p1=p1, tissue_p50=p50, tissue_p99=p99,
        background_p50=float(np.median(bg)) if bg.size else float("nan"))


def erode_ellipse(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` (2-D, nonzero = inside) eroded by OpenCV's elliptic structuring element of
    radius ``r`` px with zeros outside the array: pixel for pixel what ``cv2.erode(mask,
    cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2r+1, 2r+1)), borderType=BORDER_CONSTANT,
    borderValue=0) > 0`` gives (bool), in a time that does not grow with ``r`` (OpenCV's cost
    grows with the element's area: 0.16 s for r = 81 on a 1 000 × 800 level).

    The element holds every offset nearer than ``√inner`` and none farther than ``√outer``
    (squared lengths, below). An exact Euclidean distance transform to the nearest outside
    pixel (the array's border counting as outside) settles every pixel whose distance is
    below the one or above the other; the thin band between is checked exactly, offset by
    offset of the element's rim."""
    if r < 0:
        raise ValueError(f"erosion radius must be >= 0, got {r}")
    m = (np.asarray(mask) != 0).astype(np.uint8)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)).astype(bool)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = dx * dx + dy * dy
    # offsets beyond the box are ≥ (r + 1)² away (r = 0: the element is the box)
    inner = int(d2[~se].min(initial=(r + 1) ** 2))
    outer = int(d2[se].max())
    padded = np.pad(m, 1)  # the border: outside pixels, as BORDER_CONSTANT 0 makes them
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    # squared distances are whole numbers; the float32 distances recover them to ``slack``
    dist2 = dist.astype(np.float64) ** 2
    slack = 1.0 + 3e-7 * float(dist2.max(initial=0.0))
    out = dist2 > outer + slack
    band_y, band_x = np.nonzero((dist2 >= inner - slack) & (dist2 <= outer + slack))
    if band_y.size:
        # a band pixel's nearest outside pixel lies ≥ inner − 2·slack away: only the element's
        # offsets that far can reach one
        rim = se & (d2 >= inner - 2 * slack)
        oy, ox = dy[rim] + 1, dx[rim] + 1  # + 1: into the padded array
        hit = np.zeros(band_y.size, bool)
        h, w = padded.shape
        for start in range(0, oy.size, 64):  # a few offsets at a time: bounded memory
            ys = band_y[:, None] + oy[None, start:start + 64]
            xs = band_x[:, None] + ox[None, start:start + 64]
            beyond = (ys < 0) | (ys >= h) | (xs < 0) | (xs >= w)
            vals = padded[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)]
            hit |= ((vals == 0) | beyond).any(axis=1)
        out[band_y, band_x] = ~hit
    return out
