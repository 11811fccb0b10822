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
    meaningful (the excess of y over x, :func:`exo2micro.diagnostics.plot_excess_heatmap`).
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
