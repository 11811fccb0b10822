"""Fast paths that must give the very numbers of the numpy or OpenCV code they replace:
:func:`exo2micro.numerics.robust.row_median` against ``np.median(axis=1)`` and the pyramid's
pairwise box sums against ``np.add.reduceat``, the elliptic erosion against ``cv2.erode``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from exo2micro.numerics.footprint import erode_ellipse
from exo2micro.numerics.pyramid import Pyramid, box_reduce
from exo2micro.numerics.robust import row_median


def _rows(rng: np.random.Generator, case: int, dtype: type) -> np.ndarray:
    """Rows of every kind a tile can hold: ties, NaNs, ±inf, all-NaN rows, odd and even
    lengths, a single column."""
    shape = (int(rng.integers(1, 12)), int(rng.integers(1, 60)) if case % 9 else 1)
    a = rng.standard_normal(shape).astype(dtype)
    if case % 3 == 0:
        a = (np.round(a * 3) / 3).astype(dtype)  # many ties
    if case % 4 == 0:
        a[rng.random(shape) < 0.15] = np.nan
    if case % 5 == 0:
        a[rng.random(shape) < 0.1] = np.inf
        a[rng.random(shape) < 0.1] = -np.inf
    if case % 7 == 0:
        a[0] = np.nan
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keepdims", [False, True])
def test_row_median_is_numpys_median(dtype: type, keepdims: bool) -> None:
    rng = np.random.default_rng(11)
    for case in range(400):
        a = _rows(rng, case, dtype)
        with np.errstate(invalid="ignore"):  # inf − inf in a middle pair, as numpy's own
            expected = np.median(a, axis=1, keepdims=keepdims)
            got = row_median(a, keepdims=keepdims)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_row_median_leaves_its_input_alone_and_takes_numpys_path_for_integers() -> None:
    a = np.arange(24, dtype=np.float32)[::-1].reshape(4, 6).copy()
    before = a.copy()
    np.testing.assert_array_equal(row_median(a), np.median(a, axis=1))
    np.testing.assert_array_equal(a, before)
    ints = np.arange(12).reshape(3, 4)
    assert row_median(ints).dtype == np.median(ints, axis=1).dtype == np.float64


def _reduceat_box(image: np.ndarray, factor: int) -> np.ndarray:
    """Box means computed as the general path does: reduceat sums, float64 division."""
    h, w = image.shape
    src = image.astype(np.float32, copy=False)
    sums = np.add.reduceat(np.add.reduceat(src, np.arange(0, h, factor), axis=0),
                           np.arange(0, w, factor), axis=1)
    counts = np.outer(np.minimum(factor, h - np.arange(0, h, factor)),
                      np.minimum(factor, w - np.arange(0, w, factor)))
    return (sums / counts).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_pairwise_box_means_equal_reduceat_bit_for_bit(dtype: type) -> None:
    rng = np.random.default_rng(5)
    for h, w in [(1, 1), (1, 7), (6, 1), (7, 9), (64, 65), (129, 128)]:
        image = (rng.random((h, w)) * 60000).astype(dtype)
        if dtype == np.float32:
            image[0, 0] = 1e-42  # a subnormal: halving must round it as float64 then float32
        got = box_reduce(image, 2)
        assert got.dtype == np.float32
        assert got.tobytes() == _reduceat_box(image, 2).tobytes()


def test_pyramid_levels_are_weighted_means_of_the_full_image() -> None:
    """Every level (built by halving the one before) is the exact box mean of the full image,
    partial edge boxes included, to float32 rounding."""
    rng = np.random.default_rng(8)
    full = (rng.random((531, 413)) * 4000).astype(np.float32)
    pyr = Pyramid.from_first_level(box_reduce(full, 1), 1, full.shape)
    assert pyr.factors[:3] == [1, 2, 4]
    for f, level in zip(pyr.factors, pyr.levels):
        np.testing.assert_allclose(level, _reduceat_box(full.astype(np.float64), f),
                                   rtol=3e-7)


@pytest.mark.parametrize("r", [1, 2, 5, 17, 40, 81])
def test_erode_ellipse_is_opencvs_erosion_with_zeros_outside(r: int) -> None:
    """Pixel for pixel the erosion stage 3's patch planning used to ask OpenCV for, on
    blobby masks, full and empty ones, masks narrower than the element and at every edge."""
    rng = np.random.default_rng(r)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
    for case in range(25):
        h, w = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        blur = float(rng.integers(1, 12))
        m = (cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), blur) > 0.5)
        m = m.astype(np.uint8)
        if case == 0:
            m[:] = 1
        elif case == 1:
            m[:] = 0
        expected = cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        np.testing.assert_array_equal(erode_ellipse(m, r), expected)


def test_row_median_gives_numpys_own_nan_bits() -> None:
    """A NaN made by arithmetic (inf − inf) has its sign bit set on x86: the row's median is
    whatever NaN numpy returns, bit for bit."""
    with np.errstate(invalid="ignore"):
        neg_nan = np.float32(np.inf) - np.float32(np.inf)
    rows = np.array([[1, neg_nan, 2, 5], [3, 1, 2, 0], [np.nan, 1, 2, 3]], np.float32)
    expected = np.median(rows, axis=1)
    assert row_median(rows).view(np.uint32).tolist() == expected.view(np.uint32).tolist()


def test_erode_ellipse_of_radius_0_is_the_mask_and_a_negative_radius_is_refused() -> None:
    m = (np.random.default_rng(2).random((30, 40)) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(erode_ellipse(m, 0), m.astype(bool))
    with pytest.raises(ValueError, match="radius"):
        erode_ellipse(m, -1)
