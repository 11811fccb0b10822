"""``registration.png``: how well the *final* transform overlays pre on post.

Drawn from the pyramids (never from full-resolution arrays): the pre level is warped into the
post level with the final ``post_to_pre``. Four panels: footprint outlines before alignment
(raw frames overlaid), after stage 2 and after the final transform; a colour overlay (post
magenta, aligned pre green: grey where they agree); a checkerboard; and a zoom at the finest
pyramid level around the tissue centre, where sub-pixel quality shows as continuous texture
across the checkerboard seams. Outlines that coincide stay distinguishable: the stage-2
outline is a wide band under the narrower final one, and the post footprint is dashed on top.
The legend sits under the first panel, the caption under the figure, and each panel gets a
µm scale bar when the post pixel size is known.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from exo2micro.numerics.footprint import tissue_mask
from exo2micro.numerics.pyramid import Pyramid, common_level, to_level
from exo2micro.report.diagnostics import new_figure, save_figure, scale_bar

OVERVIEW_SIDE = 900
ZOOM_PX = 160
#: Outline styles on the first panel, drawn in this order (later on top): colour, line
#: width (pt), line style, label.
OUTLINES = (("#ff3366", 1.2, "-", "before (raw frames)"),
            ("#ffcc00", 4.0, "-", "after stage 2"),
            ("#00cc88", 1.6, "-", "final"),
            ("white", 1.0, "--", "post footprint"))
#: Layout (inches): figure width, outer margin, gap between panels, room above the panels
#: (title and panel titles) and under them (the legend).
_WIDTH, _MARGIN, _GAP, _TOP, _BOTTOM = 14.5, 0.12, 0.2, 0.8, 0.6


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
    return cv2.warpAffine(np.asarray(pre, np.float32), a_level[:2], (shape[1], shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _zoom_origin(mask: np.ndarray, f: int, ff: int, fine_shape: tuple[int, int]
                 ) -> tuple[int, int]:
    """``(y0, x0)``, in pixels of the level of box size ``ff``, of the zoom window: centred on
    the median tissue pixel of ``mask`` (the overview level's, box size ``f``, a multiple of
    ``ff``), its centre as a fine pixel, inside the level. The overview's mask, not the fine
    level's own: one fine-level mask costs more than the whole figure around it."""
    ys, xs = np.nonzero(mask) if mask.any() else (np.array([mask.shape[0] // 2]),
                                                  np.array([mask.shape[1] // 2]))
    step = f // ff
    cy = int(np.median(ys) * step + (step - 1) / 2)
    cx = int(np.median(xs) * step + (step - 1) / 2)
    return (max(0, min(cy - ZOOM_PX // 2, fine_shape[0] - ZOOM_PX)),
            max(0, min(cx - ZOOM_PX // 2, fine_shape[1] - ZOOM_PX)))


def _checker(a: np.ndarray, b: np.ndarray, n: int = 8) -> np.ndarray:
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cell = max(h, w) // n or 1
    return np.where(((yy // cell) + (xx // cell)) % 2 == 0, a, b)


def registration_figure(pre_pyr: Pyramid, post_pyr: Pyramid, stage2: np.ndarray,
                        final: np.ndarray, *, title: str, status: str, accuracy_px: float,
                        pixel_size_um: float | None = None) -> Figure:
    """The registration figure; ``stage2`` and ``final`` are ``post_to_pre`` matrices between
    full-resolution frames, ``pixel_size_um`` the post pixel size (µm; ``None``: no scale
    bars). Panels are drawn in the level's pixels, so their bars use the level's box size."""
    pre_l, post_l, f = common_level(pre_pyr, post_pyr, OVERVIEW_SIDE)
    shape = post_l.shape
    post_m = tissue_mask(post_l)
    aligned = _warp(pre_l, to_level(final, f, f), shape)
    p_s, a_s = _stretch_pair(post_l, aligned, post_m)
    overlay = np.dstack([p_s, a_s, p_s])

    side = (_WIDTH - 2 * _MARGIN - 3 * _GAP) / 4
    body = _TOP + side * float(np.clip(shape[0] / shape[1], 0.55, 1.4)) + _BOTTOM
    fig = new_figure(_WIDTH, body, "registration", left=_MARGIN / _WIDTH,
                     right=1 - _MARGIN / _WIDTH, bottom=_BOTTOM / body, top=1 - _TOP / body,
                     wspace=_GAP / side)
    axes = fig.subplots(1, 4)
    ax = axes[0]
    ax.imshow(p_s, cmap="gray")
    pre_mask = tissue_mask(pre_l).astype(np.float32)
    masks = [_warp(pre_mask, to_level(m, f, f), shape) for m in (np.eye(3), stage2, final)]
    handles = []
    for z, (mask, (colour, width, style, label)) in enumerate(
            zip([*masks, post_m.astype(np.float32)], OUTLINES)):
        ax.contour(mask, levels=[0.5], colors=[colour], linewidths=width, linestyles=style,
                   zorder=2 + z / 10).set_label(label)
        handles.append(Line2D([], [], color=colour, lw=width, ls=style, label=label))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.03), ncols=2,
              fontsize=8.5, facecolor="#222222", edgecolor="#222222", labelcolor="white",
              framealpha=1, borderaxespad=0)
    ax.set_title("Pre footprint outline on post")
    axes[1].imshow(overlay)
    axes[1].set_title("Overlay: post magenta, aligned pre green")
    axes[2].imshow(_checker(p_s, a_s), cmap="gray")
    axes[2].set_title("Checkerboard post / aligned pre")

    fine_pre, fine_post, ff = common_level(pre_pyr, post_pyr, 4096)
    y0, x0 = _zoom_origin(post_m, f, ff, fine_post.shape)
    zp = fine_post[y0:y0 + ZOOM_PX, x0:x0 + ZOOM_PX]
    # only the window is warped: the level's map, after the shift of the window's origin
    window = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    za = _warp(fine_pre, to_level(final, ff, ff) @ window, zp.shape)
    rows, cols = (np.arange(y0, y0 + zp.shape[0]) * ff // f,
                  np.arange(x0, x0 + zp.shape[1]) * ff // f)
    zp, za = _stretch_pair(zp, za, post_m[np.ix_(rows, cols)])
    axes[3].imshow(_checker(zp, za, 4), cmap="gray", interpolation="nearest")
    resolution = "full resolution" if ff == 1 else f"1/{ff} resolution"
    axes[3].set_title(f"Zoom at {resolution}, checkerboard")
    um = None if pixel_size_um is None else float(pixel_size_um)
    for a, level in zip(axes, (f, f, f, ff)):
        a.set_xticks([])
        a.set_yticks([])
        a.title.set_fontsize(10)
        scale_bar(a, None if um is None else um * level)
    fig.suptitle(f"{title} — registration ({status}; estimated accuracy "
                 f"{accuracy_px:.2g} px)")
    return fig


def plot_registration(pre_pyr: Pyramid, post_pyr: Pyramid, stage2: np.ndarray,
                      final: np.ndarray, out: Path, *, title: str, status: str,
                      accuracy_px: float, pixel_size_um: float | None = None) -> Path:
    """Write :func:`registration_figure` to ``out`` (PNG, atomically); return the path."""
    return save_figure(registration_figure(pre_pyr, post_pyr, stage2, final, title=title,
                                           status=status, accuracy_px=accuracy_px,
                                           pixel_size_um=pixel_size_um), Path(out))
