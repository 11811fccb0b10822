"""Estimating k, the post/pre brightness ratio of the autofluorescence, from streamed histograms.

Stage 4 (:mod:`exo2micro.stages.subtract`) never sorts or copies a whole image: it streams
both images block by block and accumulates fixed-grid histograms (:class:`Histogram`). This
module holds those histograms and the three ways of getting k from the histogram of
``r = log10(post / aligned_pre)`` over pixels where both images carry signal (docs/output.md):

* **Moffat** (default, :func:`fit_left_wing`): a Moffat profile fitted to the *left* wing and
  the crest of the distribution of ``r``. Microbes exist in post only, so they add counts to
  the right of the peak (post brighter than k·pre) and never to the left; the symmetric
  profile fitted to the left half is that half mirrored about the fitted peak, and its centre
  ``r0`` gives ``k = 10**r0``. When the fit fails or is implausible the smoothed histogram
  peak is used and the reason is reported (:attr:`ScaleFit.message`). (Stage 4 also drops
  pixels near stain before filling the histogram: the faint halos of microbes would otherwise
  shift counts *within* the peak, where no histogram method can separate them.)
* **Percentile** (:func:`percentile_scale`): ``k = 10**P_p(r)``, the p-th percentile of ``r``
  read from the streamed histogram (exact to within one bin, see :meth:`Histogram.quantile`).
* **Manual**: a fixed k given by the user; nothing to compute.

A k that varies across the field
--------------------------------
Photobleaching, illumination drift, uneven staining and vignetting (each image carries its
camera's, and the sample moved between them: post / aligned pre = k·V(x)/V(T(x))) make k vary
smoothly over the field. :class:`TileHistograms` holds one small log-ratio histogram per square
tile (a window of the fixed grid around the first k); each tile's k is the same left-wing fit
(:meth:`TileHistograms.estimates`, tiles with too few pixels or a failed fit dropped), and
:func:`choose_surface` fits a polynomial in log10 k over the tiles (:func:`fit_surface`:
count-weighted, Huber then biweight iterations, so tiles full of stain are set aside), picks its
degree by BIC, and under ``k_model=auto`` keeps it only when k varies over the tissue by more
than :data:`MIN_RANGE`. The :class:`KSurface` is evaluated strip by strip: there is never a
full-resolution k plane.

Robust range
------------
exo2micro 2.4 bins ``r`` between its minimum and maximum, so a few edge outliers make the bins
several percent wide and bias k. Here the grid is *fixed*: −6 … +6 decades in bins of
:data:`RATIO_BIN` (1e-4 decade = 0.023 % in k), whatever the data; values beyond the grid are
counted in under/overflow counters and still take part in percentiles.
The fit works on a window around the peak, rebinned to a width matched to the peak's width.

Integer images
--------------
Ratios of integers are not spread evenly: every pixel with post == pre lands exactly on
``r = 0`` (a spike holding ~5 % of the pixels when k ≈ 1 and pre was not resampled), and the
other ratios p/q form a comb with gaps around simple fractions. At the resolution a 0.1 %
estimate needs, the spike and the comb bias a fit by up to 1 % or make it fail. The fit
histogram is therefore built from *dequantised* post values (:func:`dequantise`): an integer
reading v stands for a true value anywhere in [v − ½, v + ½), and a fixed, reproducible
uniform offset spreads it there. This excludes the post == pre spike (no dequantised pixel has
post == pre) and the comb, at the cost of adding 1/12 count² to the post variance, which is far
below the noise. Percentiles are read from the exact ratios.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

#: Fixed grid of log10(post/pre): edges RATIO_LO … RATIO_HI decades, bins RATIO_BIN wide, with
#: ``r = 0`` at the centre of a bin (so the post == pre spike falls in exactly one bin).
RATIO_BIN = 1e-4
RATIO_LO = -6.0 - RATIO_BIN / 2
RATIO_BINS = 120_001
#: Grid of log10(intensity) for the per-image value histograms (used for display ranges).
VALUE_LOG_LO = -12.0
VALUE_LOG_BIN = 0.005
VALUE_LOG_BINS = 4800
#: Fewest pixels for which a Moffat fit is attempted.
MIN_FIT_PIXELS = 1000
#: The fit histogram's bin is about this fraction of the peak's half width at half maximum.
FIT_BINS_PER_HWHM = 12
#: The fit window reaches left to where the smoothed histogram falls below this fraction of
#: its peak (but at most :data:`WINDOW_LEFT_HWHM` half widths) and right to
#: :data:`WINDOW_RIGHT_HWHM` half widths past the peak.
WINDOW_FLOOR = 0.03
WINDOW_LEFT_HWHM = 4.0
WINDOW_RIGHT_HWHM = 0.5
#: Accepted range of the fitted Moffat power index β (large β: a Gaussian-like peak).
BETA_RANGE = (0.3, 1e6)
#: Offsets used by :func:`dequantise`: uniform in [−½, ½), from a fixed seed.
_DITHER = np.random.default_rng(20240611).random(65536, dtype=np.float32) - np.float32(0.5)


@dataclass
class Histogram:
    """A fixed-grid 1-D histogram that can be fed block by block.

    Bin ``i`` covers ``[lo + i·width, lo + (i+1)·width)``. Values below the grid are counted in
    ``underflow``, values at or above it in ``overflow``; NaNs must be removed by the caller.
    """

    lo: float
    width: float
    counts: np.ndarray
    underflow: int = 0
    overflow: int = 0

    @classmethod
    def empty(cls, lo: float, width: float, bins: int) -> Histogram:
        return cls(float(lo), float(width), np.zeros(int(bins), np.int64))

    @classmethod
    def log_ratio(cls) -> Histogram:
        """An empty histogram on the fixed log10(post/pre) grid."""
        return cls.empty(RATIO_LO, RATIO_BIN, RATIO_BINS)

    @classmethod
    def log_value(cls) -> Histogram:
        """An empty histogram on the fixed log10(intensity) grid."""
        return cls.empty(VALUE_LOG_LO, VALUE_LOG_BIN, VALUE_LOG_BINS)

    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def hi(self) -> float:
        return self.lo + self.bins * self.width

    @property
    def total(self) -> int:
        """Every value added, including under- and overflow."""
        return int(self.counts.sum()) + self.underflow + self.overflow

    def centres(self) -> np.ndarray:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def add(self, values: np.ndarray) -> None:
        """Count ``values`` (any shape, finite).

        Bin positions are computed in float32 (fast); a value within ~0.5 % of a bin width
        from a bin edge may land in the neighbouring bin, far below the one-bin resolution.
        """
        if values.size == 0:
            return
        # position + 1, so that underflow lands below 1 and is clipped into slot 0
        pos = np.asarray(values, np.float32).ravel() * np.float32(1.0 / self.width)
        pos += np.float32(1.0 - self.lo / self.width)
        np.clip(pos, 0, self.bins + 1, out=pos)
        counts = np.bincount(pos.astype(np.intp), minlength=self.bins + 2)
        self.counts += counts[1:-1]
        self.underflow += int(counts[0])
        self.overflow += int(counts[-1])

    def merge(self, other: Histogram) -> None:
        """Add the counts of ``other`` (same grid) to this histogram."""
        if (other.lo, other.width, other.bins) != (self.lo, self.width, self.bins):
            raise ValueError("cannot merge histograms on different grids")
        self.counts += other.counts
        self.underflow += other.underflow
        self.overflow += other.overflow

    def rebinned(self, factor: int, counts: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(centres, counts)`` with ``factor`` adjacent bins summed (a partial last group is
        dropped); ``counts`` replaces the histogram's own counts when given."""
        c = self.counts if counts is None else counts
        n = c.size // factor * factor
        summed = c[:n].reshape(-1, factor).sum(axis=1)
        width = self.width * factor
        return self.lo + (np.arange(summed.size) + 0.5) * width, summed

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 ≤ q ≤ 1) of the values added, within one bin of the exact one.

        Uses the rank convention of ``numpy.percentile`` (rank ``q·(n−1)``, 0-based); inside the
        bin holding that rank the values are taken as evenly spread. Ranks in the underflow or
        overflow return the grid's edge. NaN when empty.
        """
        n = self.total
        if n == 0:
            return float("nan")
        rank = min(max(q, 0.0), 1.0) * (n - 1)
        if rank < self.underflow:
            return self.lo
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank - self.underflow, side="right"))
        if i >= self.bins:
            return self.hi
        before = self.underflow + (int(cum[i - 1]) if i > 0 else 0)
        frac = (rank - before + 0.5) / int(self.counts[i])
        return self.lo + (i + frac) * self.width

    def to_json(self) -> dict[str, Any]:
        """Counts summary for records (never the full count array)."""
        return {"total": self.total, "underflow": self.underflow, "overflow": self.overflow,
                "grid": [self.lo, self.hi, self.width]}


@dataclass
class Histogram2D:
    """A square fixed-grid 2-D histogram with the *same* bins on both axes.

    ``counts[iy, ix]`` counts pairs whose x falls in bin ``ix`` and y in bin ``iy``; pairs outside
    the grid on either axis are counted in ``outside``. Equal axes make ``counts − counts.T``
    meaningful (the excess of y over x, :func:`exo2micro.report.diagnostics.plot_excess_heatmap`).
    """

    lo: float
    width: float
    counts: np.ndarray
    outside: int = 0

    @classmethod
    def empty(cls, lo: float, width: float, bins: int) -> Histogram2D:
        return cls(float(lo), float(width), np.zeros((int(bins), int(bins)), np.int64))

    @property
    def bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def hi(self) -> float:
        return self.lo + self.bins * self.width

    def edges(self) -> np.ndarray:
        return self.lo + np.arange(self.bins + 1) * self.width

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Count the pairs ``(x[i], y[i])`` (equal-length 1-D arrays, finite)."""
        if x.size == 0:
            return
        n = self.bins
        # positions + 1 clipped to [0, n + 1]: slots 0 and n + 1 collect what is outside
        flat = None
        for v in (y, x):
            pos = np.asarray(v, np.float32) * np.float32(1.0 / self.width)
            pos += np.float32(1.0 - self.lo / self.width)
            np.clip(pos, 0, n + 1, out=pos)
            idx = pos.astype(np.intp)
            flat = idx if flat is None else flat * (n + 2) + idx
        full = np.bincount(flat, minlength=(n + 2) ** 2).reshape(n + 2, n + 2)
        inner = full[1:-1, 1:-1]
        self.counts += inner
        self.outside += int(x.size - inner.sum())

    def merge(self, other: Histogram2D) -> None:
        self.counts += other.counts
        self.outside += other.outside


