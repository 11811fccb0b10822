"""The diagnostic PNGs (exo2micro.report.diagnostics, exo2micro.report.registration_plot):
captions, legends that leave the images free, outlines that stay distinguishable, words instead
of jargon, µm scale bars sized for the previews, and the plot table of docs/output.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from exo2micro.numerics.pyramid import Pyramid
from exo2micro.numerics.scale import Histogram, Histogram2D, TileTable, fit_left_wing
from exo2micro.report import diagnostics as d
from exo2micro.report.captions import CAPTIONS, caption
from exo2micro.report.registration_plot import plot_registration, registration_figure

ROOT = Path(__file__).resolve().parents[1]
K = 1.35
PIXEL_UM = 0.65


def _tissue(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A bright textured ellipse of tissue on a dark slide (float32)."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    texture = cv2.GaussianBlur(rng.random(shape, np.float32), (0, 0), 3)
    return (np.where(inside, 60 + 400 * texture, 2) + rng.normal(0, 1, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def pyramids() -> tuple[Pyramid, Pyramid]:
    """Pre and post pyramids of one 960 × 1200 px image: the overview panels use the level of
    box size 2, the zoom the full resolution."""
    image = _tissue((960, 1200), 1)
    return tuple(Pyramid.from_first_level(image * s, 1, image.shape) for s in (1.0, K))


def _registration(pyramids: tuple[Pyramid, Pyramid], pixel_size_um: float | None) -> Figure:
    shift = np.array([[1.0, 0, 0.6], [0, 1, -0.4], [0, 0, 1]])  # stage 2 close to final
    return registration_figure(*pyramids, shift, np.eye(3), title="S / D", status="ok",
                               accuracy_px=0.1, pixel_size_um=pixel_size_um)


@pytest.fixture(scope="module")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    """Aligned pre and post of tissue pixels: post = k · pre plus noise, 3 % stained."""
    rng = np.random.default_rng(2)
    pre = rng.gamma(6.0, 12.0, 40_000)
    post = K * pre + rng.normal(0, 3, pre.size)
    post[:1200] += rng.uniform(20, 120, 1200)
    return pre, post


def _ctx(pixel_size_um: float | None = PIXEL_UM) -> d.PlotContext:
    return d.PlotContext(sample="S", dye="D", units="counts", scales={"moffat": K},
                         thresholds=(1.0, 1.0), pixel_size_um=pixel_size_um)


def _grid(pixels: tuple[np.ndarray, np.ndarray]) -> Histogram2D:
    grid = Histogram2D.empty(0, 2, 200)
    grid.add(*pixels)
    return grid


def _preview(shape: tuple[int, int] = (90, 120)) -> dict[str, np.ndarray]:
    pre = _tissue(shape, 3)
    return {"pre": pre, "post": K * pre + np.random.default_rng(4).normal(0, 2, shape),
            "data": np.ones(shape, np.float32)}


def _stage4(name: str, pixels: tuple[np.ndarray, np.ndarray]) -> Figure:
    pre, post = pixels
    ratio = Histogram.log_ratio()
    ratio.add(np.log10(post / pre))
    difference = Histogram.empty(-50, 0.5, 400)
    difference.add(post - K * pre)
    builders: dict[str, Callable[[], Figure]] = {
        "pre_post_heatmap": lambda: d.pre_post_heatmap_figure(_ctx(), _grid(pixels)),
        "pre_post_histograms": lambda: d.pre_post_histograms_figure(_ctx(), _grid(pixels)),
        "ratio_histogram": lambda: d.ratio_histogram_figure(_ctx(), fit_left_wing(ratio), ratio),
        "excess_heatmap": lambda: d.excess_heatmap_figure(_ctx(), _grid(pixels)),
        "difference_histogram": lambda: d.difference_histogram_figure(
            _ctx(), {"moffat": difference}),
        "difference_image": lambda: d.difference_image_figure(_ctx(), _preview(), 4),
        "detections": lambda: _detections(PIXEL_UM),
        "detection_snr_histogram": lambda: d.detection_snr_histogram_figure(
            "S", "D", np.array([6.0, 12.0, 40.0]), 5.0),
        "scale_map": _scale_map,
    }
    return builders[name]()


def _scale_map(factor: int = 16) -> Figure:
    """A k map rising 10 % left to right over an elliptic tissue, with its tile estimates."""
    shape = (60, 75)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    kmap = (K * (1 + 0.1 * xx / shape[1])).astype(np.float32)
    tissue = ((yy - 30) / 25) ** 2 + ((xx - 37) / 32) ** 2 < 1
    ty, tx = (a.ravel() * 8 + 4 for a in np.mgrid[:7, :9])
    table = TileTable(tx * factor, ty * factor, np.log10(kmap[ty, tx]), np.full(tx.size, 5e4),
                      tiles=tx.size, side=8 * factor)
    return d.scale_map_figure(_ctx(), kmap, factor, tissue, table, None)


def _detections(pixel_size_um: float | None, factor: int = 4, pad: int = 10) -> Figure:
    preview = _preview()["post"] - K * _preview()["pre"]
    return d.detections_figure("S", "D", preview, factor, pad, np.array([40.0, 200.0]),
                               np.array([60.0, 150.0]), np.array([8.0, 30.0]), 2.0,
                               pixel_size_um)


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _inches(fig: Figure, artist: object) -> tuple[float, float]:
    """Bottom and top of ``artist`` as drawn (inches from the figure's bottom)."""
    box = artist.get_window_extent()  # type: ignore[attr-defined]
    return box.y0 / fig.dpi, box.y1 / fig.dpi


# ------------------------------------------------------------------------------ captions
@pytest.mark.parametrize("name", sorted(CAPTIONS))
def test_every_plot_carries_its_caption_under_the_plot(
        name: str, pyramids: tuple[Pyramid, Pyramid], pixels: tuple[np.ndarray, np.ndarray]
        ) -> None:
    fig = (_registration(pyramids, PIXEL_UM) if name == "registration"
           else _stage4(name, pixels))
    found = [t for t in fig.texts if t.get_gid() == "caption"]
    assert len(found) == 1
    assert " ".join(found[0].get_text().split("\n")) == caption(name)
    fig.draw_without_rendering()
    box = found[0].get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, "the caption is cut at the sides"
    bottom, top = _inches(fig, found[0])
    assert bottom >= 0 and top * fig.dpi <= fig.bbox.height
    lowest = min(a.get_tightbbox().y0 for a in fig.axes) / fig.dpi
    assert top <= lowest, "the caption overlaps the plot"


def test_captions_are_one_sentence_each_and_name_what_good_looks_like() -> None:
    for name, text in CAPTIONS.items():
        assert "Good:" in text, name
        assert "\n" not in text and len(text) < 260, name


def test_the_plot_table_of_docs_output_md_shows_the_captions() -> None:
    docs = (ROOT / "docs" / "output.md").read_text(encoding="utf-8")
    section = docs.split("### `pipeline_output/` — diagnostic plots", 1)[1].split("\n## ", 1)[0]
    for name, text in CAPTIONS.items():
        row = next((line for line in section.splitlines() if f"`{name}" in line), "")
        assert text in row, name


# ------------------------------------------------------------------------ registration.png
def test_registration_legend_leaves_the_first_panel_free(
        pyramids: tuple[Pyramid, Pyramid]) -> None:
    fig = _registration(pyramids, PIXEL_UM)
    fig.draw_without_rendering()
    panel = _panels(fig)[0]
    legend = panel.get_legend().get_window_extent()
    assert not legend.overlaps(panel.get_window_extent())
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)


