"""Stage 4 — subtract: estimate k and write ``post − k · aligned_pre`` with its diagnostics.

Inputs (pair folder, :class:`~exo2micro.io.layout.PairLayout`): the stage-1 post signal (native
dtype, raw post frame) and both pyramids, the stage-3 aligned pre (float32, output frame, TIFF
or FITS) and the final transform ``transforms/03_interior.json``.

Pixel sets
----------
All images are compared in the *output frame* (the raw post frame extended by ``pad`` px on
every side).

* **data**: output pixels that are inside the raw post frame *and* whose pre position
  (``post_to_pre``) lies inside the pre frame. Everything else has no data.
* **signal**: data pixels where both images are above a small threshold,
  ``background + SIGNAL_FRACTION · (tissue median − background)`` of each image (levels from
  the stage-1 pyramids), i.e. tissue where both carry fluorescence.
* **estimation**: the signal set eroded by :data:`ERODE_PX` px, which drops tissue edges, the
  pre frame's edge (where the warp interpolated with the zero outside) and the padding.
* **microbe-free**: the estimation set minus the neighbourhood of stain. Post-only light
  (microbes and their faint halos) would shift part of the ratio distribution slightly to the
  right, *inside* the peak, where no histogram method can tell it from background (at 5 %
  microbe cover it biases a left-wing fit by +0.2–0.4 %). Pixels are flagged where the excess
  over a coarse scale ``k0``, smoothed over :data:`SMOOTH_PX`, exceeds
  :data:`EXCESS_FRACTION` of ``k0 · pre``; flags are dilated by :data:`DILATE_PX` px. ``k0``
  comes from the same estimate on the stage-1 pyramids (:func:`coarse_scale`); the result is
  insensitive to ``k0`` within a few percent.

Physical facts
--------------
The difference images are pyramidal OME-TIFFs in the post frame, with the post image's pixel
size (µm, from stage 1) and the dye as channel name. When the pre and post pixel sizes are
both known, the pre→post magnification they imply (pre size / post size) is compared with
stage 2's measured scale; a relative disagreement above :data:`PIXEL_SCALE_TOLERANCE` is a
warning. When both exposure times (s) are known (parameters ``pre_exposure_s`` /
``post_exposure_s``, else stage 1's OME ``Plane/@ExposureTime``) the record and result.json
hold their ratio post/pre next to k and ``k / ratio``, the autofluorescence change net of
exposure; ``manual_scale=exposure`` subtracts with the ratio.

k is estimated (:mod:`exo2micro.numerics.scale`) by the Moffat left-wing fit to the log10(post/pre)
histogram of the microbe-free set (Moffat, always), by the percentile of the log10(post/pre)
histogram of the whole estimation set (``scale_percentile``: microbes included, as a user who
picks a percentile expects) and by ``manual_scale``. The 2-D pre/post histogram and the
difference histograms use the signal set.

A k that varies across the field (``k_model``, docs/output.md): unless ``k_model=global``, pass 1
also fills a log-ratio histogram per tile of the microbe-free set (:mod:`exo2micro.numerics.scale`),
and a smooth surface in log10 k is fitted to the tiles' k. ``smooth`` uses it; ``auto`` uses it when
the tiles show k varies (BIC, and more than :data:`~exo2micro.numerics.scale.MIN_RANGE` over the
tissue), else the result is exactly the global one. With a surface, the Moffat difference is made
with k(x, y) evaluated per strip, ``scales.moffat`` (result.json ``scale_estimate``) is the
surface's median over the tissue, and the map is written at 1/:data:`MAP_FACTOR` resolution (TIFF,
FITS) with ``scale_map.png``. Because a k that exceeds k0 by :data:`EXCESS_FRACTION` would flag
whole regions as stain, the microbe mask then follows a first surface fitted on the pyramid level
(:func:`coarse_surface`). Percentile and manual scales stay single numbers.

No data
-------
The difference images hold **NaN** where there is no data (padding, outside the pre frame), in
TIFF and FITS alike, so the two formats carry the same numbers and no one mistakes "no data" for
a perfect subtraction (0). Fiji/ImageJ, napari, QuPath and astropy treat NaN as missing.

Streaming and memory
--------------------
Two passes over the full-resolution images, in blocks of :data:`~exo2micro.io.tiffio.TILE` rows:

1. histograms of log10(post/pre) (estimation and microbe-free sets), log10(post) and
   log10(pre) on fixed grids (a few MB), and box-averaged previews for the plots
   (≤ :data:`PREVIEW_MAX_SIDE` px); blocks are read with :data:`HALO` extra rows so the
   masks are exactly those of the whole image; for a k map also the per-tile histograms (at
   most 24 × 24 tiles of 6 000 bins, ≤ 14 MB) and the tissue count per :data:`MAP_FACTOR`
   cell (12 MB at 30 000 × 25 000 px);
2. the difference image of every active scale, streamed to every requested format at once
   (one writer thread per file, :class:`~exo2micro.stages.streaming.FanOut`), plus the 2-D and
   difference histograms.

With ``threads ≥ 2`` blocks are processed by a thread pool (reads are serialised, numpy and
OpenCV release the GIL) with bounded look-ahead (:func:`~exo2micro.stages.streaming.ordered_map`,
at most ``threads + 1`` blocks in flight). Memory is a few blocks of ``512 × width``
float32 per thread and per writer, plus the readers' tile caches; never a full-resolution copy.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io.fitsio import FitsImage, make_header, write_streamed
from exo2micro.io.layout import PairLayout, formats, tiff_compression
from exo2micro.io.records import StageRun, stage1_physical
from exo2micro.io.tiffio import TILE, OmeMeta, TiffImage, read_info, write_tiled
from exo2micro.numerics import scale
from exo2micro.numerics.footprint import footprint_stats, tissue_mask
from exo2micro.numerics.pyramid import Pyramid
from exo2micro.numerics.review import Review, review_alignment
from exo2micro.numerics.transform import TransformRecord
from exo2micro.report import diagnostics
from exo2micro.report.result import build_result, write_result
from exo2micro.stage_params import SubtractParams
from exo2micro.stages.streaming import FanOut, Writer, ordered_map

#: Signal threshold of each image: this fraction of the way from its background level to its
#: tissue median.
SIGNAL_FRACTION = 0.25
#: Erosion (px) of the signal set before estimating k: tissue edges, the pre frame's edge.
ERODE_PX = 3
#: Microbe mask: Gaussian σ (px) of the smoothing of the excess, the flagged fraction of k0·pre,
#: and the dilation (px) of the flags, which covers the faint halo of stained spots.
SMOOTH_PX = 2.0
EXCESS_FRACTION = 0.05
DILATE_PX = 8
#: Rows per slice of the per-pixel work inside a block (bounds temporaries on wide images).
SUB_ROWS = 128
#: The value histograms (display ranges only) count every VALUE_STRIDE-th estimation pixel.
VALUE_STRIDE = 8
#: Rows read above and below each block so that the masks of its rows are exact: the erosion's
#: reach, or the dilation's plus the smoothing kernel's radius.
HALO = max(ERODE_PX, DILATE_PX + math.ceil(3 * SMOOTH_PX))
#: Fewer microbe-free pixels than this fraction of the estimation set earns a warning (stain
#: nearly everywhere, or a misalignment that reads as stain).
MIN_CLEAN_FRACTION = 0.05
#: Longest side (px) of the box-averaged previews used for the difference image plot.
PREVIEW_MAX_SIDE = 1024
#: Pyramid level side (px) used for the tissue levels and for the coarse scale k0.
LEVEL_SIDE = 1024
COARSE_SIDE = 2048
#: Largest relative difference between the magnification the pixel sizes imply and stage 2's
#: measured scale that passes without a warning.
PIXEL_SCALE_TOLERANCE = 0.02
#: Value written where there is no data.
NO_DATA = np.float32(np.nan)
#: The k map is written, and tissue pixels counted for its median and range, on cells of
#: MAP_FACTOR × MAP_FACTOR output px (a divisor of TILE, so blocks hold whole cells).
MAP_FACTOR = 16


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Thresholds:
    """Signal thresholds (image units) of post and aligned pre, and how they were derived."""

    post: float
    pre: float
    levels: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"post": self.post, "pre": self.pre, "fraction": SIGNAL_FRACTION,
                "edge_px": ERODE_PX, "levels": self.levels}


def tissue_thresholds(post_pyramid: Pyramid, pre_pyramid: Pyramid) -> Thresholds:
    """Signal thresholds from the tissue footprints of both pyramids (see module docstring)."""
    values, levels = {}, {}
    for which, pyr in (("post", post_pyramid), ("pre", pre_pyramid)):
        level, factor = pyr.level_for(LEVEL_SIDE)
        stats = footprint_stats(level, tissue_mask(level), factor)
        bg = stats.background_p50 if math.isfinite(stats.background_p50) else 0.0
        tissue = stats.tissue_p50
        if not math.isfinite(tissue) or tissue <= bg:
            raise InputDataError(f"{which} image: no tissue brighter than the background in "
                                 f"its pyramid; cannot estimate the scale")
        values[which] = bg + SIGNAL_FRACTION * (tissue - bg)
        levels[which] = {"background_median": bg, "tissue_median": tissue}
    return Thresholds(values["post"], values["pre"], levels)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputDataError(f"stage 4 input missing: {path} ({what})")
    return path


def _aligned_pre_path(layout: PairLayout, checkpoint_format: str) -> Path:
    """The stage-3 aligned pre to read: the requested format first, then the other."""
    order = [*formats(checkpoint_format), "tiff", "fits"]
    for fmt in dict.fromkeys(order):
        if layout.aligned_pre(fmt).is_file():
            return layout.aligned_pre(fmt)
    return _require(layout.aligned_pre(order[0]), "aligned pre from stage 3 align-interior")


#: Most blocks whose tile rows stage 4's readers keep decoded: see :func:`_open_image`.
CACHED_BLOCKS = 2


def _open_image(path: Path, blocks_in_flight: int) -> TiffImage | FitsImage:
    """A reader whose decoded-tile cache holds the tile rows of ``min(blocks_in_flight,``
    :data:`CACHED_BLOCKS` ``)`` blocks with their halos, and little more (FITS is
    memory-mapped).

    Reads are serialised and come in nearly increasing block order, so a block's halo finds
    the tile rows the block before it read whatever the thread count; a cache that grew with
    the threads (as it once did) only held more of the tiles no block would touch again:
    capping it took a 30 000 × 25 000 pair's peak at 16 threads from 5.64 to 5.24 GiB."""
    if path.suffix == ".fits":
        return FitsImage(path)
    info = read_info(path)
    row_bytes = info.width * info.samples * np.dtype(info.dtype).itemsize
    rows = (min(blocks_in_flight, CACHED_BLOCKS) + 2) * max(TILE, info.segment_shape[0])
    return TiffImage(path, cache_bytes=rows * row_bytes)


