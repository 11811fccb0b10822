"""Scale estimation from streamed histograms (exo2micro.numerics.scale): grids, quantiles, Moffat
fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exo2micro.numerics import scale
from exo2micro.numerics.scale import Histogram, Histogram2D


def moffat_sample(rng: np.random.Generator, n: int, centre: float, alpha: float, beta: float
                  ) -> np.ndarray:
    """Draws from a Moffat profile (a scaled Student t: beta = (nu + 1) / 2)."""
    nu = 2 * beta - 1
    return centre + alpha / math.sqrt(nu) * rng.standard_t(nu, n)


def filled(values: np.ndarray) -> Histogram:
    hist = Histogram.log_ratio()
    hist.add(values)
    return hist


# ------------------------------------------------------------------------ histograms
def test_quantiles_match_numpy_within_one_bin() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.13, 0.02, 200_000), rng.uniform(-9, 9, 50)])
    hist = filled(values)
    assert hist.total == values.size
    assert hist.underflow + hist.overflow == np.count_nonzero(np.abs(values) > 6)
    for p in (0.5, 5, 25, 50, 75, 95, 99.5):
        assert abs(hist.quantile(p / 100) - np.percentile(values, p)) <= hist.width


def test_quantile_in_underflow_returns_grid_edge_and_empty_is_nan() -> None:
    hist = filled(np.array([-100.0, -50.0, 0.1]))
    assert hist.quantile(0.0) == hist.lo
    assert hist.quantile(1.0) == pytest.approx(0.1, abs=hist.width)
    assert math.isnan(Histogram.log_ratio().quantile(0.5))


def test_fixed_grid_is_not_wrecked_by_outliers() -> None:
    """exo2micro 2.4 bins min..max: a few extreme pixels widen its bins to several percent.
    The fixed grid keeps the core's counts and the fit unchanged."""
    rng = np.random.default_rng(2)
    core = moffat_sample(rng, 300_000, math.log10(1.35), 0.03, 4.0)
    outliers = np.array([-5.9, -4.0, 3.0, 5.5, 40.0, -40.0])
    clean, dirty = filled(core), filled(np.concatenate([core, outliers]))
    near = slice(*(math.floor((r - clean.lo) / clean.width) for r in (-1.0, 1.0)))
    assert np.array_equal(clean.counts[near], dirty.counts[near])
    k_clean = scale.fit_left_wing(clean).scale
    k_dirty = scale.fit_left_wing(dirty).scale
    assert k_dirty == pytest.approx(k_clean, rel=1e-4)
    assert k_dirty == pytest.approx(1.35, rel=0.003)
    # what min..max binning with exo2micro 2.4's bin count does to the same data
    counts, edges = np.histogram(np.concatenate([core, outliers]), bins=1000)
    naive = 10 ** (0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1]))
    assert abs(naive / 1.35 - 1) > 0.01


def test_merge_adds_and_refuses_other_grids() -> None:
    a, b = filled(np.array([0.1, 0.2])), filled(np.array([0.2, 9.0]))
    a.merge(b)
    assert a.total == 4 and a.overflow == 1
    with pytest.raises(ValueError, match="different grids"):
        a.merge(Histogram.log_value())


def test_rebinned_sums_adjacent_bins() -> None:
    hist = Histogram.empty(0.0, 1.0, 7)
    hist.add(np.array([0.5, 1.5, 1.7, 2.2, 6.9]))
    x, counts = hist.rebinned(3)
    assert np.allclose(x, [1.5, 4.5]) and counts.tolist() == [4, 0]


def test_histogram2d_matches_numpy_and_counts_outside() -> None:
    rng = np.random.default_rng(3)
    # integers ± 0.3: no value near a bin edge of the half-integer grid
    x = rng.integers(-10, 300, 50_000) + rng.uniform(-0.3, 0.3, 50_000)
    y = rng.integers(0, 300, 50_000) + rng.uniform(-0.3, 0.3, 50_000)
    grid = Histogram2D.empty(-0.5, 1.0, 256)
    grid.add(x, y)
    ref, _, _ = np.histogram2d(y, x, bins=[grid.edges(), grid.edges()])
    assert np.array_equal(grid.counts, ref)
    assert grid.outside == x.size - int(ref.sum())


@pytest.mark.parametrize(("vmax", "integer"), [(255.0, True), (51234.0, True), (0.93, False)])
def test_value_grid(vmax: float, integer: bool) -> None:
    lo, width, bins = scale.value_grid(vmax, integer)
    assert lo + bins * width >= vmax
    assert 200 <= bins <= 800
    if integer:
        assert lo == -0.5 and width == int(width)


