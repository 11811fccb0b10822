"""Tests of lazy TIFF reading, channel choice and the tiled writer (exo2micro.io.tiffio)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from exo2micro import synth
from exo2micro.errors import InputDataError
from exo2micro.io import tiffio
from exo2micro.io.tiffio import TiffImage
from tests.helpers_io import CORRUPT_KINDS, SMALL, make_corrupt, make_pair

H, W = 157, 203  # odd sizes: every strip/tile grid has partial segments


def _image(dtype: str, samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (H, W, samples) if samples > 1 else (H, W)
    if np.dtype(dtype).kind == "f":
        return rng.normal(10.0, 3.0, shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


#: case id → (dtype, samples, tifffile.imwrite options, expect memory-mapped reads)
LAYOUTS: dict[str, tuple[str, int, dict[str, Any], bool]] = {
    "contiguous": ("uint8", 3, {"photometric": "rgb"}, True),
    "multi-strip": ("uint8", 3, {"photometric": "rgb", "rowsperstrip": 10}, True),
    "lzw-strips": ("uint8", 3, {"photometric": "rgb", "rowsperstrip": 13,
                                "compression": "lzw"}, False),
    "deflate-strips": ("uint16", 3, {"photometric": "rgb", "rowsperstrip": 13,
                                     "compression": "zlib", "predictor": True}, False),
    "zstd-strips": ("uint8", 1, {"rowsperstrip": 9, "compression": "zstd"}, False),
    "tiled-zlib": ("uint8", 3, {"photometric": "rgb", "tile": (32, 48),
                                "compression": "zlib"}, False),
    "tiled-raw": ("uint16", 1, {"tile": (64, 16)}, False),
    "planar-separate": ("uint8", 3, {"photometric": "rgb", "planarconfig": "separate",
                                     "rowsperstrip": 20}, False),
    "planar-separate-lzw": ("uint16", 3, {"photometric": "rgb", "planarconfig": "separate",
                                          "rowsperstrip": 32, "compression": "lzw"}, False),
    "single-strip": ("uint8", 3, {"photometric": "rgb", "rowsperstrip": H}, True),
    "single-compressed-strip": ("uint8", 3, {"photometric": "rgb", "rowsperstrip": H,
                                             "compression": "zlib"}, False),
    "big-endian": ("uint16", 3, {"photometric": "rgb", "byteorder": ">"}, True),
    "big-endian-lzw": ("float32", 1, {"byteorder": ">", "compression": "lzw",
                                      "rowsperstrip": 16}, False),
    "gray16": ("uint16", 1, {"rowsperstrip": 25}, True),
    "float32": ("float32", 1, {}, True),
    "rgba": ("uint8", 4, {"photometric": "rgb", "extrasamples": ("unassalpha",),
                          "compression": "zlib", "rowsperstrip": 30}, False),
    "gray-alpha": ("uint16", 2, {"photometric": "minisblack", "extrasamples": ("assocalpha",),
                                 "rowsperstrip": 40}, True),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, np.ndarray, bool]:
    dtype, samples, options, memmapped = LAYOUTS[request.param]
    data = _image(dtype, samples, seed=len(request.param))
    path = tmp_path_factory.mktemp("layouts") / f"{request.param}.tif"
    separate = options.get("planarconfig") == "separate"
    tifffile.imwrite(path, np.moveaxis(data, -1, 0) if separate else data, metadata=None,
                     **options)
    full = data if data.ndim == 3 else data[:, :, None]
    return path, full, memmapped


def _windows(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, int]]:
    """Random windows plus the awkward ones: whole image, single pixels, corners, overhangs."""
    out = [(0, H, 0, W), (0, 1, 0, 1), (H - 1, H, W - 1, W), (-5, 7, W - 3, W + 9),
           (H - 2, H + 50, -3, 4)]
    for _ in range(n):
        y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        out.append((y0, y0 + int(rng.integers(1, H)), x0, x0 + int(rng.integers(1, W))))
    return out


def test_read_window_equals_the_full_array(layout_case: tuple[Path, np.ndarray, bool]) -> None:
    path, full, memmapped = layout_case
    with TiffImage(path) as img:
        assert img.shape == (H, W) and img.samples == full.shape[2]
        assert img.dtype == full.dtype.newbyteorder("=")
        assert img.info.memmappable is memmapped
        for y0, y1, x0, x1 in _windows(np.random.default_rng(7), 25):
            got = img.read_window(y0, y1, x0, x1)
            want = full[max(0, y0):y1, max(0, x0):x1]
            assert got.dtype == img.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        last = full.shape[2] - 1
        np.testing.assert_array_equal(img.read_window(20, 90, 30, 170, channels=[last, 0]),
                                      full[20:90, 30:170][:, :, [last, 0]])
        assert img.read_window(50, 50, 0, W).shape == (0, W, full.shape[2])


def test_iter_rows_covers_the_image_exactly(layout_case: tuple[Path, np.ndarray, bool]) -> None:
    path, full, _ = layout_case
    with TiffImage(path, cache_bytes=1) as img:  # tiny cache: every segment evicted at once
        starts, blocks = zip(*img.iter_rows(36, channels=[0]))
    assert starts == (0, 36, 72, 108, 144)
    np.testing.assert_array_equal(np.concatenate(blocks), full[:, :, :1])


@pytest.mark.parametrize("window", [(0, 120, 0, W), (0, 120, 10, W)], ids=["rows", "window"])
def test_a_contiguous_file_cut_short_after_opening_is_an_input_error(
        tmp_path: Path, window: tuple[int, int, int, int]) -> None:
    """Whole-row reads go straight into the result; a file truncated under the reader (a
    copy still arriving, another process rewriting it) must say so, not return stale zeros."""
    data = _image("uint16", 3, seed=5)
    path = tmp_path / "contiguous.tif"
    tifffile.imwrite(path, data, photometric="rgb", metadata=None)
    with TiffImage(path) as img:
        assert img.info.memmappable
        np.testing.assert_array_equal(img.read_window(0, 120, 0, W), data[:120])
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - data[H // 2:].nbytes)
        with pytest.raises(InputDataError, match="file shorter than its header says"):
            img.read_window(*window)


def test_concurrent_window_reads_agree(tmp_path: Path) -> None:
    data = _image("uint8", 3, seed=3)
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=8, compression="lzw")
    windows = _windows(np.random.default_rng(1), 40)
    with TiffImage(path, cache_bytes=4096) as img, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda win: img.read_window(*win), windows))
    for (y0, y1, x0, x1), got in zip(windows, results, strict=True):
        np.testing.assert_array_equal(got, data[max(0, y0):y1, max(0, x0):x1])


def test_colour_channels_exclude_alpha(tmp_path: Path) -> None:
    cases = {"rgb": ("uint8", 3, {"photometric": "rgb"}, (0, 1, 2)),
             "rgba": ("uint8", 4, {"photometric": "rgb", "extrasamples": ("unassalpha",)},
                      (0, 1, 2)),
             "gray-alpha": ("uint16", 2, {"photometric": "minisblack",
                                          "extrasamples": ("unassalpha",)}, (0,)),
             "gray": ("float32", 1, {}, (0,))}
    for name, (dtype, samples, options, want) in cases.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, _image(dtype, samples), **options)
        with TiffImage(path) as img:
            assert img.color_channels() == want, name


def test_info_describes_the_header(tmp_path: Path) -> None:
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, _image("uint16", 3), photometric="rgb", tile=(32, 64),
                     compression="zlib")
    info = tiffio.read_info(path)
    assert (info.height, info.width, info.samples, info.dtype) == (H, W, 3, "uint16")
    assert info.tiled and info.segment_shape == (32, 64) and info.n_segments == 5 * 4
    assert info.compression == "ADOBE_DEFLATE" and not info.memmappable
    assert info.decoded_bytes == H * W * 3 * 2 and info.largest_segment_bytes == 32 * 64 * 3 * 2
    assert info.file_bytes == path.stat().st_size and info.to_json()["photometric"] == "RGB"


@pytest.mark.parametrize("kind", sorted(CORRUPT_KINDS))
def test_corrupt_inputs_raise_input_data_error(tmp_path: Path, kind: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = make_corrupt(tmp_path, kind)
    # some damage only shows when pixels are decoded
    with pytest.raises(InputDataError) as info, TiffImage(path) as img:
        for _ in img.iter_rows(64):
            pass
    # our message is the only report: tifffile's own diagnostics would print before it
    assert [r.getMessage() for r in caplog.records if r.name == "tifffile"] == []
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert CORRUPT_KINDS[kind] in message
    assert info.value.exit_code == 65
    assert tiffio.check_readable(path) is False


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="cannot read file"):
        TiffImage(tmp_path / "absent.tif")


# ------------------------------------------------------------------------------ writing
def _blocks(data: np.ndarray, rows: int) -> list[np.ndarray]:
    return [data[y:y + rows] for y in range(0, data.shape[0], rows)]


@pytest.mark.parametrize(("shape", "dtype", "compression"), [
    ((70, 50), "uint8", None),
    ((33, 16), "uint16", "zlib"),
    ((1, 45), "float32", None),
    ((64, 64), "uint32", "zstd"),
])
def test_write_tiled_round_trips(tmp_path: Path, shape: tuple[int, int], dtype: str,
                                 compression: str | None) -> None:
    data = _image(dtype, 1)[:shape[0], :shape[1]]
    out = tmp_path / "out" / "tiled.tif"
    tiffio.write_tiled(out, shape, np.dtype(dtype), iter(_blocks(data, 16)), tile=16,
                       compression=compression, description="hello")
    with tifffile.TiffFile(out) as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (16, 16)
        assert page.description == "hello" and not tif.is_bigtiff
        np.testing.assert_array_equal(page.asarray(), data)
    with TiffImage(out) as img:
        np.testing.assert_array_equal(img.read_window(0, shape[0], 0, shape[1])[:, :, 0], data)
    assert [p.name for p in out.parent.iterdir()] == ["tiled.tif"]


@pytest.mark.parametrize("bad", ["short-block", "wide-block", "missing-rows"])
def test_write_tiled_rejects_wrong_blocks_and_leaves_nothing(tmp_path: Path, bad: str) -> None:
    data = _image("uint8", 1)[:40, :30]
    blocks = _blocks(data, 16)
    if bad == "short-block":
        blocks[0] = blocks[0][:10]
    elif bad == "wide-block":
        blocks[1] = np.pad(blocks[1], ((0, 0), (0, 1)))
    else:
        blocks = blocks[:-1]
    with pytest.raises(ValueError, match="write_tiled"):
        tiffio.write_tiled(tmp_path / "t.tif", data.shape, data.dtype, iter(blocks), tile=16)
    assert list(tmp_path.iterdir()) == []


def test_write_tiled_switches_to_bigtiff_above_the_threshold(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    assert tiffio.BIGTIFF_BYTES < 2**31 < 2**32  # classic TIFF offsets are 32-bit
    data = _image("uint16", 1)[:48, :40]
    nbytes = data.nbytes
    for threshold, big in ((nbytes, False), (nbytes - 1, True)):
        monkeypatch.setattr(tiffio, "BIGTIFF_BYTES", threshold)
        out = tmp_path / f"big{big}.tif"
        tiffio.write_tiled(out, data.shape, data.dtype, iter(_blocks(data, 16)), tile=16)
        with tifffile.TiffFile(out) as tif:
            assert tif.is_bigtiff is big
        np.testing.assert_array_equal(tifffile.imread(out), data)
        assert tiffio.check_readable(out)


def test_write_pages_round_trip(tmp_path: Path) -> None:
    levels = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 2), np.float32)]
    tiffio.write_pages(tmp_path / "p.tif", levels, description='{"a": 1}')
    back = tiffio.read_pages(tmp_path / "p.tif")
    assert len(back) == 2 and all(np.array_equal(a, b) for a, b in zip(back, levels,
                                                                        strict=True))
    with pytest.raises(InputDataError, match="cannot read"):
        tiffio.read_pages(make_corrupt(tmp_path, "text"))


# ------------------------------------------------------------------------------ channels
def _choice(pair: synth.SynthResult) -> tiffio.ChannelChoice:
    with TiffImage(pair.pre_path) as pre, TiffImage(pair.post_path) as post:
        return tiffio.choose_channels([tiffio.channel_signal(pre), tiffio.channel_signal(post)])


@pytest.mark.parametrize(("mode", "dye", "signal_channels", "want"), [
    ("rgb8", "SybrGld", None, (1,)),
    ("rgb8", "DAPI", None, (2,)),
    ("rgb8", "Cy5", None, (0,)),
    ("rgba8", "DAPI", None, (2,)),
    ("rgb16", "Cy5", None, (0,)),
    ("rgb16", "SybrGld", None, (1,)),
    ("gray8", "SybrGld", None, (0,)),
    ("gray16", "DAPI", None, (0,)),
    ("float32", "Cy5", None, (0,)),
    ("rgb8", "SybrGld", "rg", (0, 1)),
    ("rgb16", "DAPI", "gb", (1, 2)),
])
def test_channel_choice_follows_the_dye(tmp_path: Path, mode: str, dye: str,
                                        signal_channels: str | None,
                                        want: tuple[int, ...]) -> None:
    pair = make_pair(tmp_path, channel_mode=mode, dye=dye, signal_channels=signal_channels,
                     width=160, height=128, pre_width=150, pre_height=140)
    choice = _choice(pair)
    assert choice.channels == want
    assert choice.summed is (len(want) > 1)
    assert choice.to_json()["channels"] == list(want)


def test_channel_choice_is_joint_for_the_pair() -> None:
    # pre alone would pick red and post alone green; the pair must agree on one answer
    pre, post = np.array([10.0, 2.0, 0.0]), np.array([2.0, 10.0, 0.0])
    assert tiffio.choose_channels([pre]).channels == (0,)
    assert tiffio.choose_channels([post]).channels == (1,)
    joint = tiffio.choose_channels([pre, post])
    assert joint.channels == (0, 1) and joint.summed and "summed" in joint.reason
    # a dim pre (autofluorescence only) follows the bright post's channel
    assert tiffio.choose_channels([np.array([1.0, 3.0, 0.5]),
                                   np.array([1.0, 30.0, 1.0])]).channels == (1,)
    dark = tiffio.choose_channels([np.zeros(3), np.zeros(3)])
    assert dark.channels == (0,) and "no channel carries signal" in dark.reason


def test_channel_signal_ignores_a_constant_offset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.zeros((H, W, 3), np.uint8)
    data[..., 0] = 40  # a dark level, no fluorescence
    data[..., 1] = rng.integers(0, 200, (H, W), dtype=np.uint8)
    path = tmp_path / "offset.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    with TiffImage(path) as img:
        strength = tiffio.channel_signal(img)
    assert strength[0] == 0.0 and strength[2] == 0.0 and strength[1] > 50


@pytest.mark.parametrize(("dtype", "summed_dtype", "value"), [
    ("uint8", "uint16", 255), ("uint16", "uint32", 65535), ("float32", "float32", 100.5)])
def test_summed_channels_are_widened_never_clipped(dtype: str, summed_dtype: str,
                                                   value: float) -> None:
    assert tiffio.signal_dtype(np.dtype(dtype), 1) == np.dtype(dtype)
    out_dtype = tiffio.signal_dtype(np.dtype(dtype), 2)
    assert out_dtype == np.dtype(summed_dtype)
    block = np.full((2, 3, 2), value, dtype)
    summed = tiffio.to_signal(block, out_dtype)
    assert summed.dtype == out_dtype and summed.shape == (2, 3)
    assert summed.max() == 2 * value
    np.testing.assert_array_equal(tiffio.to_signal(block[:, :, :1], np.dtype(dtype)),
                                  block[:, :, 0])


def test_two_channel_8bit_dye_sum_exceeds_255(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, signal_channels="rg", k=3.0, microbe_coverage=0.1)
    choice = _choice(pair)
    dtype = tiffio.signal_dtype(np.dtype(np.uint8), len(choice.channels))
    with TiffImage(pair.post_path) as img:
        raw = img.read_window(0, SMALL.height, 0, SMALL.width, choice.channels)
    summed = tiffio.to_signal(raw, dtype)
    assert summed.dtype == np.uint16 and int(summed.max()) > 255
    np.testing.assert_array_equal(summed, raw[..., 0].astype(np.uint16) + raw[..., 1])


def test_a_segment_decoded_by_two_threads_at_once_is_counted_once(tmp_path: Path) -> None:
    """Two threads that miss the cache for the same segment both decode it (outside the lock);
    the cache must still count its bytes once, or the overcount evicts everything else from
    then on (stage 1's strip threads and stage 3's patches read concurrently)."""
    import threading

    data = _image("uint8", 3, seed=5)
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=8, compression="lzw")
    with TiffImage(path) as img:
        page = img._page
        decode = page.decode
        both = threading.Barrier(2, timeout=10)

        def decode_together(*args: object, **kwargs: object) -> object:
            both.wait()  # neither inserts before the other has decoded
            return decode(*args, **kwargs)

        page.decode = decode_together  # type: ignore[method-assign]
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda _: img.read_window(0, 8, 0, data.shape[1]), range(2)))
        page.decode = decode  # type: ignore[method-assign]
        for block in got:
            np.testing.assert_array_equal(block, data[:8])
        assert img._cached == sum(seg.nbytes for seg in img._cache.values())


def test_windows_take_channels_by_negative_index_too(tmp_path: Path) -> None:
    data = _image("uint8", 3, seed=7)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(16, 16))
    with TiffImage(path) as img:
        np.testing.assert_array_equal(img.read_window(0, 20, 0, 30, channels=[-1]),
                                      data[:20, :30, 2:3])
        np.testing.assert_array_equal(img.read_window(0, 20, 0, 30, channels=[1, 2]),
                                      data[:20, :30, 1:3])
