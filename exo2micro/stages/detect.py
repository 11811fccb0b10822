"""Stage 5 — detect: the noise model of the difference image, its significance, and the
catalogue of stained microbes (positive sources of ``post − k · aligned_pre``).

Inputs (pair folder, :class:`~exo2micro.layout.PairLayout`): the stage-4 Moffat difference
image (float32, NaN = no data, output frame), the stage-3 aligned pre (same frame), the
stage-1 post signal (native dtype, raw post frame; for saturation flags) and the stage-4
record (k, the tissue thresholds). Coordinates follow docs/architecture.md: x = column,
y = row, pixel centres at integers; output pixel ``(x, y)`` is raw post pixel
``(x − pad, y − pad)``, and the catalogue is in the raw post frame.

Noise model
-----------
The difference ``D = post − k · aligned_pre`` of background tissue has variance

    var(D) = var(post) + k² · s · var(pre) ≈ a + b · L,    L = k · aligned_pre (post counts)

where each image contributes read noise (constant) and shot noise through the camera gain
(∝ its level; post ≈ k · pre on background, so both shot terms are ∝ L), and ``s`` < 1 is the
variance reduction of the interpolation that warped pre. Rather than modelling each term,
``a`` and ``b`` are fitted per pair (:func:`fit_noise`): the difference image is cut into
:data:`NOISE_TILE`² tiles, each tile gives its level (median of L) and a robust variance (a
5σ-clipped variance about the median, which ignores the few microbe pixels of a tile), tiles
are binned by level and a line is fitted to the bin medians; the intercept is at least the
quantisation variance 1/12 of integer counts. The matched filter's variance is
``c · Σg² · var``: ``c`` (the median ratio over tissue tiles, rescaled so that the lower half
of the searched significance over tissue has unit spread) is > 1 because the interpolation
that warped pre correlates its noise between neighbouring pixels (and residual texture
survives the filter), so the detection threshold is calibrated in real σ, not white-noise σ.

The **significance image** ``D / σ(L)`` (float32, NaN = no data) is written next to the
difference image. Sources are detected on the **matched-filter significance**: the
background-subtracted difference convolved with a Gaussian of σ = :data:`KERNEL_SIGMA` px,
divided by ``σ_f`` at the kernel-weighted level (:func:`filter_level`; near no-data pixels,
by the part of the kernel that saw data; pixels
within :data:`NO_DATA_MARGIN` px of no data are left out). For a
Gaussian source its value is close to the source's integrated SNR (its flux over the noise in
a 2σ-radius aperture), so ``detect_threshold`` is a threshold on integrated SNR.

Detection and measurement (photutils)
-------------------------------------
``detect_sources`` (8-connected, at least ``detect_min_area`` px above ``detect_threshold``),
``deblend_sources`` (when ``detect_deblend``) and ``SourceCatalog`` on the background-
subtracted difference with the per-pixel σ as error: the centroid (first moments, then
:func:`windowed_centroids`), peak, area, second-moment σ along the major/minor axes and
the orientation (degrees from +x towards +y, i.e. clockwise as displayed with y down); the
flux is summed
over the segment grown by :data:`FLUX_GROW` px (:func:`grown_flux`). Only segments with two or
more peaks are handed to the deblender (:func:`multi_peak_labels`): photutils' per-source
cost is what bounds the speed of this stage. ``snr`` is the peak of the matched-filter
significance in the source: the detection SNR, ≈ the integrated SNR (it is not
flux / flux_err: the grown segment holds more noise than the optimal filter). The local background
is the mean of quiet pixels (|D/σ| < :data:`QUIET_SIGMA`) over :data:`BG_BOX` px boxes,
interpolated bilinearly. Flags (bits): :data:`FLAG_EDGE` (within :data:`EDGE_GROW` px of no
data or of non-tissue), :data:`FLAG_SATURATED` (a post pixel of the source at the dtype's
maximum), :data:`FLAG_DEBLENDED`.

Streaming and memory
--------------------
Pass 1 reads evenly spaced blocks of :data:`~exo2micro.tiffio.TILE` rows, at most
:data:`SAMPLE_PIXELS` px in all, for the noise fit. Pass 2 reads every block of TILE rows with
:data:`HALO` extra rows above and below, detects in the whole block and keeps a source only
if its centroid lies in the block's core rows (``[y0 − 0.5, y1 − 0.5)``), so every source is
measured once, from a block that holds it whole (sources up to 2 × HALO px tall). Memory is
about a dozen ``(TILE + 2 · HALO) × width`` float32 arrays (≈ 1 GB at 30 000 px wide) plus
photutils' per-source cutouts; the significance image is streamed to its writer, never held.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from exo2micro import diagnostics
from exo2micro.atomic import atomic_path
from exo2micro.errors import InputDataError
from exo2micro.fitsio import FitsImage, make_header, write_streamed
from exo2micro.layout import PairLayout, formats, tiff_compression
from exo2micro.records import StageRun, product_ome, require_stage, stage1_physical
from exo2micro.result import build_result, write_result
from exo2micro.stages.subtract import TILE, FanOut, box_mean, preview_factor
from exo2micro.tiffio import TiffImage, read_info, write_tiled

#: Gaussian σ (px) of the matched filter: it keeps ≥ 92 % of the optimal SNR of Gaussian
#: sources of σ 2–4.5 px and ≥ 80 % for σ 1.5–6 (the efficiency is 2σσ_k / (σ² + σ_k²)).
KERNEL_SIGMA = 3.0
#: Gaussian σ (px) of the smoothing of L = k · aligned_pre before it enters σ(L).
LEVEL_SMOOTH = 2.0
#: Tile edge (px) of the noise fit; large enough that the MAD of the filtered image (whose
#: pixels are correlated over ≈ 4π·KERNEL_SIGMA² px) rests on ≈ 50 independent values.
NOISE_TILE = 64
#: Pixels sampled by the noise fit (pass 1), in evenly spaced blocks.
SAMPLE_PIXELS = 16_000_000
#: Rows read above and below each block of pass 2 (a multiple of BG_BOX, so the background
#: boxes of every block lie on one global grid).
HALO = 64
#: Box (px) of the local background, and the |D/σ| below which a pixel counts as quiet.
BG_BOX = 64
QUIET_SIGMA = 3.0
#: Data pixels this close (px) to no data are not searched (see :func:`usable`).
NO_DATA_MARGIN = 3
#: Iterations of :func:`windowed_centroids`.
WINDOW_ITERATIONS = 3
#: Growth (px) of each segment for its flux (:func:`grown_flux`).
FLUX_GROW = 3
#: Sources within this many px of no data or non-tissue are flagged FLAG_EDGE.
EDGE_GROW = 2
#: Matched-filter pixels whose kernel saw less than this fraction of data are not searched.
MIN_WEIGHT = 0.5
#: Deblending: thresholds per source and the smallest flux fraction of a component.
DEBLEND_LEVELS = 32
DEBLEND_CONTRAST = 0.005
#: Flag bits of the catalogue.
FLAG_EDGE = 1
FLAG_SATURATED = 2
FLAG_DEBLENDED = 4
#: Integrated SNR at which the completeness estimate is measured, and its injection curve.
COMPLETENESS_SNR = 10.0
INJECT_SNR = (3.0, 5.0, 7.0, 10.0, 20.0)
#: Injected sources: Gaussian σ (px), spacing (px), windows (blocks × columns) and matching
#: radius (px) of the recovery test.
INJECT_SIGMA = 3.0
INJECT_SPACING = 40
INJECT_WINDOWS = 3
INJECT_COLS = 2048
INJECT_MATCH_PX = 1.5
#: Catalogue columns, in order (CSV and ECSV), with their units.
COLUMNS: dict[str, str] = {
    "id": "", "x": "pix", "y": "pix", "flux": "ct", "flux_err": "ct", "peak": "ct",
    "snr": "", "area_px": "pix2", "a": "pix", "b": "pix", "theta": "deg",
    "flags": "",
}


# ------------------------------------------------------------------------------ noise model
#: Σ g² of the unit-sum matched-filter kernel: its variance gain on white noise.
KERNEL_NOISE_GAIN = 1.0 / (4 * math.pi * KERNEL_SIGMA**2)
#: Range allowed to the fitted correlation factor of the filtered noise.
CORRELATION_RANGE = (0.5, 10.0)


@dataclass(frozen=True)
class NoiseModel:
    """``var = a + b · max(L, 0)`` of the difference (L = k · aligned_pre, post counts;
    variances in post counts²) and the correlation factor ``c`` of its matched filter,
    whose variance is ``c · Σg² · var``."""

    a: float
    b: float
    c: float
    n_tiles: int

    def sigma(self, level: np.ndarray) -> np.ndarray:
        """Per-pixel σ (post counts) of the difference at level ``level``."""
        return np.sqrt(np.float32(self.a)
                       + np.float32(self.b) * np.maximum(level, 0, dtype=np.float32))

    def sigma_filtered(self, level: np.ndarray) -> np.ndarray:
        """σ of the matched-filtered difference at level ``level``."""
        return self.sigma(level) * np.float32(math.sqrt(self.c * KERNEL_NOISE_GAIN))

    def correlation(self, level: np.ndarray) -> np.ndarray:
        """Variance of the matched filter over its white-noise value ``σ² · Σg²``: > 1 where
        the noise is spatially correlated (the interpolated pre, residual texture)."""
        return np.full(np.shape(level), self.c, np.float32)

    def integrated_noise(self, level: np.ndarray, sigma_px: float) -> np.ndarray:
        """Noise (post counts) of the flux of a Gaussian source of σ ``sigma_px`` at level
        ``level``: the noise of a sum over a 2σ-radius aperture (``σ · 2√π · sigma_px``,
        which makes flux / noise the optimal SNR of white noise), times √correlation.
        Flux over this is the *integrated SNR* used by the completeness estimate and by
        ``bench/detect.py``."""
        return (self.sigma(level) * np.float32(2 * math.sqrt(math.pi) * sigma_px)
                * np.sqrt(self.correlation(level)))

    def to_json(self) -> dict[str, Any]:
        return {"model": "var = a + b * L, L = k * aligned_pre (post counts); matched "
                         "filter: var_f = c * sum(g^2) * var",
                "a": self.a, "b": self.b, "c": self.c, "kernel_sigma_px": KERNEL_SIGMA,
                "tiles": self.n_tiles}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NoiseModel:
        """The model of a stage-5 record's ``noise_model``."""
        return cls(float(data["a"]), float(data["b"]), float(data["c"]), int(data["tiles"]))


