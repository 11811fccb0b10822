"""Tests of the streamed FITS writer and its headers (exo2micro.io.fitsio)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import pytest
from astropy.io import fits

from exo2micro import params as P
from exo2micro.errors import InputDataError
from exo2micro.io import fitsio

OVERRIDES = {"pad": 25, "boundary_width": 20, "use_edges": False, "angle_step": 0.5,
             "stopdelta": 1e-8, "manual_scale": 1.7}


def _data(h: int = 61, w: int = 47) -> np.ndarray:
    rng = np.random.default_rng(2)
    data = rng.normal(0.0, 100.0, (h, w)).astype(np.float32)
    data[0, 0], data[-1, -1] = np.float32(3.4e38), np.float32(-1e-30)
    return data


def _write(path: Path, data: np.ndarray, rows: int = 16, **header: object) -> None:
    hdr = fitsio.make_header(sample="CD070", dye="SybrGld", stage=4,
                             params=P.resolve(OVERRIDES), **header)  # type: ignore[arg-type]
    blocks = (data[y:y + rows] for y in range(0, data.shape[0], rows))
    fitsio.write_streamed(path, data.shape, hdr, blocks)


def test_streamed_write_reads_back_identically_with_every_header_key(tmp_path: Path) -> None:
    data = _data()
    path = tmp_path / "fits" / "04_difference.fits"
    _write(path, data, scale=1.3456, scale_kind="moffat", accuracy_px=0.12)
    with fits.open(path) as hdul:
        assert len(hdul) == 1
        np.testing.assert_array_equal(hdul[0].data, data)
        hdr = hdul[0].header
    assert (hdr["SAMPLE"], hdr["DYE"], hdr["STAGE"]) == ("CD070", "SybrGld", 4)
    assert hdr["SCALE"] == 1.3456 and hdr["SCALEKND"] == "moffat" and hdr["IACC"] == 0.12
    assert hdr["PAD"] == 25
    created = datetime.strptime(hdr["CREATED"], "%Y-%m-%dT%H:%M:%S")
    assert abs(created - datetime.now(timezone.utc).replace(tzinfo=None)).total_seconds() < 120
    expected = {f"P_{P.BY_NAME[n].abbr.upper()}": v for n, v in P.resolve(OVERRIDES).items()
                if n in OVERRIDES}
    assert {k: hdr[k] for k in hdr if k.startswith("P_")} == expected
    assert hdr.comments["P_BW"] == "boundary_width"
    assert [p.name for p in path.parent.iterdir()] == ["04_difference.fits"]


def test_created_is_utc_whatever_the_local_zone(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: never equal to UTC
    time.tzset()
    try:
        hdr = fitsio.make_header(sample="s", dye="d", stage=3, params=P.resolve())
    finally:
        monkeypatch.undo()
        time.tzset()
    created = datetime.strptime(hdr["CREATED"], "%Y-%m-%dT%H:%M:%S")
    assert abs(created - datetime.now(timezone.utc).replace(tzinfo=None)).total_seconds() < 120


def test_defaults_give_no_parameter_keys_and_optional_keys_stay_out(tmp_path: Path) -> None:
    hdr = fitsio.make_header(sample="s", dye="d", stage=2, params=P.resolve())
    assert not [k for k in hdr if k.startswith("P_")]
    assert "SCALE" not in hdr and "IACC" not in hdr and hdr["PAD"] == 0


def test_fits_image_reads_windows(tmp_path: Path) -> None:
    data = _data()
    path = tmp_path / "img.fits"
    _write(path, data, rows=7)
    with fitsio.FitsImage(path) as img:
        assert img.shape == data.shape and img.dtype == np.float32
        np.testing.assert_array_equal(img.read_window(5, 30, 10, 47)[:, :, 0], data[5:30, 10:])
        assert img.header["SAMPLE"] == "CD070"


def test_row_count_mismatch_leaves_no_file(tmp_path: Path) -> None:
    data = _data()
    hdr = fitsio.make_header(sample="s", dye="d", stage=4, params=P.resolve())
    with pytest.raises(ValueError, match="expected 61"):
        fitsio.write_streamed(tmp_path / "short.fits", data.shape, hdr, iter([data[:30]]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_check_readable_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.fits"
    _write(path, _data())
    assert fitsio.check_readable(path)
    whole = path.read_bytes()
    for name, content in {"truncated.fits": whole[:len(whole) - 5000],
                          "header-only.fits": whole[:2880],
                          "empty.fits": b"", "text.fits": b"not a fits file\n" * 300}.items():
        (tmp_path / name).write_bytes(content)
        assert fitsio.check_readable(tmp_path / name) is False, name
    with pytest.raises(InputDataError, match=r"text\.fits: not a readable FITS file"):
        fitsio.FitsImage(tmp_path / "text.fits")


def test_fits_image_windows_match_astropy_for_scaled_integers(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(0, 65535, (50, 120)).astype(np.uint16)
    path = tmp_path / "u16.fits"
    fits.PrimaryHDU(data).writeto(path)  # stored as int16 with BZERO = 32768
    with fitsio.FitsImage(path) as img:
        assert img.shape == (50, 120)
        wide = img.read_window(-3, 60, 0, 120)[:, :, 0]
        narrow = img.read_window(10, 20, 100, 130)[:, :, 0]
    np.testing.assert_array_equal(wide, data.astype(np.float32))
    np.testing.assert_array_equal(narrow, data[10:20, 100:].astype(np.float32))


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_fits_image_refuses_truncated_and_non_2d(tmp_path: Path) -> None:
    path = tmp_path / "ok.fits"
    _write(path, _data())
    (tmp_path / "cut.fits").write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(InputDataError, match=r"cut\.fits: FITS file is truncated"):
        fitsio.FitsImage(tmp_path / "cut.fits")
    fits.PrimaryHDU(np.zeros((2, 3, 4), np.float32)).writeto(tmp_path / "cube.fits")
    with pytest.raises(InputDataError, match="not 2-D"):
        fitsio.FitsImage(tmp_path / "cube.fits")


def test_reading_a_large_fits_does_not_grow_the_resident_set(tmp_path: Path) -> None:
    """Reading every row of a 256 MiB image in 512-row windows keeps RSS flat: no memory map
    (mapped pages count in RSS, which is what cgroups and Nextflow's trace charge)."""
    h, w = 8192, 8192
    path = tmp_path / "big.fits"
    block = np.random.default_rng(0).random((512, w), dtype=np.float32)
    hdr = fitsio.make_header(sample="s", dye="d", stage=3, params=P.resolve())
    fitsio.write_streamed(path, (h, w), hdr, (block for _ in range(h // 512)))
    before = psutil.Process().memory_info().rss
    total = 0.0
    with fitsio.FitsImage(path) as img:
        for y0 in range(0, h, 512):
            total += float(img.read_window(y0, y0 + 512, 0, w)[::64, ::64].sum())
        grown = psutil.Process().memory_info().rss - before
    assert total > 0
    assert grown < 64 << 20, f"RSS grew by {grown / 2**20:.0f} MiB while reading 256 MiB"
