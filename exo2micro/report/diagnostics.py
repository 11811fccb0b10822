"""Stage-4 diagnostic plots (PNG), drawn from streamed histograms and small previews only.

Every plot is made from data of bounded size — fixed-grid histograms
(:class:`exo2micro.numerics.scale.Histogram`, :class:`~exo2micro.numerics.scale.Histogram2D`) and
box-averaged previews of at most ~2000 px — never from a full-resolution array. Figures are built
with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot): nothing is registered in
pyplot's global figure list, so batch runs that make hundreds of plots keep no figures alive,
and no display is ever needed.

Colours of the scale lines (docs/output.md): Moffat ``#00cc88``, percentile ``#ff9933``, manual
``#ff3366``. Intensities are in the post image's units (``PlotContext.units``);
log10(post/pre) is in decades.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import AsinhNorm, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patheffects import withStroke
from matplotlib.ticker import (
    FormatStrFormatter,
    FuncFormatter,
    LogFormatter,
    LogLocator,
    NullLocator,
)
from matplotlib.transforms import blended_transform_factory, offset_copy

from exo2micro.io.atomic import atomic_path
from exo2micro.io.layout import PairLayout
from exo2micro.numerics.scale import Histogram, Histogram2D, ScaleFit
from exo2micro.report.captions import caption

KIND_COLOURS = {"moffat": "#00cc88", "percentile": "#ff9933", "manual": "#ff3366"}
#: Line styles, so scales that nearly coincide stay distinguishable.
KIND_STYLES = {"moffat": "-", "percentile": "--", "manual": "-."}
DPI = 110
#: Font sizes, and glyphs drawn without hinting: FreeType's hinting is about an eighth of a
#: plot's drawing time (the captions' text would otherwise make every plot slower), and
#: unhinted text at 110 dpi reads the same.
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "figure.titlesize": 13, "text.hinting": "no_hinting"}
CAPTION_PT = 10.0
#: Mean advance of a DejaVu Sans character (em) in running text: wraps captions to the width.
_CHAR_EM = 0.55
#: Gid of the scale bar's line and of its label (tests and readers find them by it).
SCALE_BAR_GID = "scale_bar"


@dataclass(frozen=True)
class PlotContext:
    """What every plot's labels need: the pair, the units of the images and the active scales
    (``{kind: k}``, Moffat first); ``percentile`` is the ``scale_percentile`` parameter and
    ``pixel_size_um`` the post image's pixel size, which sizes the images' scale bars."""

    sample: str
    dye: str
    units: str
    scales: Mapping[str, float]
    percentile: float | None = None
    thresholds: tuple[float, float] | None = None  # (post, pre) signal thresholds
    pixel_size_um: float | None = None  # one post pixel (µm); None: unknown, no scale bar

    def label(self, kind: str) -> str:
        """Legend text of one scale, e.g. ``"Moffat k = 1.3502"``."""
        k = self.scales[kind]
        if kind == "percentile":
            return f"percentile (p = {self.percentile:g}) k = {k:.4f}"
        return f"{'Moffat' if kind == 'moffat' else 'manual'} k = {k:.4f}"

    @property
    def title(self) -> str:
        return f"{self.sample} / {self.dye}"


def _caption_lines(name: str, width: float) -> list[str]:
    """The caption of plot ``name`` wrapped to a figure ``width`` inches wide."""
    per_line = max(30, int(0.94 * width * 72 / (CAPTION_PT * _CHAR_EM)))
    return textwrap.wrap(caption(name), per_line)


def new_figure(width: float, height: float, name: str, **margins: float) -> Figure:
    """A figure ``width`` × ``height`` inches for the plot, plus a strip under it holding the
    caption of plot ``name``. ``margins`` (``subplots_adjust`` keywords) are fractions of the
    plot area, the strip excluded; there is no layout engine (it would draw every figure
    twice)."""
    import matplotlib

    lines = _caption_lines(name, width)
    strip = len(lines) * 1.3 * CAPTION_PT / 72 + 0.15 if lines else 0.0
    total = height + strip
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, total), dpi=DPI)
    frac = {"left": 0.1, "right": 0.97, "bottom": 0.11, "top": 0.86, **margins}
    for edge in ("bottom", "top"):
        frac[edge] = (strip + frac[edge] * height) / total
    fig.subplots_adjust(**frac)
    if lines:
        fig.text(0.5, 0.08 / total, "\n".join(lines), ha="center", va="bottom",
                 fontsize=CAPTION_PT, color="0.25", gid="caption")
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically) and release its artists. zlib level 1:
    against level 3 the image plots encode 1.1–1.6× faster (most for the noise of the
    detections plot) for 1–4 % more bytes."""
    import matplotlib

    with matplotlib.rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    fig.clear()
    return path


