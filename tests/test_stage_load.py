"""Stage 1 (load): ``run_load`` in process and ``bin/e2m-load`` in a real subprocess."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from exo2micro import params as P
from exo2micro import resources, synth
from exo2micro.errors import InsufficientMemoryError, exit_code_for
from exo2micro.io import tiffio
from exo2micro.io.layout import PairLayout
from exo2micro.io.records import stage_is_current
from exo2micro.numerics import pyramid
from exo2micro.stages.load import run_load
from tests.helpers_io import CORRUPT_KINDS, files_under, make_corrupt, make_pair, run_bin

OUTPUTS = ["cache/01_post_pyramid.tif", "cache/01_pre_pyramid.tif", "stages/01_load.json",
           "tiff/01_post_signal.tif", "tiff/01_pre_signal.tif"]
WHICH = ("pre", "post")


def _load(pair: synth.SynthResult, pair_dir: Path, threads: int = 2, **overrides: Any
          ) -> tuple[PairLayout, dict[str, Any]]:
    layout = PairLayout(pair_dir, P.resolve(overrides))
    return layout, run_load(pair.pre_path, pair.post_path, layout, threads=threads)


def _raw(pair: synth.SynthResult, which: str) -> np.ndarray:
    data = tifffile.imread(pair.pre_path if which == "pre" else pair.post_path)
    return data if data.ndim == 3 else data[:, :, None]


def _signal(layout: PairLayout, which: str) -> np.ndarray:
    with tifffile.TiffFile(layout.signal(which)) as tif:
        assert tif.pages.first.is_tiled
        return tif.pages.first.asarray()


def _cli_args(pair: synth.SynthResult, pair_dir: Path, *extra: str) -> list[str]:
    return ["--pre", str(pair.pre_path), "--post", str(pair.post_path), "--sample",
            pair.spec.sample, "--dye", pair.spec.dye, "--pair-dir", str(pair_dir), *extra]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthResult:
    """RGB 8-bit SybrGld pair with pre (300×270) and post (320×256) of different sizes."""
    return make_pair(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def loaded(pair: synth.SynthResult, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[PairLayout, dict[str, Any]]:
    return _load(pair, tmp_path_factory.mktemp("pair"))


def test_outputs_have_the_documented_names(loaded: tuple[PairLayout, dict[str, Any]]) -> None:
    layout, rec = loaded
    assert files_under(layout.root) == OUTPUTS
    assert sorted(rec["outputs"]) == [o for o in OUTPUTS if not o.startswith("stages/")]
    assert json.loads(layout.record(1).read_text()) == json.loads(json.dumps(rec))
    assert stage_is_current(layout, 1)[0]


def test_signal_is_the_chosen_channel_exactly(pair: synth.SynthResult,
                                              loaded: tuple[PairLayout, dict[str, Any]]) -> None:
    layout, rec = loaded
    assert rec["channels"]["channels"] == [1]  # SybrGld → green
    for which in WHICH:
        raw = _raw(pair, which)
        signal = _signal(layout, which)
        assert signal.dtype == np.uint8
        np.testing.assert_array_equal(signal, raw[:, :, 1])
    assert _signal(layout, "pre").shape == (270, 300) and _signal(layout, "post").shape == (
        256, 320)


def test_record_describes_each_image(pair: synth.SynthResult,
                                     loaded: tuple[PairLayout, dict[str, Any]]) -> None:
    _, rec = loaded
    assert rec["status"] == "complete" and rec["stage"] == 1
    assert rec["params"] == {"pad": 0, "pixel_size_um": None, "channel": None}
    assert {"channel_choice", "stream", "total"} <= set(rec["timings_s"])
    assert rec["peak_rss_bytes"] > 20 << 20 and rec["warnings"] == []
    assert "strongest" in rec["channels"]["reason"]
    assert len(rec["channels"]["signal_per_channel"]) == 3
    truth_masks = {"pre": synth.truth_tissue_mask_pre(pair.truth),
                   "post": synth.truth_tissue_mask_post(pair.truth)}
    for which in WHICH:
        meta, green = rec["images"][which], _raw(pair, which)[:, :, 1]
        assert rec["inputs"][which] == str(getattr(pair, f"{which}_path"))
        assert meta["shape"] == list(green.shape) and meta["signal_dtype"] == "uint8"
        assert meta["raw"]["samples"] == 3 and meta["raw"]["dtype"] == "uint8"
        assert meta["value_range"] == [float(green.min()), float(green.max())]
        assert meta["nonfinite_pixels_zeroed"] == 0
        truth = truth_masks[which]
        ys, xs = np.nonzero(truth)
        foot = meta["footprint"]
        assert foot["fraction"] == pytest.approx(truth.mean(), rel=0.05)
        assert foot["centroid_xy"] == pytest.approx([xs.mean(), ys.mean()], abs=3)
        assert foot["tissue_p50"] > 5 * max(foot["background_p50"], 1.0)


def _box_means(image: np.ndarray, f: int) -> np.ndarray:
    """Mean over f×f boxes (partial boxes at the edges over what they cover), via reshape."""
    h, w = image.shape
    padded = np.full((-(-h // f) * f, -(-w // f) * f), np.nan)
    padded[:h, :w] = image
    return np.nanmean(padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f),
                      axis=(1, 3))


def _documented_factors(h: int, w: int) -> list[int]:
    """pyramid.py: the finest power of two with a longer side ≤ FIRST_LEVEL_MAX_SIDE, then
    halving while the shorter side of the next level stays ≥ LAST_LEVEL_MIN_SIDE."""
    f = 1
    while max(h, w) > pyramid.FIRST_LEVEL_MAX_SIDE * f:
        f *= 2
    factors = [f]
    while min(-(-h // factors[-1]), -(-w // factors[-1])) // 2 >= pyramid.LAST_LEVEL_MIN_SIDE:
        factors.append(factors[-1] * 2)
    return factors


def test_pyramid_levels_are_exact_box_means(pair: synth.SynthResult, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyramid, "FIRST_LEVEL_MAX_SIDE", 100)
    monkeypatch.setattr(pyramid, "LAST_LEVEL_MIN_SIDE", 8)
    layout, rec = _load(pair, tmp_path)
    for which in WHICH:
        signal = _signal(layout, which).astype(np.float64)
        pyr = pyramid.Pyramid.load(layout.pyramid(which))
        assert pyr.full_shape == signal.shape
        assert pyr.factors == rec["images"][which]["pyramid_factors"] == [4, 8, 16, 32]
        assert pyr.factors == _documented_factors(*signal.shape)
        for f, level in zip(pyr.factors, pyr.levels, strict=True):
            assert level.dtype == np.float32
            want = _box_means(signal, f)
            # interior (full boxes) and the partial boxes of the bottom/right edges
            np.testing.assert_allclose(level, want, rtol=1e-5, atol=1e-4,
                                       err_msg=f"{which} level {f}")
        level, f = pyr.level_for(40)  # the finest level whose longer side is ≤ 40 px
        assert f == 8 and level is pyr.levels[1] and max(level.shape) <= 40
        level, f = pyr.level_for(1)  # nothing is that small: the coarsest level
        assert f == 32 and level is pyr.levels[-1]


def test_default_pyramid_factors_follow_the_documented_rule(
        loaded: tuple[PairLayout, dict[str, Any]]) -> None:
    _, rec = loaded
    for which in WHICH:
        assert rec["images"][which]["pyramid_factors"] == _documented_factors(
            *rec["images"][which]["shape"]) == [1, 2, 4]
    assert pyramid.first_factor(30_000, 25_000) == 8
    assert pyramid.first_factor(4096, 100) == 1 and pyramid.first_factor(10, 4097) == 2


@pytest.mark.parametrize(("mode", "dye", "channels", "dtype"), [
    ("rgba8", "DAPI", [2], "uint8"),
    ("rgb16", "Cy5", [0], "uint16"),
    ("gray16", "SybrGld", [0], "uint16"),
    ("float32", "SybrGld", [0], "float32"),
])
def test_signal_keeps_the_native_dtype(tmp_path: Path, mode: str, dye: str,
                                       channels: list[int], dtype: str) -> None:
    pair = make_pair(tmp_path / "raw", channel_mode=mode, dye=dye)
    layout, rec = _load(pair, tmp_path / "pair", threads=1)
    assert rec["channels"]["channels"] == channels
    for which in WHICH:
        signal = _signal(layout, which)
        assert signal.dtype == np.dtype(dtype) == np.dtype(rec["images"][which]["signal_dtype"])
        np.testing.assert_array_equal(signal, _raw(pair, which)[:, :, channels[0]])


@pytest.mark.parametrize(("mode", "k", "summed_dtype"), [("rgb8", 3.0, np.uint16),
                                                         ("rgb16", 1.35, np.uint32)])
def test_two_channel_dye_is_summed_without_clipping(tmp_path: Path, mode: str, k: float,
                                                   summed_dtype: type) -> None:
    pair = make_pair(tmp_path / "raw", channel_mode=mode, signal_channels="rg", k=k,
                     microbe_coverage=0.1)
    layout, rec = _load(pair, tmp_path / "pair")
    assert rec["channels"]["channels"] == [0, 1] and "summed" in rec["channels"]["reason"]
    for which in WHICH:
        raw = _raw(pair, which).astype(np.int64)
        signal = _signal(layout, which)
        assert signal.dtype == summed_dtype
        np.testing.assert_array_equal(signal, raw[:, :, 0] + raw[:, :, 1])
    top = rec["images"]["post"]["value_range"][1]
    raw_max = np.iinfo(_raw(pair, "post").dtype).max
    assert top > raw_max  # the sum went past what one raw channel can hold


def test_nonfinite_float_pixels_are_zeroed_and_counted(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "raw", channel_mode="float32")
    post = tifffile.imread(pair.post_path)
    post[10, 10:15] = np.nan
    post[20, 20] = np.inf
    tifffile.imwrite(pair.post_path, post)
    layout, rec = _load(pair, tmp_path / "pair")
    assert rec["images"]["post"]["nonfinite_pixels_zeroed"] == 6
    signal = _signal(layout, "post")
    assert np.isfinite(signal).all() and (signal[10, 10:15] == 0).all() and signal[20, 20] == 0


def test_dark_tissue_pixels_keep_the_footprint_filled(pair: synth.SynthResult, tmp_path: Path,
                                                      loaded: tuple[PairLayout, dict[str, Any]]
                                                      ) -> None:
    truth = synth.truth_tissue_mask_post(pair.truth)
    ys, xs = np.nonzero(truth)
    cy, cx = int(ys.mean()), int(xs.mean())
    yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]]
    hole = (yy - cy) ** 2 + (xx - cx) ** 2 <= 35**2
    assert truth[hole].all()  # the dark region lies inside the tissue
    post = tifffile.imread(pair.post_path)
    post[hole] = 0  # an opaque grain: genuinely black tissue pixels
    raw = tmp_path / "raw"
    raw.mkdir()
    dark_post = raw / pair.post_path.name
    tifffile.imwrite(dark_post, post, photometric="rgb")
    layout = PairLayout(tmp_path / "pair", P.resolve())
    rec = run_load(pair.pre_path, dark_post, layout)
    with_hole = rec["images"]["post"]["footprint"]
    without = loaded[1]["images"]["post"]["footprint"]
    assert with_hole["fraction"] == pytest.approx(without["fraction"], abs=0.002)
    assert with_hole["bbox_xywh"] == without["bbox_xywh"]


# ------------------------------------------------------------------------------ the CLI
def _records(pair_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in (pair_dir / "stages").iterdir()}


def test_cli_runs_resumes_forces_and_keeps_settings_apart(pair: synth.SynthResult,
                                                          tmp_path: Path) -> None:
    pair_dir = tmp_path / "pair"
    first = run_bin("e2m-load", *_cli_args(pair, pair_dir), "--threads", "2")
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines()[-1] == (
        "S1/SybrGld stage 1 done: pre 300×270, post 320×256, channels [1]")
    assert files_under(pair_dir) == OUTPUTS
    run_id = _records(pair_dir)["01_load.json"]["run_id"]
    mtimes = {p: p.stat().st_mtime_ns for p in pair_dir.rglob("*.tif")}

    again = run_bin("e2m-load", *_cli_args(pair, pair_dir))
    assert again.returncode == 0, again.stderr
    assert "stage 1 skipped (current)" in again.stderr.splitlines()[-1]
    assert _records(pair_dir)["01_load.json"]["run_id"] == run_id
    assert {p: p.stat().st_mtime_ns for p in pair_dir.rglob("*.tif")} == mtimes

    forced = run_bin("e2m-load", *_cli_args(pair, pair_dir, "--force"))
    assert forced.returncode == 0 and "stage 1 done" in forced.stderr
    assert _records(pair_dir)["01_load.json"]["run_id"] != run_id

    padded = run_bin("e2m-load", *_cli_args(pair, pair_dir, "--param", "pad=10"))
    assert padded.returncode == 0 and "stage 1 done" in padded.stderr
    assert files_under(pair_dir) == sorted(
        OUTPUTS + [o.replace(".", "_pad10.") for o in OUTPUTS])
    recs = _records(pair_dir)
    assert recs["01_load_pad10.json"]["suffix"] == "_pad10"
    assert recs["01_load_pad10.json"]["params"] == {"pad": 10, "pixel_size_um": None,
                                                     "channel": None}
    assert recs["01_load_pad10.json"]["fingerprint"] != recs["01_load.json"]["fingerprint"]
    for overrides in ({}, {"pad": 10}):
        assert stage_is_current(PairLayout(pair_dir, P.resolve(overrides)), 1)[0]


BAD_INPUTS = {**{kind: ("pre", CORRUPT_KINDS[kind]) for kind in CORRUPT_KINDS},
              "constant": ("post", "image is constant"),
              "no_tissue": ("pre", "no tissue found")}


def _bad_image(folder: Path, kind: str) -> Path:
    if kind in CORRUPT_KINDS:
        return make_corrupt(folder, kind)
    image = np.full((200, 240, 3), 7, np.uint8)
    if kind == "no_tissue":  # black, apart from one bright pixel
        image[:] = 0
        image[100, 120, 1] = 250
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    return path


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_cli_rejects_bad_input_with_exit_65_and_writes_nothing(pair: synth.SynthResult,
                                                               tmp_path: Path,
                                                               kind: str) -> None:
    which, what = BAD_INPUTS[kind]
    bad = _bad_image(tmp_path / "raw", kind)
    pre, post = (bad, pair.post_path) if which == "pre" else (pair.pre_path, bad)
    pair_dir = tmp_path / "pair"
    result = run_bin("e2m-load", "--pre", pre, "--post", post, "--sample", "S1", "--dye",
                     "SybrGld", "--pair-dir", pair_dir, "--threads", "2")
    assert result.returncode == 65, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {bad}: ") and what in first
    assert "Traceback" not in result.stderr
    assert not pair_dir.exists() or files_under(pair_dir) == []


def test_cli_usage_errors_exit_2(pair: synth.SynthResult, tmp_path: Path) -> None:
    unknown = run_bin("e2m-load", *_cli_args(pair, tmp_path, "--param", "boundry_width=3"))
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[0].startswith(
        "error: unknown parameter(s) boundry_width (did you mean boundary_width?); "
        "valid names: pad, use_edges")
    bad_value = run_bin("e2m-load", *_cli_args(pair, tmp_path, "--param", "pad=-3"))
    assert bad_value.returncode == 2 and "'pad' = '-3' is out of range" in bad_value.stderr
    missing = run_bin("e2m-load", "--pre", str(pair.pre_path), "--sample", "S1")
    assert missing.returncode == 2 and "Missing option" in missing.stderr
    assert files_under(tmp_path) == []


def _traced_peak(pair: synth.SynthResult, pair_dir: Path, threads: int) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        _, rec = _load(pair, pair_dir, threads=threads)
        return tracemalloc.get_traced_memory()[1], rec
    finally:
        tracemalloc.stop()


def test_single_compressed_strip_holds_one_decoded_image_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw file stored as one LZW strip must be decoded whole; stage 1 then reads pre and
    post one after the other and drops each decoded image when done, so its peak exceeds
    that of a stripped pair by about one decoded image, not two (even with two threads)."""
    monkeypatch.setattr(tiffio, "READER_CACHE_BYTES", 1 << 20)  # 30k-px case, scaled down
    spec = synth.SynthSpec(width=2400, height=2000, seed=3)
    whole = synth.generate_pair(replace(spec, sample="WHOLE", layout="single-strip",
                                        compression="lzw"), tmp_path / "raw")
    strips = synth.generate_pair(replace(spec, sample="STRIPS", compression="lzw"),
                                 tmp_path / "raw")
    with tiffio.TiffImage(whole.post_path) as img:
        assert img.decodes_whole
        one_image = img.info.decoded_bytes
    baseline, _ = _traced_peak(strips, tmp_path / "strips", threads=1)
    peak, rec = _traced_peak(whole, tmp_path / "whole", threads=2)
    assert rec["sequential_reason"].startswith("a raw file must be decoded whole")
    assert peak - baseline < 1.5 * one_image, (peak - baseline) / one_image
    assert rec["channels"]["channels"] == [1]  # SybrGld → green
    layout = PairLayout(tmp_path / "whole", P.resolve())
    for which in WHICH:
        np.testing.assert_array_equal(_signal(layout, which), _raw(whole, which)[:, :, 1])