class Sources:
    """Block reader of the output frame: post, aligned pre and the data mask, row range by row
    range. Reads are serialised (the readers' file handles and caches are shared)."""

    def __init__(self, post: TiffImage | FitsImage, aligned: TiffImage | FitsImage,
                 post_to_pre: np.ndarray,
                 pre_shape: tuple[int, int], pad: int) -> None:
        ph, pw = post.shape
        if aligned.shape != (ph + 2 * pad, pw + 2 * pad):
            raise InputDataError(
                f"{getattr(aligned, 'path', 'aligned pre')}: shape {aligned.shape} does not "
                f"match the post frame {post.shape} with pad {pad}; re-run stage 3")
        self.post, self.aligned, self.pad = post, aligned, pad
        self.shape = aligned.shape
        self.pre_shape = pre_shape
        self.integer = post.dtype.kind in "ui"
        # output pixel (x, y) -> pre pixel: post_to_pre applied to raw post (x − pad, y − pad)
        shift = np.array([[1.0, 0, -pad], [0, 1.0, -pad], [0, 0, 1.0]])
        self._to_pre = (np.asarray(post_to_pre, np.float64) @ shift)[:2]
        self._lock = threading.Lock()

    def read(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Output rows ``[y0, y1)``: post (float32, 0 without data), aligned pre (float32) and
        the data mask (bool)."""
        h, w = y1 - y0, self.shape[1]
        pad = self.pad
        with self._lock:
            raw = self.post.read_window(y0 - pad, y1 - pad, 0, w - 2 * pad)[:, :, 0]
            pre = self.aligned.read_window(y0, y1, 0, w)[:, :, 0].astype(np.float32, copy=False)
        ry0 = max(0, pad - y0)
        if pad == 0:
            post = raw.astype(np.float32)
        else:
            post = np.zeros((h, w), np.float32)
            post[ry0:ry0 + raw.shape[0], pad:w - pad] = raw
        data = self.inside_pre(y0, y1)
        if pad:
            data[:ry0] = False
            data[ry0 + raw.shape[0]:] = False
            data[:, :pad] = False
            data[:, w - pad:] = False
        return post, pre, data

    def inside_pre(self, y0: int, y1: int) -> np.ndarray:
        """Whether each output pixel of rows ``[y0, y1)`` maps inside the pre frame (its pixel
        area ``[−0.5, W − 0.5) × [−0.5, H − 0.5)``), from the affine part of the transform.

        The pre frame is convex and the map affine, so on each row the inside pixels form one
        interval of columns; it is computed per row, then expanded.
        """
        a = self._to_pre
        y = np.arange(y0, y1, dtype=np.float64)
        lo = np.full(y.size, -np.inf)
        hi = np.full(y.size, np.inf)
        for row, size in ((a[0], self.pre_shape[1]), (a[1], self.pre_shape[0])):
            # −0.5 ≤ row[0]·x + row[1]·y + row[2] < size − 0.5
            rest = row[1] * y + row[2]
            if abs(row[0]) < 1e-12:
                outside = (rest < -0.5) | (rest >= size - 0.5)
                hi[outside] = -np.inf
                continue
            t0, t1 = (-0.5 - rest) / row[0], (size - 0.5 - rest) / row[0]
            lo = np.maximum(lo, np.minimum(t0, t1))
            hi = np.minimum(hi, np.maximum(t0, t1))
        x = np.arange(self.shape[1], dtype=np.float64)
        return (x[None, :] >= lo[:, None]) & (x[None, :] < hi[:, None])


def signal_mask(post: np.ndarray, pre: np.ndarray, data: np.ndarray, thr: Thresholds
                ) -> np.ndarray:
    """Data pixels where both images are above their signal thresholds."""
    return data & (post > thr.post) & (pre > thr.pre)


def _odd(n: float) -> int:
    return 2 * max(0, round(n)) + 1


def estimation_masks(post: np.ndarray, pre: np.ndarray, data: np.ndarray, thr: Thresholds,
                     k0: float | np.ndarray, px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The estimation set and its microbe-free part (see the module docstring), as boolean
    arrays of the arrays' shape.

    ``k0`` is the coarse scale: one number, or (a spatially varying k) a float32 array of the
    arrays' shape holding k at every pixel.

    ``px`` is the size of one array pixel in full-resolution pixels (the box size of a pyramid
    level), so the same physical distances are used at any level. Pixels beyond the arrays'
    top and bottom edges neither erode nor dilate, and the smoothing sees the arrays' own rows
    only: a block read with :data:`HALO` extra rows on each side and cropped gives exactly the
    masks of the whole image.
    """
    sig = signal_mask(post, pre, data, thr)
    edge = _odd(ERODE_PX / px)
    valid = cv2.erode(sig.view(np.uint8), np.ones((edge, edge), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=1).view(bool)
    sigma = SMOOTH_PX / px
    k = k0 if isinstance(k0, np.ndarray) else np.float32(k0)
    excess = np.multiply(k, pre)
    np.subtract(post, excess, out=excess)
    if sigma >= 0.5:
        size = _odd(3 * sigma)
        # in place (the same bits as into a new array): one full-width block less per thread;
        # OpenCV writes in place only into row-major arrays
        excess = cv2.GaussianBlur(excess, (size, size), sigma,
                                  dst=excess if excess.flags.c_contiguous else None)
        limit = cv2.GaussianBlur(pre, (size, size), sigma)  # the local pre level, scaled next
    else:
        limit = pre.copy()
    if isinstance(k0, np.ndarray):
        np.multiply(k0, limit, out=limit)
        limit *= np.float32(EXCESS_FRACTION)
    else:
        np.multiply(np.float32(EXCESS_FRACTION * k0), limit, out=limit)
    flagged = np.greater(excess, limit, out=np.empty(sig.shape, bool))
    flagged &= sig
    grow = _odd(DILATE_PX / px)
    near_stain = cv2.dilate(flagged.view(np.uint8), np.ones((grow, grow), np.uint8),
                            borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
    return valid, valid & ~near_stain


@dataclass(frozen=True)
class CoarseLevel:
    """Post at a pyramid level of ≤ :data:`COARSE_SIDE` px with the pre level warped onto it
    (float32) and the mask of level pixels that map inside pre; level pixel ``(j, i)`` of box
    size ``factor`` is the raw post point ``factor · (j, i) + (factor − 1) / 2``."""

    post: np.ndarray
    pre: np.ndarray
    inside: np.ndarray
    factor: int

    @classmethod
    def from_pyramids(cls, post_pyramid: Pyramid, pre_pyramid: Pyramid,
                      post_to_pre: np.ndarray) -> CoarseLevel:
        post, fp = post_pyramid.level_for(COARSE_SIDE)
        i = int(np.argmin([abs(math.log2(f / fp)) for f in pre_pyramid.factors]))
        pre_level, fq = pre_pyramid.levels[i], pre_pyramid.factors[i]
        to_full = np.array([[fp, 0, (fp - 1) / 2], [0, fp, (fp - 1) / 2], [0, 0, 1.0]])
        from_full = np.linalg.inv(np.array([[fq, 0, (fq - 1) / 2], [0, fq, (fq - 1) / 2],
                                            [0, 0, 1.0]]))
        local = from_full @ np.asarray(post_to_pre, np.float64) @ to_full
        h, w = post.shape
        pre = cv2.warpAffine(pre_level.astype(np.float32), local[:2], (w, h),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        inside = cv2.warpAffine(np.ones(pre_level.shape, np.uint8), local[:2], (w, h),
                                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
        return cls(post.astype(np.float32), pre, inside, fp)

    def frame_axes(self, pad: int) -> tuple[np.ndarray, np.ndarray]:
        """Output-frame coordinates (px) of the level's columns and rows."""
        f = self.factor
        h, w = self.post.shape
        return (f * np.arange(w) + (f - 1) / 2 + pad, f * np.arange(h) + (f - 1) / 2 + pad)


def coarse_scale(level: CoarseLevel, thr: Thresholds) -> float:
    """A first k0 from the pyramids' :class:`CoarseLevel`: two rounds of the left-wing fit over
    the microbe-free set, starting from the ratio of the tissue medians (the whole estimation
    set stands in when too little is microbe-free)."""
    post, pre = level.post, level.pre
    k0 = thr.levels["post"]["tissue_median"] / thr.levels["pre"]["tissue_median"]
    for _ in range(2):
        valid, clean = estimation_masks(post, pre, level.inside, thr, k0, px=level.factor)
        sel = clean if np.count_nonzero(clean) >= scale.MIN_FIT_PIXELS else valid
        if not sel.any():
            break
        hist = scale.Histogram.log_ratio()
        hist.add(np.log10(post[sel]) - np.log10(pre[sel]))
        k0 = scale.fit_left_wing(hist).scale
    return k0


def coarse_surface(level: CoarseLevel, thr: Thresholds, k0: float, shape: tuple[int, int],
                   pad: int, mode: str) -> scale.SurfaceChoice:
    """A first k map for the microbe mask (``mode`` 'auto' or 'smooth', see
    :func:`exo2micro.numerics.scale.choose_surface`): per-tile estimates over the coarse level's
    microbe-free set, placed in the output frame (``shape``, ``pad``), and a surface fitted to
    them; when one is chosen the masks are remade with it and the fit repeated once.

    A k that varies by more than :data:`EXCESS_FRACTION` across the field makes one k0 flag
    whole regions as stain (where k > k0 by that much), which would leave those regions out of
    every estimate; the mask must follow the local k.
    """
    f = level.factor
    xs, ys = level.frame_axes(pad)
    k: float | np.ndarray = k0
    choice = scale.SurfaceChoice(None, "not estimated")
    for _ in range(2):
        valid, clean = estimation_masks(level.post, level.pre, level.inside, thr, k, px=f)
        tiles = scale.TileHistograms.empty(level.post.shape, scale.tile_side(level.post.shape),
                                           math.log10(k0))
        tiles.add(np.log10(level.post[clean]) - np.log10(level.pre[clean]), clean)
        table = tiles.estimates().shifted(f, (f - 1) / 2 + pad)
        choice = scale.choose_surface(table, shape, scale.CellGrid(xs, ys, valid), mode)
        if choice.surface is None:
            break
        k = choice.surface.grid(xs, ys)
    return choice


# ------------------------------------------------------------------------------- pass 1
@dataclass
class Pass1:
    """What the first pass gathers: the exact log-ratio histogram of the estimation set
    (``ratio``), the dequantised one of its microbe-free part (``clean``, what k is fitted to),
    value histograms of the estimation set, pixel counts and the box-averaged previews (means
    of post·data, pre·data and data over each box)."""

    ratio: scale.Histogram = field(default_factory=scale.Histogram.log_ratio)
    clean: scale.Histogram = field(default_factory=scale.Histogram.log_ratio)
    post: scale.Histogram = field(default_factory=scale.Histogram.log_value)
    pre: scale.Histogram = field(default_factory=scale.Histogram.log_value)
    n_data: int = 0
    n_signal: int = 0
    n_equal: int = 0
    preview_factor: int = 1
    preview: dict[str, np.ndarray] = field(default_factory=dict)
    #: With a :class:`TilePlan`: the microbe-free log-ratio histograms per tile and the
    #: estimation pixels counted per :data:`MAP_FACTOR` cell (float32).
    tiles: scale.TileHistograms | None = None
    cells: np.ndarray | None = None

    def merge(self, other: Pass1) -> None:
        for name in ("ratio", "clean", "post", "pre"):
            getattr(self, name).merge(getattr(other, name))
        self.n_data += other.n_data
        self.n_signal += other.n_signal
        self.n_equal += other.n_equal
        if self.tiles is not None and other.tiles is not None:
            self.tiles.merge(other.tiles)


@dataclass(frozen=True)
class TilePlan:
    """Per-tile estimation in pass 1 (``k_model`` other than global): the tile side (px), the
    centre (log10 k0) of the tiles' histogram window and the coarse k surface the microbe mask
    follows (``None``: the mask uses the single k0)."""

    side: int
    centre: float
    mask_surface: scale.KSurface | None

    def histograms(self, shape: tuple[int, int], row0: int = 0, rows: int | None = None,
                   dtype: type = np.int32) -> scale.TileHistograms:
        return scale.TileHistograms.empty(shape, self.side, self.centre, row0, rows, dtype)


def cell_axes(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Output-frame coordinates (px) of the centres of the :data:`MAP_FACTOR` cells' columns
    and rows (cell ``i`` covers px ``[f·i, f·i + f)``, centre ``f·i + (f − 1)/2``)."""
    f = MAP_FACTOR
    return tuple(f * np.arange(-(-n // f)) + (f - 1) / 2 for n in (shape[1], shape[0]))


def box_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Sum over ``factor × factor`` boxes divided by ``factor²`` (float32); partial boxes at
    the edges are zero-padded, so ratios of two box means of the same block are exact means
    over the pixels they weight."""
    if factor == 1:
        return image.astype(np.float32)
    h, w = image.shape
    bh, bw = -(-h // factor), -(-w // factor)
    padded = np.zeros((bh * factor, bw * factor), np.float32)
    padded[:h, :w] = image
    # INTER_AREA with an integer factor is the exact box mean
    return cv2.resize(padded, (bw, bh), interpolation=cv2.INTER_AREA)


def preview_factor(shape: tuple[int, int]) -> int:
    """Power-of-two box size that brings the longer side to ≤ :data:`PREVIEW_MAX_SIDE`."""
    f = 1
    while max(shape) / f > PREVIEW_MAX_SIDE and f < TILE:
        f *= 2
    return f


def _pass1_block(src: Sources, thr: Thresholds, k0: float, factor: int, y0: int,
                 plan: TilePlan | None = None) -> tuple[int, Pass1]:
    h = src.shape[0]
    y1 = min(h, y0 + TILE)
    ya, yb = max(0, y0 - HALO), min(h, y1 + HALO)
    post, pre, data = src.read(ya, yb)
    core = slice(y0 - ya, y1 - ya)
    mask_k: float | np.ndarray = k0
    if plan is not None and plan.mask_surface is not None:
        mask_k = plan.mask_surface.grid(np.arange(src.shape[1]), np.arange(ya, yb))
    valid, clean = (m[core] for m in estimation_masks(post, pre, data, thr, mask_k))
    post, pre, data = post[core], pre[core], data[core]
    out = Pass1()
    if plan is not None:
        first = y0 // plan.side
        out.tiles = plan.histograms(src.shape, first, (y1 - 1) // plan.side + 1 - first,
                                    np.int64)
    # per-pixel work in slices of SUB_ROWS rows bounds the temporaries of wide images
    for r in range(0, y1 - y0, SUB_ROWS):
        rows = slice(r, r + SUB_ROWS)
        v = valid[rows]
        pv = post[rows][v]
        lp = np.log10(pv)
        lq = np.log10(pre[rows][v])
        ratio = lp - lq
        out.ratio.add(ratio)
        out.n_equal += int(np.count_nonzero(ratio == 0))
        keep = clean[rows][v]
        clean_ratio = (np.log10(scale.dequantise(pv[keep])) - lq[keep]) if src.integer \
            else ratio[keep]
        out.clean.add(clean_ratio)
        if out.tiles is not None:
            out.tiles.add(clean_ratio, clean[rows], y0 + r)
        # the value histograms only set display ranges: every VALUE_STRIDE-th pixel is plenty
        out.post.add(lp[::VALUE_STRIDE])
        out.pre.add(lq[::VALUE_STRIDE])
    out.n_data = int(np.count_nonzero(data))
    out.n_signal = int(np.count_nonzero(signal_mask(post, pre, data, thr)))
    # post and pre are this block's own arrays, no longer needed: weighted by the data mask
    # (1 or 0) in place, reduced, and let go before the mask's own preview is made
    out.preview = {"post": box_mean(np.multiply(post, data, out=post), factor),
                   "pre": box_mean(np.multiply(pre, data, out=pre), factor)}
    del post, pre
    out.preview["data"] = box_mean(data.astype(np.float32), factor)
    if plan is not None:
        out.cells = np.rint(box_mean(valid.astype(np.float32), MAP_FACTOR) * MAP_FACTOR ** 2)
    return y0, out


def first_pass(src: Sources, thr: Thresholds, k0: float, pool: ThreadPoolExecutor | None,
               ahead: int, plan: TilePlan | None = None) -> Pass1:
    """Pass 1 over the full-resolution images (see module docstring); with ``plan`` also the
    per-tile histograms and the tissue counts per :data:`MAP_FACTOR` cell."""
    h, w = src.shape
    factor = preview_factor(src.shape)
    total = Pass1(preview_factor=factor)
    ph, pw = -(-h // factor), -(-w // factor)
    total.preview = {name: np.zeros((ph, pw), np.float32) for name in ("post", "pre", "data")}
    if plan is not None:
        total.tiles = plan.histograms(src.shape)
        total.cells = np.zeros((-(-h // MAP_FACTOR), -(-w // MAP_FACTOR)), np.float32)
    for y0, part in ordered_map(pool, lambda y: _pass1_block(src, thr, k0, factor, y, plan),
                                 range(0, h, TILE), ahead):
        total.merge(part)
        r0 = y0 // factor
        for name, arr in part.preview.items():
            total.preview[name][r0:r0 + arr.shape[0]] = arr
        if total.cells is not None and part.cells is not None:
            c0 = y0 // MAP_FACTOR
            total.cells[c0:c0 + part.cells.shape[0]] = part.cells
    return total


# ------------------------------------------------------------------------------- pass 2
@dataclass
class Pass2:
    """What the second pass gathers: the pre/post 2-D histogram and one difference histogram
    per active scale, over the signal set."""

    grid: scale.Histogram2D
    differences: dict[str, scale.Histogram]

    def merge(self, other: Pass2) -> None:
        self.grid.merge(other.grid)
        for kind, hist in other.differences.items():
            self.differences[kind].merge(hist)


def _empty_pass2(grid: tuple[float, float, int], diff_range: float, kinds: Iterable[str]
                 ) -> Pass2:
    bins = 800
    return Pass2(scale.Histogram2D.empty(*grid),
                 {kind: scale.Histogram.empty(-diff_range, 2 * diff_range / bins, bins)
                  for kind in kinds})


def _pass2_block(src: Sources, thr: Thresholds, scales: Mapping[str, float],
                 grid: tuple[float, float, int], diff_range: float, y0: int,
                 surface: scale.KSurface | None = None) -> tuple[list[np.ndarray], Pass2]:
    """One block of pass 2: the difference of every active scale (the Moffat one with k of
    ``surface`` at every pixel when given) and its histograms."""
    y1 = min(src.shape[0], y0 + TILE)
    post, pre, data = src.read(y0, y1)
    part = _empty_pass2(grid, diff_range, scales)
    sig = signal_mask(post, pre, data, thr)
    for r in range(0, y1 - y0, SUB_ROWS):
        rows = slice(r, r + SUB_ROWS)
        part.grid.add(pre[rows][sig[rows]], post[rows][sig[rows]])
    blocks = []
    for i, (kind, k) in enumerate(scales.items()):
        field = (surface.grid(np.arange(src.shape[1]), np.arange(y0, y1))
                 if kind == "moffat" and surface is not None else np.float32(k))
        # post − k · pre; the last scale's in pre's own block (pre is not needed after it),
        # the others in one new block each: a full-width block less per thread
        diff = np.multiply(field, pre, out=pre if i == len(scales) - 1 else None)
        blocks.append(np.subtract(post, diff, out=diff))
    for r in range(0, y1 - y0, SUB_ROWS):
        rows = slice(r, r + SUB_ROWS)
        for kind, diff in zip(scales, blocks):
            part.differences[kind].add(diff[rows][sig[rows]])
    for diff in blocks:
        diff[~data] = NO_DATA
    return blocks, part


# ------------------------------------------------------------------------------ the stage
def active_scales(fit: scale.ScaleFit, ratio: scale.Histogram, p: SubtractParams,
                  exposure_ratio: float | None = None) -> dict[str, float]:
    """``{kind: k}`` of every active scale, Moffat first (``manual_scale='exposure'``: the
    post/pre ``exposure_ratio``, checked to be known by :func:`exposure_facts`)."""
    scales = {"moffat": fit.scale}
    if p.scale_percentile is not None:
        scales["percentile"] = scale.percentile_scale(ratio, float(p.scale_percentile))
    if p.manual_scale is not None:
        scales["manual"] = float(exposure_ratio if p.manual_scale == "exposure"
                                 else p.manual_scale)
    return scales


def exposure_facts(layout: PairLayout) -> dict[str, float | None]:
    """Exposure times (s) of pre and post (the pair's own, else the parameters, over stage 1's
    OME metadata) and their ratio post/pre. Raises :class:`InputDataError` when
    ``manual_scale=exposure`` lacks one."""
    p = layout.params.subtract
    given = {"pre": p.pre_exposure_s, "post": p.post_exposure_s}
    times = {w: given[w] or stage1_physical(layout, w)["exposure_s"] for w in ("pre", "post")}
    ratio = times["post"] / times["pre"] if times["pre"] and times["post"] else None
    if p.manual_scale == "exposure" and ratio is None:
        missing = " and ".join(w for w, t in times.items() if not t)
        raise InputDataError(f"manual_scale=exposure needs both exposure times, but the {missing} "
                             f"exposure is unknown: set pre_exposure_s and post_exposure_s "
                             f"(samplesheet columns or parameters)")
    return {"pre_s": times["pre"], "post_s": times["post"], "ratio": ratio}


def pixel_scale_check(layout: PairLayout) -> tuple[dict[str, Any], str | None]:
    """The magnification the pixel sizes imply (pre µm / post µm) against stage 2's measured
    scale: the facts, and a warning when they differ by more than
    :data:`PIXEL_SCALE_TOLERANCE` (``None`` otherwise or when a size is unknown)."""
    sizes = {w: stage1_physical(layout, w)["pixel_size_um"] for w in ("pre", "post")}
    stage2 = layout.boundary_transform()
    measured = (TransformRecord.load(stage2).metrics.get("scale") if stage2.is_file() else None)
    facts: dict[str, Any] = {"pixel_size_um": sizes, "measured_scale": measured,
                             "implied_scale": None}
    if not (sizes["pre"] and sizes["post"]):
        return facts, None
    implied = sizes["pre"] / sizes["post"]
    facts["implied_scale"] = implied
    if measured is None or abs(measured / implied - 1) <= PIXEL_SCALE_TOLERANCE:
        return facts, None
    return facts, (f"the pixel sizes (pre {sizes['pre']:g} µm, post {sizes['post']:g} µm) imply "
                   f"a pre→post scale of {implied:.4f}, but stage 2 measured {measured:.4f} "
                   f"({measured / implied - 1:+.1%}); is a pixel size wrong?")


def _writers(layout: PairLayout, kinds: Sequence[str], fmts: Sequence[str],
             shape: tuple[int, int], sample: str, dye: str, scales: Mapping[str, float],
             accuracy: float | None, compression: str | None, pixel_size_um: float | None,
             scale_map: str | None = None
             ) -> tuple[list[Writer], list[Path], list[int]]:
    """One writer per (kind, format), the files they write, and which kind feeds each
    (``compression``: tifffile codec of the TIFFs). ``scale_map`` (the k map's path in the
    pair folder) marks the Moffat difference as made with k(x, y); its ``scale`` is then the
    map's median."""
    writers: list[Writer] = []
    paths: list[Path] = []
    feeds: list[int] = []
    for i, kind in enumerate(kinds):
        for fmt in fmts:
            path = layout.difference(fmt, kind)
            if fmt == "tiff":
                # the accuracy to 4 digits, as meaningful: its last bits can differ between the
                # orchestrators (the BLAS summation order in stages 2-3), the pixels do not
                facts = {"exo2micro": "difference post - k * aligned_pre",
                         "sample": sample, "dye": dye, "scale": scales[kind],
                         "scale_kind": kind, "no_data": "NaN",
                         "estimated_accuracy_px": None if accuracy is None
                         else float(f"{accuracy:.4g}")}
                if kind == "moffat" and scale_map:
                    facts |= {"k_model": "smooth", "scale_map": scale_map}
                desc = json.dumps(facts)
                ome = OmeMeta(f"difference ({kind})", dye, pixel_size_um, desc)
                writers.append(lambda b, p=path, o=ome: write_tiled(
                    p, shape, np.float32, b, ome=o, compression=compression))
            else:
                hdr = make_header(sample=sample, dye=dye, stage=4, params=layout.params,
                                  scale=scales[kind], scale_kind=kind, accuracy_px=accuracy)
                hdr["BUNIT"] = ("post counts", "post - k * aligned pre, post image units")
                hdr.add_comment("NaN marks pixels without data (padding, outside the pre frame)")
                if kind == "moffat" and scale_map:
                    hdr["KMODEL"] = ("smooth", "k(x,y) of the k map; SCALE: its median")
                    hdr.add_comment(f"k map: {scale_map}")
                writers.append(lambda b, p=path, hd=hdr: write_streamed(p, shape, hd, b))
            paths.append(path)
            feeds.append(i)
    return writers, paths, feeds


@dataclass(frozen=True)
class _Inputs:
    """The stage's input files (checked to exist) and the final transform."""

    post: Path
    post_pyramid: Path
    pre_pyramid: Path
    aligned: Path
    transform_path: Path
    transform: TransformRecord

    @classmethod
    def find(cls, layout: PairLayout, checkpoint_format: str) -> _Inputs:
        tr_path = _require(layout.interior_transform(), "final transform from stage 3")
        return cls(post=_require(layout.signal("post"), "post signal from stage 1 load"),
                   post_pyramid=_require(layout.pyramid("post"), "post pyramid from stage 1"),
                   pre_pyramid=_require(layout.pyramid("pre"), "pre pyramid from stage 1"),
                   aligned=_aligned_pre_path(layout, checkpoint_format),
                   transform_path=tr_path, transform=TransformRecord.load(tr_path))

    @property
    def accuracy_px(self) -> float | None:
        """The final transform's estimated accuracy (px), FITS key IACC."""
        value = self.transform.metrics.get("estimated_accuracy_px")
        return None if value is None else float(value)


def _second_pass(src: Sources, thr: Thresholds, scales: Mapping[str, float],
                 grid: tuple[float, float, int], diff_range: float,
                 writers: Sequence[Writer], feeds: Sequence[int],
                 pool: ThreadPoolExecutor | None, ahead: int,
                 surface: scale.KSurface | None = None) -> Pass2:
    """Pass 2: stream the difference blocks to the writers, accumulate its histograms (the
    Moffat difference with k(x, y) of ``surface`` when given)."""
    total = _empty_pass2(grid, diff_range, scales)
    with FanOut(writers, depth=1) as fan:
        for blocks, part in ordered_map(
                pool, lambda y: _pass2_block(src, thr, scales, grid, diff_range, y, surface),
                range(0, src.shape[0], TILE), ahead):
            total.merge(part)
            fan.put([blocks[i] for i in feeds])
    return total


@dataclass
class KMap:
    """The spatially varying k of a pair: the decision
    (:class:`exo2micro.numerics.scale.SurfaceChoice`; its ``surface`` is ``None`` for one global
    k), the tile estimates it rests on, the tissue counts per :data:`MAP_FACTOR` cell, and the
    map's median, min and max over the tissue."""

    choice: scale.SurfaceChoice
    table: scale.TileTable
    cells: scale.CellGrid
    median: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")

    @classmethod
    def estimate(cls, p1: Pass1, shape: tuple[int, int], mode: str) -> KMap:
        """Tile estimates from pass 1's tile histograms and the surface ``mode`` asks for."""
        if p1.tiles is None or p1.cells is None:
            raise ValueError("pass 1 ran without a TilePlan")
        table = p1.tiles.estimates()
        cells = scale.CellGrid(*cell_axes(shape), p1.cells)
        out = cls(scale.choose_surface(table, shape, cells, mode), table, cells)
        if out.surface is not None:
            out.median, out.low, out.high = cells.summary(out.surface)
        return out

    @property
    def surface(self) -> scale.KSurface | None:
        return self.choice.surface

    def to_json(self, coarse: scale.SurfaceChoice | None) -> dict[str, Any]:
        return {"map_factor_px": MAP_FACTOR, "frame": "output frame px (raw post + pad), "
                "pixel centres at integers", "tiles": self.table.to_json(),
                "choice": self.choice.to_json(),
                "mask_surface": None if coarse is None else coarse.to_json()}


def write_scale_map(layout: PairLayout, surface: scale.KSurface, shape: tuple[int, int],
                    fmts: Sequence[str], sample: str, dye: str, pixel_size_um: float | None,
                    compression: str | None) -> list[Path]:
    """The k map (float32, k at the centre of every :data:`MAP_FACTOR` cell of the output
    frame ``shape``) as ``layout.scale_map(fmt)`` for every format; returns the paths."""
    xs, ys = cell_axes(shape)
    kmap = surface.grid(xs, ys)
    facts = {"exo2micro": "k map: post = k(x, y) * aligned_pre + stain", "sample": sample,
             "dye": dye, "cell_px": MAP_FACTOR,
             "pixel": f"map pixel (i, j) is output pixel ({MAP_FACTOR} i + "
                      f"{(MAP_FACTOR - 1) / 2}, {MAP_FACTOR} j + {(MAP_FACTOR - 1) / 2})",
             "surface": surface.to_json()}
    paths = []
    for fmt in fmts:
        path = layout.scale_map(fmt)
        if fmt == "tiff":
            size = None if pixel_size_um is None else pixel_size_um * MAP_FACTOR
            write_tiled(path, kmap.shape, np.float32,
                        (kmap[r:r + TILE] for r in range(0, kmap.shape[0], TILE)),
                        ome=OmeMeta("k map", dye, size, json.dumps(facts)),
                        compression=compression, pyramid=False)
        else:
            hdr = make_header(sample=sample, dye=dye, stage=4, params=layout.params)
            hdr["BUNIT"] = ("k", "post / aligned pre of the autofluorescence")
            hdr["KCELL"] = (MAP_FACTOR, "output px per map px along each axis")
            hdr.add_comment(facts["pixel"])
            write_streamed(path, kmap.shape, hdr, [kmap])
        paths.append(path)
    return paths


def run_subtract(layout: PairLayout, *, sample: str, dye: str, threads: int = 1,
                 checkpoint_format: str = "tiff", meta: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
    """Run stage 4 for one pair; write the difference images, plots, record and result.json.

    ``threads`` sizes the block thread pool; ``checkpoint_format`` ('tiff', 'fits' or 'both')
    chooses the difference images' formats (the aligned pre is read in whichever format
    exists); ``meta`` is copied into result.json. Returns the stage record (also written to
    ``layout.record(4)``). Raises :class:`InputDataError` (exit 65) naming the file when an
    input is missing or unusable.
    """
    run = StageRun(layout, 4)
    inputs = _Inputs.find(layout, checkpoint_format)
    exposure = exposure_facts(layout)
    pixel_scale, mismatch = pixel_scale_check(layout)
    if mismatch:
        run.warn(mismatch)
    post_to_pre = inputs.transform.post_to_pre
    p = layout.params.subtract
    mode, pad = p.k_model, p.pad
    with run.timed("levels"):
        post_pyr, pre_pyr = Pyramid.load(inputs.post_pyramid), Pyramid.load(inputs.pre_pyramid)
        thr = tissue_thresholds(post_pyr, pre_pyr)
        level = CoarseLevel.from_pyramids(post_pyr, pre_pyr, post_to_pre)
        k0 = coarse_scale(level, thr)
        frame = (post_pyr.full_shape[0] + 2 * pad, post_pyr.full_shape[1] + 2 * pad)
        coarse = None if mode == "global" else coarse_surface(level, thr, k0, frame, pad, mode)
        del level
    with run.timed("review"):
        review = _review(layout, pre_pyr, post_pyr, post_to_pre)
    for problem in review.problems:
        run.warn(f"needs review: {problem}")
    n = max(1, int(threads))
    pool = ThreadPoolExecutor(max_workers=n) if n >= 2 else None
    try:
        with _open_image(inputs.post, n) as post_img, \
                _open_image(inputs.aligned, n) as aligned_img:
            src = Sources(post_img, aligned_img, post_to_pre, pre_pyr.full_shape, pad)
            plan = None if coarse is None else TilePlan(scale.tile_side(src.shape),
                                                        math.log10(k0), coarse.surface)
            with run.timed("pass1_histograms"):
                p1 = first_pass(src, thr, k0, pool, n + 1, plan)
            if p1.ratio.total == 0:
                raise InputDataError(f"{inputs.post}: no pixel where both post and aligned pre "
                                     f"carry signal (thresholds post > {thr.post:.4g}, pre > "
                                     f"{thr.pre:.4g}); is the alignment right?")
            with run.timed("fit"):
                fit = scale.fit_left_wing(_fit_histogram(p1, run))
                if fit.message:
                    run.warn(fit.message)
                scales = active_scales(fit, p1.ratio, p, exposure["ratio"])
                kmap = None if plan is None else KMap.estimate(p1, src.shape, mode)
                surface = None if kmap is None else kmap.surface
                k_range = [scales["moffat"]] * 2
                if kmap is not None and surface is not None:
                    scales["moffat"] = kmap.median
                    k_range = [kmap.low, kmap.high]
            fmts = formats(checkpoint_format)
            map_paths = [] if surface is None else [layout.scale_map(f) for f in fmts]
            vmax = 1.1 * max(10.0 ** p1.post.quantile(0.999), 10.0 ** p1.pre.quantile(0.999))
            grid = scale.value_grid(vmax, src.integer)
            writers, paths, feeds = _writers(layout, list(scales), fmts,
                                             src.shape, sample, dye, scales, inputs.accuracy_px,
                                             tiff_compression(checkpoint_format),
                                             pixel_scale["pixel_size_um"]["post"],
                                             layout.relative(map_paths[0]) if map_paths else None)
            with run.timed("pass2_difference"):
                p2 = _second_pass(src, thr, scales, grid, vmax, writers, feeds, pool, n + 1,
                                  surface)
            if surface is not None:
                paths += write_scale_map(layout, surface, src.shape, fmts, sample, dye,
                                         pixel_scale["pixel_size_um"]["post"],
                                         tiff_compression(checkpoint_format))
            units = _units(post_img.dtype)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    run.add_outputs(paths)
    with run.timed("plots"):
        ctx = diagnostics.PlotContext(sample=sample, dye=dye, units=units, scales=scales,
                                      percentile=p.scale_percentile,
                                      thresholds=(thr.post, thr.pre),
                                      pixel_size_um=pixel_scale["pixel_size_um"]["post"])
        run.add_outputs(diagnostics.write_all(
            layout, ctx, fit=fit, ratio=p1.ratio, grid=p2.grid, differences=p2.differences,
            preview=p1.preview, preview_factor=p1.preview_factor))
        if kmap is not None and surface is not None:
            run.add_outputs([diagnostics.plot_scale_map(
                layout.plot("scale_map"), ctx, surface.grid(kmap.cells.xs, kmap.cells.ys),
                MAP_FACTOR, kmap.cells.counts > 0, kmap.table, kmap.choice.fit_weights)])
    run.info.update({
        "scales": {"moffat": scales["moffat"], "percentile": scales.get("percentile"),
                   "manual": scales.get("manual")},
        "scale_fit": fit.to_json(),
        "k_model": "global" if surface is None else "smooth",
        "scale_range": k_range,
        "scale_map": layout.relative(map_paths[0]) if map_paths else None,
        "k_map": None if kmap is None else {"requested": mode} | kmap.to_json(coarse),
        "pixel_size_um": pixel_scale["pixel_size_um"]["post"],
        "pixel_scale": pixel_scale,
        "exposure": exposure | {"k_net_of_exposure": None if exposure["ratio"] is None
                                else scales["moffat"] / exposure["ratio"]},
        "scale_percentile": p.scale_percentile,
        "thresholds": thr.to_json(),
        "pixels": {"data": p1.n_data, "signal": p1.n_signal, "estimation": p1.ratio.total,
                   "microbe_free": p1.clean.total, "post_equals_pre": p1.n_equal},
        "microbe_mask": {"coarse_scale": k0, "excess_fraction": EXCESS_FRACTION,
                         "smooth_px": SMOOTH_PX, "dilate_px": DILATE_PX},
        "ratio_histogram": p1.ratio.to_json(),
        "difference": {kind: _difference_stats(p2.differences[kind]) | {"scale": k}
                       for kind, k in scales.items()},
        "no_data_value": "NaN",
        "inputs": {"post": layout.relative(inputs.post),
                   "aligned_pre": layout.relative(inputs.aligned),
                   "transform": layout.relative(inputs.transform_path)},
        "estimated_accuracy_px": inputs.accuracy_px,
        "review": review.to_json(),
    })
    record = run.record()
    write_result(layout, build_result(layout, sample, dye, "complete", meta))
    return record


def _review(layout: PairLayout, pre_pyr: Pyramid, post_pyr: Pyramid, post_to_pre: np.ndarray
            ) -> Review:
    """The consistency check of the final alignment (:mod:`exo2micro.numerics.review`)."""
    stage2 = layout.boundary_transform()
    tr2 = TransformRecord.load(stage2) if stage2.is_file() else None
    return review_alignment(pre_pyr, post_pyr, post_to_pre,
                            tr2.status if tr2 else "not run", tr2.reason if tr2 else "")


def _fit_histogram(p1: Pass1, run: StageRun) -> scale.Histogram:
    """The microbe-free (dequantised) log-ratio histogram; the whole estimation set's (exact
    ratios) only when fewer than :data:`~exo2micro.numerics.scale.MIN_FIT_PIXELS` are microbe-free.
    Either case of little microbe-free tissue is reported as a warning."""
    kept, total = p1.clean.total, p1.ratio.total
    if kept >= scale.MIN_FIT_PIXELS:
        if kept < MIN_CLEAN_FRACTION * total:
            run.warn(f"only {kept} of {total} tissue pixels ({kept / total:.1%}) are away from "
                     f"stain (dense stain, or misalignment); k rests on those few pixels")
        return p1.clean
    run.warn(f"only {kept} of {total} tissue pixels are away from stain; k is fitted to all "
             f"tissue pixels, so stain may pull it up")
    return p1.ratio


def _difference_stats(hist: scale.Histogram) -> dict[str, float]:
    """Median and robust σ (interquartile range / 1.349, the σ of a Gaussian with that range)
    of a difference histogram, in post image units."""
    q25, q50, q75 = (hist.quantile(q) for q in (0.25, 0.5, 0.75))
    return {"median": q50, "robust_sigma": (q75 - q25) / 1.349}


def _units(dtype: np.dtype) -> str:
    """Axis label for post image values, e.g. ``"counts (uint8)"``."""
    return f"counts ({dtype.name})" if dtype.kind in "ui" else f"intensity ({dtype.name})"