def value_grid(vmax: float, integer: bool, target_bins: int = 400) -> tuple[float, float, int]:
    """``(lo, width, bins)`` of a linear grid from 0 to at least ``vmax`` with about
    ``target_bins`` bins. For integer data the bin width is a whole number and the edges sit
    at half-integers, so every bin holds the same number of integer values (no comb)."""
    vmax = max(float(vmax), 1e-30)
    if integer:
        width = float(max(1, math.ceil(vmax / target_bins)))
        lo = -0.5
    else:
        width = vmax / target_bins
        lo = 0.0
    return lo, width, math.ceil((vmax - lo) / width)


def dequantise(values: np.ndarray) -> np.ndarray:
    """Integer-valued intensities spread over their quantisation interval: ``values`` (1-D)
    plus a fixed, reproducible sequence of offsets uniform in [−½, ½) (float32)."""
    return values.astype(np.float32) + np.resize(_DITHER, values.shape)


# ------------------------------------------------------------------------------ the Moffat fit
def moffat(x: np.ndarray, amplitude: float, centre: float, alpha: float, beta: float
           ) -> np.ndarray:
    """Moffat profile ``A · (1 + ((x − x0)/α)²)^(−β)``."""
    return amplitude * (1.0 + ((x - centre) / alpha) ** 2) ** (-beta)