def test_single_strip_too_large_for_memory_fails_with_137_and_a_remedy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiffio, "READER_CACHE_BYTES", 1 << 16)
    monkeypatch.setattr(resources, "available_memory", lambda: (1 << 16, "test limit"))
    whole = make_pair(tmp_path / "raw", layout="single-strip", compression="lzw")
    layout = PairLayout(tmp_path / "pair", P.resolve())
    with pytest.raises(InsufficientMemoryError) as info:
        run_load(whole.pre_path, whole.post_path, layout, threads=2)
    message = str(info.value)
    assert message.startswith(f"{whole.pre_path}: stored as one compressed strip")
    assert "only 0.0 GiB is available (test limit)" in message and "tiffcp" in message
    assert exit_code_for(info.value) == 137
    assert not list((tmp_path / "pair").rglob("*.tif"))


@pytest.mark.parametrize("channel_mode", ["rgb8", "float32"])
def test_strips_read_in_many_threads_give_the_same_files(tmp_path: Path,
                                                         channel_mode: str) -> None:
    """With ≥ 4 threads each image's strips are read, decoded and reduced by a pool, out of
    order, and written in order: the files and the record's facts are those of one thread
    (five strips of 512 rows; a float image with non-finite pixels in two of them)."""
    pair = make_pair(tmp_path / "raw", channel_mode=channel_mode, width=700, height=2300)
    if channel_mode == "float32":
        post = tifffile.imread(pair.post_path)
        post[100, 5:9] = np.nan
        post[1900, 50] = -np.inf
        tifffile.imwrite(pair.post_path, post)
    runs = {t: _load(pair, tmp_path / f"t{t}", threads=t) for t in (1, 6)}
    assert resources.load_strip_threads(6, True) == 3  # three strip threads per image
    (one, rec_one), (many, rec_many) = runs[1], runs[6]
    for which in WHICH:
        for path in (one.signal(which), one.pyramid(which)):
            other = many.signal(which) if path == one.signal(which) else many.pyramid(which)
            assert path.read_bytes() == other.read_bytes()
        for key in ("value_range", "nonfinite_pixels_zeroed", "footprint", "shape"):
            assert rec_one["images"][which][key] == rec_many["images"][which][key]
    if channel_mode == "float32":
        assert rec_many["images"]["post"]["nonfinite_pixels_zeroed"] == 5
