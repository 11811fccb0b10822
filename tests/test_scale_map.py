"""A spatially varying k (``k_model``): per-tile estimates, the robust surface, and stage 4 with it.

The unit tests feed :class:`exo2micro.numerics.scale.TileHistograms` with log-ratio values drawn
around a known field; the stage tests run stage 4 on small pairs made here (numpy + tifffile: a
textured footprint, k(x, y) known at every pixel, stained spots in post only, Poisson noise),
aligned with the identity, so the difference an ideal subtraction would give is ``post − k(x,
y)·pre``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from exo2micro import params as P
from exo2micro import synth
from exo2micro.io.fitsio import make_header
from exo2micro.io.layout import PairLayout
from exo2micro.io.tiffio import TiffImage
from exo2micro.numerics import scale
from exo2micro.numerics.transform import TransformRecord
from exo2micro.stages.load import run_load
from exo2micro.stages.subtract import run_subtract
from exo2micro.stages.warp import output_shape, warp_to_files

SAMPLE, DYE = "KMAP01", "SybrGld"
FRAME = (1200, 1500)  # (height, width) of the unit tests' frame


def ramp(shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Normalised coordinates u, v in [−1, 1] over a frame of ``shape``."""
    h, w = shape
    return 2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1


def filled_tiles(log_k: Any, rng: np.random.Generator, stain: float = 0.05,
                 step: int = 3) -> tuple[scale.TileHistograms, scale.CellGrid]:
    """Tile histograms of a frame whose pixels (every ``step``-th along each axis, inside an
    ellipse) read ``log_k(x, y)`` plus Moffat-like noise (σ 0.01 decades), and a fraction
    ``stain`` far to the right of the peak (post-only light); the cells are those pixels."""
    h, w = FRAME
    ys, xs = (a.ravel() for a in np.mgrid[0:h:step, 0:w:step])
    u, v = ramp(FRAME, xs, ys)
    inside = u ** 2 + v ** 2 < 0.95
    xs, ys = xs[inside], ys[inside]
    values = log_k(xs, ys) + 0.01 * rng.standard_t(5, xs.size)
    stained = rng.random(xs.size) < stain
    values[stained] += rng.uniform(0.05, 0.5, int(stained.sum()))
    tiles = scale.TileHistograms.empty(FRAME, scale.tile_side(FRAME), float(np.median(values)))
    counts = np.zeros((h, w), np.float32)
    counts[ys, xs] = 1
    tiles.add(values, counts > 0)  # values are in row-major order, as boolean indexing's
    return tiles, scale.CellGrid(np.arange(w, dtype=float), np.arange(h, dtype=float), counts)


def field_error(surface: scale.KSurface, log_k: Any, cells: scale.CellGrid) -> float:
    """Largest relative error of ``surface``'s k over the cells that hold pixels."""
    ys, xs = np.nonzero(cells.counts)
    return float(np.max(np.abs(10 ** (surface.log10_at(xs, ys) - log_k(xs, ys)) - 1)))


LINEAR = {"linear": lambda x, y: math.log10(1.35) + np.log10(
    1 + 0.1 * (0.7 * ramp(FRAME, x, y)[0] + 0.3 * ramp(FRAME, x, y)[1])),
          "quadratic": lambda x, y: math.log10(0.8) + 0.03 * ramp(FRAME, x, y)[0]
          - 0.04 * ramp(FRAME, x, y)[1] ** 2 + 0.02 * ramp(FRAME, x, y)[0] * ramp(FRAME, x, y)[1]}


# ------------------------------------------------------------------ tiles and the surface
@pytest.mark.parametrize("name", LINEAR)
def test_tiles_and_surface_recover_a_known_field(name: str) -> None:
    log_k = LINEAR[name]
    tiles, cells = filled_tiles(log_k, np.random.default_rng(3))
    table = tiles.estimates()
    assert table.x.size >= 50
    choice = scale.choose_surface(table, FRAME, cells, "auto")
    assert choice.surface is not None, choice.reason
    assert choice.surface.degree >= (1 if name == "linear" else 2)
    assert field_error(choice.surface, log_k, cells) < 0.002
    median, lo, hi = cells.summary(choice.surface)
    ys, xs = np.nonzero(cells.counts)
    truth = 10 ** log_k(xs, ys)
    assert median == pytest.approx(float(np.median(truth)), rel=1e-3)
    assert (lo, hi) == pytest.approx((truth.min(), truth.max()), rel=2e-3)


