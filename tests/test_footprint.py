"""The tissue footprint (exo2micro.numerics.footprint): what the mask keeps, fills and drops,
and that it leaves its input alone (it works on one copy, in place)."""

from __future__ import annotations

import cv2
import numpy as np

from exo2micro.numerics.footprint import fill_holes, tissue_mask


def _sample(shape: tuple[int, int] = (400, 500)) -> tuple[np.ndarray, np.ndarray]:
    """A textured bright ellipse with a dark crack inside and a bright speck on the slide;
    returns (image, the ellipse's own mask)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    ellipse = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.38 * w)) ** 2 < 1
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.random(shape, np.float32), (0, 0), 3)
    image = np.where(ellipse, 300 + 600 * texture, 4).astype(np.float32)
    image += rng.normal(0, 1, shape).astype(np.float32)
    image[h // 2 - 6:h // 2 + 6, w // 2 - 40:w // 2 + 40] = 3  # a dark crack: still tissue
    image[20:24, 20:24] = 900  # a speck on the slide
    return image, ellipse


def test_the_mask_is_the_tissue_with_its_dark_cracks_and_without_specks() -> None:
    image, ellipse = _sample()
    mask = tissue_mask(image)
    assert mask.dtype == bool and mask.shape == image.shape
    assert mask[200, 250]  # the crack, enclosed by tissue
    assert not mask[20:24, 20:24].any()  # the speck
    # the edge is found on the smoothed, log-scaled image: within a few px of the true one
    ring = np.ones((9, 9), np.uint8)
    assert mask[cv2.erode(ellipse.view(np.uint8), ring).view(bool)].all()
    assert not mask[~cv2.dilate(ellipse.view(np.uint8), ring).view(bool)].any()


def test_nan_reads_as_no_signal_and_the_input_is_left_unchanged() -> None:
    image, _ = _sample()
    image[100:110, 150:300] = np.nan  # inside the ellipse: a hole, filled
    before = image.copy()
    mask = tissue_mask(image)
    np.testing.assert_array_equal(image, before)  # NaNs and all
    assert mask[100:110, 150:300].all()
    assert not mask[0:10, 0:10].any()


def test_images_without_contrast_have_no_tissue() -> None:
    assert not tissue_mask(np.zeros((64, 80), np.float32)).any()
    assert not tissue_mask(np.full((64, 80), -5.0)).any()


def test_fill_holes_closes_enclosed_background_only() -> None:
    ring = np.zeros((60, 60), np.uint8)
    cv2.circle(ring, (30, 30), 20, 1, thickness=4)
    cv2.circle(ring, (59, 59), 8, 1, thickness=2)  # open at the border: not a hole
    filled = fill_holes(ring)
    assert filled.dtype == np.uint8 and set(np.unique(filled)) == {0, 1}
    assert filled[30, 30] == 1 and filled[58, 58] == 0
    assert (filled >= ring).all()


def test_column_major_and_transposed_inputs_give_the_same_mask() -> None:
    image, _ = _sample((300, 360))
    mask = tissue_mask(image)
    np.testing.assert_array_equal(tissue_mask(np.asfortranarray(image)), mask)
    np.testing.assert_array_equal(tissue_mask(np.ascontiguousarray(image.T).T), mask)
    np.testing.assert_array_equal(tissue_mask(image.T), mask.T)
    u8 = mask.view(np.uint8)
    np.testing.assert_array_equal(fill_holes(np.asfortranarray(u8)), fill_holes(u8))
