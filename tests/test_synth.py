"""Tests of the synthetic pair generator (exo2micro.synth, `exo2micro synth`, bin/e2m-synth)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from exo2micro import synth
from exo2micro.cli.synth import synth as synth_command
from exo2micro.errors import ParameterError
from exo2micro.numerics import transform

REPO = Path(__file__).resolve().parent.parent

#: Small, unequal frames with every geometric ingredient: rotation, scale, shift.
GEOMETRY = synth.SynthSpec(sample="GEO", width=900, height=700, pre_width=820, pre_height=760,
                           rotation_deg=7.0, scale=1.08, tx=12.3, ty=-7.6, k=1.6,
                           microbe_coverage=0.03, seed=3)


@pytest.fixture(scope="module")
def geometry_pair(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthResult:
    return synth.generate_pair(GEOMETRY, tmp_path_factory.mktemp("raw"))


def _green(path: Path) -> np.ndarray:
    return tifffile.imread(path)[..., 1].astype(np.float32)


def _microbe_mask(truth: dict, shape: tuple[int, int], radius_sigmas: float) -> np.ndarray:
    """Post pixels within ``radius_sigmas`` σ of a microbe centre."""
    mask = np.zeros(shape, bool)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for x, y, sigma, _ in synth.truth_microbes(truth):
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= (radius_sigmas * sigma) ** 2
    return mask


def _residual(pre: np.ndarray, post: np.ndarray, post_to_pre: np.ndarray, k: float,
              select: np.ndarray) -> tuple[float, float]:
    """Median of post / (k · warped pre) and RMS of post − k · warped pre over ``select``."""
    h, w = post.shape
    warped = cv2.warpAffine(pre, post_to_pre[:2], (w, h),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    model = k * warped[select]
    positive = model > 0
    return (float(np.median(post[select][positive] / model[positive])),
            float(np.sqrt(np.mean((post[select] - model) ** 2))))


def test_true_transform_maps_post_onto_pre_and_wrong_ones_do_not(
        geometry_pair: synth.SynthResult) -> None:
    truth = synth.load_truth(geometry_pair.truth_path)
    post_to_pre = np.asarray(truth["post_to_pre"])
    pre, post = _green(geometry_pair.pre_path), _green(geometry_pair.post_path)
    assert pre.shape == (760, 820) and post.shape == (700, 900)
    tissue = synth.truth_tissue_mask_post(truth)
    interior = cv2.erode(tissue.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)
    select = interior & ~_microbe_mask(truth, post.shape, 5.0) & (post < 255)
    assert select.sum() > 100_000

    ratio, rms = _residual(pre, post, post_to_pre, truth["k"], select)
    assert abs(ratio - 1.0) < 0.01
    # Noise model: variance read² + shot·signal in both images (k² for pre); linear
    # interpolation of pre can only lower its share, so this is an upper bound.
    noise = truth["noise"]
    variance = (noise["read_sigma_dn"] ** 2 + noise["shot_gain_dn"] * post[select]
                + truth["k"] ** 2 * (noise["read_sigma_dn"] ** 2
                                     + noise["shot_gain_dn"] * post[select] / truth["k"]))
    predicted = float(np.sqrt(variance.mean()))
    assert 0.6 * predicted < rms < 1.05 * predicted

    shifted = post_to_pre @ np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    transposed = post_to_pre.copy()
    transposed[:2, :2] = post_to_pre[:2, :2].T
    for wrong in (shifted, transposed):
        _, wrong_rms = _residual(pre, post, wrong, truth["k"], select)
        assert wrong_rms > 1.5 * rms


def test_truth_records_the_geometry(geometry_pair: synth.SynthResult) -> None:
    truth = json.loads(geometry_pair.truth_path.read_text())
    expected = transform.similarity_post_to_pre(7.0, 1.08, (409.5, 379.5), (449.5 + 12.3,
                                                                           349.5 - 7.6))
    np.testing.assert_allclose(truth["post_to_pre"], expected, atol=1e-12)
    decomposition = transform.decompose_similarity(np.asarray(truth["post_to_pre"]))
    assert decomposition["rotation_deg"] == pytest.approx(7.0)
    assert decomposition["scale"] == pytest.approx(1.08)
    assert truth["post_shape"] == [700, 900] and truth["pre_shape"] == [760, 820]
    assert (truth["k"], truth["dye"], truth["channel_mode"], truth["seed"]) == (
        1.6, "SybrGld", "rgb8", 3)
    assert truth["files"] == {"pre": "GEO_PreStain_SybrGld.tif",
                              "post": "GEO_PostStain_SybrGld.tif"}
    assert synth.SynthSpec.from_dict(truth["spec"]) == GEOMETRY
    assert 0.4 < truth["tissue_fraction_post"] < 0.75
    assert 0.4 < truth["tissue_fraction_pre"] < 0.7
    # The downsampled mask samples the full-resolution one at cell centres.
    full = synth.truth_tissue_mask_post(truth)
    coarse = synth.truth_tissue_mask_post(truth, factor=5)
    assert coarse.shape == (140, 180)
    assert (coarse == full[2::5, 2::5]).mean() > 0.999
    assert synth.truth_tissue_mask_pre(truth).shape == (760, 820)
    # Nothing but the pair, its truth and no temporary files in the sample folder.
    assert sorted(p.name for p in geometry_pair.truth_path.parent.iterdir()) == [
        "GEO_PostStain_SybrGld.tif", "GEO_PreStain_SybrGld.tif", "GEO_SybrGld_truth.json"]


def test_pre_renders_identically_in_any_window() -> None:
    spec = replace(GEOMETRY, tissue_offset=(60.0, -40.0), rotation_deg=-15.0)
    scene = synth.Scene(spec)
    whole = scene.pre_clean(-30, -20, 880, 800)
    rows = np.vstack([scene.pre_clean(-30, y, 880, min(37, 780 - y)) for y in range(-20, 780, 37)])
    cols = np.hstack([scene.pre_clean(x, -20, min(101, 850 - x), 800)
                      for x in range(-30, 850, 101)])
    assert np.array_equal(whole, rows) and np.array_equal(whole, cols)
    assert whole.max() > 100.0  # the window holds textured tissue, not just background
    # The noisy pre output does not depend on the band height either.
    small = np.vstack(list(synth.iter_pre_bands(scene, 37)))
    large = np.vstack(list(synth.iter_pre_bands(scene, 512)))
    assert np.array_equal(small, large)
    # Post is warped chunk by chunk: any chunking gives the same values to float precision.
    post_small = np.vstack(list(synth.iter_post_bands(scene, 100, clean=True)))
    post_large = np.vstack(list(synth.iter_post_bands(scene, 700, clean=True)))
    np.testing.assert_allclose(post_small, post_large, atol=0.05)


@pytest.mark.parametrize(("mode", "dye", "signal", "dtype", "channels"), [
    ("rgb8", "SybrGld", "g", np.uint8, 3),
    ("rgb8", "DAPI", "b", np.uint8, 3),
    ("rgb8", "Cy5", "r", np.uint8, 3),
    ("rgba8", "FITC", "g", np.uint8, 4),
    ("rgb16", "TRITC", "r", np.uint16, 3),
    ("gray8", "DAPI", "", np.uint8, 1),
    ("gray16", "SybrGld", "", np.uint16, 1),
    ("float32", "SybrGld", "", np.float32, 1),
])
def test_channel_modes(tmp_path: Path, mode: str, dye: str, signal: str, dtype: type,
                       channels: int) -> None:
    spec = synth.SynthSpec(width=400, height=300, channel_mode=mode, dye=dye, seed=5)
    result = synth.generate_pair(spec, tmp_path)
    post = tifffile.imread(result.post_path)
    assert post.dtype == dtype
    assert post.shape == ((300, 400, channels) if channels > 1 else (300, 400))
    assert result.truth["signal_channels"] == list(signal)
    if channels > 1:
        means = post[..., :3].reshape(-1, 3).mean(axis=0)
        main = "rgb".index(signal)
        others = [c for c in range(3) if c != main]
        assert means[main] > 10 * means[others].max()
        assert means[others] == pytest.approx(synth.CROSSTALK * means[main], rel=0.3)
    if channels == 4:
        assert np.all(post[..., 3] == 255)
    tissue = synth.truth_tissue_mask_post(result.truth)
    level = float(np.median(post[tissue] if channels == 1 else post[..., "rgb".index(signal)][
        tissue]))
    expected_gain = {np.uint8: 1.0, np.uint16: synth.GAIN_16BIT, np.float32: 1 / 255}[dtype]
    assert 40 < level / expected_gain < 200


def test_two_channel_dye_splits_the_signal(tmp_path: Path) -> None:
    result = synth.generate_pair(synth.SynthSpec(width=400, height=300, signal_channels="gr",
                                                 seed=2), tmp_path)
    pre = tifffile.imread(result.pre_path).astype(np.float64)
    tissue = synth.truth_tissue_mask_pre(result.truth)
    red, green, blue = (pre[..., c][tissue].mean() for c in range(3))
    assert green / red == pytest.approx(0.6 / 0.4, rel=0.05)
    assert blue < 0.1 * red
    assert result.truth["signal_channels"] == ["g", "r"]


@pytest.mark.parametrize(("layout", "compression", "codec"), [
    ("strips", None, "NONE"),
    ("strips", "lzw", "LZW"),
    ("strips", "deflate", "ADOBE_DEFLATE"),
    ("single-strip", None, "NONE"),
    ("single-strip", "lzw", "LZW"),
    ("tiled", None, "NONE"),
    ("tiled", "zstd", "ZSTD"),
])
def test_layouts_and_compression(tmp_path: Path, layout: str, compression: str | None,
                                 codec: str) -> None:
    base = synth.SynthSpec(sample="REF", width=700, height=300, seed=9)
    reference = tifffile.imread(synth.generate_pair(base, tmp_path).post_path)
    spec = replace(base, sample="LAY", layout=layout, compression=compression)
    result = synth.generate_pair(spec, tmp_path)
    with tifffile.TiffFile(result.post_path) as tif:
        page = tif.pages[0]
        assert page.compression.name == codec
        assert page.is_tiled == (layout == "tiled")
        if layout == "tiled":
            assert (page.tilelength, page.tilewidth) == (synth.RAW_TILE, synth.RAW_TILE)
        else:
            expected = synth.STRIP_BYTES // (700 * 3) if layout == "strips" else 300
            assert page.rowsperstrip == expected
        assert not tif.is_bigtiff
        assert np.array_equal(page.asarray(), reference)


def test_bigtiff_above_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "BIGTIFF_BYTES", 1000)
    result = synth.generate_pair(synth.SynthSpec(width=200, height=150), tmp_path)
    with tifffile.TiffFile(result.post_path) as tif:
        assert tif.is_bigtiff
        assert tif.pages[0].shape == (150, 200, 3)


def test_microbes_cover_the_requested_fraction_in_post_only(tmp_path: Path) -> None:
    spec = synth.SynthSpec(sample="MIC", width=1000, height=800, microbe_coverage=0.04, seed=4)
    result = synth.generate_pair(spec, tmp_path)
    truth = result.truth
    assert truth["microbe_coverage_actual"] == pytest.approx(0.04, rel=0.2)
    tissue = synth.truth_tissue_mask_post(truth)
    covered = _microbe_mask(truth, tissue.shape, synth._MICROBE_COVER_RADIUS)
    assert (covered & tissue).sum() / tissue.sum() == pytest.approx(
        truth["microbe_coverage_actual"], rel=0.02)
    # Microbe centres lie in tissue.
    centres = synth.truth_microbes(truth)
    assert len(centres) == truth["microbe_count"] > 50
    inside = tissue[np.clip(np.rint(centres[:, 1]).astype(int), 0, 799),
                    np.clip(np.rint(centres[:, 0]).astype(int), 0, 999)]
    assert inside.mean() > 0.97
    # Without microbes, pre is bitwise the same and post differs only at the microbes.
    bare = synth.generate_pair(replace(spec, sample="BARE", microbe_coverage=0.0), tmp_path)
    assert np.array_equal(tifffile.imread(bare.pre_path), tifffile.imread(result.pre_path))
    scene, bare_scene = synth.Scene(spec), synth.Scene(replace(spec, microbe_coverage=0.0))
    excess = scene.post_clean(0, 0, 1000, 800) - bare_scene.post_clean(0, 0, 1000, 800)
    assert excess.min() >= 0.0
    near = _microbe_mask(truth, tissue.shape, 4.5)
    assert excess[~near].max() < 0.02  # the Gaussian tails beyond 4.5 σ
    assert np.median(excess[covered]) > 30.0


def test_tissue_offset_moves_tissue_out_of_the_frame() -> None:
    centred = synth.Scene(synth.SynthSpec(width=600, height=500, seed=1))
    shifted = synth.Scene(synth.SynthSpec(width=600, height=500, seed=1,
                                          tissue_offset=(300.0, 0.0)))
    m_centred, _, _ = centred.post_window(0, 0, 600, 500)
    m_shifted, _, _ = shifted.post_window(0, 0, 600, 500)
    assert not m_centred[:, -1].any()
    assert (m_shifted[:, -1] >= 0.5).sum() > 100
    # Beyond the right border the scene continues: tissue exists outside the post frame.
    m_beyond, _, _ = shifted.post_window(600, 0, 200, 500)
    assert (m_beyond >= 0.5).sum() > 10_000
    assert (m_shifted >= 0.5).mean() < 0.75 * (m_centred >= 0.5).mean()


def test_featureless_texture_has_no_interior_structure() -> None:
    scene = synth.Scene(synth.SynthSpec(width=500, height=400, texture="featureless"))
    m, clean = scene.pre_window(0, 0, 500, 400)
    interior = clean[m == 1.0]
    assert interior.size > 50_000 and np.ptp(interior) == 0.0
    rich = synth.Scene(synth.SynthSpec(width=500, height=400)).pre_clean(0, 0, 500, 400)
    assert rich[m == 1.0].std() > 15.0


def test_spec_validation() -> None:
    with pytest.raises(ParameterError, match="must not contain '_'"):
        synth.SynthSpec(dye="Sybr_Gld")
    with pytest.raises(ParameterError, match="RGB channel_mode"):
        synth.SynthSpec(channel_mode="gray8", signal_channels="g")
    with pytest.raises(ParameterError, match="channel_mode"):
        synth.SynthSpec(channel_mode="cmyk")
    with pytest.raises(ParameterError, match="scale"):
        synth.SynthSpec(scale=0.0)
    assert synth.dye_channel("Hoechst") == "b" and synth.dye_channel("mystery") == "g"


def test_batch_with_broken_and_incomplete_pairs(tmp_path: Path) -> None:
    specs = synth.batch_specs(2, synth.SynthSpec(width=300, height=240, seed=7))
    assert [s.sample for s in specs] == ["SYN01", "SYN02"]
    assert specs[0].rotation_deg != specs[1].rotation_deg
    results = synth.make_batch(tmp_path, specs, broken=True)
    assert [r.spec.sample for r in results] == ["SYN01", "SYN02", "SYN01BROKEN",
                                                "SYN01INCOMPLETE"]
    broken, incomplete = results[2], results[3]
    assert broken.post_path is not None
    with pytest.raises(ValueError):
        tifffile.imread(broken.post_path)
    assert "truncated" in json.loads(broken.truth_path.read_text())["defect"]
    assert incomplete.post_path is None
    assert sorted(p.name for p in (tmp_path / "SYN01INCOMPLETE").iterdir()) == [
        "SYN01INCOMPLETE_PreStain_SybrGld.tif", "SYN01INCOMPLETE_SybrGld_truth.json"]
    with pytest.raises(ParameterError, match="two specs"):
        synth.make_batch(tmp_path, [specs[0], specs[0]])


def test_cli_batch(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(synth_command, ["--raw-dir", str(tmp_path), "--pairs", "2",
                                           "--broken", "--width", "300", "--height", "200",
                                           "--channel-mode", "gray16", "--compression", "zstd"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and "SYN02/SYN02_SybrGld_truth.json" in lines[1]
    assert "[incomplete pair: post missing]" in lines[3]
    post = tmp_path / "SYN01" / "SYN01_PostStain_SybrGld.tif"
    assert tifffile.imread(post).dtype == np.uint16
    refused = runner.invoke(synth_command, ["--raw-dir", str(tmp_path), "--pairs", "2",
                                            "--rotation", "5"])
    assert refused.exit_code == 2 and "--rotation cannot be combined" in refused.output


def test_bin_e2m_synth_subprocess(tmp_path: Path) -> None:
    tool = REPO / "bin" / "e2m-synth"
    run = subprocess.run(
        [sys.executable, str(tool), "--raw-dir", str(tmp_path), "--sample", "CD070",
         "--dye", "DAPI", "--width", "320", "--height", "240", "--rotation", "-4",
         "--scale", "0.95", "--k", "2.0", "--tissue-offset", "10", "-5", "--layout", "tiled"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "CD070/CD070_DAPI_truth.json" in run.stdout
    truth = synth.load_truth(tmp_path / "CD070" / "CD070_DAPI_truth.json")
    assert truth["rotation_deg"] == -4.0 and truth["k"] == 2.0
    assert truth["signal_channels"] == ["b"]
    bad = subprocess.run([sys.executable, str(tool), "--raw-dir", str(tmp_path),
                          "--dye", "Sybr_Gld"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0].startswith("error: dye 'Sybr_Gld'")