def moffat_hwhm(alpha: float, beta: float) -> float:
    """Half width at half maximum of a Moffat profile (units of x)."""
    return float(alpha * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


@dataclass
class ScaleFit:
    """The Moffat estimate of k and everything needed to judge it.

    ``centre`` is in decades of log10(post/pre), ``scale = 10**centre``. ``method`` is
    ``"moffat"`` or ``"peak"`` (the fallback); ``message`` says why the fallback was used.
    ``x``/``counts`` are the rebinned histogram the fit saw (bin centres, counts; the
    post == pre spike removed) and ``window`` the range fitted, for the diagnostic plot.
    """

    scale: float
    centre: float
    method: str
    amplitude: float = float("nan")
    alpha: float = float("nan")
    beta: float = float("nan")
    hwhm: float = float("nan")
    bin_width: float = float("nan")
    window: tuple[float, float] = (float("nan"), float("nan"))
    n_pixels: int = 0
    message: str | None = None
    x: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def model(self, x: np.ndarray) -> np.ndarray:
        """The fitted profile at ``x`` (NaN for the fallback)."""
        if self.method != "moffat":
            return np.full_like(np.asarray(x, float), np.nan)
        return moffat(np.asarray(x, float), self.amplitude, self.centre, self.alpha, self.beta)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "scale": self.scale, "log10_centre": self.centre,
                "amplitude": self.amplitude, "alpha": self.alpha, "beta": self.beta,
                "hwhm_log10": self.hwhm, "fit_bin_log10": self.bin_width,
                "window_log10": list(self.window), "n_pixels": self.n_pixels,
                "message": self.message}


