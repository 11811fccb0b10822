"""FITS output for astronomers' tools: streamed writing with exo2micro's header keys.

Images are written with :class:`astropy.io.fits.StreamingHDU`, one row block at a time, so a
30 000 × 25 000 float32 image never exists in memory. Row 0 of our arrays (the top image row)
is the first FITS row, as ``astropy.io.fits.writeto`` would store it.

Header keys (SPEC §6): SAMPLE, DYE, STAGE, CREATED, SCALE and SCALEKND (scale kind), IACC
(estimated alignment accuracy, px), PAD, and one ``P_<ABBR>`` key per non-default parameter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from astropy.io import fits

from exo2micro.atomic import atomic_path
from exo2micro.errors import InputDataError
from exo2micro.params import BY_NAME, non_default


def make_header(*, sample: str, dye: str, stage: int, params: Mapping[str, Any],
                scale: float | None = None, scale_kind: str | None = None,
                accuracy_px: float | None = None) -> fits.Header:
    """The exo2micro FITS header for one image."""
    hdr = fits.Header()
    hdr["SAMPLE"] = (sample, "sample id")
    hdr["DYE"] = (dye, "dye / channel name")
    hdr["STAGE"] = (stage, "exo2micro stage that wrote this image")
    hdr["CREATED"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "UTC creation time")
    hdr["PAD"] = (int(params.get("pad", 0)), "px added around the raw post frame")
    if scale is not None:
        hdr["SCALE"] = (float(scale), "k subtracted: post - k * aligned_pre")
        hdr["SCALEKND"] = (scale_kind or "moffat", "how k was obtained")
    if accuracy_px is not None:
        hdr["IACC"] = (float(accuracy_px), "estimated alignment accuracy (px)")
    for name, value in non_default(params).items():
        hdr[f"P_{BY_NAME[name].abbr.upper()}"[:8]] = (value, name)
    return hdr


def write_streamed(path: str | os.PathLike[str], shape: tuple[int, int], header: fits.Header,
                   blocks: Iterable[np.ndarray]) -> None:
    """Write a float32 image from consecutive full-width row blocks, atomically."""
    h, w = shape
    hdr = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", w),
                       ("NAXIS2", h)])
    hdr.extend(header)
    with atomic_path(path) as tmp:
        hdu = fits.StreamingHDU(str(tmp), hdr)
        rows = 0
        try:
            for block in blocks:
                rows += block.shape[0]
                hdu.write(np.ascontiguousarray(block, dtype=">f4"))
        finally:
            hdu.close()
        if rows != h:
            raise ValueError(f"write_streamed: got {rows} rows, expected {h}")


class FitsImage:
    """Window reads of a 2-D FITS image through a memory map (mirrors TiffImage's API)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            self._hdul = fits.open(self.path, memmap=True, mode="readonly")
            data = self._hdul[0].data
        except Exception as exc:
            raise InputDataError(f"{self.path}: not a readable FITS file ({exc})") from None
        if data is None or data.ndim != 2:
            self._hdul.close()
            raise InputDataError(f"{self.path}: FITS primary image is not 2-D")
        self._data = data
        self.header = self._hdul[0].header

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._data.shape[0]), int(self._data.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._data.dtype.newbyteorder("="))

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as ``(h, w, 1)`` in native byte order."""
        return np.asarray(self._data[max(0, y0):y1, max(0, x0):x1], dtype=self.dtype)[..., None]

    def close(self) -> None:
        self._data = None
        self._hdul.close()

    def __enter__(self) -> FitsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_readable(path: str | os.PathLike[str]) -> bool:
    """Header parses and the file holds all the data it declares."""
    try:
        with fits.open(path, memmap=True) as hdul:
            hdu = hdul[0]
            need = hdu._data_offset + hdu._data_size
            return os.path.getsize(path) >= need and hdu.data is not None
    except Exception:
        return False
