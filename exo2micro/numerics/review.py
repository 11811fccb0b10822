"""Consistency checks of a finished alignment: is the pair fit to be called ``complete``?

Stage 2 matches outlines and stage 3 refines from interior texture, but an outline that is
nearly symmetric also overlays itself when the sample was re-mounted the other way round
(rotated by 180° or 90°, mirrored), and an unrelated pre image can overlay a post footprint
well enough. Such a pair runs to the end with a confident-looking transform and a wrong k.
:func:`review_alignment` checks the final transform with a measure the alignment did not
optimise: the **interior texture correlation** between post and the warped pre on a coarse
pyramid level (longer side ≤ :data:`CHECK_SIDE` px), for the final transform and for the
seven other orientations of the dihedral group (rotations by 90°, 180°, 270° and their
mirror images about the post tissue centroid), each at its best shift within
±:data:`MAX_SHIFT` level px. A pair needs review when

* another orientation matches the texture clearly better (by :data:`BETTER_FACTOR` and
  above :data:`MIN_CORRELATION`): the pre image is most likely re-mounted;
* the texture does not match in any orientation (below :data:`MIN_CORRELATION`) while the
  outline match was only approximate (stage 2 ``grid_only`` or ``suspect``): most likely
  pre and post are not images of the same sample;
* stage 2 judged its own result ``suspect`` (poor overlap, or a scale far from 1).

Besides this check, :func:`problems_in_warnings` picks from a pair's ``result.json`` warnings
the failed consistency checks of other stages that make a finished pair need review in the
batch summary: the pre→post scale implied by the two physical pixel sizes disagreeing with
stage 2's measured scale (stage 4, :func:`exo2micro.stages.subtract.pixel_scale_check`; a wrong
pixel size makes every µm and per-mm² value of the pair wrong).

Texture is the band-passed log intensity of :func:`exo2micro.numerics.pyramid.level_texture`.
Coordinates follow :mod:`exo2micro.numerics.transform` (``post_to_pre``, x = column, y = row).
Memory: a few images of ≤ 512 px side.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from exo2micro.numerics.footprint import tissue_mask
from exo2micro.numerics.pyramid import Pyramid

#: Longer side (px) of the pyramid level the check works on.
CHECK_SIDE = 512
#: Largest shift (level px) searched around each orientation's placement.
MAX_SHIFT = 24
#: A texture correlation below this is no evidence of a match (a right alignment of textured
#: tissue scores ≈ 0.9–1; a wrong one, the best of many shifts of unrelated texture, ≤ 0.3).
MIN_CORRELATION = 0.5
#: Another orientation must match this many times better to call the final one wrong.
BETTER_FACTOR = 1.5
#: Band-pass scale (level px) of the compared texture.
SIGMA = 1.5

#: Warnings (``result.json`` ``warnings``, ``stage N: `` prefix optional) that are failed
#: consistency checks: the pixel-size check of stage 4, stage 3's accuracy worse than 0.5 px.
REVIEW_WARNINGS: tuple[re.Pattern[str], ...] = (
    re.compile(r"the pixel sizes \(pre .* µm, post .* µm\) imply a pre→post scale of "),
    re.compile(r"the estimated alignment accuracy .* px is worse than "),
)
_STAGE_PREFIX = re.compile(r"^stage \d+: ")

ORIENTATIONS: tuple[tuple[str, int, bool], ...] = tuple(
    (f"{'mirrored and ' if m else ''}rotated by {r}°" if r else
     ("mirrored" if m else "as aligned"), r, m) for m in (False, True) for r in (0, 90, 180, 270))


@dataclass
class Review:
    """The outcome: ``problems`` (plain sentences; empty = passed) and the measurements."""

    problems: list[str] = field(default_factory=list)
    correlation: float | None = None
    best_other: tuple[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"passed": not self.problems, "problems": self.problems,
                "texture_correlation": self.correlation,
                "best_other_orientation": (None if self.best_other is None else
                                           {"orientation": self.best_other[0],
                                            "correlation": self.best_other[1]})}


def _orientation(centre: tuple[float, float], degrees: int, mirror: bool) -> np.ndarray:
    """3×3 map of post level pixels: rotate by ``degrees`` (counter-clockwise as displayed)
    and optionally mirror left-right, about ``centre`` (x, y)."""
    cx, cy = centre
    t = np.radians(degrees)
    c, s = round(np.cos(t)), round(np.sin(t))
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], float)
    if mirror:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    shift = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], float)
    return shift @ rot @ np.linalg.inv(shift)


def best_shift_correlation(a: np.ndarray, b: np.ndarray, max_shift: int
                           ) -> tuple[float, tuple[int, int]]:
    """Largest normalised cross-correlation of two zero-mean masked images over shifts of up
    to ``max_shift`` px in x and y (FFT, zero padded), and that shift ``(sx, sy)``:
    ``a(x) ≈ b(x − s)``."""
    h, w = a.shape
    fh, fw = cv2.getOptimalDFTSize(h + max_shift), cv2.getOptimalDFTSize(w + max_shift)
    corr = np.fft.irfft2(np.fft.rfft2(a, s=(fh, fw)) * np.conj(np.fft.rfft2(b, s=(fh, fw))),
                         s=(fh, fw))
    rows = np.r_[0:max_shift + 1, fh - max_shift:fh]
    cols = np.r_[0:max_shift + 1, fw - max_shift:fw]
    window = corr[np.ix_(rows, cols)]
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm <= 0:
        return 0.0, (0, 0)
    i, j = np.unravel_index(int(np.argmax(window)), window.shape)
    sy, sx = int(rows[i]), int(cols[j])
    sy, sx = (sy - fh if sy > max_shift else sy), (sx - fw if sx > max_shift else sx)
    return float(window[i, j] / norm), (sx, sy)


@dataclass(frozen=True)
class TextureView:
    """Band-passed textures of pre and post at one pyramid level (box factor ``factor``), the
    eroded post tissue mask and its centre (level px), for scoring placements of pre."""

    pre: np.ndarray
    post: np.ndarray
    mask: np.ndarray
    centre: tuple[float, float]
    factor: int

    @classmethod
    def of(cls, pre_pyr: Pyramid, post_pyr: Pyramid, side: int = CHECK_SIDE,
           edge_px: int = 2) -> TextureView:
        """The view on the level of longer side ≤ ``side``; the mask leaves out ``edge_px``
        level px inside the tissue edge (where the high pass rings)."""
        from exo2micro.numerics.pyramid import common_level, level_texture

        pre_l, post_l, f = common_level(pre_pyr, post_pyr, side)
        mask = tissue_mask(post_l)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge_px + 1,) * 2)
        mask = cv2.erode(mask.astype(np.uint8), kernel) > 0
        ys, xs = np.nonzero(mask)
        centre = (float(xs.mean()), float(ys.mean())) if xs.size else (
            (post_l.shape[1] - 1) / 2, (post_l.shape[0] - 1) / 2)
        return cls(level_texture(pre_l, SIGMA), level_texture(post_l, SIGMA), mask, centre, f)

    def score(self, a_level: np.ndarray, max_shift: int = MAX_SHIFT
              ) -> tuple[float, tuple[int, int]]:
        """Texture correlation of pre placed by the level map ``a_level`` (post level px →
        pre level px) over the best shift, and that shift (level px; 0 where they barely
        overlap)."""
        h, w = self.post.shape
        m = a_level[:2]
        warped = cv2.warpAffine(self.pre, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        inside = cv2.warpAffine(np.ones(self.pre.shape, np.uint8), m, (w, h),
                                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
        region = self.mask & inside
        if region.sum() < 64:
            return 0.0, (0, 0)
        a = np.where(region, self.post - self.post[region].mean(), 0.0)
        b = np.where(region, warped - warped[region].mean(), 0.0)
        return best_shift_correlation(a, b, max_shift)


def texture_correlations(pre_pyr: Pyramid, post_pyr: Pyramid, post_to_pre: np.ndarray
                         ) -> list[tuple[str, float]]:
    """(orientation, texture correlation) for the final transform first, then the seven
    other orientations (see the module docstring)."""
    from exo2micro.numerics.pyramid import to_level

    view = TextureView.of(pre_pyr, post_pyr)
    a_level = to_level(post_to_pre, view.factor, view.factor)
    return [(name, view.score(a_level @ _orientation(view.centre, degrees, mirror))[0])
            for name, degrees, mirror in ORIENTATIONS]


def review_alignment(pre_pyr: Pyramid, post_pyr: Pyramid, post_to_pre: np.ndarray,
                     stage2_status: str, stage2_reason: str = "") -> Review:
    """Check a final ``post_to_pre`` (full-resolution) against the interior texture."""
    scores = texture_correlations(pre_pyr, post_pyr, post_to_pre)
    (_, own), others = scores[0], scores[1:]
    best_name, best = max(others, key=lambda s: s[1])
    review = Review(correlation=round(own, 4), best_other=(best_name, round(best, 4)))
    why = f": {stage2_reason}" if stage2_reason else ""
    outline = f"stage 2 {stage2_status}{why}"
    if best >= MIN_CORRELATION and best >= BETTER_FACTOR * own:
        review.problems.append(
            f"the pre image seems {best_name} relative to post: its interior texture matches "
            f"post far better that way (correlation {best:.2f} vs {own:.2f} as aligned); was "
            f"the sample re-mounted? Turn or flip the pre image (or widen angle_range) and "
            f"re-run; k and the difference image of this run are not trustworthy")
    elif own < MIN_CORRELATION and stage2_status in ("grid_only", "suspect"):
        review.problems.append(
            f"the interior texture of pre does not match post in any of the 8 orientations "
            f"tried (best correlation {max(own, best):.2f} < {MIN_CORRELATION}) and the "
            f"outline match was only approximate ({outline}): the pre image may be turned or "
            f"mirrored, or show another sample or area")
    elif stage2_status == "suspect":
        review.problems.append(f"the outline alignment is doubtful ({outline})")
    return review


def problems_in_warnings(warnings: Iterable[Any]) -> list[str]:
    """The warnings of ``warnings`` (``result.json`` ``warnings``) that are failed consistency
    checks (:data:`REVIEW_WARNINGS`), each as a problem sentence without its ``stage N:``
    prefix, in their order; anything that is not a string is ignored."""
    found = []
    for warning in warnings:
        if not isinstance(warning, str):
            continue
        text = _STAGE_PREFIX.sub("", warning.strip())
        if any(p.search(text) for p in REVIEW_WARNINGS):
            found.append(text)
    return found