# ------------------------------------------------------------------------ the Moffat fit
def test_moffat_hwhm() -> None:
    a, c, alpha, beta = 10.0, 0.2, 0.05, 3.0
    h = scale.moffat_hwhm(alpha, beta)
    assert scale.moffat(np.array([c - h, c + h]), a, c, alpha, beta) == pytest.approx([5, 5])


@pytest.mark.parametrize("k", [0.6, 1.0, 1.35, 2.0, 3.0])
def test_left_wing_fit_ignores_the_stain_tail(k: float) -> None:
    """A right tail of 5 % of the pixels (post-only stain) must not pull k up."""
    rng = np.random.default_rng(int(k * 100))
    background = moffat_sample(rng, 400_000, math.log10(k), 0.04, 5.0)
    stain = math.log10(k) + rng.exponential(0.3, 20_000) + 0.05
    fit = scale.fit_left_wing(filled(np.concatenate([background, stain])))
    assert fit.method == "moffat" and fit.message is None
    assert fit.scale == pytest.approx(k, rel=0.001)
    assert fit.beta == pytest.approx(5.0, rel=0.2)
    assert fit.window[1] < math.log10(k) + fit.hwhm  # the fit stays left of the stain


def test_gaussian_peak_is_a_valid_moffat() -> None:
    """A Gaussian peak is the β → ∞ limit: it must not trigger the fallback."""
    rng = np.random.default_rng(5)
    fit = scale.fit_left_wing(filled(rng.normal(0.1, 0.02, 300_000)))
    assert fit.method == "moffat"
    assert fit.scale == pytest.approx(10 ** 0.1, rel=5e-4)


def test_fallback_with_too_few_pixels() -> None:
    fit = scale.fit_left_wing(filled(np.full(50, math.log10(1.3))))
    assert fit.method == "peak"
    assert "only 50 pixels" in fit.message
    assert fit.scale == pytest.approx(1.3, rel=0.003)
    assert np.isnan(fit.model(np.array([0.1]))).all()


def test_fallback_when_the_fit_does_not_converge(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_convergence(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(scale, "curve_fit", no_convergence)
    rng = np.random.default_rng(6)
    fit = scale.fit_left_wing(filled(moffat_sample(rng, 200_000, 0.2, 0.03, 4.0)))
    assert fit.method == "peak"
    assert "Moffat fit of the log-ratio histogram failed" in fit.message
    assert "maxfev" in fit.message
    assert fit.scale == pytest.approx(10 ** 0.2, rel=0.002)


def test_empty_histogram_is_an_error() -> None:
    with pytest.raises(ValueError, match="no pixels"):
        scale.fit_left_wing(Histogram.log_ratio())


def test_percentile_scale() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(0.0, 0.05, 100_000)
    k = scale.percentile_scale(filled(values), 30)
    assert math.log10(k) == pytest.approx(np.percentile(values, 30), abs=scale.RATIO_BIN)


# ------------------------------------------------------------------------ integer data
def integer_pairs(k: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8-bit post/pre pairs of the same scene: pre not resampled (integer), post = k·pre."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(40, 120, n)
    pre = np.rint(truth + rng.normal(0, 3, n))
    post = np.rint(k * truth + rng.normal(0, 3 * math.sqrt(k), n))
    keep = (pre > 10) & (post > 10)
    return post[keep].astype(np.float32), pre[keep].astype(np.float32)


@pytest.mark.parametrize("k", [1.0, 0.6])
def test_dequantised_integer_ratios_fit_without_spike_or_comb(k: float) -> None:
    """Integer ratios pile up at post == pre (r = 0 exactly) and form a comb; the raw
    histogram misleads the fit, the dequantised one does not."""
    post, pre = integer_pairs(k, 400_000, seed=int(10 * k))
    raw = filled(np.log10(post) - np.log10(pre))
    if k == 1.0:
        zero = math.floor((0 - raw.lo) / raw.width)
        assert raw.counts[zero] > 20 * max(raw.counts[zero - 1], raw.counts[zero + 1], 1)
    deq = filled(np.log10(scale.dequantise(post)) - np.log10(pre))
    if k == 1.0:
        assert deq.counts[zero] < 3 * max(deq.counts[zero - 1], deq.counts[zero + 1])
    fit = scale.fit_left_wing(deq)
    assert fit.method == "moffat"
    assert fit.scale == pytest.approx(k, rel=0.002)


def test_dequantise_is_reproducible_and_within_half_a_count() -> None:
    values = np.arange(100_000, dtype=np.uint16) % 200
    a, b = scale.dequantise(values), scale.dequantise(values)
    assert np.array_equal(a, b) and a.dtype == np.float32
    offsets = a - values
    assert offsets.min() >= -0.5 and offsets.max() < 0.5
    assert abs(float(offsets.mean())) < 0.01