def _smooth(counts: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Gaussian smoothing of a 1-D count array (σ in bins)."""
    if sigma_bins < 0.5:
        return counts.astype(np.float64)
    radius = math.ceil(3 * sigma_bins)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_bins) ** 2)
    return np.convolve(counts.astype(np.float64), kernel / kernel.sum(), mode="same")


def _parabola_peak(y: np.ndarray, i: int) -> float:
    """Sub-bin position (in bins) of the maximum at ``i`` from a parabola through 3 points."""
    if 0 < i < y.size - 1:
        den = y[i - 1] - 2 * y[i] + y[i + 1]
        if den < 0:
            return i + 0.5 * (y[i - 1] - y[i + 1]) / den
    return float(i)


class _FitFailed(Exception):
    """A Moffat fit did not converge or had too little to work on (message: why)."""


def _fit_window(x: np.ndarray, counts: np.ndarray, smooth: np.ndarray, centre: float,
                hwhm: float) -> tuple[np.ndarray, tuple[float, float]]:
    """One Poisson-weighted Moffat fit to the left wing and crest around ``centre`` (see
    :func:`fit_left_wing`); returns the parameters and the window fitted."""
    top = float(smooth.max())
    lo_x = centre - WINDOW_LEFT_HWHM * hwhm
    below = np.nonzero((x < centre) & (smooth < WINDOW_FLOOR * top))[0]
    if below.size:
        lo_x = max(lo_x, float(x[below[-1]]))
    hi_x = centre + WINDOW_RIGHT_HWHM * hwhm
    sel = (x >= lo_x) & (x <= hi_x)
    if np.count_nonzero(sel) < 6:
        raise _FitFailed(f"only {np.count_nonzero(sel)} histogram bins in the fit window")
    beta0 = 2.5
    p0 = [top, centre, hwhm / math.sqrt(2 ** (1 / beta0) - 1), beta0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(moffat, x[sel], counts[sel], p0=p0,
                                  sigma=np.sqrt(counts[sel] + 1.0), maxfev=4000)
    except (RuntimeError, ValueError, OptimizeWarning) as exc:
        text = str(exc).strip()
        raise _FitFailed(text.splitlines()[0] if text else type(exc).__name__) from None
    return params, (float(lo_x), float(hi_x))


def fit_left_wing(hist: Histogram) -> ScaleFit:
    """Estimate k from a log10(post/pre) histogram by a Moffat fit to its left wing.

    For integer images, build ``hist`` from dequantised post values (:func:`dequantise`).
    Steps (all on the histogram, never on pixels):

    1. the width is estimated from the interquartile range; the histogram is rebinned so the
       peak's half width spans about :data:`FIT_BINS_PER_HWHM` bins, smoothed, and its peak
       ``r_p`` and left half width ``h`` are read;
    2. a Moffat profile is fitted (Poisson weights) to the bins from where the smoothed
       histogram falls below :data:`WINDOW_FLOOR` of the peak (at most
       :data:`WINDOW_LEFT_HWHM`·h) to ``r_p +`` :data:`WINDOW_RIGHT_HWHM`·h — the left wing and
       the crest, where microbes contribute nothing; the window is re-centred on the fitted
       centre and the fit repeated once;
    3. the fit is rejected (fallback to the smoothed peak ``r_p``, with a message) when it does
       not converge, when β leaves :data:`BETA_RANGE`, or when its centre is not within ``h`` of
       ``r_p``; with fewer than :data:`MIN_FIT_PIXELS` pixels no fit is tried.
    """
    n_pixels = hist.total
    if n_pixels == 0:
        raise ValueError("no pixels where both images carry signal: cannot estimate the scale")
    q25, q75 = hist.quantile(0.25), hist.quantile(0.75)
    hwhm_guess = max(0.5 * (q75 - q25), hist.width)
    factor = max(1, int(hwhm_guess / FIT_BINS_PER_HWHM / hist.width))
    x, coarse = hist.rebinned(factor, hist.counts.astype(np.float64))
    width = hist.width * factor
    smooth = _smooth(coarse, FIT_BINS_PER_HWHM / 4)
    ip = int(np.argmax(smooth))
    peak = hist.lo + (_parabola_peak(smooth, ip) + 0.5) * width
    half = smooth[ip] / 2
    left = ip
    while left > 0 and smooth[left] > half:
        left -= 1
    hwhm = max((ip - left) * width, width)

    def fallback(reason: str) -> ScaleFit:
        return ScaleFit(scale=10.0 ** peak, centre=peak, method="peak", hwhm=hwhm,
                        bin_width=width, n_pixels=n_pixels, x=x, counts=coarse,
                        message=f"Moffat fit of the log-ratio histogram failed ({reason}); "
                                f"k is the smoothed histogram peak instead")

    if n_pixels < MIN_FIT_PIXELS:
        return fallback(f"only {n_pixels} pixels, need {MIN_FIT_PIXELS}")
    try:
        params, window = _fit_window(x, coarse, smooth, peak, hwhm)
        params, window = _fit_window(x, coarse, smooth, float(params[1]), hwhm)  # re-centred
    except _FitFailed as exc:
        return fallback(str(exc))
    amplitude, centre, alpha, beta = (float(v) for v in params)
    alpha = abs(alpha)
    if not all(math.isfinite(v) for v in (amplitude, centre, alpha, beta)) or amplitude <= 0:
        return fallback("non-finite or negative parameters")
    if not BETA_RANGE[0] <= beta <= BETA_RANGE[1]:
        return fallback(f"power index beta = {beta:.3g} outside {BETA_RANGE}")
    if abs(centre - peak) > hwhm:
        return fallback(f"fitted centre {centre:+.4f} is more than one half width "
                        f"({hwhm:.4f}) from the histogram peak {peak:+.4f}")
    return ScaleFit(scale=10.0 ** centre, centre=centre, method="moffat", amplitude=amplitude,
                    alpha=alpha, beta=beta, hwhm=moffat_hwhm(alpha, beta), bin_width=width,
                    window=window, n_pixels=n_pixels, x=x, counts=coarse)


def percentile_scale(hist: Histogram, percentile: float) -> float:
    """``k = 10**P`` with ``P`` the ``percentile``-th percentile (0–100) of log10(post/pre)."""
    return float(10.0 ** hist.quantile(percentile / 100.0))


# ---------------------------------------------------------------- a k that varies across the field
#: Per-tile histograms cover log10(k0) ± this many decades (k0: the first, global estimate).
TILE_RATIO_HALF = 0.3
#: Tile sides tried (frame px, smallest first): the first that gives at most
#: :data:`MAX_TILES_PER_SIDE` tiles along the frame's longer side is used (:func:`tile_side`).
TILE_SIDES = (128, 256, 512, 1024, 2048, 4096, 8192)
MAX_TILES_PER_SIDE = 24
#: A tile is estimated when it holds at least :data:`MIN_FIT_PIXELS` pixels and at least this
#: fraction of the median count of such tiles (tissue edges, tiles nearly covered by stain).
MIN_TILE_FRACTION = 0.1
#: Fewest tile estimates a surface is fitted to; highest polynomial degree tried, and the most
#: coefficients per tile estimate (a degree needs ``MIN_TILES_PER_TERM ×`` its terms).
MIN_TILES = 8
MAX_DEGREE = 4
MIN_TILES_PER_TERM = 4
#: Huber constant (units of the robust residual scale) of the surface fit; most iterations.
HUBER_C = 1.345
HUBER_ITERATIONS = 30
#: Tukey biweight constant (units of the robust residual scale) of the surface fit's last
#: iterations: tiles further than this from the surface get no weight.
BISQUARE_C = 4.685
#: Under ``k_model=auto`` a surface is used only when k varies over the tissue by more than this
#: fraction (max / min − 1): below it a single k is as good as any map.
MIN_RANGE = 0.005
#: Smallest robust residual scale (decades) of the surface fit: tiles that agree better than
#: this are treated as agreeing this well (no division by zero on noise-free data).
MIN_SCATTER = 1e-5
K_MODELS = ("auto", "global", "smooth")


def tile_side(shape: tuple[int, int]) -> int:
    """The tile side (px) for a frame of ``shape`` (height, width): the smallest of
    :data:`TILE_SIDES` with at most :data:`MAX_TILES_PER_SIDE` tiles along the longer side."""
    longest = max(shape)
    return next((s for s in TILE_SIDES if -(-longest // s) <= MAX_TILES_PER_SIDE),
                TILE_SIDES[-1])


@dataclass
class TileHistograms:
    """Log-ratio histograms of the square tiles of a frame, fed block by block.

    Tile ``(ty, tx)`` covers frame rows ``[ty·side, (ty + 1)·side)`` and columns
    ``[tx·side, (tx + 1)·side)`` (partial tiles at the bottom and right). Every tile uses the
    fixed grid's bins (:data:`RATIO_BIN`) from ``lo`` over ``bins`` bins, a window of
    ±:data:`TILE_RATIO_HALF` decades about the first estimate of log10 k; slot 0 of the last
    axis counts values below the window, slot ``bins + 1`` those above. ``sum_x``/``sum_y`` sum
    the frame coordinates (px, pixel centres at integers) of the values counted, so each tile's
    estimate is placed at the centroid of its pixels. The object holds tile rows ``row0 …
    row0 + rows − 1`` only (a block's part holds the tile rows its frame rows touch).
    """

    side: int
    nx: int
    lo: float
    bins: int
    row0: int
    counts: np.ndarray
    sum_x: np.ndarray
    sum_y: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int], side: int, centre: float, row0: int = 0,
              rows: int | None = None, dtype: type = np.int32) -> TileHistograms:
        """Empty histograms of the tiles of a ``shape`` frame, centred on log10 k ``centre``
        (``rows``: tile rows held from ``row0``, default all)."""
        ny, nx = -(-shape[0] // side), -(-shape[1] // side)
        rows = ny - row0 if rows is None else rows
        bins = round(2 * TILE_RATIO_HALF / RATIO_BIN)
        lo = RATIO_LO + round((centre - TILE_RATIO_HALF - RATIO_LO) / RATIO_BIN) * RATIO_BIN
        return cls(side, nx, lo, bins, row0, np.zeros((rows, nx, bins + 2), dtype),
                   np.zeros((rows, nx)), np.zeros((rows, nx)))

    def add(self, values: np.ndarray, mask: np.ndarray, y0: int = 0) -> None:
        """Count the log-ratio ``values`` (1-D, finite) of the pixels where ``mask`` is true,
        in row-major order (``values`` is what ``image[mask]`` gives). ``mask`` (bool) covers
        frame rows ``y0 … y0 + mask.shape[0] − 1`` (inside the tile rows held) and every
        column from 0.

        Cost: one pass over the values (their bins, one histogram update per tile row); the
        tiles' pixel counts and coordinate sums come from row and column counts of ``mask``,
        not from per-pixel coordinates."""
        if values.size != np.count_nonzero(mask):
            raise ValueError(f"TileHistograms.add: {values.size} values for "
                             f"{np.count_nonzero(mask)} pixels")
        if values.size == 0:
            return
        pos = (np.asarray(values, np.float32) - np.float32(self.lo)) * np.float32(1 / RATIO_BIN)
        pos += np.float32(1.0)
        np.clip(pos, 0, self.bins + 1, out=pos)
        slots = pos.astype(np.intp)
        cols = np.arange(mask.shape[1])
        col_tile = cols // self.side
        first_slot = col_tile * (self.bins + 2)
        starts = np.arange(0, mask.shape[1], self.side)
        a = done = 0
        while a < mask.shape[0]:  # the rows of one tile row at a time
            ty = (y0 + a) // self.side
            b = min(mask.shape[0], (ty + 1) * self.side - y0)
            m = mask[a:b]
            flat = np.broadcast_to(first_slot, m.shape)[m]
            flat += slots[done:done + flat.size]
            done += flat.size
            r = ty - self.row0
            self.counts[r] += np.bincount(flat, minlength=self.counts[r].size
                                          ).reshape(self.counts[r].shape)
            self.sum_x[r] += np.bincount(col_tile, weights=cols * np.count_nonzero(m, axis=0),
                                         minlength=self.nx)
            self.sum_y[r] += np.arange(y0 + a, y0 + b) @ np.add.reduceat(m, starts, axis=1,
                                                                         dtype=np.int64)
            a = b

    def merge(self, part: TileHistograms) -> None:
        """Add ``part`` (same tiles and bins, any tile rows inside these) to these counts."""
        rows = slice(part.row0 - self.row0, part.row0 - self.row0 + part.counts.shape[0])
        self.counts[rows] += part.counts
        self.sum_x[rows] += part.sum_x
        self.sum_y[rows] += part.sum_y

    def histogram(self, ty: int, tx: int) -> Histogram:
        """Tile ``(ty, tx)``'s histogram (tile rows counted from ``row0``)."""
        c = self.counts[ty, tx]
        return Histogram(self.lo, RATIO_BIN, c[1:-1].astype(np.int64), int(c[0]), int(c[-1]))

    def estimates(self) -> TileTable:
        """The left-wing estimate (:func:`fit_left_wing`) of every tile with enough pixels
        (:data:`MIN_TILE_FRACTION`); tiles whose fit fails are dropped."""
        totals = self.counts.sum(axis=2, dtype=np.int64)
        enough = totals >= MIN_FIT_PIXELS
        floor = MIN_TILE_FRACTION * float(np.median(totals[enough])) if enough.any() else 0.0
        rows: list[tuple[float, float, float, int]] = []
        for ty, tx in zip(*np.nonzero(enough & (totals >= floor)), strict=True):
            fit = fit_left_wing(self.histogram(int(ty), int(tx)))
            if fit.method == "moffat":
                n = int(totals[ty, tx])
                rows.append((self.sum_x[ty, tx] / n, self.sum_y[ty, tx] / n, fit.centre, n))
        x, y, log_k, n = (np.array(c, np.float64) for c in zip(*rows, strict=True)) if rows \
            else (np.zeros(0),) * 4
        return TileTable(x, y, log_k, n, tiles=int(np.count_nonzero(totals)),
                         side=self.side)


@dataclass
class TileTable:
    """Per-tile estimates of log10 k: the centroid ``x``, ``y`` (frame px) of each tile's
    pixels, ``log_k`` (decades) and ``n`` (pixels); ``tiles`` counts the tiles that held any
    pixel (the others were empty), ``side`` is the tile side (px)."""

    x: np.ndarray
    y: np.ndarray
    log_k: np.ndarray
    n: np.ndarray
    tiles: int
    side: int

    def shifted(self, factor: float, offset: float) -> TileTable:
        """The table with coordinates ``factor · (x, y) + offset`` (e.g. from a pyramid level's
        pixels to the full-resolution frame)."""
        return TileTable(factor * self.x + offset, factor * self.y + offset, self.log_k, self.n,
                         self.tiles, round(self.side * factor))

    def to_json(self) -> dict[str, Any]:
        return {"side_px": self.side, "tiles_with_pixels": self.tiles,
                "estimated": int(self.x.size),
                "x": [round(float(v), 2) for v in self.x],
                "y": [round(float(v), 2) for v in self.y],
                "log10_k": [round(float(v), 7) for v in self.log_k],
                "pixels": [int(v) for v in self.n]}


def _terms(degree: int) -> list[tuple[int, int]]:
    """Exponents ``(i, j)`` of the monomials ``u^i v^j`` of total degree ≤ ``degree``, by total
    degree then by decreasing power of u."""
    return [(d - j, j) for d in range(degree + 1) for j in range(d + 1)]


@dataclass(frozen=True)
class KSurface:
    """A smooth k over the frame: ``k(x, y) = 10 ** clip(P(u, v), *clip)``.

    ``P`` is a polynomial of total degree ``degree`` with ``coefficients`` on the monomials
    ``u^i v^j`` (order of :func:`_terms`) of the normalised coordinates
    ``u = (x − centre[0]) / half[0]``, ``v = (y − centre[1]) / half[1]``, where ``x``, ``y`` are
    frame px (pixel centres at integers). ``clip`` bounds log10 k (the range over the tissue),
    so that k does not run away where the polynomial extrapolates beyond the tiles.
    """

    degree: int
    coefficients: tuple[float, ...]
    centre: tuple[float, float]
    half: tuple[float, float]
    clip: tuple[float, float] = (-math.inf, math.inf)

    def log10_grid(self, xs: np.ndarray, ys: np.ndarray, dtype: type = np.float64
                   ) -> np.ndarray:
        """log10 k at every ``(xs[i], ys[j])``: an array ``(len(ys), len(xs))`` of ``dtype``.

        Separable: the polynomial's coefficients are first summed over the powers of v for
        every row (float64), then one matrix product with the powers of u gives the grid, so
        a strip costs one array of its own size."""
        d = self.degree
        u = (np.asarray(xs, np.float64) - self.centre[0]) / self.half[0]
        v = (np.asarray(ys, np.float64) - self.centre[1]) / self.half[1]
        coef = np.zeros((d + 1, d + 1))
        for c, (i, j) in zip(self.coefficients, _terms(d), strict=True):
            coef[j, i] = c
        pu = u[None, :] ** np.arange(d + 1)[:, None]
        pv = v[None, :] ** np.arange(d + 1)[:, None]
        out = (pv.T @ coef).astype(dtype) @ pu.astype(dtype)
        return np.clip(out, *self.clip, out=out)

    def grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """k (float32) at every ``(xs[i], ys[j])``, shape ``(len(ys), len(xs))``, computed in
        float32 (relative error ~1e-6, far below any k error)."""
        log_k = self.log10_grid(xs, ys, np.float32)
        log_k *= np.float32(math.log(10.0))
        return np.exp(log_k, out=log_k)

    def log10_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """log10 k at the points ``(x[n], y[n])`` (1-D arrays)."""
        u = (np.asarray(x, np.float64) - self.centre[0]) / self.half[0]
        v = (np.asarray(y, np.float64) - self.centre[1]) / self.half[1]
        return np.clip(_basis(u, v, self.degree) @ np.asarray(self.coefficients), *self.clip)

    def to_json(self) -> dict[str, Any]:
        return {"model": "polynomial in log10 k", "degree": self.degree,
                "terms_u_v_exponents": [list(t) for t in _terms(self.degree)],
                "coefficients": list(self.coefficients),
                "u": f"(x - {self.centre[0]!r}) / {self.half[0]!r}",
                "v": f"(y - {self.centre[1]!r}) / {self.half[1]!r}",
                "centre_px": list(self.centre), "half_size_px": list(self.half),
                "clip_log10": list(self.clip)}


def _basis(u: np.ndarray, v: np.ndarray, degree: int) -> np.ndarray:
    """The design matrix ``(N, terms)`` of :func:`_terms` at the points ``(u, v)``."""
    return np.stack([u ** i * v ** j for i, j in _terms(degree)], axis=1)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


@dataclass(frozen=True)
class SurfaceFit:
    """One robust fit: the surface, its robust residual scale (decades), the weighted mean
    square residual of the tiles it keeps (decades²) and the final weight of each tile."""

    surface: KSurface
    scale: float
    mean_square: float
    weights: np.ndarray

    def bic(self, n: int) -> float:
        """Bayesian information criterion ``N ln σ² + p ln N`` of the fit to ``n`` tiles."""
        return n * math.log(self.mean_square) + len(self.surface.coefficients) * math.log(n)


def _robust_scale(resid: np.ndarray, weights: np.ndarray) -> float:
    """1.4826 × the weighted median absolute residual (the σ of Gaussian residuals), at
    least :data:`MIN_SCATTER`."""
    return max(1.4826 * _weighted_median(np.abs(resid), weights), MIN_SCATTER)


def fit_surface(table: TileTable, degree: int, shape: tuple[int, int]) -> SurfaceFit:
    """Robust polynomial fit of ``table``'s log10 k over a frame of ``shape`` (height, width).

    Weighted least squares with each tile weighted by its pixel count, iterated first with
    Huber weights (:data:`HUBER_C` × the robust residual scale) and then, from that solution
    and scale, with Tukey's biweight (:data:`BISQUARE_C` × the scale), which gives a tile far
    from the surface no weight at all: a tile full of stain, or on a fold, whose estimate
    stands apart from its neighbours is set aside instead of pulling the surface.
    """
    h, w = shape
    centre, half = ((w - 1) / 2, (h - 1) / 2), (max((w - 1) / 2, 1.0), max((h - 1) / 2, 1.0))
    a = _basis((table.x - centre[0]) / half[0], (table.y - centre[1]) / half[1], degree)
    base = table.n / table.n.mean()

    def solve(weights: np.ndarray) -> np.ndarray:
        sw = np.sqrt(weights)
        return np.linalg.lstsq(a * sw[:, None], table.log_k * sw, rcond=None)[0]

    coef = solve(base)
    robust = np.ones_like(base)
    scale_ = _robust_scale(table.log_k - a @ coef, base)
    for step in range(2 * HUBER_ITERATIONS):
        resid = np.abs(table.log_k - a @ coef)
        if step < HUBER_ITERATIONS:  # Huber, re-scaled each time
            scale_ = _robust_scale(resid, base)
            robust = np.minimum(1.0, HUBER_C * scale_ / np.maximum(resid, 1e-300))
        else:  # biweight at the Huber scale
            robust = np.clip(1 - (resid / (BISQUARE_C * scale_)) ** 2, 0, None) ** 2
        new = solve(base * robust)
        done = np.allclose(new, coef, rtol=0, atol=1e-9)
        coef = new
        if done and step < HUBER_ITERATIONS:
            continue
        if done:
            break
    weights = base * robust
    resid = table.log_k - a @ coef
    mean_square = max(float(np.sum(weights * resid ** 2) / max(weights.sum(), 1e-300)),
                      MIN_SCATTER ** 2)
    surface = KSurface(degree, tuple(float(c) for c in coef), centre, half)
    return SurfaceFit(surface, scale_, mean_square, weights)


@dataclass
class CellGrid:
    """Tissue pixel counts on a coarse grid of the frame: ``counts[j, i]`` pixels around the
    frame point ``(xs[i], ys[j])`` (px)."""

    xs: np.ndarray
    ys: np.ndarray
    counts: np.ndarray

    def summary(self, surface: KSurface) -> tuple[float, float, float]:
        """``(median, min, max)`` of ``surface``'s k over the tissue (count-weighted)."""
        have = self.counts > 0
        values = surface.log10_grid(self.xs, self.ys)[have]
        return (10.0 ** _weighted_median(values, self.counts[have].astype(np.float64)),
                10.0 ** float(values.min()), 10.0 ** float(values.max()))


@dataclass
class SurfaceChoice:
    """What :func:`choose_surface` decided: the surface (``None``: one global k), the candidate
    degrees' criteria, and why."""

    surface: KSurface | None
    reason: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    fit_weights: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        return {"surface": None if self.surface is None else self.surface.to_json(),
                "reason": self.reason, "candidates": self.candidates}


def choose_surface(table: TileTable, shape: tuple[int, int], cells: CellGrid, mode: str
                   ) -> SurfaceChoice:
    """Decide between one global k and a smooth surface, from the tile estimates.

    Polynomials of degree 0 … :data:`MAX_DEGREE` (as many as :data:`MIN_TILES_PER_TERM` tiles
    per coefficient allow) are fitted (:func:`fit_surface`) and the one with the lowest BIC is
    kept. ``mode='smooth'`` uses it (at least degree 1); ``mode='auto'`` uses it only when its
    degree is ≥ 1 *and* its k varies over the tissue (``cells``) by more than
    :data:`MIN_RANGE`; with fewer than :data:`MIN_TILES` estimates the answer is global. The
    surface is clipped to its range over the tissue.
    """
    if mode not in ("auto", "smooth"):
        raise ValueError(f"k_model must be 'auto' or 'smooth' here, got {mode!r}")
    n = int(table.x.size)
    if n < MIN_TILES:
        return SurfaceChoice(None, f"{n} tile estimates, fewer than {MIN_TILES}")
    fits = {0: fit_surface(table, 0, shape)}
    for d in range(1, MAX_DEGREE + 1):
        if n < MIN_TILES_PER_TERM * len(_terms(d)):
            break
        fits[d] = fit_surface(table, d, shape)
    candidates = [{"degree": d, "bic": f.bic(n), "scatter_log10": f.scale} for d, f in fits.items()]
    best = min(fits, key=lambda d: fits[d].bic(n))
    if best == 0 and mode == "smooth":
        best = min((d for d in fits if d > 0), key=lambda d: fits[d].bic(n), default=0)
    if best == 0:
        reason = ("a single k explains the tiles best (BIC)" if len(fits) > 1
                  else f"{n} tile estimates allow no degree ≥ 1")
        return SurfaceChoice(None, reason, candidates)
    fit = fits[best]
    _, lo, hi = cells.summary(fit.surface)
    surface = KSurface(fit.surface.degree, fit.surface.coefficients, fit.surface.centre,
                       fit.surface.half, (math.log10(lo), math.log10(hi)))
    spread = hi / lo - 1
    if mode == "auto" and spread <= MIN_RANGE:
        return SurfaceChoice(None, f"the degree-{best} surface varies by {spread:.2%} over the "
                                   f"tissue, not more than {MIN_RANGE:.1%}", candidates)
    return SurfaceChoice(surface, f"degree {best} (lowest BIC); k varies by {spread:.2%} over "
                                  f"the tissue", candidates, fit.weights)
