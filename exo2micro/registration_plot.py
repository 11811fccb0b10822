"""``registration.png``: how well the *final* transform overlays pre on post.

Drawn from the pyramids (never from full-resolution arrays): the pre level is warped into the
post level with the final ``post_to_pre``. Four panels: footprint outlines before alignment
(raw frames overlaid), after stage 2 and after the final transform; a colour overlay (post
magenta, aligned pre green: grey where they agree); a checkerboard; and a zoom at the finest
pyramid level around the tissue centre, where sub-pixel quality shows as continuous texture
across the checkerboard seams.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from exo2micro.atomic import atomic_path
from exo2micro.footprint import tissue_mask
from exo2micro.pyramid import Pyramid
from exo2micro.stages.align_boundary import common_level, to_level

OVERVIEW_SIDE = 900
ZOOM_PX = 160


def _stretch_pair(post: np.ndarray, aligned: np.ndarray, mask: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Display both on one grey scale: aligned pre is multiplied by the median post/pre ratio
    over tissue (≈ k) so equal texture looks equal and seams show only misalignment."""
    sel = mask & (aligned > 0) & (post > 0)
    if not sel.any():
        sel = np.ones(post.shape, bool)
    ratio = float(np.median(post[sel] / np.maximum(aligned[sel], 1e-9)))
    lo, hi = np.percentile(post[sel], [1, 99.5])
    span = max(float(hi - lo), 1e-9)
    return (np.clip((post - lo) / span, 0, 1).astype(np.float32),
            np.clip((aligned * ratio - lo) / span, 0, 1).astype(np.float32))


def _warp(pre: np.ndarray, a_level: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.warpAffine(pre.astype(np.float32), a_level[:2], (shape[1], shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _checker(a: np.ndarray, b: np.ndarray, n: int = 8) -> np.ndarray:
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cell = max(h, w) // n or 1
    return np.where(((yy // cell) + (xx // cell)) % 2 == 0, a, b)


def plot_registration(pre_pyr: Pyramid, post_pyr: Pyramid, stage2: np.ndarray,
                      final: np.ndarray, out: Path, *, title: str, status: str,
                      accuracy_px: float) -> None:
    """Write the registration figure to ``out`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre_l, post_l, f = common_level(pre_pyr, post_pyr, OVERVIEW_SIDE)
    shape = post_l.shape
    post_m = tissue_mask(post_l)
    aligned = _warp(pre_l, to_level(final, f, f), shape)
    p_s, a_s = _stretch_pair(post_l, aligned, post_m)
    overlay = np.dstack([p_s, a_s, p_s])

    fig, axes = plt.subplots(1, 4, figsize=(20, 5.6), constrained_layout=True)
    ax = axes[0]
    ax.imshow(p_s, cmap="gray")
    identity = np.eye(3)
    for matrix, colour, label in ((identity, "#ff3366", "before (raw frames)"),
                                  (stage2, "#ffcc00", "after stage 2"),
                                  (final, "#00cc88", "final")):
        m = _warp(tissue_mask(pre_l).astype(np.float32), to_level(matrix, f, f), shape)
        ax.contour(m, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.plot([], [], color=colour, label=label)
    ax.contour(post_m.astype(float), levels=[0.5], colors=["white"], linewidths=1.0,
               linestyles="dashed")
    ax.plot([], [], color="white", linestyle="dashed", label="post footprint")
    ax.legend(loc="lower left", fontsize=8, facecolor="#222222", labelcolor="white")
    ax.set_title("Pre footprint outline on post")
    axes[1].imshow(overlay)
    axes[1].set_title("Overlay: post magenta, aligned pre green")
    axes[2].imshow(_checker(p_s, a_s), cmap="gray")
    axes[2].set_title("Checkerboard post / aligned pre")

    fine_pre, fine_post, ff = common_level(pre_pyr, post_pyr, 4096)
    fine_al = _warp(fine_pre, to_level(final, ff, ff), fine_post.shape)
    fm = tissue_mask(fine_post)
    ys, xs = np.nonzero(fm) if fm.any() else (np.array([fine_post.shape[0] // 2]),
                                               np.array([fine_post.shape[1] // 2]))
    cy, cx = int(np.median(ys)), int(np.median(xs))
    y0 = max(0, min(cy - ZOOM_PX // 2, fine_post.shape[0] - ZOOM_PX))
    x0 = max(0, min(cx - ZOOM_PX // 2, fine_post.shape[1] - ZOOM_PX))
    zp, za = _stretch_pair(fine_post[y0:y0 + ZOOM_PX, x0:x0 + ZOOM_PX],
                           fine_al[y0:y0 + ZOOM_PX, x0:x0 + ZOOM_PX],
                           fm[y0:y0 + ZOOM_PX, x0:x0 + ZOOM_PX])
    axes[3].imshow(_checker(zp, za, 4), cmap="gray", interpolation="nearest")
    axes[3].set_title(f"Zoom {ZOOM_PX}×{ZOOM_PX} px at 1/{ff} resolution (checkerboard)")
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"{title} — registration ({status}; estimated accuracy "
                 f"{accuracy_px:.2f} px)", fontsize=13)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