def nice_length(target: float) -> float:
    """The 1-2-5 × 10^n value nearest to ``target`` (> 0) on a log scale."""
    exp = math.floor(math.log10(target))
    return min((m * 10.0 ** e for e in (exp, exp + 1) for m in (1, 2, 5)),
               key=lambda v: abs(math.log(v / target)))


def _length_label(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def scale_bar(ax: Any, um_per_unit: float | None, colour: str = "white") -> Line2D | None:
    """Draw a scale bar of a round length (1-2-5 × 10^n µm, about a fifth of the panel's
    width) in the lower right of image axes ``ax`` whose x data unit is ``um_per_unit`` µm
    (the pixel size times the box size when the axes count box-averaged pixels); nothing when
    the size is unknown. ``colour`` is the bar's and its label's ("white" with a black halo
    on dark images, "black" with a white one on light images). Call after the x limits are
    set. Returns the bar's line."""
    if um_per_unit is None or not math.isfinite(um_per_unit) or um_per_unit <= 0:
        return None
    x0, x1 = sorted(ax.get_xlim())
    length_um = nice_length((x1 - x0) * um_per_unit / 5)
    length = length_um / um_per_unit
    right = x1 - 0.04 * (x1 - x0)
    frame = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes
    halo = "black" if colour == "white" else "white"
    (line,) = ax.plot([right - length, right], [0.05, 0.05], transform=frame, color=colour,
                      lw=3, solid_capstyle="butt", scalex=False, scaley=False, zorder=5,
                      path_effects=[withStroke(linewidth=5, foreground=halo)],
                      gid=SCALE_BAR_GID)
    ax.text(right - length / 2, 0.05, _length_label(length_um), ha="center", va="bottom",
            transform=offset_copy(frame, ax.figure, y=4, units="points"), color=colour,
            fontsize=9, zorder=5, path_effects=[withStroke(linewidth=2.5, foreground=halo)],
            gid=SCALE_BAR_GID)
    return line


def _white_empty(name: str) -> Any:
    """Colormap ``name`` with empty (NaN) bins drawn opaque white, not transparent: resampling
    a transparent neighbour would tint isolated bins."""
    return colormaps[name].with_extremes(bad="white")


def _count_label(value: float, _pos: object = None) -> str:
    """Compact count label: 1, 10, 100, 1k, 10k, 1M, ... (plain text, no mathtext)."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _log_counts(axis: Any) -> None:
    """Decade ticks with compact labels and no minor ticks on a log-scaled count axis (the
    default scientific labels and minor ticks cost more to draw than the data)."""
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(_count_label))
    axis.set_minor_locator(NullLocator())


def _log_headroom(ax: Any, peak: float, rows: int) -> None:
    """Limit a log-count axis to [0.8, top] with ``top`` high enough that a legend of
    ``rows`` entries in an upper corner stays above the highest count ``peak``."""
    height = ax.get_position().height * ax.figure.get_figheight()  # inches
    share = min(0.6, (rows * 0.24 + 0.2) / height)  # of the axis the legend needs
    bottom = math.log10(0.8)
    top = (math.log10(max(peak, 1.0)) - share * bottom) / (1 - share)
    ax.set_ylim(0.8, 10.0 ** top)


def _scale_lines(ax: Any, ctx: PlotContext, top: float) -> None:
    """The identity line and one ``post = k · pre`` line per active scale on a pre/post grid."""
    ax.plot([0, top], [0, top], color="0.45", lw=1.2, ls=":", label="post = pre")
    for kind, k in ctx.scales.items():
        ax.plot([0, top], [0, k * top], color=KIND_COLOURS[kind], lw=1.6, ls=KIND_STYLES[kind],
                zorder=3 if kind == "moffat" else 2.5, label=f"post = k·pre, {ctx.label(kind)}")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)


def _grid_axes(ax: Any, ctx: PlotContext) -> None:
    ax.set_xlabel(f"aligned pre-stain [{ctx.units}]")
    ax.set_ylabel(f"post-stain [{ctx.units}]")
    ax.set_aspect("equal")


def _grid_top(grid: Histogram2D) -> float:
    """Upper display limit of a pre/post grid: the highest occupied bin edge."""
    occupied = np.nonzero(grid.counts.sum(axis=0) + grid.counts.sum(axis=1))[0]
    last = occupied[-1] + 1 if occupied.size else grid.bins
    return float(grid.lo + last * grid.width)


#: Heat-map layout (inches): the square grid's side, the margins left of and above it, the
#: room under it for the x label, and one legend row.
_GRID_SIDE, _GRID_LEFT, _GRID_TOP, _GRID_XLABEL, _LEGEND_ROW = 5.0, 0.85, 0.8, 0.55, 0.24


def _grid_figure(name: str, ctx: PlotContext, grid: Histogram2D, counts: np.ndarray,
                 cmap: Any, bar_label: str, title: str) -> Figure:
    """A pre/post grid of ``counts`` (``[iy, ix]``, NaN: empty; log colour) with the scale
    lines, its colour bar on the right and the legend right under the x label."""
    below = _GRID_XLABEL + (1 + len(ctx.scales)) * _LEGEND_ROW + 0.1
    width, height = _GRID_LEFT + _GRID_SIDE + 1.5, _GRID_TOP + _GRID_SIDE + below
    fig = new_figure(width, height, name, left=_GRID_LEFT / width,
                     right=(_GRID_LEFT + _GRID_SIDE) / width, bottom=below / height,
                     top=1 - _GRID_TOP / height)
    ax = fig.add_subplot()
    vmax = max(2.0, float(np.nanmax(counts, initial=2.0)))
    mesh = ax.imshow(counts, origin="lower", extent=(grid.lo, grid.hi, grid.lo, grid.hi),
                     norm=LogNorm(vmin=1, vmax=vmax), cmap=cmap, interpolation="nearest")
    _scale_lines(ax, ctx, _grid_top(grid))
    _grid_axes(ax, ctx)
    box = fig.subplotpars
    cax = fig.add_axes((box.right + 0.25 / width, box.bottom, 0.2 / width, box.top - box.bottom))
    _log_counts(fig.colorbar(mesh, cax=cax, label=bar_label).ax.yaxis)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -_GRID_XLABEL / _GRID_SIDE),
              frameon=False, borderaxespad=0)
    ax.set_title(title)
    return fig


def pre_post_heatmap_figure(ctx: PlotContext, grid: Histogram2D) -> Figure:
    """2-D histogram of (aligned pre, post) over tissue pixels, log colour scale, with the
    identity line and the ``k · pre`` lines."""
    counts = grid.counts.astype(np.float64)
    counts[counts == 0] = np.nan
    return _grid_figure("pre_post_heatmap", ctx, grid, counts, _white_empty("viridis"),
                        "pixels per bin (log scale)",
                        f"{ctx.title}: post vs aligned pre, tissue pixels\n"
                        f"(both above their signal thresholds; bin {grid.width:.3g})")


def plot_pre_post_heatmap(path: Path, ctx: PlotContext, grid: Histogram2D) -> Path:
    """Write :func:`pre_post_heatmap_figure` to ``path``."""
    return save_figure(pre_post_heatmap_figure(ctx, grid), path)


def excess_heatmap_figure(ctx: PlotContext, grid: Histogram2D) -> Figure:
    """Where post is brighter than pre: each grid bin with post > pre (``iy > ix``) minus its
    mirror bin with the two swapped (``counts[iy, ix] − counts[ix, iy]``), so noise that is
    symmetric about post = pre cancels and what is left is the autofluorescence brightening
    (k > 1) and the stain; drawn where positive, with the ``k · pre`` lines."""
    c = grid.counts
    excess = (c - c.T).astype(np.float64)
    upper = np.triu(np.ones_like(excess, dtype=bool), k=1).T  # [iy, ix] with iy > ix
    excess[~upper | (excess <= 0)] = np.nan
    return _grid_figure("excess_heatmap", ctx, grid, excess, _white_empty("magma_r"),
                        "pixels per bin minus its mirror (pre ↔ post)",
                        f"{ctx.title}: where post exceeds pre\n"
                        "(net of the mirrored count; above a k line: kept as stain)")


def plot_excess_heatmap(path: Path, ctx: PlotContext, grid: Histogram2D) -> Path:
    """Write :func:`excess_heatmap_figure` to ``path``."""
    return save_figure(excess_heatmap_figure(ctx, grid), path)


def pre_post_histograms_figure(ctx: PlotContext, grid: Histogram2D) -> Figure:
    """Intensity histograms of post, aligned pre and k·pre (Moffat) over tissue pixels."""
    fig = new_figure(8.5, 5.0, "pre_post_histograms")
    ax = fig.add_subplot()
    edges = grid.edges()
    pre = grid.counts.sum(axis=0)
    post = grid.counts.sum(axis=1)
    k = ctx.scales["moffat"]
    _steps(ax, pre, edges, color="#5577ff", lw=1.4, label="aligned pre-stain")
    _steps(ax, post, edges, color="#222222", lw=1.6, label="post-stain")
    # k·pre has the pre counts on a grid stretched by k; divide by k to keep counts per unit
    _steps(ax, pre / k, edges * k, color=KIND_COLOURS["moffat"], lw=1.4, ls="--",
           label=f"k × aligned pre ({ctx.label('moffat')})")
    ax.set_yscale("log")
    _log_counts(ax.yaxis)
    ax.set_xlim(0, _grid_top(grid))
    # the k·pre curve's counts are pre's divided by k
    peak = max(float(pre.max(initial=0)), float(post.max(initial=0))) / min(k, 1.0)
    _log_headroom(ax, peak, 3)
    ax.set_xlabel(f"intensity [{ctx.units}]")
    ax.set_ylabel(f"pixels per bin (bin {grid.width:.3g})")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title(f"{ctx.title}: intensity histograms of tissue pixels\n"
                 "post should match k × pre except for the stained excess on the right")
    return fig


def plot_pre_post_histograms(path: Path, ctx: PlotContext, grid: Histogram2D) -> Path:
    """Write :func:`pre_post_histograms_figure` to ``path``."""
    return save_figure(pre_post_histograms_figure(ctx, grid), path)


def difference_histogram_figure(ctx: PlotContext, differences: Mapping[str, Histogram]
                                ) -> Figure:
    """Histogram of ``post − k · aligned pre`` over tissue pixels, one curve per scale."""
    fig = new_figure(8.5, 5.0, "difference_histogram")
    ax = fig.add_subplot()
    lo, hi = math.inf, -math.inf
    for kind, hist in differences.items():
        edges = hist.lo + np.arange(hist.bins + 1) * hist.width
        q25, q50, q75 = (hist.quantile(q) for q in (0.25, 0.5, 0.75))
        sigma = (q75 - q25) / 1.349
        _steps(ax, hist.counts, edges, color=KIND_COLOURS[kind], lw=1.5, ls=KIND_STYLES[kind],
               label=f"{ctx.label(kind)}: median {q50:+.2f}, robust σ {sigma:.2f}")
        lo = min(lo, hist.quantile(0.0005) - 3 * sigma)
        hi = max(hi, hist.quantile(0.9995) + 3 * sigma)
    ax.axvline(0, color="black", lw=1, ls=":")
    ax.set_yscale("log")
    _log_counts(ax.yaxis)
    _log_headroom(ax, max(float(h.counts.max(initial=0)) for h in differences.values()),
                  len(differences))
    ax.set_xlim(lo, hi)
    ax.set_xlabel(f"post − k · aligned pre [{ctx.units}]")
    ax.set_ylabel(f"pixels per bin (bin {hist.width:.3g})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(f"{ctx.title}: difference histogram, tissue pixels\n"
                 "background should be a narrow peak at 0; stain is the tail to the right")
    return fig


def plot_difference_histogram(path: Path, ctx: PlotContext, differences: Mapping[str, Histogram]
                              ) -> Path:
    """Write :func:`difference_histogram_figure` to ``path``."""
    return save_figure(difference_histogram_figure(ctx, differences), path)


def _steps(ax: Any, counts: np.ndarray, edges: np.ndarray, **style: Any) -> None:
    """A histogram's outline (bin ``i`` spans ``edges[i]`` to ``edges[i + 1]``) as one stepped
    line: ``Axes.stairs`` finds its data limits segment by segment in Python, which costs
    more than drawing it."""
    ax.plot(edges, np.append(counts, counts[-1]), drawstyle="steps-post", **style)


def _stairs(ax: Any, x: np.ndarray, counts: np.ndarray, lo: float, hi: float, **style: Any
            ) -> None:
    """Step plot of histogram bins with centres ``x`` (evenly spaced) within ``[lo, hi]``."""
    sel = (x >= lo) & (x <= hi)
    if not sel.any():
        return
    half = (x[1] - x[0]) / 2 if x.size > 1 else 0.5
    _steps(ax, counts[sel], np.append(x[sel] - half, x[sel][-1] + half), **style)


def ratio_histogram_figure(ctx: PlotContext, fit: ScaleFit, ratio: Histogram) -> Figure:
    """log10(post/pre) histograms — all tissue pixels (``ratio``) and the microbe-free ones the
    Moffat was fitted to (``fit.x``/``fit.counts``) — with the fit, its window and the scale
    lines: a linear zoom on the peak and a log-count overview showing the microbes' tail."""
    fig = new_figure(13.0, 5.8, "ratio_histogram", left=0.065, right=0.98, top=0.79,
                     bottom=0.1, wspace=0.18)
    zoom, wide = fig.subplots(1, 2)
    centre, hwhm = fit.centre, fit.hwhm if math.isfinite(fit.hwhm) else 0.01
    x_all, all_counts = ratio.rebinned(max(1, round(fit.bin_width / ratio.width)))
    q_lo, q_hi = ratio.quantile(0.0005), ratio.quantile(0.9995)
    views = ((zoom, (centre - 6 * hwhm, centre + 8 * hwhm), "linear"),
             (wide, (min(q_lo, centre - 6 * hwhm), max(q_hi, centre + 8 * hwhm)), "log"))
    for ax, (x0, x1), yscale in views:
        _stairs(ax, x_all, all_counts, x0, x1, color="#9a9a9a", lw=1.2,
                label=f"all {ratio.total:,} tissue pixels")
        _stairs(ax, fit.x, fit.counts, x0, x1, color="#222222", lw=1.3,
                label=f"{fit.n_pixels:,} pixels away from stain (fitted)")
        if fit.method == "moffat":
            xs = np.linspace(x0, x1, 800)
            ax.plot(xs, fit.model(xs), color=KIND_COLOURS["moffat"], lw=1.4, ls="--",
                    label=f"Moffat fit (β = {fit.beta:.3g}): left wing, mirrored")
            ax.axvspan(*fit.window, color=KIND_COLOURS["moffat"], alpha=0.12,
                       label="fitted window")
        for kind, k in ctx.scales.items():
            ax.axvline(math.log10(k), color=KIND_COLOURS[kind], lw=1.6, ls=KIND_STYLES[kind],
                       label=ctx.label(kind))
        ax.set_xlim(x0, x1)
        ax.set_yscale(yscale)
        if yscale == "log":  # the legend goes here: its entries, one per line drawn
            _log_counts(ax.yaxis)
            _log_headroom(ax, max(float(all_counts.max(initial=0)),
                                  float(fit.counts.max(initial=0))),
                          2 + 2 * (fit.method == "moffat") + len(ctx.scales))
        ax.set_xlabel("log10(post / aligned pre)  [decades]")
        ax.set_ylabel(f"pixels per bin (bin {fit.bin_width:.2g} decades)")
        ax.grid(alpha=0.3)
        top = ax.secondary_xaxis("top", functions=(_pow10, _log10))
        top.set_xlabel("post / pre ratio")
    zoom.set_title("peak (linear counts)")
    wide.set_title("overview (log counts): stain forms the right tail")
    wide.legend(*zoom.get_legend_handles_labels(), loc="upper right", fontsize=9)
    note = f"\n{fit.message}" if fit.message else ""
    how = "Moffat fit" if fit.method == "moffat" else "histogram peak (fallback)"
    fig.suptitle(f"{ctx.title}: post/pre ratio of tissue pixels; k from the {how}{note}")
    return fig


def plot_ratio_histogram(path: Path, ctx: PlotContext, fit: ScaleFit, ratio: Histogram) -> Path:
    """Write :func:`ratio_histogram_figure` to ``path``."""
    return save_figure(ratio_histogram_figure(ctx, fit, ratio), path)


def _pow10(v: np.ndarray) -> np.ndarray:
    return np.power(10.0, v)


def _log10(r: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(r, 1e-300))


def _robust_sigma(values: np.ndarray) -> float:
    if values.size == 0:
        return float("nan")
    med = float(np.median(values))
    return 1.4826 * float(np.median(np.abs(values - med)))


#: Image-plot layout (inches): the margins left of and under the panels, the gap between
#: panels, the colour bar's gap, width and room for its label, and the least figure width
#: (for the title).
_IMG_LEFT, _IMG_BOTTOM, _IMG_GAP = 0.9, 0.6, 0.35
_CBAR_GAP, _CBAR_W, _CBAR_LABEL, _IMG_MIN_WIDTH = 0.3, 0.18, 1.1, 7.5


def _image_figure(name: str, shape: tuple[int, int], n: int, top: float
                  ) -> tuple[Figure, Any]:
    """A figure for ``n`` image panels side by side of an image of ``shape`` (rows, columns)
    and a colour bar on their right; each panel has the image's aspect, so no blank band
    opens inside it, and is at most 8 in tall. ``top`` is the room above the panels
    (inches). Returns the figure and the colour bar's axes."""
    h, w = shape
    side = min(min(6.4 * n, 16.2) / n, 8.0 * w / h)
    panels = n * side + (n - 1) * _IMG_GAP
    width = _IMG_LEFT + panels + _CBAR_GAP + _CBAR_W + _CBAR_LABEL
    left = _IMG_LEFT + max(0.0, _IMG_MIN_WIDTH - width) / 2
    width = max(width, _IMG_MIN_WIDTH)
    height = top + side * h / w + _IMG_BOTTOM
    fig = new_figure(width, height, name, left=left / width, right=(left + panels) / width,
                     bottom=_IMG_BOTTOM / height, top=1 - top / height, wspace=_IMG_GAP / side)
    box = fig.subplotpars
    cax = fig.add_axes((box.right + _CBAR_GAP / width, box.bottom, _CBAR_W / width,
                        box.top - box.bottom))
    return fig, cax


def difference_image_figure(ctx: PlotContext, preview: Mapping[str, np.ndarray], factor: int
                            ) -> Figure:
    """The difference image of each active scale from the box-averaged previews (``factor``
    × ``factor`` post px per preview px; axes in post px), asinh stretch on a diverging map
    (red = post brighter than k·pre), no data in grey, with a µm scale bar when
    ``ctx.pixel_size_um`` is known.

    The knee of the stretch (where it turns from linear to logarithmic) is the robust noise σ
    of the Moffat difference over tissue in the preview, so noise is linear and stain is
    compressed.
    """
    data = preview["data"]
    have = data >= 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        post = np.where(have, preview["post"] / data, np.nan)
        pre = np.where(have, preview["pre"] / data, np.nan)
    tissue = have.copy()
    if ctx.thresholds is not None:
        tissue &= (post > ctx.thresholds[0]) & (pre > ctx.thresholds[1])
    diffs = {kind: post - np.float32(k) * pre for kind, k in ctx.scales.items()}
    moffat = diffs["moffat"]
    knee = _robust_sigma(moffat[tissue]) if tissue.any() else float("nan")
    finite = moffat[np.isfinite(moffat)]
    if not math.isfinite(knee) or knee <= 0:
        knee = max(float(np.std(finite)) if finite.size else 1.0, 1e-12)
    limit = float(np.percentile(np.abs(finite), 99.9)) if finite.size else 1.0
    limit = max(limit, 3 * knee)
    h, w = moffat.shape
    fig, cax = _image_figure("difference_image", (h, w), len(diffs), top=1.0)
    axes = np.atleast_1d(fig.subplots(1, len(diffs), sharex=True, sharey=True))
    cmap = colormaps["RdBu_r"].with_extremes(bad="#9a9a9a")
    # Show asinh(d / knee) on a linear scale: the same colours AsinhNorm would give, without
    # its slow per-pixel transform at draw time; the colour bar uses AsinhNorm for its ticks.
    stretch = math.asinh(limit / knee)
    for ax, (kind, diff) in zip(axes, diffs.items()):
        ax.imshow(np.arcsinh(diff / knee), cmap=cmap, vmin=-stretch, vmax=stretch,
                  interpolation="antialiased",
                  extent=(-0.5, w * factor - 0.5, h * factor - 0.5, -0.5))
        ax.set_title(ctx.label(kind), color=KIND_COLOURS[kind])
        ax.set_xlabel("x [post px]")
        scale_bar(ax, ctx.pixel_size_um, "black")  # axes in post px, not preview px
    axes[0].set_ylabel("y [post px]")
    bar = ScalarMappable(norm=AsinhNorm(linear_width=knee, vmin=-limit, vmax=limit), cmap=cmap)
    cbar = fig.colorbar(bar, cax=cax,
                        label=f"post − k·pre [{ctx.units}]; asinh stretch, knee {knee:.3g}")
    cbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    box = f", {factor}×{factor} px box averages" if factor > 1 else ""
    fig.suptitle(f"{ctx.title}: difference image post − k·pre{box}\n"
                 "red: post brighter than k·pre, blue: fainter, grey: no data")
    return fig


def plot_difference_image(path: Path, ctx: PlotContext, preview: Mapping[str, np.ndarray],
                          factor: int) -> Path:
    """Write :func:`difference_image_figure` to ``path``."""
    return save_figure(difference_image_figure(ctx, preview, factor), path)


def write_all(layout: PairLayout, ctx: PlotContext, *, fit: ScaleFit, ratio: Histogram,
              grid: Histogram2D, differences: Mapping[str, Histogram],
              preview: Mapping[str, np.ndarray], preview_factor: int) -> list[Path]:
    """Write every stage-4 plot to ``layout.plot(name)``; return the paths."""
    return [
        plot_pre_post_heatmap(layout.plot("pre_post_heatmap"), ctx, grid),
        plot_pre_post_histograms(layout.plot("pre_post_histograms"), ctx, grid),
        plot_difference_histogram(layout.plot("difference_histogram"), ctx, differences),
        plot_ratio_histogram(layout.plot("ratio_histogram"), ctx, fit, ratio),
        plot_excess_heatmap(layout.plot("excess_heatmap"), ctx, grid),
        plot_difference_image(layout.plot("difference_image"), ctx, preview, preview_factor),
    ]


def detections_figure(sample: str, dye: str, preview: np.ndarray, factor: int, pad: int,
                      x: np.ndarray, y: np.ndarray, snr: np.ndarray, noise: float,
                      pixel_size_um: float | None = None) -> Figure:
    """Stage 5's sources circled on the box-averaged difference image (``factor`` px boxes,
    asinh stretch with its knee at the noise σ ``noise``), colour by SNR (log scale) with a
    colour bar, and a µm scale bar when the post pixel size ``pixel_size_um`` is known.
    ``x``, ``y`` are raw post pixels (the axes' frame); the image is the output frame
    (``pad``)."""
    h, w = preview.shape
    fig, cax = _image_figure("detections", (h, w), 1, top=0.6)
    ax = fig.add_subplot()
    knee = max(noise / factor, 1e-12)
    finite = preview[np.isfinite(preview)]
    limit = max(float(np.percentile(np.abs(finite), 99.9)) if finite.size else 1.0, 3 * knee)
    ax.imshow(np.arcsinh(preview / knee), cmap="gray", vmin=-math.asinh(limit / knee),
              vmax=math.asinh(limit / knee), interpolation="antialiased",
              extent=(-0.5 - pad, w * factor - 0.5 - pad, h * factor - 0.5 - pad, -0.5 - pad))
    norm = LogNorm(vmin=max(1.0, float(np.nanmin(snr))) if snr.size else 1.0,
                   vmax=max(10.0, float(np.nanmax(snr))) if snr.size else 10.0)
    order = np.argsort(snr)
    ax.scatter(x[order], y[order], s=16, facecolors="none", linewidths=0.7,
               edgecolors=colormaps["plasma"](norm(np.clip(snr[order], norm.vmin, None))))
    ax.set_xlim(-0.5 - pad, w * factor - 0.5 - pad)
    ax.set_ylim(h * factor - 0.5 - pad, -0.5 - pad)
    ax.set_xlabel("x [post px]")
    ax.set_ylabel("y [post px]")
    scale_bar(ax, pixel_size_um)  # the axes count post px, not preview px
    snr_axis = fig.colorbar(ScalarMappable(norm=norm, cmap="plasma"), cax=cax,
                            label="SNR").ax.yaxis
    snr_axis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # 200, not 2 × 10²
    snr_axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    box = f", {factor}×{factor} px box averages" if factor > 1 else ""
    fig.suptitle(f"{sample} / {dye}: {x.size} detections on the difference image{box}")
    return fig


def plot_detections(path: Path, sample: str, dye: str, preview: np.ndarray, factor: int,
                    pad: int, x: np.ndarray, y: np.ndarray, snr: np.ndarray,
                    noise: float, pixel_size_um: float | None = None) -> Path:
    """Write :func:`detections_figure` to ``path``."""
    return save_figure(detections_figure(sample, dye, preview, factor, pad, x, y, snr, noise,
                                         pixel_size_um), path)


def detection_snr_histogram_figure(sample: str, dye: str, snr: np.ndarray, threshold: float
                                   ) -> Figure:
    """Histogram of the detections' SNR (log bins) with the detection threshold."""
    # room at the bottom for the log-axis tick labels and the x label
    fig = new_figure(6.4, 4.0, "detection_snr_histogram", bottom=0.15)
    ax = fig.add_subplot()
    good = snr[np.isfinite(snr) & (snr > 0)]
    top = max(100.0, float(good.max()) * 1.2) if good.size else 100.0
    bins = np.logspace(0, math.log10(top), 50)
    counts, _, _ = ax.hist(good, bins=bins, color="#336699")
    ax.set_ylim(0, 1.25 * max(float(counts.max(initial=0)), 1.0))  # headroom for the legend
    ax.axvline(threshold, color="#ff3366", label=f"detect_threshold {threshold:g} σ")
    ax.set_xscale("log")
    ax.set_xlabel("SNR (peak matched-filter significance)")
    ax.set_ylabel("sources")
    ax.legend(loc="upper right")
    fig.suptitle(f"{sample} / {dye}: SNR of {good.size} detections")
    return fig


def plot_detection_snr_histogram(path: Path, sample: str, dye: str, snr: np.ndarray,
                                 threshold: float) -> Path:
    """Write :func:`detection_snr_histogram_figure` to ``path``."""
    return save_figure(detection_snr_histogram_figure(sample, dye, snr, threshold), path)


def scale_map_figure(ctx: PlotContext, kmap: np.ndarray, factor: int, tissue: np.ndarray,
                     table: Any, weights: np.ndarray | None) -> Figure:
    """The k map of a spatially varying k (``kmap``: k at the centre of every ``factor`` ×
    ``factor`` cell of the output frame; axes in output px) with the tissue outline, and the
    per-tile estimates it was fitted to (``table``: :class:`exo2micro.numerics.scale.TileTable`) as
    dots in the same colours; tiles the robust fit down-weighted to under half their weight
    (``weights``, per tile, relative to the pixel counts) are crossed out."""
    h, w = kmap.shape
    fig, cax = _image_figure("scale_map", (h, w), 1, top=1.0)
    ax = fig.add_subplot()
    tile_k = 10.0 ** np.asarray(table.log_k)
    values = np.concatenate([kmap[tissue], tile_k]) if tissue.any() else tile_k
    lo, hi = (float(np.percentile(values, 1)), float(np.percentile(values, 99))) \
        if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo * 0.999, hi * 1.001 + 1e-12
    extent = (-0.5, w * factor - 0.5, h * factor - 0.5, -0.5)
    ax.imshow(kmap, cmap="viridis", vmin=lo, vmax=hi, interpolation="antialiased",
              extent=extent)
    if tissue.any() and not tissue.all():
        xs = factor * np.arange(w) + (factor - 1) / 2
        ys = factor * np.arange(h) + (factor - 1) / 2
        ax.contour(xs, ys, tissue.astype(np.float32), levels=[0.5], colors="white",
                   linewidths=0.8)
    ax.scatter(table.x, table.y, c=tile_k, cmap="viridis", vmin=lo, vmax=hi, s=28,
               edgecolors="black", linewidths=0.6)
    if weights is not None and weights.size == table.x.size:
        base = np.asarray(table.n, float) / float(np.mean(table.n))
        out = weights < 0.5 * base
        ax.scatter(np.asarray(table.x)[out], np.asarray(table.y)[out], marker="x", s=40,
                   color="#ff3366", linewidths=1.2, label="down-weighted tile")
        if out.any():
            ax.legend(loc="upper right")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("x [output px]")
    ax.set_ylabel("y [output px]")
    scale_bar(ax, ctx.pixel_size_um, "white")
    fig.colorbar(ScalarMappable(norm=Normalize(vmin=lo, vmax=hi), cmap="viridis"), cax=cax,
                 label="k (post / aligned pre)")
    fig.suptitle(f"{ctx.title}: k map, median k = {ctx.scales['moffat']:.4f}\n"
                 f"dots: the {table.x.size} tile estimates it is fitted to")
    return fig


def plot_scale_map(path: Path, ctx: PlotContext, kmap: np.ndarray, factor: int,
                   tissue: np.ndarray, table: Any, weights: np.ndarray | None) -> Path:
    """Write :func:`scale_map_figure` to ``path``."""
    return save_figure(scale_map_figure(ctx, kmap, factor, tissue, table, weights), path)