def test_registration_stage2_outline_stays_visible_under_the_final_one(
        pyramids: tuple[Pyramid, Pyramid]) -> None:
    fig = _registration(pyramids, PIXEL_UM)
    outlines = {c.get_label(): c for c in fig.axes[0].collections}
    stage2, final = outlines["after stage 2"], outlines["final"]
    # the stage-2 outline is a wider band drawn under the final one, so it shows on both sides
    assert stage2.get_linewidths()[0] > 2 * final.get_linewidths()[0]
    assert stage2.get_zorder() < final.get_zorder()
    # and the legend shows the styles the outlines are drawn with
    handles = {h.get_label(): h for h in fig.axes[0].get_legend().legend_handles}
    for label, outline in outlines.items():
        assert handles[label].get_linewidth() == pytest.approx(outline.get_linewidths()[0])


def test_plot_registration_writes_the_png(pyramids: tuple[Pyramid, Pyramid],
                                          tmp_path: Path) -> None:
    out = plot_registration(*pyramids, np.eye(3), np.eye(3), tmp_path / "registration.png",
                            title="S / D", status="ok", accuracy_px=0.1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ excess_heatmap.png
def test_excess_heatmap_speaks_plain_words(pixels: tuple[np.ndarray, np.ndarray]) -> None:
    words = " ".join(_texts(d.excess_heatmap_figure(_ctx(), _grid(pixels)))).lower()
    assert "transpose" not in words and "grid −" not in words and "n(pre=" not in words
    assert "post exceeds pre" in words


@pytest.mark.parametrize("build", [d.excess_heatmap_figure, d.pre_post_heatmap_figure])
def test_heatmap_legend_sits_right_under_the_axes(
        build: Callable[[d.PlotContext, Histogram2D], Figure],
        pixels: tuple[np.ndarray, np.ndarray]) -> None:
    for scales in ({"moffat": K}, {"moffat": K, "percentile": 1.4, "manual": 1.3}):
        ctx = d.PlotContext(sample="S", dye="D", units="counts", scales=scales, percentile=99)
        fig = build(ctx, _grid(pixels))
        fig.draw_without_rendering()
        ax = fig.axes[0]
        legend_bottom, legend_top = _inches(fig, ax.get_legend())
        axes_bottom = ax.xaxis.get_tightbbox().y0 / fig.dpi  # under the x label
        caption_top = _inches(fig, next(t for t in fig.texts if t.get_gid() == "caption"))[1]
        assert 0 <= axes_bottom - legend_top < 0.25
        assert 0 <= legend_bottom - caption_top < 0.35


# ------------------------------------------------------------------- histogram legends
def test_histogram_legends_stay_above_the_highest_count(
        pixels: tuple[np.ndarray, np.ndarray]) -> None:
    pre, post = pixels
    differences = {}
    for kind, k in {"moffat": K, "percentile": 1.2, "manual": 1.3}.items():
        differences[kind] = Histogram.empty(-80, 0.5, 500)
        differences[kind].add(post - k * pre)
    ctx = d.PlotContext(sample="S", dye="D", units="counts", percentile=99,
                        scales={"moffat": K, "percentile": 1.2, "manual": 1.3})
    grid = _grid(pixels)
    peaks = {"difference_histogram": max(h.counts.max() for h in differences.values()),
             "pre_post_histograms": max(grid.counts.sum(axis=0).max(),
                                        grid.counts.sum(axis=1).max())}
    ratio = Histogram.log_ratio()
    ratio.add(np.log10(post / pre))
    peaks["ratio_histogram"] = ratio.counts.max()
    for name, fig in (("difference_histogram", d.difference_histogram_figure(ctx, differences)),
                      ("pre_post_histograms", d.pre_post_histograms_figure(ctx, grid)),
                      ("ratio_histogram", d.ratio_histogram_figure(ctx, fit_left_wing(ratio),
                                                                   ratio))):
        fig.draw_without_rendering()
        ax = next(ax for ax in fig.axes if ax.get_legend())
        legend_bottom = ax.get_legend().get_window_extent().y0
        assert ax.transData.inverted().transform((0, legend_bottom))[1] > peaks[name], name


# ------------------------------------------------------------------------------ scale bars
def _bar(ax: object) -> tuple[float, float] | None:
    """(length in the axes' data units, length in µm from its label) of the scale bar."""
    lines = [ln for ln in ax.lines if ln.get_gid() == d.SCALE_BAR_GID]  # type: ignore[attr-defined]
    labels = [t for t in ax.texts if t.get_gid() == d.SCALE_BAR_GID]  # type: ignore[attr-defined]
    if not lines and not labels:
        return None
    (line,), (label,) = lines, labels
    value, unit = re.fullmatch(r"([\d.]+) (µm|mm)", label.get_text()).groups()
    x = line.get_xdata()
    return float(x[1] - x[0]), float(value) * (1000 if unit == "mm" else 1)


def _panels(fig: Figure) -> list[object]:
    """The axes that show an image (not the colour bar's)."""
    return [ax for ax in fig.axes if ax.images]


def _preview_px(ax: object, bar: tuple[float, float], preview_width: int) -> float:
    """The bar's length in preview pixels, from the image's extent on the axes."""
    x0, x1 = ax.images[0].get_extent()[:2]  # type: ignore[attr-defined]
    return bar[0] * preview_width / (x1 - x0)


@pytest.mark.parametrize("factor", [1, 4])
def test_scale_bar_of_the_difference_image_counts_preview_boxes(factor: int) -> None:
    ctx = d.PlotContext(sample="S", dye="D", units="counts", scales={"moffat": K, "manual": 1.3},
                        pixel_size_um=0.5)
    fig = d.difference_image_figure(ctx, _preview(), factor)
    assert len(_panels(fig)) == 2
    for ax in _panels(fig):
        bar = _bar(ax)
        assert bar is not None
        assert _preview_px(ax, bar, 120) == pytest.approx(bar[1] / (0.5 * factor))
        width_um = 120 * factor * 0.5
        assert bar[1] in {m * 10.0 ** e for m in (1, 2, 5) for e in range(-1, 4)}
        assert width_um / 10 <= bar[1] <= width_um / 2.5


def test_scale_bar_of_the_detections_counts_preview_boxes() -> None:
    (ax,) = _panels(_detections(0.8, factor=8, pad=10))
    bar = _bar(ax)
    assert bar is not None
    assert bar[1] == 200  # 120 px × 8 × 0.8 µm = 768 µm: a fifth is 154 µm, nearest 200
    assert _preview_px(ax, bar, 120) == pytest.approx(200 / (0.8 * 8))


def test_scale_bars_of_the_registration_use_each_panels_level(
        pyramids: tuple[Pyramid, Pyramid]) -> None:
    fig = _registration(pyramids, PIXEL_UM)
    *overview, zoom = _panels(fig)
    assert len(overview) == 3
    for ax in overview:  # the level of box size 2: 600 px wide, 780 µm
        assert _bar(ax) == pytest.approx((200 / (PIXEL_UM * 2), 200))
    assert _bar(zoom) == pytest.approx((20 / PIXEL_UM, 20))  # 160 full-resolution px


def test_no_scale_bar_without_a_pixel_size(pyramids: tuple[Pyramid, Pyramid]) -> None:
    figures = [_registration(pyramids, None), _detections(None),
               d.difference_image_figure(_ctx(None), _preview(), 4)]
    for fig in figures:
        assert all(_bar(ax) is None for ax in fig.axes)


def test_nice_length_is_the_nearest_1_2_5_step() -> None:
    assert [d.nice_length(t) for t in (0.013, 1.4, 1.5, 3.3, 6.5, 7.2, 156, 4000)] == \
        [0.01, 1, 2, 5, 5, 10, 200, 5000]


@pytest.mark.parametrize(("accuracy", "shown"), [(0.0035, "0.0035 px"), (0.013, "0.013 px"),
                                                 (0.5, "0.5 px")])
def test_registration_title_shows_the_accuracy_to_two_digits(
        pyramids: tuple[Pyramid, Pyramid], accuracy: float, shown: str) -> None:
    """A sub-pixel accuracy of a few thousandths must not read as "0.00 px"."""
    fig = registration_figure(*pyramids, np.eye(3), np.eye(3), title="S / D", status="ok",
                              accuracy_px=accuracy)
    assert fig.get_suptitle().endswith(f"estimated accuracy {shown})")


def test_registration_zoom_shows_the_whole_level_warp_at_the_tissue_centre() -> None:
    """The zoom warps only its window; it shows what warping the whole finest level and
    cutting the window out would, on the middle of tissue that is off the image centre."""
    from exo2micro.report import registration_plot as rp

    image = np.roll(_tissue((960, 1200), 5), (150, -260), axis=(0, 1))
    pre_pyr, post_pyr = (Pyramid.from_first_level(image * s, 1, image.shape)
                         for s in (1.0, K))
    final = np.array([[1.0, 0.002, 1.3], [-0.002, 1.0, -0.7], [0.0, 0.0, 1.0]])
    fig = registration_figure(pre_pyr, post_pyr, np.eye(3), final, title="S / D",
                              status="ok", accuracy_px=0.1)
    shown = _panels(fig)[-1].images[0].get_array()

    # the window, the old way: the fine-level mask's median pixel, the whole level warped
    post_m = rp.tissue_mask(post_pyr.levels[1])
    y0, x0 = rp._zoom_origin(post_m, 2, 1, image.shape)
    ys, xs = np.nonzero(rp.tissue_mask(post_pyr.levels[0]))
    assert abs(y0 + rp.ZOOM_PX // 2 - np.median(ys)) <= 2
    assert abs(x0 + rp.ZOOM_PX // 2 - np.median(xs)) <= 2
    whole = rp._warp(pre_pyr.levels[0], final, image.shape)
    win = (slice(y0, y0 + rp.ZOOM_PX), slice(x0, x0 + rp.ZOOM_PX))
    rows, cols = (np.arange(v, v + rp.ZOOM_PX) // 2 for v in (y0, x0))
    mask = post_m[np.ix_(rows, cols)]
    expected = rp._checker(*rp._stretch_pair(post_pyr.levels[0][win], whole[win], mask), 4)
    np.testing.assert_array_equal(shown, expected)
