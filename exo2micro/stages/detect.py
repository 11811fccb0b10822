"""Stage 5 — detect: the noise model of the difference image, its significance, and the
catalogue of stained microbes (positive sources of ``post − k · aligned_pre``).

Inputs (pair folder, :class:`~exo2micro.io.layout.PairLayout`): the stage-4 Moffat difference
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
quantisation variance 1/12 of integer counts. The variance of the matched filter of kernel
``j`` is ``c[j] · Σg_j² · var``: ``c[j]`` (the median ratio over tissue tiles, rescaled so that
the lower half of that kernel's significance over tissue has unit spread) is > 1 because the
interpolation that warped pre correlates its noise between neighbouring pixels (and residual
texture survives the filter), so the detection threshold is calibrated in real σ, not
white-noise σ.

The **significance image** ``D / σ(L)`` (float32, NaN = no data) is written next to the
difference image. Sources are detected on the **matched-filter significance** of a bank of
two Gaussian kernels (:data:`KERNEL_SIGMAS`, σ 2.5 and 5 px, for microbes of σ ≈ 2–6 px):
per kernel the background-subtracted difference convolved with it, divided by its ``σ_f`` at
the kernel-weighted level (:func:`filter_level`; near no-data pixels, by the part of the
kernel that saw data; pixels within :data:`NO_DATA_MARGIN` px of no data are left out), and
the larger of the two is searched. For a Gaussian source its value is ≥ 94 % of the source's
optimal (integrated) SNR, its flux over the noise of its optimal flux estimate
(:meth:`NoiseModel.integrated_noise`), so ``detect_threshold`` is a threshold on integrated
SNR. The maximum over two kernels raises the false rate of a threshold a little; the default
was set on microbe-free synthetic pairs (docs/benchmarks.md). Only tissue (grown by
:data:`TISSUE_MARGIN` px) is searched.

Detection and measurement (scipy, scikit-image)
-----------------------------------------------
Segments as photutils' ``detect_sources`` makes them (:func:`find_segments`: 8-connected, at
least ``detect_min_area`` px above ``detect_threshold``) and, when ``detect_deblend``, a
watershed (scikit-image) of the sharper kernel's significance — whose image of two touching
microbes keeps their peaks apart — from the peaks of the segments that hold two or more above
``detect_threshold`` + :data:`DEBLEND_PROMINENCE` (:func:`split_blends`; photutils'
``deblend_sources`` does the same after a per-source multi-thresholding that cost twice this
stage's time); a split is undone when a component rises less than :data:`DEBLEND_PROMINENCE` σ
above its saddle with a sibling (:func:`merge_weak_splits`: noise bumps on a broad source).
The position is the peak of the filtered difference of the kernel that found the source best
(the sharper one for deblended sources), refined to sub-pixel by a log-parabola
(:func:`peak_positions`): the maximum-likelihood position of a source of the kernel's shape,
near the Cramér–Rao bound. The other columns are vectorised reductions over each segment's
pixels (:class:`SegmentPixels`), not photutils' ``SourceCatalog``: peak, area, second-moment σ
along the major/minor axes and the orientation (degrees from +x towards +y, i.e. clockwise as
displayed with y down); the flux is summed over the segment grown by :data:`FLUX_GROW` px
(:func:`grown_flux`). ``snr`` is the peak of the searched significance in the source: the
detection SNR, ≈ the integrated SNR (it is not flux / flux_err: the grown segment holds more
noise than the optimal filter). The local background is the mean of quiet pixels (|D/σ| <
:data:`QUIET_SIGMA`) over :data:`BG_BOX` px boxes, interpolated bilinearly. Flags (bits):
:data:`FLAG_EDGE` (within :data:`EDGE_GROW` px of no data or of non-tissue),
:data:`FLAG_SATURATED` (a post pixel of the source at the dtype's maximum),
:data:`FLAG_DEBLENDED`.

Streaming, threads and memory
-----------------------------
Pass 1 reads evenly spaced blocks of :data:`~exo2micro.io.tiffio.TILE` rows, at most
:data:`SAMPLE_PIXELS` px in all, for the noise fit. Pass 2 reads every block of TILE rows with
:data:`HALO` extra rows above and below and cuts it into chunks of :data:`CHUNK_COLS` columns
with :data:`CHUNK_HALO` more each side, detected in parallel threads (``threads``, at most
:data:`MAX_THREADS`); a source is kept only by the chunk whose core holds its position (rows
``[y0 − 0.5, y1 − 0.5)``, likewise columns), so every source is measured once, from a chunk
that holds it whole (sources up to 2 × HALO px tall); the next row block is read (one
more thread) while the chunks of this one are detected. Memory is the input readers' caches
and two row blocks' few full-width arrays (≈ 1.5 GB at 30 000 px wide) plus ≈ 0.1 GB of
chunk arrays per thread; the significance image is streamed to its writer
(:class:`~exo2micro.stages.streaming.FanOut`), never held.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io.atomic import atomic_path
from exo2micro.io.fitsio import FitsImage, make_header, write_streamed
from exo2micro.io.layout import PairLayout, formats, tiff_compression
from exo2micro.io.records import StageRun, product_ome, require_stage, stage1_physical
from exo2micro.io.tiffio import TILE, TiffImage, read_info, write_tiled
from exo2micro.numerics.robust import row_median
from exo2micro.report import diagnostics
from exo2micro.report.result import build_result, write_result
from exo2micro.stages.streaming import FanOut, Writer
from exo2micro.stages.subtract import box_mean, preview_factor

#: Gaussian σ (px) of the matched-filter bank. A kernel of σ_k keeps 2σσ_k / (σ² + σ_k²) of the
#: optimal SNR of a Gaussian source of σ; the better of the two keeps ≥ 94 % for σ 2–6.5 px
#: (≥ 88 % for 1.5–8), where one kernel of 3 px keeps 80 % at σ = 6.
KERNEL_SIGMAS = (2.5, 5.0)
#: Gaussian σ (px) of the smoothing of L = k · aligned_pre before it enters σ(L).
LEVEL_SMOOTH = 2.0
#: Tile edge (px) of the noise fit; large enough that the MAD of the filtered image (whose
#: pixels are correlated over ≈ 4π·σ_k² px) rests on ≥ 13 independent values.
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
#: Only pixels within this many px of tissue are searched: microbes are sought in tissue, and
#: the bare slide beside it holds the residuals of the tissue's soft edge.
TISSUE_MARGIN = 3
#: Columns per chunk of a row block (a multiple of BG_BOX); chunks, with CHUNK_HALO columns
#: each side, are detected in parallel threads.
CHUNK_COLS = 2048
#: Columns read each side of a chunk: two background boxes, so that the boxes whose
#: interpolation reaches the core never see the filters' edge (a chunk's core is then
#: detected as in the whole row block, but for segments reaching past the halo).
CHUNK_HALO = 2 * BG_BOX
#: Most threads that detect chunks at once: each holds ≈ 0.1 GB of chunk arrays, on top of the
#: ≈ 1.5 GB that a 30 000 px wide pair needs with two (bench/detect.py), so that stage 5 stays
#: within 2 GB.
MAX_THREADS = 4
#: Growth (px) of each segment for its flux (:func:`grown_flux`).
FLUX_GROW = 3
#: Sources within this many px of no data or non-tissue are flagged FLAG_EDGE.
EDGE_GROW = 2
#: Matched-filter pixels whose kernel saw less than this fraction of data are not searched.
MIN_WEIGHT = 0.5
#: The searchable tissue pixels of every this many rows and columns calibrate the correlation
#: factors (a divisor of CHUNK_COLS and TILE).
CALIBRATION_STRIDE = 2
#: Rise (σ of the sharpest kernel's significance) above its saddle with a sibling that every
#: component of a deblended source needs (:func:`merge_weak_splits`).
DEBLEND_PROMINENCE = 1.0
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
INJECT_SPACING = 32
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
#: Σ g² of each unit-sum kernel of the bank: its variance gain on white noise.
KERNEL_NOISE_GAIN = tuple(1.0 / (4 * math.pi * s**2) for s in KERNEL_SIGMAS)
#: Range allowed to the fitted correlation factor of the filtered noise.
CORRELATION_RANGE = (0.5, 10.0)


@dataclass(frozen=True)
class NoiseModel:
    """``var = a + b · max(L, 0)`` of the difference (L = k · aligned_pre, post counts;
    variances in post counts²) and, per kernel ``j`` of :data:`KERNEL_SIGMAS`, the correlation
    factor ``c[j]`` of its matched filter, whose variance is ``c[j] · Σg_j² · var``."""

    a: float
    b: float
    c: tuple[float, ...]
    n_tiles: int

    def sigma(self, level: np.ndarray) -> np.ndarray:
        """Per-pixel σ (post counts) of the difference at level ``level`` (float32; computed
        in one array, not one temporary per operation)."""
        var = np.maximum(level, 0, dtype=np.float32)
        var *= np.float32(self.b)
        var += np.float32(self.a)
        return np.sqrt(var, out=var) if isinstance(var, np.ndarray) else np.sqrt(var)

    def sigma_filtered(self, level: np.ndarray, j: int) -> np.ndarray:
        """σ of the difference filtered by kernel ``j``, at (filter-weighted) level ``level``."""
        sigma = self.sigma(level)
        sigma *= np.float32(math.sqrt(self.c[j] * KERNEL_NOISE_GAIN[j]))
        return sigma

    def correlation(self, sigma_px: float) -> float:
        """Variance of the optimal filter of a Gaussian source of σ ``sigma_px`` over its
        white-noise value: ``c`` interpolated in log σ between the bank's kernels (constant
        beyond them). > 1 where the noise is spatially correlated (the interpolated pre,
        residual texture)."""
        return float(np.interp(math.log(sigma_px), np.log(KERNEL_SIGMAS), self.c))

    def integrated_noise(self, level: np.ndarray, sigma_px: float) -> np.ndarray:
        """Noise (post counts) of the optimal flux estimate of a Gaussian source of σ
        ``sigma_px`` at level ``level``: ``σ · 2√π · sigma_px`` (the noise of the matched
        filter's flux on white noise, equal to that of a sum over a 2σ-radius aperture),
        times √:meth:`correlation`. Flux over this is the *integrated SNR* used by the
        completeness estimate and by ``bench/detect.py``."""
        return (self.sigma(level) * np.float32(2 * math.sqrt(math.pi) * sigma_px)
                * np.float32(math.sqrt(self.correlation(sigma_px))))

    def to_json(self) -> dict[str, Any]:
        return {"model": "var = a + b * L, L = k * aligned_pre (post counts); matched "
                         "filter j: var_f = c[j] * sum(g_j^2) * var",
                "a": self.a, "b": self.b, "c": list(self.c),
                "kernel_sigma_px": list(KERNEL_SIGMAS), "tiles": self.n_tiles}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NoiseModel:
        """The model of a stage-5 record's ``noise_model``."""
        return cls(float(data["a"]), float(data["b"]), tuple(float(c) for c in data["c"]),
                   int(data["tiles"]))


def level_image(pre: np.ndarray, k: float) -> np.ndarray:
    """L = k · aligned_pre smoothed over :data:`LEVEL_SMOOTH` px (NaN read as 0), float32."""
    level = _zero_nan(pre.astype(np.float32) * np.float32(k))
    return _blur(level, LEVEL_SMOOTH, cv2.BORDER_DEFAULT)


def _zero_nan(image: np.ndarray) -> np.ndarray:
    """``image`` (float32, modified in place) with NaN set to 0 (OpenCV: several times faster
    than ``np.nan_to_num``, which also tests for infinities)."""
    return cv2.patchNaNs(image, 0)


def _blur(image: np.ndarray, sigma: float, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """Gaussian blur of σ ``sigma`` px (±3σ support), zero outside the array (or OpenCV's
    ``border``), into a NumPy array (:func:`_like`)."""
    size = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(image, (size, size), sigma, dst=_like(image), borderType=border)


def _like(image: np.ndarray) -> np.ndarray:
    """An empty array of ``image``'s shape and dtype for an OpenCV result: NumPy asks for
    transparent huge pages for large arrays, where OpenCV's own allocations are faulted in
    4 KiB pages — on the development VM those page faults cost more CPU than the filter."""
    return np.empty(image.shape, image.dtype)


def filter_level(level: np.ndarray, j: int) -> np.ndarray:
    """The level that sets the noise of kernel ``j``: var(Σ g·D) = Σ g² (a + b L), and
    g² / Σg² is a unit Gaussian of σ_k/√2, so L blurred by it. At a tissue edge the filter
    sees the noisy inside even where its centre is outside."""
    return _blur(level, KERNEL_SIGMAS[j] / math.sqrt(2), cv2.BORDER_DEFAULT)


def matched_filter(diff: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(D ⊛ g, w)``: the difference (NaN read as 0) convolved with a unit-sum Gaussian of σ
    ``sigma`` px, and the fraction of the kernel's noise weight (``g²``) that fell on data."""
    valid = np.isfinite(diff)
    return _blur(np.where(valid, diff, 0).astype(np.float32), sigma), noise_weight(valid, sigma)


def noise_weight(valid: np.ndarray, sigma: float) -> np.ndarray:
    """The fraction of the noise weight (``g²``) of a unit-sum Gaussian of σ ``sigma`` px that
    falls on ``valid`` pixels: g² is a Gaussian of σ/√2 (up to its sum), so its blur of the
    data mask (float32). Read-only and shared where every pixel is valid (most chunks)."""
    if valid.all():
        return _full_weight(valid.shape, sigma)
    return _blur(valid.astype(np.float32), sigma / math.sqrt(2))


@functools.lru_cache(maxsize=16)
def _full_weight(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """:func:`noise_weight` of an image of ``shape`` without invalid pixels: the same for
    every chunk of that shape, so computed once (read-only)."""
    weight = _blur(np.ones(shape, np.float32), sigma / math.sqrt(2))
    weight.setflags(write=False)
    return weight


def usable(diff: np.ndarray) -> np.ndarray:
    """Data pixels at least :data:`NO_DATA_MARGIN` px from no data: nearer, the warp of pre
    interpolated with the zeros outside its frame, which reads as stain."""
    size = 2 * NO_DATA_MARGIN + 1
    return cv2.erode(np.isfinite(diff).view(np.uint8), np.ones((size, size), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=1).view(bool)


def tile_stats(diff: np.ndarray, level: np.ndarray, model: NoiseModel | None = None,
               tile: int = NOISE_TILE, core: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per complete ``tile × tile`` tile without no-data pixels: median level, robust
    variance (:func:`_robust_var`) of the difference and, per kernel of
    :data:`KERNEL_SIGMAS` (columns), of its matched filter. With a (first) ``model`` the filter
    sees the difference minus its :func:`local_background`, as in detection, so that the
    residual texture the background removes is not counted. ``core`` = ``(c0, c1)``: tiles
    only in these columns (the others are a halo that the filters see)."""
    diff = np.where(usable(diff), diff, np.nan)
    src = diff if model is None else diff - local_background(diff, model.sigma(level))
    filtered = [matched_filter(src, s) for s in KERNEL_SIGMAS]
    if core is not None:
        cut = slice(*core)
        diff, level = diff[:, cut], level[:, cut]
        filtered = [(f[:, cut], wt[:, cut]) for f, wt in filtered]
    h, w = diff.shape
    th, tw = h // tile, w // tile
    if th == 0 or tw == 0:
        return np.empty(0), np.empty(0), np.empty((0, len(KERNEL_SIGMAS)))

    def tiles(a: np.ndarray) -> np.ndarray:
        return (a[:th * tile, :tw * tile].reshape(th, tile, tw, tile).swapaxes(1, 2)
                .reshape(th * tw, tile * tile))

    keep = np.logical_and.reduce([tiles(wt).min(axis=1) > 0.999 for _, wt in filtered])
    var_f = np.column_stack([_robust_var(tiles(f)[keep]) for f, _ in filtered])
    return row_median(tiles(level)[keep]), _robust_var(tiles(diff)[keep]), var_f


def _robust_var(values: np.ndarray) -> np.ndarray:
    """Per row: the variance of the values within 5 s0 of the median, s0 = max(1.4826 · MAD,
    std / 2). The clip drops stained pixels; the std term keeps quantised images (a tile of
    mostly equal counts has MAD 0) from reading as noiseless."""
    dev = values - row_median(values, keepdims=True)
    s0 = np.maximum(1.4826 * row_median(np.abs(dev)), 0.5 * dev.std(axis=1))
    keep = np.abs(dev) < 5 * s0[:, None]
    return (np.sum(np.where(keep, dev * dev, 0), axis=1) / np.maximum(keep.sum(axis=1), 1))


def fit_line(level: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``var = a + b · level``, fitted to the medians of up to 24 equal-count
    level bins (weighted by 1/var², i.e. equal relative errors); ``b`` ≥ 0 and ``a`` > 0.
    Raises :class:`InputDataError` without tiles."""
    if level.size == 0:
        raise InputDataError("no tile of the difference image free of no-data pixels; cannot "
                             "estimate its noise")
    order = np.lexsort((var, level))  # ties broken by value: bins independent of tile order
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
    integer counts) and, per kernel (column of ``var_f``), the correlation factor as the
    median of the tiles' filtered variance over its white-noise value, in the brighter half
    of the tiles (tissue, where microbes are sought)."""
    a, b = fit_line(level, var_d)
    a = max(a, floor)
    ones = (1.0,) * len(KERNEL_SIGMAS)
    bright = level >= np.median(level) if level.size else np.zeros(0, bool)
    if not bright.any():
        return NoiseModel(a, b, ones, int(level.size))
    white = NoiseModel(a, b, ones, int(level.size)).sigma(level[bright]) ** 2
    c = tuple(float(np.clip(np.median(var_f[bright, j] / (white * gain)), *CORRELATION_RANGE))
              for j, gain in enumerate(KERNEL_NOISE_GAIN))
    return NoiseModel(a, b, c, int(level.size))


# ------------------------------------------------------------------------------ one block
@dataclass
class Block:
    """Rows ``[ya, ya + h)`` and columns ``[xa, xa + w)`` of the output frame: difference,
    level L, tissue and saturation (each ``(h, w)``)."""

    ya: int
    diff: np.ndarray
    level: np.ndarray
    tissue: np.ndarray
    saturated: np.ndarray
    xa: int = 0

    def columns(self, x0: int, x1: int) -> Block:
        """The block's columns ``[x0, x1)`` (its own pixels), as a block (views)."""
        return Block(self.ya, *(a[:, x0:x1] for a in (self.diff, self.level, self.tissue,
                                                      self.saturated)), self.xa + x0)


def local_background(diff: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Mean of the quiet pixels (|D/σ| < :data:`QUIET_SIGMA`) over :data:`BG_BOX` px boxes,
    interpolated bilinearly to every pixel (0 in boxes with too few quiet pixels)."""
    with np.errstate(invalid="ignore"):
        quiet = np.abs(diff) < np.float32(QUIET_SIGMA) * sigma
    return _quiet_mean(diff, quiet)


def _quiet_mean(diff: np.ndarray, quiet: np.ndarray) -> np.ndarray:
    """The background of :func:`local_background` from its quiet pixels ``quiet`` (bool,
    where ``diff`` is finite)."""
    sums = box_mean(np.where(quiet, diff, np.float32(0)), BG_BOX)
    counts = box_mean(quiet.view(np.uint8), BG_BOX)
    boxes = np.where(counts >= 0.25, sums / np.maximum(counts, 1e-6), 0).astype(np.float32)
    h, w = diff.shape
    full = cv2.resize(boxes, (boxes.shape[1] * BG_BOX, boxes.shape[0] * BG_BOX),
                      interpolation=cv2.INTER_LINEAR)
    return full[:h, :w]


def _empty_columns() -> dict[str, np.ndarray]:
    return {name: np.empty(0, np.int64 if name in ("id", "flags") else np.float64)
            for name in COLUMNS}


def _pixels(mask: np.ndarray) -> np.ndarray:
    """Raster indices (row · width + column) of the set pixels of a 2-D bool mask, in
    raster order: ``np.flatnonzero`` of a sparse bool image is ≈ 10× faster than
    ``np.nonzero`` of a label image, which tests every pixel for both coordinates."""
    return np.flatnonzero(mask)


def _take(values: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``values`` (2-D) at the raster indices ``flat``: ``np.take`` of the flattened array
    is several times faster than 2-D fancy indexing (a view's flattening copies it)."""
    return np.take(values.reshape(-1), flat)


@dataclass
class SearchMap:
    """The matched-filter bank of a block (:func:`search_map`)."""

    #: Per kernel of :data:`KERNEL_SIGMAS`: the significance (0 where not searchable).
    per_kernel: list[np.ndarray]
    #: Per kernel: the background-subtracted difference convolved with it (post counts).
    filtered: list[np.ndarray]
    #: The searched significance: the largest of ``per_kernel``.
    snr: np.ndarray
    #: Where sources are sought: enough data under every kernel, near tissue.
    searchable: np.ndarray
    #: The background-subtracted difference (0 without usable data), post counts.
    subtracted: np.ndarray
    #: Usable data (:func:`usable`).
    valid: np.ndarray


def search_map(block: Block, model: NoiseModel, sigma: np.ndarray) -> SearchMap:
    """The matched-filter significance of a block per kernel of :data:`KERNEL_SIGMAS` and
    their maximum. ``sigma`` is ``model.sigma(block.level)``.

    The background's quiet pixels leave out, besides |D/σ| ≥ :data:`QUIET_SIGMA`, those
    where the difference filtered by the largest kernel exceeds 2 σ_f: the faint wings of
    sources, which would otherwise raise the background and lower every source's
    significance. Searchable pixels have at least :data:`MIN_WEIGHT` of every kernel's noise
    weight on usable data and lie within :data:`TISSUE_MARGIN` px of tissue."""
    valid = usable(block.diff)
    diff = np.where(valid, block.diff, np.float32(0)).astype(np.float32, copy=False)
    sigma_f = [model.sigma_filtered(filter_level(block.level, j), j)
               for j in range(len(KERNEL_SIGMAS))]
    # the wings need only the largest kernel's filtered difference, not its noise weight
    wings = _blur(diff, KERNEL_SIGMAS[-1]) > 2 * sigma_f[-1]
    quiet = (np.abs(diff) < np.float32(QUIET_SIGMA) * sigma) & valid & ~wings
    subtracted = np.where(valid, diff - _quiet_mean(diff, quiet), np.float32(0))
    size = 2 * TISSUE_MARGIN + 1
    searchable = cv2.dilate(block.tissue.view(np.uint8), np.ones((size, size), np.uint8)
                            ).view(bool)
    # the matched filters see the subtracted difference, zero without usable data
    filtered = [_blur(subtracted, s) for s in KERNEL_SIGMAS]
    weights = [noise_weight(valid, s) for s in KERNEL_SIGMAS]
    for wt in weights:
        searchable &= wt >= MIN_WEIGHT
    per_kernel = []
    for f, wt, sf in zip(filtered, weights, sigma_f):
        scale = np.sqrt(wt)
        scale *= sf
        with np.errstate(invalid="ignore", divide="ignore"):
            per_kernel.append(np.where(searchable, np.divide(f, scale, out=scale),
                                       np.float32(0)))
    snr = np.maximum.reduce(per_kernel) if len(per_kernel) > 1 else per_kernel[0]
    return SearchMap(per_kernel, filtered, snr, searchable, subtracted, valid)


def find_segments(snr: np.ndarray, threshold: float, min_area: int, searchable: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """The sources of a significance image: 8-connected groups of at least ``min_area``
    searchable pixels above ``threshold``, as a segment image (int32, 0 background, segments
    numbered 1 … n in the raster order of their first pixel) and the labels ``1 … n``;
    ``None`` when there is none.

    This is photutils' ``detect_sources`` (threshold, ``scipy.ndimage.label``, minimum area,
    consecutive labels), label for label — tests/test_stage_detect.py checks it against
    photutils — without importing photutils, whose import (astropy) cost a second per stage
    process, more than detecting the sources of a 2 000 × 1 600 pair."""
    from scipy import ndimage

    above = np.greater(snr, threshold, where=searchable, out=np.zeros(snr.shape, bool))
    segments, n = ndimage.label(above, structure=np.ones((3, 3), int))
    if n == 0:
        return None
    # areas and renumbering over the labelled pixels only (a few % of the image)
    flat = _pixels(above)
    found = _take(segments, flat)
    big = np.bincount(found, minlength=n + 1) >= min_area
    big[0] = False
    kept = int(np.count_nonzero(big))
    if kept == 0:
        return None
    if kept < n:
        renumber = np.zeros(n + 1, segments.dtype)
        renumber[big] = np.arange(1, kept + 1, dtype=segments.dtype)
        segments.reshape(-1)[flat] = renumber[found]
    return segments, np.arange(1, kept + 1, dtype=segments.dtype)


def detect_block(block: Block, model: NoiseModel, threshold: float, min_area: int,
                 deblend: bool, core: tuple[float, float, float, float] | None = None
                 ) -> dict[str, np.ndarray]:
    """The catalogue columns (:data:`COLUMNS` but ``id``, zero) of the sources of one block
    (output-frame coordinates: the block's own pixels plus ``block.xa`` columns and
    ``block.ya`` rows).

    ``core`` = ``(y_lo, y_hi, x_lo, x_hi)`` (output frame) keeps only sources whose position
    lies in ``[x_lo, x_hi) × [y_lo, y_hi)``; ``None`` keeps all.
    """
    if not block.tissue.any():  # a chunk of bare slide: nothing to search
        return _empty_columns()
    sigma = model.sigma(block.level)
    search = search_map(block, model, sigma)
    if not search.searchable.any():
        return _empty_columns()
    found = find_segments(search.snr, threshold, min_area, search.searchable)
    if found is None:
        return _empty_columns()
    sharp = search.per_kernel[0]
    pixels = SegmentPixels.of(*found)
    split = (split_blends(sharp, found[0], pixels, threshold + DEBLEND_PROMINENCE) if deblend
             else None)
    if split is None:
        segments, labels = found
        deblended = np.zeros(labels.size, bool)
    else:
        segments, labels, deblended = merge_weak_splits(found[0], split, sharp)
        pixels = SegmentPixels.of(segments, labels)
    # a deblended source is placed by the sharpest kernel, whose image of a blend keeps the
    # two peaks apart; the others by the kernel that found them best
    peak_rows, peak_cols = pixels.argmax(search.snr)
    sharp_rows, sharp_cols = pixels.argmax(sharp)
    peak_rows = np.where(deblended, sharp_rows, peak_rows)
    peak_cols = np.where(deblended, sharp_cols, peak_cols)
    best = np.argmax([k[peak_rows, peak_cols] for k in search.per_kernel], axis=0)
    x, y = peak_positions(search.filtered, peak_rows, peak_cols, np.where(deblended, 0, best))
    x, y = x + block.xa, y + block.ya
    keep = np.isfinite(x) & np.isfinite(y)
    if core is not None:
        keep &= (y >= core[0]) & (y < core[1]) & (x >= core[2]) & (x < core[3])
    if not keep.any():
        return _empty_columns()
    bad = ~search.valid | ~block.tissue
    near_bad = cv2.dilate(bad.view(np.uint8), np.ones((2 * EDGE_GROW + 1,) * 2, np.uint8))
    flags = FLAG_EDGE * pixels.any(near_bad.view(bool)).astype(np.int64)
    if block.saturated.any():
        flags |= FLAG_SATURATED * pixels.any(block.saturated)
    flags |= FLAG_DEBLENDED * deblended
    flux, flux_err = grown_flux(search.subtracted, sigma, segments, labels,
                                np.asarray(model.c)[best])
    a, b, theta = pixels.shape(search.subtracted)
    columns = {
        "x": x, "y": y, "flux": flux, "flux_err": flux_err,
        "peak": pixels.maximum(search.subtracted),
        "snr": pixels.maximum(search.snr),
        "area_px": np.bincount(pixels.which, minlength=pixels.n).astype(np.float64),
        "a": a, "b": b, "theta": theta,
        "flags": flags.astype(np.int64),
    }
    columns = {name: values[keep] for name, values in columns.items()}
    columns["id"] = np.zeros(int(keep.sum()), np.int64)
    return columns


@dataclass(frozen=True)
class SegmentPixels:
    """The labelled pixels of a segmentation, grouped by segment: their rows, columns, the
    index of their segment in ``labels`` (non-decreasing) and where each segment's pixels
    start — per-segment reductions over these few pixels are much cheaper than scipy's
    labelled reductions over the whole block (which sort it)."""

    rows: np.ndarray
    cols: np.ndarray
    which: np.ndarray
    starts: np.ndarray
    n: int
    #: Raster indices (row · width + column) of the pixels.
    flat: np.ndarray

    @classmethod
    def of(cls, segments: np.ndarray, labels: np.ndarray) -> SegmentPixels:
        """The pixels of ``segments`` (a label image, 0 background) whose sorted labels are
        ``labels``."""
        flat = _pixels(segments > 0)
        which = np.searchsorted(labels, _take(segments, flat))
        order = np.argsort(which, kind="stable")
        which, flat = which[order], flat[order]
        rows, cols = np.divmod(flat, segments.shape[1])
        return cls(rows, cols, which, np.searchsorted(which, np.arange(labels.size)),
                   labels.size, flat)

    def at(self, values: np.ndarray) -> np.ndarray:
        """``values`` (block-shaped) at the pixels."""
        return _take(values, self.flat)

    def any(self, mask: np.ndarray) -> np.ndarray:
        """Per segment: whether ``mask`` (bool, block-shaped) is set on any of its pixels."""
        return np.bincount(self.which, self.at(mask), self.n) > 0

    def maximum(self, values: np.ndarray) -> np.ndarray:
        """Per segment: the largest of ``values`` (block-shaped) over its pixels."""
        return self._reduce_max(self.at(values).astype(np.float64))

    def _reduce_max(self, v: np.ndarray) -> np.ndarray:
        """Per segment: the largest of ``v`` (one value per pixel)."""
        return np.maximum.reduceat(v, self.starts) if self.n else np.empty(0)

    def argmax(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per segment: the row and column of its largest value of ``values`` (the first in
        raster order on a tie)."""
        v = self.at(values).astype(np.float64)
        at_max = np.flatnonzero(v == self._reduce_max(v)[self.which])
        first = at_max[np.searchsorted(self.which[at_max], np.arange(self.n))]
        return self.rows[first], self.cols[first]

    def shape(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per segment: the semi-major and semi-minor axes (px, the square roots of the
        eigenvalues of the second central moments of the positive part of ``data``) and the
        orientation of the major axis (degrees from +x towards +y, in (−90, 90])."""
        w = np.maximum(self.at(data), 0).astype(np.float64)
        n = self.n
        total = np.maximum(np.bincount(self.which, w, n), 1e-300)
        mx = np.bincount(self.which, w * self.cols, n) / total
        my = np.bincount(self.which, w * self.rows, n) / total
        dx, dy = self.cols - mx[self.which], self.rows - my[self.which]
        cxx = np.bincount(self.which, w * dx * dx, n) / total
        cyy = np.bincount(self.which, w * dy * dy, n) / total
        cxy = np.bincount(self.which, w * dx * dy, n) / total
        mean, half = (cxx + cyy) / 2, np.hypot((cxx - cyy) / 2, cxy)
        theta = np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy))
        return np.sqrt(mean + half), np.sqrt(np.maximum(mean - half, 0)), theta


def peak_positions(filtered: Sequence[np.ndarray], rows: np.ndarray, cols: np.ndarray,
                   kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel positions (px, the block's own frame) of sources that peak at pixels
    ``(rows, cols)`` of the images ``filtered[kernel]`` (the difference filtered by each
    kernel of the bank): the peak refined by a Gaussian (log-parabola) through the peak and
    its two neighbours along each axis — a parabola where a value is not positive; the shift
    is at most 1 px, none on the image's border. The peak of a matched filter is the
    maximum-likelihood position of a source of the kernel's shape: its error nears the
    Cramér–Rao bound when the kernel matches the source."""
    h, w = filtered[0].shape
    out = []
    for pos, size, (dr, dc) in ((cols, w, (0, 1)), (rows, h, (1, 0))):
        ok = (pos > 0) & (pos < size - 1)
        r_lo, c_lo = np.clip(rows - dr, 0, h - 1), np.clip(cols - dc, 0, w - 1)
        r_hi, c_hi = np.clip(rows + dr, 0, h - 1), np.clip(cols + dc, 0, w - 1)
        lo, mid, hi = (np.empty(rows.size) for _ in range(3))
        for j, f in enumerate(filtered):
            sel = kernel == j
            lo[sel], mid[sel] = f[r_lo[sel], c_lo[sel]], f[rows[sel], cols[sel]]
            hi[sel] = f[r_hi[sel], c_hi[sel]]
        positive = (lo > 0) & (mid > 0) & (hi > 0)
        lo, mid, hi = (np.where(positive, np.log(np.where(positive, v, 1)), v)
                       for v in (lo, mid, hi))
        curve = lo - 2 * mid + hi
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = np.where(ok & (curve < 0), 0.5 * (lo - hi) / curve, 0.0)
        out.append(pos + np.clip(shift, -1.0, 1.0))
    return out[0], out[1]


def merge_weak_splits(parents: np.ndarray, children: np.ndarray, sharp: np.ndarray,
                      prominence: float = DEBLEND_PROMINENCE
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undo the splits of the deblender that noise can explain: a parent segment (label
    image ``parents``) split into ``children`` is kept whole when one of its components
    peaks less than ``prominence`` above its saddle with a sibling (the highest value of
    ``sharp``, the sharpest kernel's significance, on their common border) — the bumps of
    noise on a broad source. Returns the label image, its sorted labels and, per label,
    whether it is a component of a split that stands."""
    flat = _pixels(children > 0)
    lab, par = _take(children, flat), _take(parents, flat)
    ulab, inv = np.unique(lab, return_inverse=True)
    values = _take(sharp, flat).astype(np.float64)
    peak = np.full(ulab.size, -np.inf)
    np.maximum.at(peak, inv, values)
    # border pixels: a sibling among the 8 neighbours (segments of different parents never
    # touch); labels are exact in float32 up to 2²⁴
    f = children.astype(np.float32)
    box = np.ones((3, 3), np.uint8)
    higher = _take(cv2.dilate(f, box, dst=_like(f)), flat) > lab
    f = np.where(children > 0, f, np.float32(np.inf))
    lower = _take(cv2.erode(f, box, dst=_like(f)), flat) < lab
    border = higher | lower
    saddle = np.full(ulab.size, -np.inf)
    np.maximum.at(saddle, inv[border], values[border])
    parent_of = np.empty(ulab.size, par.dtype)
    parent_of[inv] = par
    weak = np.isin(par, parent_of[peak - saddle < prominence])
    out = children.copy()
    relabelled = np.where(weak, par + int(ulab.max()), lab)  # one new label per weak parent
    out.reshape(-1)[flat] = relabelled
    labels, inv = np.unique(relabelled, return_inverse=True)
    parent_of = np.empty(labels.size, par.dtype)
    parent_of[inv] = par
    _, per_parent, counts = np.unique(parent_of, return_inverse=True, return_counts=True)
    return out, labels, counts[per_parent] > 1


def split_blends(sharp: np.ndarray, segments: np.ndarray, pixels: SegmentPixels,
                 peak_level: float) -> np.ndarray | None:
    """The segments holding two or more local maxima (5 × 5) of ``sharp`` (the sharpest
    kernel's significance) above ``peak_level``, split among those peaks by a watershed of
    ``sharp`` (scikit-image, 8-connected) — the deblending of Source Extractor and photutils
    without their per-source multi-thresholding (:func:`merge_weak_splits` then undoes the
    splits that noise explains); the other segments as they are. ``pixels`` are the pixels
    of ``segments`` (:meth:`SegmentPixels.of`). ``None`` when none splits.

    The markers are numbered after the segments' labels in the raster order of their peaks.
    Each segment is flooded in its own bounding box: a flood masked to one segment never
    leaves it, and the order in which it visits the segment's pixels (by value, then by
    the order they were queued) is the same with or without other segments in the image, so
    the labels are those of one watershed of the whole image, at a fraction of its cost."""
    from skimage.segmentation import watershed

    rows, cols, which = pixels.rows, pixels.cols, pixels.which
    values = pixels.at(sharp)
    peak = ((values == pixels.at(cv2.dilate(sharp, np.ones((5, 5), np.uint8), dst=_like(sharp))))
            & (values > peak_level))
    multi = np.bincount(which[peak], minlength=pixels.n) >= 2
    if not multi.any():
        return None
    at = np.flatnonzero(peak & multi[which])  # grouped by segment, raster order within
    raster = np.argsort(np.argsort(pixels.flat[at]))
    seeds = int(pixels.at(segments).max()) + 1 + raster.astype(np.int32)
    owner = which[at]
    lo_r, hi_r = (f.reduceat(rows, pixels.starts) for f in (np.minimum, np.maximum))
    lo_c, hi_c = (f.reduceat(cols, pixels.starts) for f in (np.minimum, np.maximum))
    split = segments.copy()
    for i in np.flatnonzero(multi):
        box = (slice(lo_r[i], hi_r[i] + 1), slice(lo_c[i], hi_c[i] + 1))
        mask = segments[box] == segments[rows[pixels.starts[i]], cols[pixels.starts[i]]]
        markers = np.zeros(mask.shape, np.int32)
        mine = slice(*np.searchsorted(owner, [i, i + 1]))
        markers[rows[at[mine]] - lo_r[i], cols[at[mine]] - lo_c[i]] = seeds[mine]
        flooded = watershed(-sharp[box], markers, mask=mask, connectivity=2)
        split[box] = np.where(mask, flooded, split[box])
    return split


def grown_flux(subtracted: np.ndarray, sigma: np.ndarray, segments: np.ndarray,
               labels: np.ndarray, correlation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux (post counts) of each source over its segment grown by :data:`FLUX_GROW` px into
    unlabelled pixels (the isophotal segment misses the faint wings; where grown segments
    meet, the larger label takes the pixel), and its error: the per-pixel σ summed in
    quadrature, times √``correlation`` (per source: the noise correlation at the scale of
    the kernel that found it, :class:`NoiseModel`)."""
    size = 2 * FLUX_GROW + 1
    # labels are exact in float32 up to 2²⁴; OpenCV dilates float32 images
    labels_f = segments.astype(np.float32)
    grown = cv2.dilate(labels_f, np.ones((size, size), np.uint8), dst=_like(labels_f))
    flat = _pixels(grown > 0)
    own = _take(segments, flat)
    which = np.searchsorted(labels, np.where(own > 0, own, _take(grown, flat).astype(own.dtype)))
    flux = np.bincount(which, _take(subtracted, flat).astype(np.float64), labels.size)
    var = np.bincount(which, _take(sigma, flat).astype(np.float64) ** 2, labels.size)
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
def inject_sources(block: Block, model: NoiseModel, snr: Sequence[float],
                   rng: np.random.Generator) -> tuple[Block, np.ndarray, np.ndarray]:
    """A copy of ``block`` with Gaussian sources (σ :data:`INJECT_SIGMA` px) on a grid of
    :data:`INJECT_SPACING` px over tissue away from edges, each of an integrated SNR
    (:meth:`NoiseModel.integrated_noise`) drawn in turn from ``snr`` in a random order (so
    that one detection run measures every SNR); returns it, their (x, y) (output frame) and
    their SNR."""
    h, w = block.diff.shape
    m = INJECT_SPACING // 2
    gy, gx = np.mgrid[m:h - m:INJECT_SPACING, m:w - m:INJECT_SPACING]
    xy = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float64)
    xy += rng.uniform(-0.5, 0.5, xy.shape)
    ok = block.tissue[xy[:, 1].round().astype(int), xy[:, 0].round().astype(int)]
    xy = xy[ok]
    values = np.asarray(snr, np.float64)[rng.permutation(len(xy)) % len(snr)]
    diff = block.diff.copy()
    r = math.ceil(4 * INJECT_SIGMA)
    offsets = np.arange(-r, r + 1)
    for (x, y), value in zip(xy, values):
        ix, iy = int(np.rint(x)), int(np.rint(y))
        flux = value * float(model.integrated_noise(block.level[iy, ix], INJECT_SIGMA))
        # separable: the Gaussian is the outer product of its row and column profiles
        gx_ = np.exp(-(ix + offsets - x) ** 2 / (2 * INJECT_SIGMA**2))
        gy_ = np.exp(-(iy + offsets - y) ** 2 / (2 * INJECT_SIGMA**2))
        blob = np.outer(gy_, gx_ * (flux / (2 * math.pi * INJECT_SIGMA**2)))
        diff[iy - r:iy + r + 1, ix - r:ix + r + 1] += blob.astype(np.float32)
    xy += (block.xa, block.ya)
    return (Block(block.ya, diff, block.level, block.tissue, block.saturated, block.xa), xy,
            values)


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
    px from the sampled blocks, one detection run per window with every SNR mixed on its
    grid; the real sources of a window stay (a recovered injection is one with a detection
    within :data:`INJECT_MATCH_PX` px)."""
    rng = np.random.default_rng(5)
    w = reader.shape[1]
    cols = min(w, INJECT_COLS)
    x0 = (w - cols) // 2
    found = {snr: [0, 0] for snr in INJECT_SNR}
    for y0 in list(starts)[:INJECT_WINDOWS]:
        block = reader.read(y0, min(reader.shape[0], y0 + TILE))
        window = block.columns(x0, x0 + cols)
        injected, xy, values = inject_sources(window, model, INJECT_SNR, rng)
        cols_ = detect_block(injected, model, threshold, min_area, deblend)
        hit = recovered_fraction(xy, cols_["x"], cols_["y"])
        for snr in INJECT_SNR:
            at = values == snr
            found[snr][0] += int(hit[at].sum())
            found[snr][1] += int(at.sum())
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
             ) -> tuple[list[Writer], list[Path]]:
    """One significance-image writer per format (the writers of stage 4's difference)."""
    writers: list[Writer] = []
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
            k = float(rec.info["scales"]["moffat"])
            pre_threshold = float(rec.info["thresholds"]["pre"])
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


def _chunks(width: int, halo: int) -> list[tuple[int, int, int, int]]:
    """``(a, x0, x1, b)`` per chunk of a row block: its core columns ``[x0, x1)``
    (:data:`CHUNK_COLS` wide) and the columns ``[a, b)`` it is processed with, ``halo`` more
    each side."""
    return [(max(0, x0 - halo), x0, min(width, x0 + CHUNK_COLS),
             min(width, x0 + CHUNK_COLS + halo)) for x0 in range(0, width, CHUNK_COLS)]


def _noise_model(reader: BlockReader, starts: Sequence[int], pool: ThreadPoolExecutor
                 ) -> NoiseModel:
    """Two fits over the sampled blocks (the first gives σ(L) for the background of the
    second, whose filtered variances are those detection sees), then each kernel's ``c``
    rescaled so that its significance has unit spread. The blocks are read three times
    rather than held (at most :data:`SAMPLE_PIXELS` px each time) and processed in chunks of
    :data:`CHUNK_COLS` columns by ``pool``."""
    def chunks() -> Iterator[tuple[Block, tuple[int, int]]]:
        """Chunks with their halos, and their core columns (the chunk's pixels)."""
        for y0 in starts:
            block = reader.read(y0, min(reader.shape[0], y0 + TILE))
            for a, x0, x1, b in _chunks(block.diff.shape[1], CHUNK_HALO):
                yield block.columns(a, b), (x0 - a, x1 - a)

    model = None
    for _ in range(2):
        parts = list(pool.map(lambda job, m=model: tile_stats(job[0].diff, job[0].level, m,
                                                              core=job[1]), chunks()))
        model = fit_noise(*(np.concatenate(p) for p in zip(*parts)), floor=reader.floor)
    assert model is not None

    def searched(job: tuple[Block, tuple[int, int]]) -> list[np.ndarray]:
        chunk, (c0, c1) = job
        search = search_map(chunk, model, model.sigma(chunk.level))
        # every CALIBRATION_STRIDE-th row and column of the frame (core columns start at
        # multiples of CHUNK_COLS): the same pixels however the blocks are chunked
        sub = (slice(None, None, CALIBRATION_STRIDE), slice(c0, c1, CALIBRATION_STRIDE))
        where = (search.searchable & chunk.tissue)[sub]
        return [k[sub][where] for k in search.per_kernel]

    # calibrate c on the significance map itself: its lower half (median − 15.87th
    # percentile over searchable tissue), which positive sources do not touch, is 1 σ
    values = [np.concatenate(v) for v in zip(*pool.map(searched, chunks()))]
    c = []
    for cj, v in zip(model.c, values):
        lo, mid = np.percentile(v, [15.87, 50.0]) if v.size else (0.0, 1.0)
        c.append(float(np.clip(cj * (mid - lo) ** 2 if mid > lo else cj, *CORRELATION_RANGE)))
    return NoiseModel(model.a, model.b, tuple(c), model.n_tiles)


def run_detect(layout: PairLayout, *, sample: str, dye: str, threads: int = 1,
               checkpoint_format: str = "tiff", meta: Mapping[str, str] | None = None
               ) -> dict[str, Any]:
    """Run stage 5 for one pair: noise model, significance image, catalogue, plots, record and
    ``result.json`` (``detections``). Chunks of row blocks are detected in ``threads``
    threads, at most :data:`MAX_THREADS` (OpenCV and NumPy release the GIL); the
    significance image is written in every format of ``checkpoint_format``. Returns the stage
    record (also ``layout.record(5)``). Raises :class:`InputDataError` (exit 65) naming the
    file when an input is missing or unusable."""
    p = layout.params.detect
    threshold, min_area, deblend, pad = p.threshold, p.min_area, p.deblend, p.pad
    run = StageRun(layout, 5)
    inputs = _Inputs.find(layout, checkpoint_format)
    with _open(inputs.diff) as diff_img, _open(inputs.aligned) as pre_img, \
            _open(inputs.post) as post_img, \
            ThreadPoolExecutor(max(1, min(threads, MAX_THREADS))) as pool:
        reader = BlockReader(diff_img, pre_img, post_img, inputs.k, inputs.pre_threshold, pad)
        h, w = reader.shape
        starts = sample_starts(h, w)
        with run.timed("noise_model"):
            model = _noise_model(reader, starts, pool)
        writers, paths = _writers(layout, formats(checkpoint_format), reader.shape, sample, dye,
                                  tiff_compression(checkpoint_format), threshold)
        factor = preview_factor(reader.shape)
        preview = np.zeros((-(-h // factor), -(-w // factor)), np.float32)
        parts: list[dict[str, np.ndarray]] = []
        tissue_px = 0

        def detect_chunk(block: Block, core: tuple[float, float, float, float]
                         ) -> dict[str, np.ndarray]:
            return detect_block(block, model, threshold, min_area, deblend, core)

        with run.timed("detect"), FanOut(writers, depth=1) as fan, \
                ThreadPoolExecutor(1) as ahead:
            # the next row block is read while this one's chunks are detected
            pending = ahead.submit(reader.halo_block, 0)
            for y0 in range(0, h, TILE):
                block, (y_lo, y_hi) = pending.result()
                if y0 + TILE < h:
                    pending = ahead.submit(reader.halo_block, y0 + TILE)
                chunks = _chunks(w, CHUNK_HALO)
                # the pool detects the chunks while this thread makes the block's significance
                # and preview rows (map submits every chunk at once; its results keep order)
                found = pool.map(detect_chunk, [block.columns(a, b) for a, _, _, b in chunks],
                                 [(y_lo, y_hi, x0 - 0.5, x1 - 0.5) for _, x0, x1, _ in chunks])
                c0, c1 = y0 - block.ya, min(h, y0 + TILE) - block.ya
                with np.errstate(invalid="ignore", divide="ignore"):
                    significance = block.diff[c0:c1] / model.sigma(block.level[c0:c1])
                fan.put([significance] * len(writers))
                tissue_px += int(np.count_nonzero(block.tissue[c0:c1]))
                small = box_mean(_zero_nan(block.diff[c0:c1].copy()), factor)
                preview[y0 // factor:y0 // factor + small.shape[0]] = small
                parts.extend(found)
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
                  "params": {"detect_threshold": threshold, "detect_min_area": min_area,
                             "detect_deblend": deblend},
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