def test_uniform_k_is_global_under_auto_and_flat_under_smooth() -> None:
    def log_k(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.full(x.shape, math.log10(1.35))

    tiles, cells = filled_tiles(log_k, np.random.default_rng(4))
    table = tiles.estimates()
    auto = scale.choose_surface(table, FRAME, cells, "auto")
    assert auto.surface is None, auto.reason
    smooth = scale.choose_surface(table, FRAME, cells, "smooth")
    assert smooth.surface is not None and smooth.surface.degree >= 1
    _, lo, hi = cells.summary(smooth.surface)
    assert hi / lo - 1 < scale.MIN_RANGE


def test_tiles_full_of_stain_do_not_pull_the_surface() -> None:
    """A fifth of the tiles read k 5–20 % high (stain everywhere in them): the robust fit keeps
    the field within 0.3 % (the tiles' own scatter), where least squares is off by percents."""
    log_k = LINEAR["linear"]
    tiles, cells = filled_tiles(log_k, np.random.default_rng(5))
    table = tiles.estimates()
    rng = np.random.default_rng(6)
    bad = rng.random(table.x.size) < 0.2
    table.log_k[bad] += np.log10(rng.uniform(1.05, 1.2, int(bad.sum())))
    choice = scale.choose_surface(table, FRAME, cells, "auto")
    assert choice.surface is not None
    assert field_error(choice.surface, log_k, cells) < 0.003
    assert choice.fit_weights is not None
    assert np.all(choice.fit_weights[bad] < 0.5 * (table.n / table.n.mean())[bad])
    u, v = ramp(FRAME, table.x, table.y)
    a = np.stack([np.ones_like(u), u, v], axis=1)
    plain = scale.KSurface(1, tuple(np.linalg.lstsq(a, table.log_k, rcond=None)[0]),
                           ((FRAME[1] - 1) / 2, (FRAME[0] - 1) / 2),
                           ((FRAME[1] - 1) / 2, (FRAME[0] - 1) / 2))
    assert field_error(plain, log_k, cells) > 0.01


def test_empty_and_thin_tiles_are_dropped() -> None:
    tiles, _ = filled_tiles(LINEAR["linear"], np.random.default_rng(7))
    totals = tiles.counts.sum(axis=2)
    table = tiles.estimates()
    assert table.tiles == np.count_nonzero(totals) < totals.size  # the frame's corners: empty
    assert table.x.size < table.tiles  # the ellipse's rim: too few pixels
    assert table.n.min() >= scale.MIN_FIT_PIXELS


def test_surface_evaluation_is_separable_and_clipped() -> None:
    surface = scale.KSurface(2, (0.1, 0.02, -0.01, 0.005, 0.003, -0.004), (10.0, 5.0),
                             (10.0, 5.0), (0.05, 0.12))
    xs, ys = np.linspace(-5, 25, 7), np.linspace(-3, 13, 5)
    gx, gy = np.meshgrid(xs, ys)
    grid = surface.log10_grid(xs, ys)
    assert grid == pytest.approx(surface.log10_at(gx.ravel(), gy.ravel()).reshape(grid.shape))
    assert grid.min() >= 0.05 and grid.max() <= 0.12
    assert surface.grid(xs, ys) == pytest.approx(10 ** grid, rel=1e-6)


# ------------------------------------------------------------------ stage 4 with k(x, y)
def k_field(shape: tuple[int, int], gradient: float) -> np.ndarray:
    """k over the frame: 1.3 · (1 + gradient · (0.7 u + 0.3 v)), u, v in [−1, 1]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = 2 * xx / (w - 1) - 1, 2 * yy / (h - 1) - 1
    return 1.3 * (1 + gradient * (0.7 * u + 0.3 * v))


def make_pair(root: Path, gradient: float, shape: tuple[int, int] = (896, 1024), seed: int = 1
              ) -> dict[str, np.ndarray]:
    """Raw pre/post TIFFs of a textured elliptic footprint with post = k(x, y)·pre + stain,
    Poisson noise; returns the noiseless truth (k, the stain mask, the tissue)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tissue = ((xx - w / 2) / (0.45 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2 < 1
    grains = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 2.5)
    grains = (grains - grains.min()) / np.ptp(grains)
    scene = 20 + 4000 * tissue * (0.3 + 0.7 * grains)
    spots = np.zeros(shape, np.float32)
    ys, xs = np.nonzero(tissue)
    pick = rng.choice(ys.size, 150, replace=False)
    spots[ys[pick], xs[pick]] = rng.uniform(3000, 9000, pick.size)
    spots = cv2.GaussianBlur(spots, (0, 0), 1.5) * (2 * np.pi * 1.5 ** 2)
    k = k_field(shape, gradient)
    folder = root / "raw"
    folder.mkdir(parents=True)
    for which, clean in (("pre", scene), ("post", k * scene + spots)):
        counts = np.clip(rng.poisson(clean), 0, 65535).astype(np.uint16)
        tifffile.imwrite(folder / f"{SAMPLE}_{which}_{DYE}.tif", counts)
    stain = cv2.dilate((spots > 5).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    return {"k": k, "stain": stain, "tissue": tissue}


def stage4_inputs(root: Path, pre: Path, post: Path, matrix: np.ndarray,
                  params: dict[str, Any] | None = None) -> PairLayout:
    """Stage 1 on the raw pair, the aligned pre made with the true ``matrix`` and saved as the
    stage-3 transform, so that stage 4 sees a perfect alignment."""
    layout = PairLayout(root / "pair", P.resolve(params))
    run_load(pre, post, layout)
    with TiffImage(layout.signal("pre")) as pre_img, TiffImage(layout.signal("post")) as post_img:
        pad = layout.params["pad"]
        warp_to_files(pre_img, matrix, output_shape(post_img.shape, pad), pad,
                      {"tiff": layout.aligned_pre("tiff")},
                      fits_header=lambda: make_header(sample=SAMPLE, dye=DYE, stage=3,
                                                      params=layout.params))
    TransformRecord(matrix, "ok", 3, {"estimated_accuracy_px": 0.0}).save(
        layout.interior_transform())
    return layout


def read_image(path: Path) -> np.ndarray:
    with TiffImage(path) as img:
        return img.read_window(0, img.shape[0], 0, img.shape[1])[:, :, 0].astype(np.float32)


def rerun(layout: PairLayout, k_model: str, checkpoint_format: str = "tiff"
          ) -> tuple[PairLayout, dict[str, Any]]:
    """Stage 4 of the same pair with ``k_model`` (other parameters unchanged)."""
    other = PairLayout(layout.root, P.resolve(P.non_default(layout.params) | {"k_model": k_model}))
    record = run_subtract(other, sample=SAMPLE, dye=DYE, checkpoint_format=checkpoint_format)
    return other, record


def residuals(diff: np.ndarray, ideal: np.ndarray, truth: dict[str, np.ndarray]
              ) -> tuple[float, float, float]:
    """Background residual of ``diff`` over ``ideal`` at pixel scale and over 64-px blocks, and
    the 64-px residual as a fraction of the local post background."""
    bg = cv2.erode(truth["tissue"].astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    bg &= ~truth["stain"] & np.isfinite(diff)
    b = 64
    h, w = (s - s % b for s in diff.shape)

    def blocks(img: np.ndarray) -> np.ndarray:
        m = bg[:h, :w].reshape(h // b, b, w // b, b)
        v = np.where(bg, img, 0)[:h, :w].reshape(m.shape)
        n = m.sum(axis=(1, 3))
        keep = n >= 0.8 * b * b
        return v.sum(axis=(1, 3))[keep] / n[keep]

    rms = [float(np.sqrt(np.mean(blocks(img) ** 2))) for img in (diff, ideal)]
    return (float(np.std(diff[bg]) / np.std(ideal[bg])), rms[0] / rms[1],
            rms[0] / float(np.median(truth["post"][bg])))


@pytest.fixture(scope="module")
def gradient_pair(tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[PairLayout, dict[str, Any], dict[str, np.ndarray]]:
    """A ±8 % k gradient, stage 4 under the default k_model (auto), TIFF + FITS."""
    root = tmp_path_factory.mktemp("gradient")
    truth = make_pair(root, 0.08)
    raw = root / "raw"
    layout = stage4_inputs(root, raw / f"{SAMPLE}_pre_{DYE}.tif",
                           raw / f"{SAMPLE}_post_{DYE}.tif", np.eye(3))
    record = run_subtract(layout, sample=SAMPLE, dye=DYE, checkpoint_format="both")
    record["result.json"] = json.loads(layout.result().read_text())  # before any re-run
    truth["post"] = read_image(layout.signal("post"))
    truth["pre"] = read_image(layout.aligned_pre("tiff"))
    return layout, record, truth


def test_gradient_pair_gets_a_map_and_near_ideal_residuals(
        gradient_pair: tuple[PairLayout, dict[str, Any], dict[str, np.ndarray]]) -> None:
    layout, record, truth = gradient_pair
    assert record["k_model"] == "smooth", record["k_map"]["choice"]["reason"]
    assert P.DEFAULTS["k_model"] == "auto" and "k_model" not in P.non_default(layout.params)
    ideal = truth["post"] - truth["k"].astype(np.float32) * truth["pre"]
    ratio, ratio64, frac64 = residuals(read_image(layout.difference("tiff")), ideal, truth)
    assert ratio <= 1.05
    assert ratio64 <= 1.5 or frac64 <= 0.005
    k_tissue = truth["k"][truth["tissue"]]
    assert record["scales"]["moffat"] == pytest.approx(float(np.median(k_tissue)), rel=3e-3)
    lo, hi = record["scale_range"]
    assert lo == pytest.approx(k_tissue.min(), rel=5e-3)
    assert hi == pytest.approx(k_tissue.max(), rel=5e-3)


def test_global_k_on_the_gradient_pair_leaves_large_scale_residuals(
        gradient_pair: tuple[PairLayout, dict[str, Any], dict[str, np.ndarray]]) -> None:
    """What the map removes: one k leaves the gradient in the difference image."""
    layout, _, truth = gradient_pair
    other, record = rerun(layout, "global")
    assert record["k_model"] == "global" and record["scale_map"] is None
    ideal = truth["post"] - truth["k"].astype(np.float32) * truth["pre"]
    _, ratio64, frac64 = residuals(read_image(other.difference("tiff")), ideal, truth)
    assert ratio64 > 5 and frac64 > 0.01


def test_map_files_record_and_result_json(
        gradient_pair: tuple[PairLayout, dict[str, Any], dict[str, np.ndarray]]) -> None:
    layout, record, truth = gradient_pair
    result = record["result.json"]
    assert result["k_model"] == "smooth"
    assert result["scale_estimate"] == record["scales"]["moffat"]
    assert result["scale_range"] == record["scale_range"]
    assert result["scale_map"] == "tiff/04_scale_map.tif" == record["scale_map"]
    for fmt in ("tiff", "fits"):
        assert layout.relative(layout.scale_map(fmt)) in record["outputs"]
    assert layout.relative(layout.plot("scale_map")) in record["outputs"]
    assert layout.plot("scale_map").is_file()
    kmap = read_image(layout.scale_map("tiff"))
    f = 16
    assert kmap.shape == tuple(-(-s // f) for s in truth["k"].shape)
    # any pixel's k can be recomputed from the surface in the record, and the map holds it
    surf = record["k_map"]["choice"]["surface"]
    surface = scale.KSurface(surf["degree"], tuple(surf["coefficients"]),
                             tuple(surf["centre_px"]), tuple(surf["half_size_px"]),
                             tuple(surf["clip_log10"]))
    j, i = 20, 30
    assert kmap[j, i] == pytest.approx(10 ** surface.log10_at(
        np.array([f * i + (f - 1) / 2]), np.array([f * j + (f - 1) / 2]))[0], rel=1e-6)
    assert kmap[j, i] == pytest.approx(truth["k"][f * j + 7, f * i + 7], rel=3e-3)
    from astropy.io import fits
    with fits.open(layout.scale_map("fits")) as hdul:
        assert np.asarray(hdul[0].data, np.float32) == pytest.approx(kmap, rel=1e-6)
        assert hdul[0].header["KCELL"] == f


@pytest.fixture(scope="module")
def uniform_pairs(tmp_path_factory: pytest.TempPathFactory) -> list[PairLayout]:
    """A uniform-k pair of our own and one of exo2micro.synth (rotated, scaled, integer)."""
    root = tmp_path_factory.mktemp("uniform")
    make_pair(root / "own", 0.0, seed=2)
    raw = root / "own" / "raw"
    own = stage4_inputs(root / "own", raw / f"{SAMPLE}_pre_{DYE}.tif",
                        raw / f"{SAMPLE}_post_{DYE}.tif", np.eye(3))
    made = synth.generate_pair(synth.SynthSpec(width=768, height=640, k=1.35,
                                               microbe_coverage=0.03), root / "synth" / "raw")
    syn = stage4_inputs(root / "synth", made.pre_path, made.post_path,
                        np.asarray(made.truth["post_to_pre"]))
    return [own, syn]


@pytest.mark.parametrize("which", [0, 1], ids=["own", "synth"])
def test_uniform_k_stays_global_and_byte_identical(uniform_pairs: list[PairLayout],
                                                   which: int) -> None:
    layout = uniform_pairs[which]
    auto, rec_auto = rerun(layout, "auto")
    glob, rec_global = rerun(layout, "global")
    assert rec_auto["k_model"] == "global", rec_auto["k_map"]["choice"]["reason"]
    assert rec_auto["scale_map"] is None and rec_auto["k_map"]["choice"]["surface"] is None
    assert rec_auto["scales"] == rec_global["scales"]
    assert rec_auto["scale_range"] == [rec_auto["scales"]["moffat"]] * 2
    assert auto.difference("tiff") != glob.difference("tiff")  # two files, the same bytes
    assert auto.difference("tiff").read_bytes() == glob.difference("tiff").read_bytes()
    assert not auto.scale_map("tiff").exists()


def test_gradient_pair_with_padding_and_threads(tmp_path: Path) -> None:
    """The map lives in the output frame: with ``pad`` and a thread pool the cropped difference
    still reaches the ideal residual."""
    truth = make_pair(tmp_path, 0.08, shape=(640, 768), seed=3)
    raw = tmp_path / "raw"
    pad = 24
    layout = stage4_inputs(tmp_path, raw / f"{SAMPLE}_pre_{DYE}.tif",
                           raw / f"{SAMPLE}_post_{DYE}.tif", np.eye(3), {"pad": pad})
    record = run_subtract(layout, sample=SAMPLE, dye=DYE, threads=2)
    assert record["k_model"] == "smooth", record["k_map"]["choice"]["reason"]
    inner = (slice(pad, -pad), slice(pad, -pad))
    diff = read_image(layout.difference("tiff"))[inner]
    post = read_image(layout.signal("post"))
    truth["post"] = post
    ideal = post - truth["k"].astype(np.float32) * read_image(layout.aligned_pre("tiff"))[inner]
    ratio, ratio64, frac64 = residuals(diff, ideal, truth)
    assert ratio <= 1.05 and (ratio64 <= 1.5 or frac64 <= 0.005)


def test_tile_histograms_count_each_pixel_in_its_tile_and_bin() -> None:
    """A block straddling tile rows, held from a later tile row: every tile's counts, pixel
    coordinate sums and out-of-window slots equal a per-pixel count."""
    rng = np.random.default_rng(3)
    frame, side = (900, 700), 128
    tiles = scale.TileHistograms(side, 6, 0.1, 40, 2, np.zeros((5, 6, 42), np.int64),
                                 np.zeros((5, 6)), np.zeros((5, 6)))
    y0, mask = 300, rng.random((333, frame[1])) < 0.4
    values = rng.uniform(0.09, 0.105, int(mask.sum()))
    tiles.add(values, mask, y0)
    ys, xs = np.nonzero(mask)
    ys = ys + y0
    slot = np.clip(np.floor((values - 0.1) / scale.RATIO_BIN + 1 + 1e-9), 0, 41).astype(int)
    want = np.zeros_like(tiles.counts)
    np.add.at(want, (ys // side - 2, xs // side, slot), 1)
    assert int(want[:, :, 0].sum()) > 0 and int(want[:, :, -1].sum()) > 0
    assert np.abs(tiles.counts - want).sum() <= 2  # float32 rounding at a bin edge
    assert np.array_equal(tiles.counts.sum(axis=2), want.sum(axis=2))
    for sums, coord in ((tiles.sum_x, xs), (tiles.sum_y, ys)):
        ref = np.zeros_like(sums)
        np.add.at(ref, (ys // side - 2, xs // side), coord)
        assert np.array_equal(sums, ref)
    with pytest.raises(ValueError, match="values for"):
        tiles.add(values[:-1], mask, y0)
