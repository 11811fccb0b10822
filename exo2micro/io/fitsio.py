"""FITS output for astronomers' tools: streamed writing with exo2micro's header keys.

Images are written with :class:`astropy.io.fits.StreamingHDU`, one row block at a time, so a
30 000 × 25 000 float32 image never exists in memory. Row 0 of our arrays (the top image row)
is the first FITS row, as ``astropy.io.fits.writeto`` would store it.

Header keys (docs/output.md): SAMPLE, DYE, STAGE, CREATED, SCALE and SCALEKND (scale kind), IACC
(estimated alignment accuracy, px), PAD, and one ``P_<ABBR>`` key per non-default parameter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io.atomic import atomic_path
from exo2micro.params import BY_NAME, non_default

if TYPE_CHECKING:  # astropy is imported where FITS is read or written: TIFF-only runs skip it
    from astropy.io import fits


def make_header(*, sample: str, dye: str, stage: int, params: Mapping[str, Any],
                scale: float | None = None, scale_kind: str | None = None,
                accuracy_px: float | None = None) -> fits.Header:
    """The exo2micro FITS header for one image."""
    from astropy.io import fits

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
    from astropy.io import fits

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
    """Window reads of a 2-D FITS primary image (mirrors :class:`~exo2micro.io.tiffio.TiffImage`).

    Only the header is parsed by astropy; pixels are read with ``os.pread`` of just the rows a
    window covers, never through a memory map: mapped file pages count in the process's
    resident set, so reading a 3 GB image through a map shows (and is charged, by cgroups and
    schedulers) as 3 GB of RSS. Reads are thread-safe (no shared file position).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from astropy.io import fits

        self.path = str(path)
        try:
            with fits.open(self.path, memmap=True, mode="readonly") as hdul:
                hdu = hdul[0]
                self.header = hdu.header.copy()
                offset, size = int(hdu._data_offset), int(hdu._data_size)
        except Exception as exc:
            raise InputDataError(f"{self.path}: not a readable FITS file ({exc})") from None
        hdr = self.header
        if hdr.get("NAXIS") != 2:
            raise InputDataError(f"{self.path}: FITS primary image is not 2-D")
        bitpix = int(hdr["BITPIX"])
        if bitpix not in _BITPIX:
            raise InputDataError(f"{self.path}: unsupported FITS BITPIX {bitpix}")
        self._file_dtype = np.dtype(_BITPIX[bitpix])
        self._scale = (float(hdr.get("BSCALE", 1.0)), float(hdr.get("BZERO", 0.0)))
        self._shape = (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))
        self._row_bytes = self._shape[1] * self._file_dtype.itemsize
        if size < self._shape[0] * self._row_bytes or os.path.getsize(self.path) < offset + size:
            raise InputDataError(f"{self.path}: FITS file is truncated")
        self._offset = offset
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        if self._scale != (1.0, 0.0) or self._file_dtype.kind != "f":
            return np.dtype(np.float32 if self._file_dtype.itemsize <= 2 else np.float64)
        return self._file_dtype.newbyteorder("=")

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (clipped to the image) as ``(h, w, 1)``, native order."""
        if self._fd is None:
            raise ValueError(f"{self.path}: image is closed")
        h, w = self._shape
        y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        rows, cols = max(0, y1 - y0), max(0, x1 - x0)
        item = self._file_dtype.itemsize
        out = np.empty((rows, cols), self.dtype)
        if rows == 0 or cols == 0:
            return out[..., None]
        if cols * 4 >= w:  # wide window: one read of the full rows
            data = os.pread(self._fd, rows * self._row_bytes, self._offset + y0 * self._row_bytes)
            out[:] = np.frombuffer(data, self._file_dtype).reshape(rows, w)[:, x0:x1]
        else:  # narrow window: one read per row
            for i in range(rows):
                at = self._offset + (y0 + i) * self._row_bytes + x0 * item
                out[i] = np.frombuffer(os.pread(self._fd, cols * item, at), self._file_dtype)
        if self._scale != (1.0, 0.0):
            out *= self._scale[0]
            out += self._scale[1]
        return out[..., None]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FitsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: FITS BITPIX -> big-endian numpy dtype of the stored pixels.
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def check_readable(path: str | os.PathLike[str]) -> bool:
    """Header parses and the file holds all the data it declares."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True) as hdul:
            hdu = hdul[0]
            need = hdu._data_offset + hdu._data_size
            return os.path.getsize(path) >= need and hdu.data is not None
    except Exception:
        return False