def level_image(pre: np.ndarray, k: float) -> np.ndarray:
    """L = k · aligned_pre smoothed over :data:`LEVEL_SMOOTH` px (NaN read as 0), float32."""
    level = np.nan_to_num(pre.astype(np.float32) * np.float32(k), nan=0.0)
    size = 2 * math.ceil(3 * LEVEL_SMOOTH) + 1
    return cv2.GaussianBlur(level, (size, size), LEVEL_SMOOTH)


def filter_level(level: np.ndarray) -> np.ndarray:
    """The level that sets the matched filter's noise: var(Σ g·D) = Σ g² (a + b L), and
    g² / Σg² is a unit Gaussian of σ_k/√2, so L blurred by it. At a tissue edge the filter
    sees the noisy inside even where its centre is outside."""
    sigma = KERNEL_SIGMA / math.sqrt(2)
    size = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(level, (size, size), sigma)


def matched_filter(diff: np.ndarray, sigma: float = KERNEL_SIGMA
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(D ⊛ g, w)``: the difference (NaN read as 0) convolved with a unit-sum Gaussian of σ
    ``sigma`` px, and the fraction of the kernel's noise weight (``g²``) that fell on data."""
    valid = np.isfinite(diff)
    size = 2 * math.ceil(3 * sigma) + 1
    filtered = cv2.GaussianBlur(np.where(valid, diff, 0).astype(np.float32), (size, size),
                                sigma, borderType=cv2.BORDER_CONSTANT)
    # g² is a Gaussian of σ/√2 (up to its sum): its blur of the data mask is the noise weight
    weight = cv2.GaussianBlur(valid.astype(np.float32), (size, size), sigma / math.sqrt(2),
                              borderType=cv2.BORDER_CONSTANT)
    return filtered, weight


def usable(diff: np.ndarray) -> np.ndarray:
    """Data pixels at least :data:`NO_DATA_MARGIN` px from no data: nearer, the warp of pre
    interpolated with the zeros outside its frame, which reads as stain."""
    size = 2 * NO_DATA_MARGIN + 1
    return cv2.erode(np.isfinite(diff).view(np.uint8), np.ones((size, size), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=1).view(bool)


def tile_stats(diff: np.ndarray, level: np.ndarray, model: NoiseModel | None = None,
               tile: int = NOISE_TILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per complete ``tile × tile`` tile without no-data pixels: median level and robust
    variances (:func:`_robust_var`) of the difference and of its matched filter. With a (first)
    ``model`` the filter sees the difference minus its :func:`local_background`, as in
    detection, so that the residual texture the background removes is not counted."""
    diff = np.where(usable(diff), diff, np.nan)
    src = diff if model is None else diff - local_background(diff, model.sigma(level))
    filtered, weight = matched_filter(src)
    h, w = diff.shape
    th, tw = h // tile, w // tile
    if th == 0 or tw == 0:
        return np.empty(0), np.empty(0), np.empty(0)

    def tiles(a: np.ndarray) -> np.ndarray:
        return (a[:th * tile, :tw * tile].reshape(th, tile, tw, tile).swapaxes(1, 2)
                .reshape(th * tw, tile * tile))

    keep = tiles(weight).min(axis=1) > 0.999
    d, f, lev = tiles(diff)[keep], tiles(filtered)[keep], tiles(level)[keep]
    return np.median(lev, axis=1), _robust_var(d), _robust_var(f)


def _robust_var(values: np.ndarray) -> np.ndarray:
    """Per row: the variance of the values within 5 s0 of the median, s0 = max(1.4826 · MAD,
    std / 2). The clip drops stained pixels; the std term keeps quantised images (a tile of
    mostly equal counts has MAD 0) from reading as noiseless."""
    dev = values - np.median(values, axis=1, keepdims=True)
    s0 = np.maximum(1.4826 * np.median(np.abs(dev), axis=1), 0.5 * dev.std(axis=1))
    keep = np.abs(dev) < 5 * s0[:, None]
    return (np.sum(np.where(keep, dev * dev, 0), axis=1) / np.maximum(keep.sum(axis=1), 1))


def fit_line(level: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``var = a + b · level``, fitted to the medians of up to 24 equal-count
    level bins (weighted by 1/var², i.e. equal relative errors); ``b`` ≥ 0 and ``a`` > 0.
    Raises :class:`InputDataError` without tiles."""
    if level.size == 0:
        raise InputDataError("no tile of the difference image free of no-data pixels; cannot "
                             "estimate its noise")
    order = np.argsort(level)
    n_bins = int(np.clip(level.size // 8, 1, 24))
    parts = np.array_split(order, n_bins)
    x = np.array([np.median(level[p]) for p in parts])
    y = np.array([np.median(var[p]) for p in parts])
    floor = 1e-6 * max(float(np.median(var)), 1e-12)
    if n_bins < 2 or np.ptp(x) <= 1e-9 * max(1.0, float(np.abs(x).max())):
        return max(float(np.median(var)), floor), 0.0
    wts = 1.0 / np.maximum(y, floor) ** 2
    b, a = np.polynomial.polynomial.polyfit(x, y, 1, w=np.sqrt(wts))[::-1]
    if b < 0:
        return max(float(np.median(var)), floor), 0.0
    if a <= floor:  # refit through the floor: var ∝ level
        b = float(np.sum(wts * x * y) / np.sum(wts * x * x))
        a = floor
    return float(a), float(b)


def fit_noise(level: np.ndarray, var_d: np.ndarray, var_f: np.ndarray,
              floor: float = 0.0) -> NoiseModel:
    """The :class:`NoiseModel` from :func:`tile_stats` of the sampled blocks: the line of
    :func:`fit_line` (intercept at least ``floor``, e.g. the quantisation variance 1/12 of
    integer counts) and the correlation factor as the median of the tiles' filtered variance
    over its white-noise value, in the brighter half of the tiles (tissue, where microbes
    are sought)."""
    a, b = fit_line(level, var_d)
    a = max(a, floor)
    model = NoiseModel(a, b, 1.0, int(level.size))
    bright = level >= np.median(level)
    ratio = var_f[bright] / (model.sigma(level[bright]) ** 2 * KERNEL_NOISE_GAIN)
    c = float(np.clip(np.median(ratio), *CORRELATION_RANGE)) if ratio.size else 1.0
    return NoiseModel(a, b, c, int(level.size))


# ------------------------------------------------------------------------------ one block
@dataclass
class Block:
    """Rows ``[ya, yb)`` of the output frame: difference, level L, tissue and saturation."""

    ya: int
    diff: np.ndarray
    level: np.ndarray
    tissue: np.ndarray
    saturated: np.ndarray


def local_background(diff: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Mean of the quiet pixels (|D/σ| < :data:`QUIET_SIGMA`) over :data:`BG_BOX` px boxes,
    interpolated bilinearly to every pixel (0 in boxes with too few quiet pixels)."""
    with np.errstate(invalid="ignore"):
        quiet = (np.abs(diff) < np.float32(QUIET_SIGMA) * sigma).astype(np.float32)
    sums = box_mean(np.where(quiet > 0, diff, 0), BG_BOX)
    counts = box_mean(quiet, BG_BOX)
    boxes = np.where(counts >= 0.25, sums / np.maximum(counts, 1e-6), 0).astype(np.float32)
    h, w = diff.shape
    full = cv2.resize(boxes, (boxes.shape[1] * BG_BOX, boxes.shape[0] * BG_BOX),
                      interpolation=cv2.INTER_LINEAR)
    return full[:h, :w]


@dataclass
class Detection:
    """What one block yields: the significance of its rows and the catalogue columns."""

    significance: np.ndarray
    columns: dict[str, np.ndarray]


def _empty_columns() -> dict[str, np.ndarray]:
    return {name: np.empty(0, np.int64 if name in ("id", "flags") else np.float64)
            for name in COLUMNS}


def detect_block(block: Block, model: NoiseModel, threshold: float, min_area: int,
                 deblend: bool, core: tuple[float, float] | None = None) -> Detection:
    """Detect and measure the sources of one block (coordinates in the block's own pixels
    plus ``block.ya`` rows, i.e. output-frame coordinates).

    ``core`` = ``(y_lo, y_hi)`` (output-frame rows) keeps only sources whose centroid y lies
    in ``[y_lo, y_hi)``; ``None`` keeps all.
    """
    from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources
    from photutils.utils.exceptions import NoDetectionsWarning

    sigma = model.sigma(block.level)
    with np.errstate(invalid="ignore", divide="ignore"):
        significance = (block.diff / sigma).astype(np.float32)
    snr_map, searchable, subtracted, valid = search_map(block, model, sigma)
    with warnings.catch_warnings():  # no source in a block is an answer, not a problem
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(snr_map, threshold, min_area, connectivity=8, mask=~searchable)
    if segm is None:
        return Detection(significance, _empty_columns())
    parents = segm
    if deblend:
        blends = multi_peak_labels(snr_map, segm.data, threshold)
        if blends.size:
            segm = deblend_sources(snr_map, segm, min_area, labels=blends,
                                   n_levels=DEBLEND_LEVELS, contrast=DEBLEND_CONTRAST,
                                   progress_bar=False)
    cat = SourceCatalog(subtracted, segm, error=sigma, mask=~valid)
    labels = np.asarray(segm.labels)
    pixels = SegmentPixels.of(segm.data, labels)
    x, y = windowed_centroids(subtracted, pixels, np.asarray(cat.x_centroid, np.float64),
                              np.asarray(cat.y_centroid, np.float64))
    y = y + block.ya
    keep = np.isfinite(x) & np.isfinite(y)
    if core is not None:
        keep &= (y >= core[0]) & (y < core[1])
    if not keep.any():
        return Detection(significance, _empty_columns())
    bad = ~valid | ~block.tissue
    near_bad = cv2.dilate(bad.view(np.uint8), np.ones((2 * EDGE_GROW + 1,) * 2, np.uint8))
    flags = FLAG_EDGE * pixels.any(near_bad.view(bool)).astype(np.int64)
    if block.saturated.any():
        flags |= FLAG_SATURATED * pixels.any(block.saturated)
    if deblend and segm is not parents:
        flags |= FLAG_DEBLENDED * np.isin(labels, np.asarray(segm.deblended_labels))
    flux, flux_err = grown_flux(subtracted, sigma, segm.data, labels, model.c)
    columns = {
        "x": x, "y": y, "flux": flux, "flux_err": flux_err,
        "peak": np.asarray(cat.max_value, np.float64),
        "snr": pixels.maximum(snr_map),
        "area_px": np.asarray(cat.area.value, np.float64),
        "a": np.asarray(cat.semimajor_axis.value, np.float64),
        "b": np.asarray(cat.semiminor_axis.value, np.float64),
        "theta": np.asarray(cat.orientation.value, np.float64),
        "flags": flags.astype(np.int64),
    }
    columns = {name: values[keep] for name, values in columns.items()}
    columns["id"] = np.zeros(int(keep.sum()), np.int64)
    return Detection(significance, columns)


def search_map(block: Block, model: NoiseModel, sigma: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The matched-filter significance of a block (0 where not searchable), where it may be
    searched, the background-subtracted difference (0 without data) and the usable-data
    mask. ``sigma`` is ``model.sigma(block.level)``.

    The background's quiet pixels leave out, besides |D/σ| ≥ :data:`QUIET_SIGMA`, those
    where the filtered difference exceeds 2 σ_f: the faint wings of sources, which would
    otherwise raise the background and lower every source's significance."""
    valid = usable(block.diff)
    diff = np.where(valid, block.diff, np.nan).astype(np.float32)
    sigma_f = model.sigma_filtered(filter_level(block.level))
    raw, _ = matched_filter(diff)
    with np.errstate(invalid="ignore"):
        wings = raw > 2 * sigma_f
    subtracted = np.where(valid, diff - local_background(np.where(wings, np.nan, diff), sigma),
                          0).astype(np.float32)
    filtered, weight = matched_filter(np.where(valid, subtracted, np.nan))
    searchable = weight >= MIN_WEIGHT
    with np.errstate(invalid="ignore", divide="ignore"):
        snr_map = np.where(searchable, filtered / (sigma_f * np.sqrt(weight)), 0
                           ).astype(np.float32)
    return snr_map, searchable, subtracted, valid


@dataclass(frozen=True)
class SegmentPixels:
    """The labelled pixels of a segmentation: their rows, columns and the index of their
    segment in ``labels`` — per-segment reductions over these few pixels are much cheaper
    than scipy's labelled reductions over the whole block (which sort it)."""

    rows: np.ndarray
    cols: np.ndarray
    which: np.ndarray
    n: int

    @classmethod
    def of(cls, segments: np.ndarray, labels: np.ndarray) -> SegmentPixels:
        rows, cols = np.nonzero(segments)
        return cls(rows, cols, np.searchsorted(labels, segments[rows, cols]), labels.size)

    def any(self, mask: np.ndarray) -> np.ndarray:
        """Per segment: whether ``mask`` (bool, block-shaped) is set on any of its pixels."""
        return np.bincount(self.which, mask[self.rows, self.cols], self.n) > 0

    def maximum(self, values: np.ndarray) -> np.ndarray:
        """Per segment: the largest of ``values`` (block-shaped) over its pixels."""
        out = np.full(self.n, -np.inf)
        np.maximum.at(out, self.which, values[self.rows, self.cols])
        return out


def windowed_centroids(data: np.ndarray, pixels: SegmentPixels, x: np.ndarray,
                       y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-windowed centroids (px, the block's own frame): starting from the first
    moments ``x``, ``y``, :data:`WINDOW_ITERATIONS` times the first moments of the positive
    data of each segment weighted by a Gaussian of σ = :data:`KERNEL_SIGMA` px about the
    current centre. The window ignores the noisy outskirts of large segments and the wings of
    touching neighbours. Vectorised over the segments' pixels."""
    which, n = pixels.which, pixels.n
    values = np.maximum(data[pixels.rows, pixels.cols], 0).astype(np.float64)
    cx, cy = x.copy(), y.copy()
    for _ in range(WINDOW_ITERATIONS):
        ok = np.isfinite(cx) & np.isfinite(cy)
        dx, dy = pixels.cols - cx[which], pixels.rows - cy[which]
        w = values * np.exp(-(dx * dx + dy * dy) / (2 * KERNEL_SIGMA**2))
        total = np.bincount(which, w, n)
        good = ok & (total > 0)
        cx[good] += np.bincount(which, w * dx, n)[good] / total[good]
        cy[good] += np.bincount(which, w * dy, n)[good] / total[good]
    return cx, cy


def multi_peak_labels(snr_map: np.ndarray, segments: np.ndarray, threshold: float
                      ) -> np.ndarray:
    """Labels of the segments holding two or more local maxima (5 × 5) above ``threshold``:
    the only ones deblending can split, so the others skip its per-source cost."""
    peaks = (snr_map == cv2.dilate(snr_map, np.ones((5, 5), np.uint8))) & (snr_map > threshold)
    counts = np.bincount(segments[peaks & (segments > 0)], minlength=int(segments.max()) + 1)
    return np.flatnonzero(counts >= 2)


def grown_flux(subtracted: np.ndarray, sigma: np.ndarray, segments: np.ndarray,
               labels: np.ndarray, correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """Flux (post counts) of each source over its segment grown by :data:`FLUX_GROW` px into
    unlabelled pixels (the isophotal segment misses the faint wings), and its error: the
    per-pixel σ summed in quadrature, times √``correlation`` (the filter-scale correlation of
    the noise, :class:`NoiseModel`)."""
    size = 2 * FLUX_GROW + 1
    grown = ndimage.grey_dilation(segments, size=(size, size))
    grown = np.where(segments > 0, segments, grown)
    flux = np.asarray(ndimage.sum_labels(subtracted, grown, labels), np.float64)
    var = np.asarray(ndimage.sum_labels(sigma.astype(np.float64) ** 2, grown, labels))
    return flux, np.sqrt(var * correlation)


# ------------------------------------------------------------------------------ reading
class BlockReader:
    """Row blocks of the output frame from the stage-4 difference, the stage-3 aligned pre
    and the stage-1 post (saturation), with the tissue test ``aligned_pre > pre_threshold``."""

    def __init__(self, diff: TiffImage | FitsImage, aligned: TiffImage | FitsImage,
                 post: TiffImage | FitsImage, k: float, pre_threshold: float, pad: int) -> None:
        if aligned.shape != diff.shape:
            raise InputDataError(f"{getattr(aligned, 'path', 'aligned pre')}: shape "
                                 f"{aligned.shape} differs from the difference image's "
                                 f"{diff.shape}; re-run stage 4")
        self.diff, self.aligned, self.post = diff, aligned, post
        self.k, self.pre_threshold, self.pad = k, pre_threshold, pad
        self.shape = diff.shape
        integer = post.dtype.kind in "ui"
        self.saturation = float(np.iinfo(post.dtype).max) if integer else math.inf
        #: Smallest noise variance: the quantisation of integer post counts.
        self.floor = 1.0 / 12.0 if integer else 0.0

    def read(self, ya: int, yb: int) -> Block:
        """Output rows ``[ya, yb)``."""
        w = self.shape[1]
        diff = self.diff.read_window(ya, yb, 0, w)[:, :, 0].astype(np.float32, copy=False)
        pre = self.aligned.read_window(ya, yb, 0, w)[:, :, 0].astype(np.float32, copy=False)
        saturated = np.zeros(diff.shape, bool)
        if math.isfinite(self.saturation):
            p = self.pad
            raw = self.post.read_window(ya - p, yb - p, 0, w - 2 * p)[:, :, 0]
            r0 = max(0, p - ya)
            saturated[r0:r0 + raw.shape[0], p:w - p] = raw >= self.saturation
        with np.errstate(invalid="ignore"):
            tissue = np.isfinite(diff) & (pre > np.float32(self.pre_threshold))
        return Block(ya, diff, level_image(pre, self.k), tissue, saturated)

    def halo_block(self, y0: int) -> tuple[Block, tuple[float, float]]:
        """The block of core rows ``[y0, y0 + TILE)`` with :data:`HALO` rows around it, and
        its core as a half-open centroid range."""
        h = self.shape[0]
        y1 = min(h, y0 + TILE)
        return self.read(max(0, y0 - HALO), min(h, y1 + HALO)), (y0 - 0.5, y1 - 0.5)


def sample_starts(height: int, width: int, budget: int = SAMPLE_PIXELS) -> list[int]:
    """Start rows of evenly spaced TILE-row blocks covering at most ``budget`` pixels."""
    blocks = list(range(0, height, TILE))
    n = max(1, min(len(blocks), budget // max(1, TILE * width)))
    return [blocks[i] for i in np.linspace(0, len(blocks) - 1, n).round().astype(int)]


# ------------------------------------------------------------------------------ completeness
def inject_sources(block: Block, model: NoiseModel, snr: float, rng: np.random.Generator
                   ) -> tuple[Block, np.ndarray]:
    """A copy of ``block`` with Gaussian sources (σ :data:`INJECT_SIGMA` px) of integrated
    SNR ``snr`` (:meth:`NoiseModel.integrated_noise`) on a grid of
    :data:`INJECT_SPACING` px over tissue away from edges; returns it and their (x, y)."""
    h, w = block.diff.shape
    m = INJECT_SPACING // 2
    gy, gx = np.mgrid[m:h - m:INJECT_SPACING, m:w - m:INJECT_SPACING]
    xy = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float64)
    xy += rng.uniform(-0.5, 0.5, xy.shape)
    ok = block.tissue[xy[:, 1].round().astype(int), xy[:, 0].round().astype(int)]
    xy = xy[ok]
    diff = block.diff.copy()
    r = math.ceil(4 * INJECT_SIGMA)
    for x, y in xy:
        ix, iy = int(np.rint(x)), int(np.rint(y))
        flux = snr * float(model.integrated_noise(block.level[iy, ix], INJECT_SIGMA))
        yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
        blob = flux / (2 * math.pi * INJECT_SIGMA**2) * np.exp(
            -((xx - x) ** 2 + (yy - y) ** 2) / (2 * INJECT_SIGMA**2))
        diff[iy - r:iy + r + 1, ix - r:ix + r + 1] += blob.astype(np.float32)
    xy[:, 1] += block.ya
    return Block(block.ya, diff, block.level, block.tissue, block.saturated), xy


def recovered_fraction(truth_xy: np.ndarray, x: np.ndarray, y: np.ndarray,
                       radius: float = INJECT_MATCH_PX) -> np.ndarray:
    """Per true position, whether a detection lies within ``radius`` px."""
    if truth_xy.size == 0 or x.size == 0:
        return np.zeros(len(truth_xy), bool)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(np.column_stack([x, y])).query(truth_xy, distance_upper_bound=radius)
    return np.isfinite(dist)


def completeness_curve(reader: BlockReader, starts: Sequence[int], model: NoiseModel,
                       threshold: float, min_area: int, deblend: bool
                       ) -> dict[str, Any]:
    """Recovery of injected sources (:func:`inject_sources`) at each SNR of
    :data:`INJECT_SNR` in up to :data:`INJECT_WINDOWS` windows of TILE × :data:`INJECT_COLS`
    px from the sampled blocks; the real sources of a window stay (a recovered injection is
    one with a detection within :data:`INJECT_MATCH_PX` px)."""
    rng = np.random.default_rng(5)
    w = reader.shape[1]
    cols = min(w, INJECT_COLS)
    x0 = (w - cols) // 2
    found = {snr: [0, 0] for snr in INJECT_SNR}
    for y0 in list(starts)[:INJECT_WINDOWS]:
        block = reader.read(y0, min(reader.shape[0], y0 + TILE))
        window = Block(block.ya, *(a[:, x0:x0 + cols] for a in (
            block.diff, block.level, block.tissue, block.saturated)))
        for snr in INJECT_SNR:
            injected, xy = inject_sources(window, model, snr, rng)
            cols_ = detect_block(injected, model, threshold, min_area, deblend).columns
            hit = recovered_fraction(xy, cols_["x"], cols_["y"])
            found[snr][0] += int(hit.sum())
            found[snr][1] += int(hit.size)
    curve = {f"{snr:g}": (n / total if total else None) for snr, (n, total) in found.items()}
    return {"snr": list(INJECT_SNR), "recovered": curve,
            "injected": {f"{snr:g}": total for snr, (_, total) in found.items()},
            "sigma_px": INJECT_SIGMA}


# ------------------------------------------------------------------------------ outputs
def write_catalogue(layout: PairLayout, columns: Mapping[str, np.ndarray],
                    meta: Mapping[str, Any]) -> list[Path]:
    """``detections<s5>.csv`` (plain, :data:`COLUMNS` in order) and ``detections<s5>.ecsv``
    (astropy, units per column, ``meta`` in its header); returns both paths."""
    from astropy.table import Table

    csv_path, ecsv_path = layout.detections("csv"), layout.detections("ecsv")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for row in zip(*(columns[name] for name in COLUMNS)):
            out.writerow([int(v) if isinstance(v, np.integer) else f"{v:.6g}" for v in row])
    table = Table({name: columns[name] for name in COLUMNS}, meta=dict(meta))
    for name, unit in COLUMNS.items():
        if unit:
            table[name].unit = unit
    with atomic_path(ecsv_path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    return [csv_path, ecsv_path]


def _writers(layout: PairLayout, fmts: Sequence[str], shape: tuple[int, int], sample: str,
             dye: str, compression: str | None, threshold: float
             ) -> tuple[list[Callable[[Iterable[np.ndarray]], None]], list[Path]]:
    """One significance-image writer per format (the writers of stage 4's difference)."""
    writers: list[Callable[[Iterable[np.ndarray]], None]] = []
    paths: list[Path] = []
    for fmt in fmts:
        path = layout.significance(fmt)
        if fmt == "tiff":
            desc = json.dumps({"exo2micro": "significance difference / sigma",
                               "sample": sample, "dye": dye, "detect_threshold": threshold,
                               "no_data": "NaN"})
            ome = product_ome(layout, "significance", dye, desc)
            writers.append(lambda b, p=path, o=ome: write_tiled(
                p, shape, np.float32, b, ome=o, compression=compression))
        else:
            hdr = make_header(sample=sample, dye=dye, stage=5, params=layout.params)
            hdr["BUNIT"] = ("sigma", "difference / noise sigma of the difference")
            hdr.add_comment("NaN marks pixels without data (padding, outside the pre frame)")
            writers.append(lambda b, p=path, hd=hdr: write_streamed(p, shape, hd, b))
        paths.append(path)
    return writers, paths


def _open(path: Path) -> TiffImage | FitsImage:
    """A reader whose tile cache holds a block with its halo, and little more (FITS reads
    rows directly)."""
    if path.suffix == ".fits":
        return FitsImage(path)
    info = read_info(path)
    row_bytes = info.width * info.samples * np.dtype(info.dtype).itemsize
    rows = TILE + 2 * HALO + 2 * max(TILE, info.segment_shape[0])
    return TiffImage(path, cache_bytes=rows * row_bytes)


def _find(layout: PairLayout, checkpoint_format: str, what: str,
          path_for: Callable[[str], Path]) -> Path:
    """An input image in the requested format, else the other one."""
    order = [*formats(checkpoint_format), "tiff", "fits"]
    for fmt in dict.fromkeys(order):
        if path_for(fmt).is_file():
            return path_for(fmt)
    raise InputDataError(f"stage 5 input missing: {path_for(order[0])} ({what})")


@dataclass(frozen=True)
class _Inputs:
    """The stage's input files and what it needs from the stage-4 record."""

    diff: Path
    aligned: Path
    post: Path
    k: float
    pre_threshold: float

    @classmethod
    def find(cls, layout: PairLayout, checkpoint_format: str) -> _Inputs:
        rec = require_stage(layout, 4)
        try:
            k = float(rec["scales"]["moffat"])
            pre_threshold = float(rec["thresholds"]["pre"])
        except (KeyError, TypeError, ValueError):
            raise InputDataError(f"{layout.record(4)}: no Moffat scale or thresholds; re-run "
                                 f"stage 4") from None
        post = layout.signal("post")
        if not post.is_file():
            raise InputDataError(f"stage 5 input missing: {post} (post signal from stage 1)")
        return cls(diff=_find(layout, checkpoint_format, "difference image from stage 4",
                              layout.difference),
                   aligned=_find(layout, checkpoint_format, "aligned pre from stage 3",
                                 layout.aligned_pre),
                   post=post, k=k, pre_threshold=pre_threshold)


def _pixel_size_um(layout: PairLayout) -> float | None:
    """The post image's pixel size (µm) as stage 1 recorded it (the ``pixel_size_um``
    parameter, else the raw file's metadata), ``None`` when unknown."""
    value = stage1_physical(layout, "post")["pixel_size_um"]
    return float(value) if value else None


def _noise_model(reader: BlockReader, starts: Sequence[int]) -> NoiseModel:
    """Two fits over the sampled blocks (the first gives σ(L) for the background of the
    second, whose filtered variances are those detection sees), then ``c`` rescaled so that
    the searched significance has unit spread. The blocks are read three times rather than
    held: at most :data:`SAMPLE_PIXELS` px each time."""
    def blocks() -> Iterator[Block]:
        return (reader.read(y0, min(reader.shape[0], y0 + TILE)) for y0 in starts)

    model = None
    for _ in range(2):
        parts = [tile_stats(block.diff, block.level, model) for block in blocks()]
        model = fit_noise(*(np.concatenate(p) for p in zip(*parts)), floor=reader.floor)
    assert model is not None
    # calibrate c on the significance map itself: its lower half (median − 15.87th
    # percentile over searchable tissue), which positive sources do not touch, is 1 σ
    spread = []
    for block in blocks():
        snr_map, searchable, _, _ = search_map(block, model, model.sigma(block.level))
        values = snr_map[searchable & block.tissue]
        if values.size:
            spread.append(np.percentile(values, [15.87, 50.0]))
    if not spread:
        return model
    lo, mid = np.median(np.asarray(spread), axis=0)
    scale = float(mid - lo) ** 2 if mid > lo else 1.0
    return NoiseModel(model.a, model.b, float(np.clip(model.c * scale, *CORRELATION_RANGE)),
                      model.n_tiles)



def _blocks(reader: BlockReader) -> Iterator[tuple[Block, tuple[float, float]]]:
    for y0 in range(0, reader.shape[0], TILE):
        yield reader.halo_block(y0)


def run_detect(layout: PairLayout, *, sample: str, dye: str, threads: int = 1,
               checkpoint_format: str = "tiff", meta: Mapping[str, str] | None = None
               ) -> dict[str, Any]:
    """Run stage 5 for one pair: noise model, significance image, catalogue, plots, record and
    ``result.json`` (``detections``). ``threads`` is accepted for the common stage interface
    (native code uses the pools sized by :func:`exo2micro.pipeline.prepare`); the
    significance image is written in every format of ``checkpoint_format``. Returns the stage
    record (also ``layout.record(5)``). Raises :class:`InputDataError` (exit 65) naming the
    file when an input is missing or unusable."""
    del threads
    values = layout.params
    threshold = float(values["detect_threshold"])
    min_area = int(values["detect_min_area"])
    deblend = bool(values["detect_deblend"])
    run = StageRun(layout, 5)
    inputs = _Inputs.find(layout, checkpoint_format)
    pad = int(values.get("pad", 0))
    with _open(inputs.diff) as diff_img, _open(inputs.aligned) as pre_img, \
            _open(inputs.post) as post_img:
        reader = BlockReader(diff_img, pre_img, post_img, inputs.k, inputs.pre_threshold, pad)
        h, w = reader.shape
        starts = sample_starts(h, w)
        with run.timed("noise_model"):
            model = _noise_model(reader, starts)
        writers, paths = _writers(layout, formats(checkpoint_format), reader.shape, sample, dye,
                                  tiff_compression(checkpoint_format), threshold)
        factor = preview_factor(reader.shape)
        preview = np.zeros((-(-h // factor), -(-w // factor)), np.float32)
        parts: list[dict[str, np.ndarray]] = []
        tissue_px = 0
        with run.timed("detect"), FanOut(writers, depth=1) as fan:
            for block, core in _blocks(reader):
                found = detect_block(block, model, threshold, min_area, deblend, core)
                c0 = int(core[0] + 0.5) - block.ya
                c1 = int(core[1] + 0.5) - block.ya
                fan.put([found.significance[c0:c1]] * len(writers))
                tissue_px += int(np.count_nonzero(block.tissue[c0:c1]))
                rows = np.nan_to_num(block.diff[c0:c1], nan=0.0)
                r0 = (c0 + block.ya) // factor
                small = box_mean(rows, factor)
                preview[r0:r0 + small.shape[0]] = small
                parts.append(found.columns)
        with run.timed("completeness"):
            curve = completeness_curve(reader, starts, model, threshold, min_area, deblend)
        dtype_name = post_img.dtype.name
    columns = _merge(parts, pad)
    run.add_outputs(paths)
    n = int(columns["id"].size)
    n_snr5 = int(np.count_nonzero(columns["snr"] >= 5))
    pixel_um = _pixel_size_um(layout)
    per_mm2 = (n / (tissue_px * (pixel_um * 1e-3) ** 2) if pixel_um and tissue_px else None)
    summary = {"n": n, "n_snr5": n_snr5, "threshold_sigma": threshold,
               "completeness_estimate": curve["recovered"].get(f"{COMPLETENESS_SNR:g}"),
               "catalog": layout.relative(layout.detections("csv")), "per_mm2": per_mm2}
    table_meta = {"sample": sample, "dye": dye, "stage": 5,
                  "frame": "raw post pixels: x = column, y = row, pixel centres at integers",
                  "flux_units": f"post counts ({dtype_name}), background-subtracted",
                  "flags": {"edge": FLAG_EDGE, "saturated": FLAG_SATURATED,
                            "deblended": FLAG_DEBLENDED},
                  "params": {p: values[p] for p in ("detect_threshold", "detect_min_area",
                                                    "detect_deblend")},
                  "scale_k": inputs.k, "noise_model": model.to_json(),
                  "tissue_px": tissue_px}
    run.add_outputs(write_catalogue(layout, columns, table_meta))
    with run.timed("plots"):
        run.add_outputs([
            diagnostics.plot_detections(layout.stage_plot("detections", 5), sample, dye,
                                        preview, factor, pad, columns["x"], columns["y"],
                                        columns["snr"], math.sqrt(model.a), pixel_um),
            diagnostics.plot_detection_snr_histogram(
                layout.stage_plot("detection_snr_histogram", 5), sample, dye, columns["snr"],
                threshold)])
    run.info.update({
        "detections": summary,
        "noise_model": model.to_json(),
        "completeness": curve,
        "tissue_px": tissue_px,
        "pixel_size_um": pixel_um,
        "flags": table_meta["flags"],
        "inputs": {"difference": layout.relative(inputs.diff),
                   "aligned_pre": layout.relative(inputs.aligned),
                   "post": layout.relative(inputs.post)},
    })
    if n == 0:
        run.warn("no sources above the detection threshold")
    record = run.record()
    write_result(layout, build_result(layout, sample, dye, "complete", meta))
    return record


def _merge(parts: Sequence[Mapping[str, np.ndarray]], pad: int) -> dict[str, np.ndarray]:
    """One catalogue from the blocks' parts: raw post frame (``− pad``), sorted by (y, x),
    ids 1 … n."""
    columns = {name: np.concatenate([p[name] for p in parts]) if parts else
               _empty_columns()[name] for name in COLUMNS}
    columns["x"] = columns["x"] - pad
    columns["y"] = columns["y"] - pad
    order = np.lexsort((columns["x"], columns["y"]))
    columns = {name: values[order] for name, values in columns.items()}
    columns["id"] = np.arange(1, order.size + 1, dtype=np.int64)
    return columns
