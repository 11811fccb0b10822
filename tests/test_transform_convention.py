"""The transform convention pinned against OpenCV's own functions (docs/output.md,
transforms): ``post_to_pre`` maps a raw post pixel to the raw pre pixel that lands there, pixel
centres at integer coordinates, rotation in the sense of ``cv2.getRotationMatrix2D``."""

from __future__ import annotations

import cv2
import numpy as np

from exo2micro.numerics.transform import (
    apply,
    decompose_similarity,
    similarity_post_to_pre,
    similarity_pre_to_post,
)
from exo2micro.stages.warp import warp_window
from tests.helpers_io import WholeImage


def test_pre_to_post_is_opencvs_rotation_matrix() -> None:
    centre, angle, scale = (310.5, 200.25), 17.0, 1.08
    ours = similarity_pre_to_post(angle, scale, centre, centre)
    theirs = cv2.getRotationMatrix2D(centre, angle, scale)
    np.testing.assert_allclose(ours[:2], theirs, atol=1e-12)
    dec = decompose_similarity(np.linalg.inv(ours))
    assert abs(dec["rotation_deg"] - angle) < 1e-9 and abs(dec["scale"] - scale) < 1e-12


def test_post_to_pre_samples_what_warpaffine_puts_there() -> None:
    """Warping pre forward with OpenCV's matrix and warping it through our ``post_to_pre``
    give the same post image; a bright pixel of pre lands where ``post_to_pre`` says."""
    rng = np.random.default_rng(0)
    pre = cv2.GaussianBlur(rng.random((400, 520)).astype(np.float32), (0, 0), 2.0)
    pre[150, 200] += 50.0
    centre_pre, centre_post = (260.0, 200.0), (250.0, 190.0)
    forward = similarity_pre_to_post(-9.0, 0.95, centre_pre, centre_post)
    post_cv = cv2.warpAffine(pre, forward[:2], (520, 400), flags=cv2.INTER_CUBIC)
    to_pre = similarity_post_to_pre(-9.0, 0.95, centre_pre, centre_post)
    ours = warp_window(WholeImage(pre), to_pre, 0, 400, 0, 520)
    np.testing.assert_allclose(ours[20:-20, 20:-20], post_cv[20:-20, 20:-20], atol=2e-3)
    y, x = np.unravel_index(int(np.argmax(post_cv)), post_cv.shape)
    back = apply(to_pre, np.array([[x, y]], float))[0]
    assert np.hypot(back[0] - 200, back[1] - 150) < 0.8, back
    # counter-clockwise as displayed: a point right of the centre moves up (y decreases)
    ccw = apply(similarity_pre_to_post(10.0, 1.0, (0.0, 0.0), (0.0, 0.0)),
                np.array([[100.0, 0.0]]))[0]
    assert ccw[1] < 0
