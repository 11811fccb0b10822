"""Lazy TIFF reading in windows and strips, signal-channel choice, and a streaming tiled writer.

Reading
-------
:class:`TiffImage` opens the first image of a TIFF without decoding pixels, validates its header
(size, sample format, segment table against the file size) and then reads any window
``[y0:y1, x0:x1]`` by decoding only the strips or tiles that overlap it:

* uncompressed contiguous files (most microscope exports) are read with ``os.pread`` of just
  the rows (or row pieces) a window covers — not memory-mapped, because mapped file pages count
  as the process's resident memory (and against cgroup limits) for as long as they stay mapped;
* strip- or tile-organised files decode the overlapping segments; decoded segments are kept in a
  small LRU cache (``cache_bytes``, default 256 MiB, at least one segment) so that reading a
  file strip after strip (:meth:`TiffImage.iter_rows`) decodes every segment once;
* a file stored as a single compressed strip must be decoded whole, once; that costs one full
  decoded copy of the image in memory, which the memory model accounts for.

Segment reads are serialised by a lock (the file handle is shared); decoding happens outside
the lock, so several threads may read windows of the same image concurrently.

Writing
-------
:func:`write_tiled` writes an image given as an iterator of full-width row blocks to a tiled
(BigTIFF when needed) file atomically. Only one block is held at a time.
"""

from __future__ import annotations

import contextlib
import enum
import io
import itertools
import logging
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile

from exo2micro.errors import InputDataError, InsufficientMemoryError
from exo2micro.io.atomic import atomic_path
from exo2micro.resources import native_threads

#: Largest accepted image side (px); larger headers are treated as corrupt.
MAX_SIDE = 500_000
#: Largest accepted pixel count (height × width): 2^33 px is ≈ 3 × a 30 000 × 25 000 image
#: per side squared beyond anything a slide scanner writes; more is a hostile header.
MAX_PIXELS = 2**33
#: Default tile size (px) of the tiled checkpoints we write.
TILE = 512
#: Uncompressed size (bytes) above which :func:`write_tiled` writes a BigTIFF (classic TIFF
#: offsets are 32-bit; the margin covers tile padding and headers).
BIGTIFF_BYTES = 2**31 - 2**25
_SUPPORTED_KINDS = {"u", "i", "f"}


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of one TIFF image (no pixels read)."""

    path: str
    height: int
    width: int
    samples: int
    dtype: str
    photometric: str
    compression: str
    tiled: bool
    segment_shape: tuple[int, int]
    n_segments: int
    memmappable: bool
    file_bytes: int

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the whole decoded image (all samples)."""
        return self.height * self.width * self.samples * np.dtype(self.dtype).itemsize

    @property
    def largest_segment_bytes(self) -> int:
        """Bytes of one decoded strip or tile (the unit that must be decoded at once)."""
        h, w = self.segment_shape
        return h * w * self.samples * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: Default budget of a reader's decoded-segment cache (bytes). A segment larger than this (a
#: raw file stored as one compressed strip) is still cached whole: it must be decoded at once.
READER_CACHE_BYTES = 256 << 20


class TiffImage:
    """Read-only, lazy access to the full-resolution image of a TIFF file.

    The image is the largest series (:func:`_select_planes`); its colour channels are the
    samples of one page (RGB) or one page per channel (OME-TIFF ``CYX``, ImageJ hyperstacks,
    and a plain multi-page TIFF with ``pages_as_channels``). :attr:`physical` holds the pixel
    size, channel names and exposure times its metadata states.

    Raises :class:`InputDataError` (exit 65) naming the file when it is empty, not a TIFF,
    truncated, a z-stack or time series, or has an absurd or unsupported header. Use as a
    context manager.
    """

    def __init__(self, path: str | os.PathLike[str], cache_bytes: int | None = None, *,
                 pages_as_channels: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = READER_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._cached = 0
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:  # permission, folder, device: fail here, plainly
                head = fh.read(8)
        except OSError as exc:
            raise InputDataError(f"{self.path}: cannot read file "
                                 f"({exc.strerror or type(exc).__name__})") from None
        if size == 0:
            raise InputDataError(f"{self.path}: file is empty (0 bytes)")
        with _tifffile_quiet():
            try:
                self._tif = tifffile.TiffFile(self.path)
            except Exception as exc:
                raise InputDataError(f"{self.path}: not a readable TIFF file ({_short(exc)}; "
                                     f"first bytes {head!r})") from None
            try:
                self._page = self._validate(size, pages_as_channels)
            except InputDataError:
                self._tif.close()
                raise
        self._fd: int | None = None
        if self.info.memmappable:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._offset = int(self._page.dataoffsets[0])

    # ----------------------------------------------------------------------------- header
    def _validate(self, file_bytes: int, pages_as_channels: bool) -> tifffile.TiffPage:
        try:
            if len(self._tif.pages) == 0:
                raise InputDataError(f"{self.path}: TIFF contains no image")
            series, pages = _select_planes(self.path, self._tif, pages_as_channels)
        except InputDataError:
            raise
        except Exception as exc:
            raise InputDataError(f"{self.path}: corrupt TIFF header ({_short(exc)})") from None
        page = pages[0]
        for other in pages[1:]:
            if (other.shape != page.shape or other.dtype != page.dtype
                    or other.is_tiled != page.is_tiled or other.samplesperpixel != 1
                    or other.rowsperstrip != page.rowsperstrip
                    or (other.tilelength, other.tilewidth) != (page.tilelength, page.tilewidth)):
                raise InputDataError(f"{self.path}: its channel pages differ in size, pixel "
                                     f"type or layout; save each channel as its own file")
        self._pages = pages
        h, w = int(page.imagelength), int(page.imagewidth)
        samples = int(page.samplesperpixel) if len(pages) == 1 else len(pages)
        if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or h * w > MAX_PIXELS:
            raise InputDataError(f"{self.path}: implausible image size {w}×{h} px in header")
        if not isinstance(page.compression, enum.Enum):
            raise InputDataError(f"{self.path}: unsupported compression code "
                                 f"{int(page.compression)} in header (re-save the image "
                                 f"uncompressed, LZW, deflate or zstd)")
        if not 1 <= samples <= 8:
            raise InputDataError(f"{self.path}: implausible {samples} samples per pixel")
        if page.dtype is None or page.dtype.kind not in _SUPPORTED_KINDS or page.imagedepth != 1:
            raise InputDataError(f"{self.path}: unsupported pixel format "
                                 f"({page.bitspersample}-bit, sample format {page.sampleformat},"
                                 f" depth {page.imagedepth})")
        offsets = [int(o) for p in pages for o in p.dataoffsets]
        counts = [int(c) for p in pages for c in p.databytecounts]
        if len(offsets) == 0 or len(offsets) != len(counts):
            raise InputDataError(f"{self.path}: TIFF has no pixel data")
        end = max(o + c for o, c in zip(offsets, counts))
        if end > file_bytes:
            raise InputDataError(f"{self.path}: file is truncated (pixel data needs {end} bytes, "
                                 f"file has {file_bytes})")
        planar_separate = (page.planarconfig == 2 or len(pages) > 1) and samples > 1
        self._separate = planar_separate
        self._file_dtype = np.dtype(self._tif.byteorder + page.dtype.char)
        self._normal_shape = (h, w, samples)
        if page.is_tiled:
            seg = (int(page.tilelength), int(page.tilewidth))
        else:
            seg = (min(int(page.rowsperstrip), h), w)
        if min(seg) <= 0:
            raise InputDataError(f"{self.path}: corrupt header: "
                                 f"{'tile size' if page.is_tiled else 'rows per strip'} "
                                 f"{seg[0]}×{seg[1]}")
        self._seg = seg
        self._grid = (-(-h // seg[0]), -(-w // seg[1]))
        expected = self._grid[0] * self._grid[1] * (samples if planar_separate else 1)
        if len(pages) > 1:
            expected = self._grid[0] * self._grid[1] * len(pages)
        if len(offsets) != expected:
            raise InputDataError(f"{self.path}: corrupt header: {len(offsets)} strips/tiles for "
                                 f"a {w}×{h} image that needs {expected}")
        need = h * w * samples * int(page.bitspersample) // 8
        if page.compression == 1 and sum(int(c) for c in counts) < need:
            raise InputDataError(f"{self.path}: corrupt header: uncompressed pixel data holds "
                                 f"{sum(int(c) for c in counts)} bytes, a {w}×{h}×{samples} "
                                 f"image needs {need}")
        memmappable = (bool(page.is_memmappable) and not planar_separate
                       and page.compression == 1 and len(pages) == 1)
        self.info = ImageInfo(
            path=str(self.path), height=h, width=w, samples=samples,
            dtype=str(page.dtype), photometric=page.photometric.name,
            compression=page.compression.name, tiled=bool(page.is_tiled), segment_shape=seg,
            n_segments=len(offsets), memmappable=memmappable, file_bytes=file_bytes)
        self._extrasamples = tuple(int(e) for e in (page.extrasamples or ()))
        self.physical = read_physical(self._tif, series, page, samples)
        return page

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.info.height, self.info.width

    @property
    def samples(self) -> int:
        return self.info.samples

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.info.dtype)

    def color_channels(self) -> tuple[int, ...]:
        """Sample indices that can carry fluorescence: alpha / extra samples are excluded."""
        n = self.samples - len(self._extrasamples)
        if n <= 0:
            n = self.samples
        if self.info.photometric in {"MINISBLACK", "MINISWHITE"} and n > 1 and self._extrasamples:
            n = 1
        return tuple(range(n))

    # ----------------------------------------------------------------------------- reading
    def read_window(self, y0: int, y1: int, x0: int, x1: int,
                    channels: Sequence[int] | None = None) -> np.ndarray:
        """Return pixels ``[y0:y1, x0:x1]`` as an array ``(h, w, n_channels)`` in native dtype.

        Bounds are clipped to the image; ``channels`` selects samples (default: all).
        """
        h, w = self.shape
        y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        chans = list(range(self.samples)) if channels is None else list(channels)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), len(chans)), self.dtype)
        if self._fd is not None:
            return self._read_contiguous(y0, y1, x0, x1, chans)
        out = np.empty((y1 - y0, x1 - x0, len(chans)), self.dtype)
        pick = _sample_index(chans)
        sh, sw = self._seg
        for ty in range(y0 // sh, (y1 - 1) // sh + 1):
            for tx in range(x0 // sw, (x1 - 1) // sw + 1):
                planes = chans if self._separate else [None]
                for k, plane in enumerate(planes):
                    seg = self._segment(ty, tx, 0 if plane is None else plane)
                    sy0, sx0 = ty * sh, tx * sw
                    ya, yb = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                    xa, xb = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                    part = seg[ya - sy0:yb - sy0, xa - sx0:xb - sx0]
                    if plane is None:
                        out[ya - y0:yb - y0, xa - x0:xb - x0] = part[:, :, pick]
                    else:
                        out[ya - y0:yb - y0, xa - x0:xb - x0, k] = part[:, :, 0]
        return out

    def _read_contiguous(self, y0: int, y1: int, x0: int, x1: int, chans: list[int]
                         ) -> np.ndarray:
        """Window of an uncompressed contiguous image by positioned reads (thread-safe)."""
        _, w, s = self._normal_shape
        item = self._file_dtype.itemsize
        row = w * s * item
        out = np.empty((y1 - y0, x1 - x0, len(chans)), self.dtype)
        if (x1 - x0, chans, self._file_dtype) == (w, list(range(s)), out.dtype):
            # whole rows of every sample, stored as returned: straight into ``out``, without
            # an intermediate bytes object (one copy and one fresh allocation less per read)
            self._read_into(memoryview(out).cast("B"), self._offset + y0 * row)
            return out
        if (x1 - x0) * 4 >= w:  # wide window: read whole rows in one call
            rows = (y0, y1)
            spans = [(self._offset + y0 * row, (y1 - y0) * row)]
        else:  # narrow window: one read per row, of just its columns
            rows = None
            spans = [(self._offset + y * row + x0 * s * item, (x1 - x0) * s * item)
                     for y in range(y0, y1)]
        buf = np.empty(spans[0][1], np.uint8)  # every span has the same size
        arr = buf.view(self._file_dtype)
        pick = _sample_index(chans)
        for i, (offset, _) in enumerate(spans):
            self._read_into(memoryview(buf), offset)
            if rows is not None:
                out[:] = arr.reshape(y1 - y0, w, s)[:, x0:x1][:, :, pick]
            else:
                out[i] = arr.reshape(x1 - x0, s)[:, pick]
        return out

    def _read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the file's bytes from ``offset`` (positioned reads, thread-safe)."""
        while view:
            done = os.preadv(self._fd, [view], offset)  # type: ignore[arg-type]
            if done == 0:
                raise InputDataError(f"{self.path}: read failed (file shorter than its header "
                                     f"says)")
            view, offset = view[done:], offset + done

    def _segment(self, ty: int, tx: int, plane: int) -> np.ndarray:
        """Decoded segment (rows, cols, samples) at grid position (ty, tx) of sample ``plane``
        (of a planar-separate page, or the page of channel ``plane``)."""
        if len(self._pages) > 1:
            page, index = self._pages[plane], ty * self._grid[1] + tx
        else:
            page = self._page
            index = plane * self._grid[0] * self._grid[1] + ty * self._grid[1] + tx
        key = (plane, index)
        with self._lock:  # the cache and the file position are shared between threads
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            if self.decodes_whole:
                self._check_memory_for_segment(int(page.databytecounts[index]))
            fh = self._tif.filehandle
            fh.seek(int(page.dataoffsets[index]))
            data = fh.read(int(page.databytecounts[index]))
        try:
            arr, _, _ = page.decode(data or None, index)
        except Exception as exc:
            raise InputDataError(f"{self.path}: cannot decode segment {index} "
                                 f"({_short(exc)})") from None
        if arr is None:  # sparse file: missing segment reads as zeros
            arr = np.zeros((1, *self._seg, 1 if self._separate else self.samples), self.dtype)
        seg = np.asarray(arr).reshape(arr.shape[-3:])
        with self._lock:
            if key in self._cache:  # another thread decoded it meanwhile: keep one, count once
                return self._cache[key]
            self._cache[key] = seg
            self._cached += seg.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        return seg

    def iter_rows(self, block_rows: int, channels: Sequence[int] | None = None
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(y0, block)`` for consecutive full-width row blocks of ``block_rows`` rows."""
        h, w = self.shape
        for y0 in range(0, h, block_rows):
            yield y0, self.read_window(y0, min(h, y0 + block_rows), 0, w, channels)

    def sample_rows(self, n_blocks: int, block_rows: int, channels: Sequence[int] | None = None
                    ) -> Iterator[np.ndarray]:
        """Yield ``n_blocks`` evenly spaced full-width row blocks (for cheap statistics)."""
        h, w = self.shape
        if h <= n_blocks * block_rows:
            starts: Iterable[int] = range(0, h, block_rows)
        else:
            starts = np.linspace(0, h - block_rows, n_blocks).astype(int)
        for y0 in starts:
            yield self.read_window(int(y0), int(y0) + block_rows, 0, w, channels)

    @property
    def decodes_whole(self) -> bool:
        """True when a single decoded segment exceeds the cache budget: the file (typically one
        compressed strip) holds that much decoded memory while it is read."""
        return not self.info.memmappable and self.info.largest_segment_bytes > self._cache_bytes

    def _check_memory_for_segment(self, encoded_bytes: int) -> None:
        """Refuse, before allocating, to decode a segment that cannot fit in memory."""
        from exo2micro.resources import available_memory

        need = self.info.largest_segment_bytes + encoded_bytes
        free, source = available_memory()
        if need > free:
            gib = 2**30
            raise InsufficientMemoryError(
                f"{self.path}: stored as one compressed strip that must be decoded whole "
                f"({need / gib:.1f} GiB with its encoded bytes) but only {free / gib:.1f} GiB "
                f"is available ({source}). Give the task more memory, or re-save the image "
                f"tiled or in strips, e.g. `tiffcp -r 64 in.tif out.tif` or tifffile "
                f"`imwrite(..., tile=(512, 512))`; exo2micro then reads it in pieces.")

    def drop_cache(self) -> None:
        """Free the decoded segments held for reuse (they are decoded again when needed)."""
        with self._lock:
            self._cache.clear()
            self._cached = 0

    def close(self) -> None:
        self.drop_cache()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()

    def __enter__(self) -> TiffImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OtherThreads(logging.Filter):
    """Drops the log records of the thread that created it."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextlib.contextmanager
def _tifffile_quiet() -> Iterator[None]:
    """Silence tifffile's own log messages (this thread only) while a header is read: a damaged
    header is reported once, by our :class:`InputDataError`, as the first line a tool prints."""
    logger, drop = logging.getLogger("tifffile"), _OtherThreads()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


#: Axes of a tifffile series that hold planes of unknown meaning (plain multi-page TIFFs).
_UNKNOWN_AXES = "IQ"
_AXIS_NAMES = {"Z": "z-slices", "T": "time points", "C": "channels", "I": "pages", "Q": "pages",
               "R": "tiles/positions", "A": "angles", "H": "phases", "E": "lambdas"}


def _main_series(tif: tifffile.TiffFile) -> tuple[int, tifffile.TiffPageSeries]:
    """The series of the full image: the one with the most pixels per plane (the first of
    equals). Label, macro and thumbnail series are smaller; a pyramidal series counts at its
    full resolution (its sub-resolution levels are not planes)."""
    sizes = [int(np.prod([n for a, n in zip(s.axes, s.shape) if a in "YX"]))
             for s in tif.series]
    index = int(np.argmax(sizes))
    return index, tif.series[index]


def _select_planes(path: Path, tif: tifffile.TiffFile, pages_as_channels: bool
                   ) -> tuple[int, list[tifffile.TiffPage]]:
    """(series index, its full-resolution pages, one per channel) of the image to read.

    Channels stored as pages (``CYX``: OME-TIFF from ASHLAR or palom, ImageJ hyperstacks)
    give one page per channel; channels stored as samples of one page give that page. A
    plain multi-page TIFF's pages count as channels only with ``pages_as_channels`` (the
    ``channel`` parameter is set). Z-stacks, time series and unlabelled stacks are refused
    with how to pick one plane.
    """
    index, series = _main_series(tif)
    extra = {a: int(n) for a, n in zip(series.axes, series.shape) if a not in "YXS" and n > 1}
    channel_axes = {"C", *(_UNKNOWN_AXES if pages_as_channels else "")}
    channel = [a for a in extra if a in channel_axes]
    other = {a: n for a, n in extra.items() if a not in channel_axes}
    planes = int(np.prod(list(extra.values()))) if extra else 1
    first = series.pages[0] if series.pages else tif.pages.first
    if other or len(channel) > 1 or (channel and "S" in series.axes):
        sizes = ", ".join(f"{n} {_AXIS_NAMES.get(a, a)}" for a, n in extra.items())
        what = ("a z-stack, time series or channel stack"
                if set(other) <= set(_UNKNOWN_AXES) else "more than one plane per channel")
        raise InputDataError(
            f"{path}: has {planes} image planes of {first.imagewidth}×{first.imagelength} px "
            f"({sizes}: {what}); exo2micro reads one plane per channel: for pages that are "
            f"channels set the parameter channel=N (index) or channel=NAME; otherwise save "
            f"the plane you want as its own file, e.g. "
            f"`tifffile.imwrite('plane.tif', tifffile.imread(path, key=N))` for plane N "
            f"(0 … {planes - 1}), or a maximum projection")
    pages = [p.aspage() for p in series.pages] if channel else [first.aspage()]
    if len(pages) != (extra[channel[0]] if channel else 1):
        raise InputDataError(f"{path}: corrupt header: series of shape {series.shape} has "
                             f"{len(pages)} pages")
    return index, pages


# ------------------------------------------------------------------------ physical metadata
@dataclass(frozen=True)
class Physical:
    """What an image's metadata says about its physical meaning.

    ``pixel_size_um``: size of one pixel along x (µm; ``None`` unknown) and ``source`` where
    it came from (``"OME-XML"``, ``"ImageJ"``, ``"resolution tags"`` or ``""``);
    ``channel_names`` and ``exposure_s`` (seconds) per colour channel, ``""``/``None`` where
    not stated.
    """

    pixel_size_um: float | None = None
    source: str = ""
    channel_names: tuple[str, ...] = ()
    exposure_s: tuple[float | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"pixel_size_um": self.pixel_size_um, "pixel_size_source": self.source or None,
                "channel_names": list(self.channel_names), "exposure_s": list(self.exposure_s)}


#: Length units (OME ``UnitsLength`` symbols and ImageJ spellings) in µm.
LENGTH_UM = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0,
             "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
#: Time units (OME ``UnitsTime``) in s.
TIME_S = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
#: Resolutions (px per inch) that image software writes when it knows nothing: not a size.
DEFAULT_DPI = (1.0, 72.0, 96.0, 150.0, 300.0, 600.0)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_physical(xml: str, image: int, n_channels: int) -> Physical:
    """Pixel size, channel names and exposure times of OME Image ``image``."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return Physical()
    images = [e for e in root if _local(e.tag) == "Image"]
    if not images:
        return Physical()
    pixels = next((e for e in images[min(image, len(images) - 1)] if _local(e.tag) == "Pixels"),
                  None)
    if pixels is None:
        return Physical()
    size = None
    if pixels.get("PhysicalSizeX"):
        factor = LENGTH_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
        with contextlib.suppress(ValueError):
            size = float(pixels.get("PhysicalSizeX", "")) * factor if factor else None
    channels = [e for e in pixels if _local(e.tag) == "Channel"]
    names = tuple(c.get("Name", "") for c in channels)
    if len(names) != n_channels:  # one OME channel of several samples (RGB): names unknown
        names = ("",) * n_channels
    exposure: list[float | None] = [None] * n_channels
    for plane in (e for e in pixels if _local(e.tag) == "Plane"):
        c, value = int(plane.get("TheC", 0)), plane.get("ExposureTime")
        unit = TIME_S.get(plane.get("ExposureTimeUnit", "s"))
        if value and unit and 0 <= c < n_channels and exposure[c] is None:
            with contextlib.suppress(ValueError):
                exposure[c] = float(value) * unit
    return Physical(size if size and size > 0 else None, "OME-XML" if size else "", names,
                    tuple(exposure))


def _resolution_um(page: tifffile.TiffPage, unit_um: float | None) -> float | None:
    """µm per pixel from XResolution (px per ResolutionUnit, or per ``unit_um`` µm when an
    ImageJ unit is given); ``None`` for absent, unit-less or placeholder resolutions."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    if not num or not den:
        return None
    per_unit = num / den
    if unit_um is None:
        unit = int(page.tags.valueof("ResolutionUnit", 2))
        if unit == 2 and any(abs(per_unit - d) < 1e-6 for d in DEFAULT_DPI):
            return None
        unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
        if unit_um is None:
            return None
    return unit_um / per_unit


def read_physical(tif: tifffile.TiffFile, series: int, page: tifffile.TiffPage,
                  n_channels: int) -> Physical:
    """The :class:`Physical` facts of an image: OME-XML first, then ImageJ metadata (its
    ``unit`` with the XResolution tag), then the resolution tags (inch or cm)."""
    if tif.is_ome and tif.ome_metadata:
        found = _ome_physical(tif.ome_metadata, series, n_channels)
        if found.pixel_size_um is not None or any(found.channel_names):
            if found.pixel_size_um is not None:
                return found
            size = _resolution_um(page, None)
            return Physical(size, "resolution tags" if size else "", found.channel_names,
                            found.exposure_s)
    blank = Physical(channel_names=("",) * n_channels, exposure_s=(None,) * n_channels)
    ij = tif.imagej_metadata or {}
    if ij.get("unit") in LENGTH_UM:
        size = _resolution_um(page, LENGTH_UM[ij["unit"]])
        if size:
            return Physical(size, "ImageJ", blank.channel_names, blank.exposure_s)
    size = _resolution_um(page, None)
    return Physical(size, "resolution tags" if size else "", blank.channel_names,
                    blank.exposure_s)


def _sample_index(chans: list[int]) -> slice | list[int]:
    """Index of the samples ``chans`` along the last axis: a slice when they are consecutive
    (a view, so copying a segment's part into the result is one copy, not two), else the
    list."""
    if chans and chans[0] >= 0 and chans == list(range(chans[0], chans[-1] + 1)):
        return slice(chans[0], chans[-1] + 1)
    return chans


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def read_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Header facts of a TIFF (validated), without reading pixels."""
    with TiffImage(path) as img:
        return img.info


# ------------------------------------------------------------------------------ channels
@dataclass(frozen=True)
class ChannelChoice:
    """Which samples of an image carry the fluorescence signal, and why."""

    channels: tuple[int, ...]
    signal: tuple[float, ...]
    reason: str

    @property
    def summed(self) -> bool:
        return len(self.channels) > 1

    def to_json(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "signal_per_channel": list(self.signal),
                "reason": self.reason}


#: A channel counts as active when its signal is at least this fraction of the strongest one.
ACTIVE_FRACTION = 0.3


def channel_signal(img: TiffImage, n_blocks: int = 24, block_rows: int = 32) -> np.ndarray:
    """Per-colour-channel fluorescence strength from evenly spaced row blocks.

    Strength = mean − 1st percentile of the channel (its dark level), so a channel that is only
    a constant offset scores 0 and crosstalk of a few percent scores a few percent.
    """
    chans = img.color_channels()
    blocks = [b.reshape(-1, len(chans))[::7].astype(np.float64)
              for b in img.sample_rows(n_blocks, block_rows, chans)]
    values = np.concatenate(blocks, axis=0)
    return np.maximum(values.mean(axis=0) - np.percentile(values, 1, axis=0), 0.0)


def choose_channels(signals: Sequence[np.ndarray]) -> ChannelChoice:
    """Choose the signal channel(s) from the per-channel strengths of one or more images.

    The strengths of the images of a pair are normalised and added, so pre and post always use
    the same channels. Channels with at least :data:`ACTIVE_FRACTION` of the strongest channel's
    strength are active and summed.
    """
    total = np.zeros_like(np.asarray(signals[0], dtype=np.float64))
    for s in signals:
        s = np.asarray(s, dtype=np.float64)
        total += s / s.max() if s.max() > 0 else s
    if total.size == 1:
        return ChannelChoice((0,), (float(total[0]),), "single-channel image")
    if total.max() <= 0:
        return ChannelChoice((0,), tuple(float(v) for v in total),
                             "no channel carries signal; using channel 0")
    active = tuple(int(i) for i in np.nonzero(total >= ACTIVE_FRACTION * total.max())[0])
    names = "RGB" if total.size == 3 else None
    label = ", ".join(names[i] if names else str(i) for i in active)
    how = "summed" if len(active) > 1 else "strongest"
    return ChannelChoice(active, tuple(float(v) for v in total),
                         f"{how} channel(s) {label} (strength ≥ {ACTIVE_FRACTION:.0%} of max)")


def signal_dtype(dtype: np.dtype, n_channels: int) -> np.dtype:
    """dtype of the single-channel signal: native for one channel, widened for sums so that
    adding channels never clips (uint8 → uint16, uint16 → uint32, floats → float32)."""
    dtype = np.dtype(dtype)
    if n_channels == 1:
        return dtype
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(np.float64)
    return np.dtype(np.uint16) if dtype.itemsize == 1 else np.dtype(np.uint32)


def to_signal(block: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Sum the channel axis of ``block`` (h, w, c) into one channel of ``out_dtype``."""
    if block.shape[2] == 1:
        return block[:, :, 0].astype(out_dtype, copy=False)
    return block.sum(axis=2, dtype=out_dtype)


# ------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class OmeMeta:
    """What the OME-XML of a written image says about it.

    ``pixel_size_um`` is the physical size of one pixel (µm, square pixels; ``None``: unknown,
    then no PhysicalSize attributes are written); ``channel`` names the single channel (the
    dye); ``description`` (free text, e.g. JSON provenance) goes to the OME Image Description.
    """

    name: str
    channel: str
    pixel_size_um: float | None = None
    description: str | None = None

    def xml(self, shape: tuple[int, int], dtype: np.dtype) -> str:
        """The OME-XML of a single-plane ``shape`` (height, width) image of ``dtype``.

        Its UUID is derived from what the file is (name, channel, pixel size, description,
        shape, type) instead of drawn at random, so that the same product written twice — by
        a resumed run, by Nextflow and by the local runner — is the same file, byte for byte.
        """
        identity = "\x1f".join(map(str, (self.name, self.channel, self.pixel_size_um,
                                          self.description, shape, np.dtype(dtype).str)))
        ome = tifffile.OmeXml(UUID=f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, identity)}")
        size: dict[str, Any] = {}
        if self.pixel_size_um is not None:
            size = {"PhysicalSizeX": self.pixel_size_um, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": self.pixel_size_um, "PhysicalSizeYUnit": "µm"}
        extra = {"Description": self.description} if self.description else {}
        ome.addimage(np.dtype(dtype), shape, (1, 1, 1, *shape, 1), axes="YX", Name=self.name,
                     Channel={"Name": [self.channel]}, **size, **extra)
        return ome.tostring()


#: Sub-resolution levels halve the image until its longer side is at most this (px).
LEVEL_MIN_SIDE = 1024


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """(height, width) of each sub-resolution level of a ``shape`` image: factor 2 per level
    (odd sides round up), down to the first level whose longer side is ≤ :data:`LEVEL_MIN_SIDE`.
    Empty when the image is already that small."""
    h, w = shape
    out = []
    while max(h, w) > LEVEL_MIN_SIDE:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def pyramid_bytes(shape: tuple[int, int], dtype: np.dtype) -> int:
    """Uncompressed bytes of an image with all its levels (at most 4/3 of the full level)."""
    return sum(h * w for h, w in [shape, *level_shapes(shape)]) * np.dtype(dtype).itemsize


def halve(block: np.ndarray) -> np.ndarray:
    """2 × 2 box mean of a 2-D block, in its dtype: output pixel (i, j) averages block rows
    2i, 2i+1 and columns 2j, 2j+1 (fewer at an odd right or bottom edge), summed as
    ``(a + b) + (c + d)`` in float32 — a row's pair, then the next row's. NaN pixels are left
    out of the mean; a box of only NaN stays NaN (no data stays no data). Integer images are
    rounded to the nearest integer.

    Cost: one OpenCV area resize (SIMD, on the CPU budget's threads) when the block has no
    NaN; otherwise two more (the NaN-free sums and the count of finite pixels per box, from a
    255/0 mask whose box means are 0, 64, 128, 191 and 255) and a division where a box held
    NaN — about 3 passes over the block instead of numpy's dozen strided ones, because
    difference images are half no data and every level of every pyramid goes through here.
    """
    import cv2

    dtype = block.dtype
    h, w = block.shape
    if h % 2 or w % 2:  # odd edge: pad with no data, which the mean leaves out
        work = np.full((h + h % 2, w + w % 2), np.nan, np.float32)
        work[:h, :w] = block
        block = work
    elif block.dtype != np.float32:
        block = block.astype(np.float32)
    size = (block.shape[1] // 2, block.shape[0] // 2)  # OpenCV's (width, height)
    total = cv2.resize(block, size, interpolation=cv2.INTER_AREA)
    bad = np.isnan(total)  # boxes with no data in at least one pixel
    if bad.any():  # their mean is that of the finite pixels (NaN when there are none)
        finite = cv2.compare(block, block, cv2.CMP_EQ)  # 255 where not NaN
        count = cv2.LUT(cv2.resize(finite, size, interpolation=cv2.INTER_AREA), _FINITE_IN_BOX)
        zeroed = block.copy()
        cv2.patchNaNs(zeroed, 0)
        sums = cv2.resize(zeroed, size, interpolation=cv2.INTER_AREA)  # finite sum / 4
        sums *= np.float32(4)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(sums, count, out=total, where=bad)
    if dtype.kind == "f":
        return total.astype(dtype, copy=False)
    return np.rint(total, out=total).astype(dtype)


#: Finite pixels in a 2 × 2 box from the box mean of a 255/0 finiteness mask (OpenCV rounds
#: the uint8 means of 0, 1, 2, 3, 4 times 255 to 0, 64, 128, 191, 255).
_FINITE_IN_BOX = np.zeros(256, np.float32)
_FINITE_IN_BOX[[64, 128, 191, 255]] = [1, 2, 3, 4]


class _LevelBuilder:
    """Builds every sub-resolution level in one pass over the full-resolution rows.

    :meth:`feed` takes consecutive rows of level 0; each level halves the rows it receives as
    soon as it holds an even number (an odd leftover row waits for the next call), hands the
    result to its sink (``sinks[i]`` receives the rows of level ``i + 1``, in order) and
    passes it on to the next level. Only the rows of the current call (and one leftover row
    per level) are in memory. The levels hold exactly the values of halving each whole level
    at once, because every halved chunk starts at an even row."""

    def __init__(self, sinks: Sequence[Callable[[np.ndarray], object]]) -> None:
        self._sinks = list(sinks)
        self._pending: list[np.ndarray | None] = [None] * len(self._sinks)

    def feed(self, rows: np.ndarray, level: int = 0) -> None:
        """Rows of ``level`` (0: full resolution) arrive; build level ``level + 1`` from them."""
        if level >= len(self._sinks):
            return
        left = self._pending[level]
        if left is not None:
            rows = np.concatenate([left, rows])
            self._pending[level] = None
        even = rows.shape[0] - rows.shape[0] % 2
        if even < rows.shape[0]:
            self._pending[level] = rows[even:].copy()
        if even:
            self._emit(halve(rows[:even]), level)

    def finish(self) -> None:
        """Halve the odd last row of each level (its box has only that row)."""
        for level in range(len(self._sinks)):
            left = self._pending[level]
            if left is not None:
                self._pending[level] = None
                self._emit(halve(left), level)

    def _emit(self, half: np.ndarray, level: int) -> None:
        self._sinks[level](half)
        self.feed(half, level + 1)


class _ZeroHoles(io.RawIOBase):
    """A read-write file that leaves runs of zero bytes as holes (``seek`` instead of
    ``write``), like ``cp --sparse``, and keeps the first :attr:`HEADER` bytes to itself.

    :func:`write_tiled` lets tifffile write an image's structure (header, IFDs, tags) with
    empty pages through it: tifffile writes an empty uncompressed page as zero-filled tiles
    at the offsets where the data will go, and those cost neither I/O nor disk blocks here.
    Writes shorter than :attr:`MIN_HOLE` bytes are always written. The TIFF header goes to
    the file as zeros (reads through this object see the real bytes) until :meth:`commit`
    writes it, last: a file whose writer is killed before then is not a TIFF, so no reader
    and no resume mistakes its empty tiles for an image."""

    MIN_HOLE = 1 << 16
    HEADER = 16  #: a BigTIFF header's length (a classic one is 8 bytes)

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__()
        self._fh = fh
        self._header = bytearray(self.HEADER)
        self.end = 0  #: the file's length once every hole is counted

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        at = self._fh.tell()
        if at < self.HEADER:
            held = min(len(view), self.HEADER - at)
            self._header[at:at + held] = view[:held]
            self._fh.write(bytes(held))
            view = view[held:]
        if len(view) >= self.MIN_HOLE and not np.frombuffer(view, np.uint8).any():
            self._fh.seek(len(view), os.SEEK_CUR)
        else:
            self._fh.write(view)
        self.end = max(self.end, self._fh.tell())
        return self._fh.tell() - at

    def read(self, size: int = -1) -> bytes:
        at = self._fh.tell()
        data = bytearray(self._fh.read(size))
        if at < self.HEADER:
            held = min(len(data), self.HEADER - at)
            data[:held] = self._header[at:at + held]
        return bytes(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()

    def commit(self) -> None:
        """Write the held header: the file becomes a TIFF."""
        self._fh.flush()
        os.pwrite(self._fh.fileno(), bytes(self._header), 0)


class _TileRows:
    """Writes the rows of one uncompressed tiled page into the holes tifffile left for them.

    ``offsets`` are the page's tile offsets (row-major, as in the TIFF). Rows arrive in order
    (:meth:`add`, any number at a time) and are copied straight into a tile-major buffer of
    one tile row (``tile`` rows × the page's width, zero-padded at the right like tifffile's
    tiles); each full tile row goes to the file in one ``pwrite`` (tifffile stores a page's
    tiles back to back, which :meth:`__init__` checks). Memory: that one buffer."""

    def __init__(self, fd: int, shape: tuple[int, int], tile: int, dtype: np.dtype,
                 offsets: Sequence[int]) -> None:
        h, w = shape
        self._fd, self._h, self._w, self._tile = fd, h, w, tile
        self._ntx = -(-w // tile)
        tile_bytes = tile * tile * dtype.itemsize
        if len(offsets) != self._ntx * -(-h // tile) or any(
                b - a != tile_bytes for a, b in itertools.pairwise(offsets)):
            raise RuntimeError(f"write_tiled: tifffile laid out the {w}×{h} page's tiles "
                               f"other than back to back; cannot fill them in place")
        self._row_offsets = list(offsets[::self._ntx])
        self._buf = np.zeros((self._ntx, tile, tile), dtype)
        self._row = 0  # rows of the page received so far

    def add(self, rows: np.ndarray) -> None:
        """Take the next ``rows`` (full width) of the page."""
        tile, full = self._tile, self._w // self._tile
        while rows.shape[0]:
            y = self._row % tile
            take = rows[:tile - y]
            n = take.shape[0]
            self._buf[:full, y:y + n] = take[:, :full * tile].reshape(n, full, tile
                                                                       ).transpose(1, 0, 2)
            if full < self._ntx:
                self._buf[full, y:y + n, :self._w - full * tile] = take[:, full * tile:]
            self._row += n
            rows = rows[n:]
            if self._row % tile == 0 or self._row == self._h:
                self._flush()

    def _flush(self) -> None:
        filled = (self._row - 1) % self._tile + 1
        if filled < self._tile:  # the bottom tile row: zero below the image, as tifffile
            self._buf[:, filled:] = 0
        view = memoryview(self._buf).cast("B")
        offset = self._row_offsets[(self._row - 1) // self._tile]
        while view:
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def finish(self) -> None:
        if self._row != self._h:
            raise ValueError(f"write_tiled: level got {self._row} rows, expected {self._h}")


def _write_in_place(tmp: Path, shape: tuple[int, int], dtype: np.dtype,
                    blocks: Iterable[np.ndarray], levels: Sequence[tuple[int, int]],
                    tile: int, big: bool, first_page: dict[str, Any],
                    options: dict[str, Any]) -> None:
    """The uncompressed :func:`write_tiled`: tifffile writes the whole structure with empty
    pages through :class:`_ZeroHoles` (no data bytes), then every level's tiles are written
    into their places as the rows stream by (:class:`_TileRows`, :class:`_LevelBuilder`),
    and the TIFF header last.
    The file is byte for byte what tifffile writes from the data itself, without spooling the
    levels to disk and reading them back, and without its per-tile copies."""
    with open(tmp, "w+b") as fh:
        holes = _ZeroHoles(fh)
        with tifffile.TiffWriter(holes, bigtiff=big) as tw:  # type: ignore[arg-type]
            tw.write(None, shape=shape, subifds=len(levels) or None, **first_page, **options)
            for level in levels:
                tw.write(None, shape=level, subfiletype=1, **options)
        fh.flush()
        os.ftruncate(fh.fileno(), max(holes.end, fh.seek(0, os.SEEK_END)))
        holes.seek(0)  # tifffile reads a stream from where it stands
        with tifffile.TiffFile(holes) as tif:  # type: ignore[arg-type]
            pages = [tif.pages[0], *(tif.pages[0].pages or [])]
            offsets = [list(page.dataoffsets) for page in pages]  # type: ignore[union-attr]
        fd = fh.fileno()
        writers = [_TileRows(fd, s, tile, dtype, o) for s, o in zip([shape, *levels], offsets)]
        builder = _LevelBuilder([w.add for w in writers[1:]])
        with ThreadPoolExecutor(1) if levels and native_threads() > 1 else \
                contextlib.nullcontext() as beside:
            pending: Future[None] | None = None
            for block in _checked_blocks(blocks, shape, tile):
                if beside is None:
                    builder.feed(block)
                else:  # the levels of this block are built while its full resolution is
                    if pending is not None:  # written; at most one block waits for them
                        pending.result()
                    pending = beside.submit(builder.feed, block)
                writers[0].add(block)
            if pending is not None:
                pending.result()
        builder.finish()
        for writer in writers:
            writer.finish()
        holes.commit()


def _spooled(spool: BinaryIO) -> Callable[[np.ndarray], object]:
    """A :class:`_LevelBuilder` sink appending rows to ``spool`` (sequential writes)."""
    return lambda rows: spool.write(memoryview(np.ascontiguousarray(rows)).cast("B"))


def _feeding(blocks: Iterable[np.ndarray], builder: _LevelBuilder | None
             ) -> Iterator[np.ndarray]:
    """Pass ``blocks`` through, feeding each to ``builder`` (when there is one)."""
    for block in blocks:
        if builder is not None:
            builder.feed(block)
        yield block


def _unspool(spool: BinaryIO, shape: tuple[int, int], dtype: np.dtype, rows: int
             ) -> Iterator[np.ndarray]:
    """Read a spooled level back as consecutive full-width blocks of ``rows`` rows."""
    h, w = shape
    spool.flush()
    spool.seek(0)
    for y0 in range(0, h, rows):
        n = min(rows, h - y0)
        block = np.empty((n, w), dtype)
        if spool.readinto(memoryview(block).cast("B")) != block.nbytes:
            raise OSError(f"write_tiled: pyramid spool ended early (level {w}×{h})")
        yield block


def write_tiled(path: str | os.PathLike[str], shape: tuple[int, int], dtype: np.dtype,
                blocks: Iterable[np.ndarray], *, tile: int = TILE,
                compression: str | None = None, description: str | None = None,
                extratags: Sequence[tuple[Any, ...]] = (), ome: OmeMeta | None = None,
                pyramid: bool = True, maxworkers: int | None = None) -> None:
    """Write a single-channel image atomically as a tiled TIFF (BigTIFF when needed),
    pyramidal unless ``pyramid`` is false.

    ``blocks`` yields consecutive full-width row blocks of exactly ``tile`` rows (the last may
    be shorter). The full-resolution image is the first page; with ``pyramid`` its
    sub-resolutions (:func:`level_shapes`, :func:`halve`) are written into its SubIFDs with
    NewSubfileType 1, where QuPath, Bio-Formats, napari and tifffile find them and page-based
    readers ignore them. ``pyramid=False`` (intermediates only the stages read) writes the
    full resolution alone.

    Memory: one block, plus the rows it halves into at each level. All levels are built in the
    single pass over the blocks (:class:`_LevelBuilder`); uncompressed and with a CPU budget
    of two or more, a block's levels are built in a second thread while its full resolution
    is written and the next block is produced, so one more block is held, and a block must
    not change once it is yielded. Uncompressed (the default), every
    level's tiles go straight into the places tifffile laid out for them
    (:func:`_write_in_place`): one tile row of each level in memory, no extra I/O. Compressed,
    a TIFF holds a page's tiles contiguously, a level can only be encoded after the one
    before it and its compressed size is not known in advance, so each level is spooled,
    uncompressed, to an anonymous temporary file in the destination folder, written and read
    sequentially (together at most a third of the uncompressed full-resolution size, freed
    when the file is done), and then encoded in one pass from its spool.

    ``ome`` writes OME-XML (name, channel, physical pixel size) as the image description
    (then ``description`` is ignored: put free text into ``ome.description``).
    ``compression`` is a tifffile codec name (``None``: uncompressed, ``'zlib'``/``'deflate'``,
    ``'zstd'`` — at level 1, its fast end —, …), encoded by ``maxworkers`` threads (default
    :func:`exo2micro.resources.native_threads`, the CPU budget; tifffile's own default is half
    the host's cores). Compressed integer tiles use horizontal differencing; float tiles
    use no predictor, because Bio-Formats (QuPath, Fiji) cannot undo the floating-point one.
    """
    h, w = shape
    dtype = np.dtype(dtype)
    levels = level_shapes(shape) if pyramid else []
    big = sum(a * b for a, b in [shape, *levels]) * dtype.itemsize > BIGTIFF_BYTES
    text: str | bytes | None = description
    if ome is not None:  # UTF-8 (µm): OME-XML declares it, TIFF ASCII tags cannot hold it
        text = ome.xml(shape, dtype).encode()
    options: dict[str, Any] = {
        "dtype": dtype, "tile": (tile, tile), "compression": compression,
        "compressionargs": {"level": 1} if compression == "zstd" else None,
        "predictor": compression is not None and dtype.kind in "ui",
        "maxworkers": (maxworkers or native_threads()) if compression else None,
        "photometric": "minisblack", "metadata": None}
    first_page = {"description": text, "extratags": extratags}
    if compression is None:
        with atomic_path(path) as tmp:
            _write_in_place(tmp, shape, dtype, blocks, levels, tile, big, first_page, options)
        return
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tw, \
            contextlib.ExitStack() as stack:
        spools = [stack.enter_context(tempfile.TemporaryFile(dir=Path(tmp).parent))
                  for _ in levels]
        builder = _LevelBuilder([_spooled(s) for s in spools]) if levels else None
        rows = _feeding(_checked_blocks(blocks, shape, tile), builder)
        tw.write(_tiles(rows, w, tile, dtype), shape=(h, w), subifds=len(levels) or None,
                 **first_page, **options)
        if builder is not None:
            builder.finish()
        for spool, level in zip(spools, levels):
            tw.write(_tiles(_unspool(spool, level, dtype, tile), level[1], tile, dtype),
                     shape=level, subfiletype=1, **options)
            spool.close()


def _checked_blocks(blocks: Iterable[np.ndarray], shape: tuple[int, int], tile: int
                    ) -> Iterator[np.ndarray]:
    """``blocks``, checked to be full-width ``tile``-row blocks that add up to ``shape``."""
    h, w = shape
    rows_done = 0
    for block in blocks:
        bh = block.shape[0]
        if block.shape[1] != w or (bh != tile and rows_done + bh != h):
            raise ValueError(f"write_tiled: block of shape {block.shape} at row {rows_done} "
                             f"does not fit {tile}-row blocks of a {w}-wide image")
        rows_done += bh
        yield block
    if rows_done != h:
        raise ValueError(f"write_tiled: got {rows_done} rows, expected {h}")


def _tiles(blocks: Iterable[np.ndarray], width: int, tile: int, dtype: np.dtype
           ) -> Iterator[np.ndarray]:
    """The ``tile × tile`` tiles of full-width row blocks, row-major, zero-padded at the
    right and bottom edges."""
    for block in blocks:
        padded = np.zeros((tile, -(-width // tile) * tile), dtype)
        padded[:block.shape[0], :width] = block
        for x0 in range(0, width, tile):
            yield padded[:, x0:x0 + tile]


def write_pages(path: str | os.PathLike[str], arrays: Sequence[np.ndarray],
                description: str | None = None) -> None:
    """Write small arrays (e.g. a pyramid) as consecutive pages of one TIFF, atomically."""
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tw:
        for i, arr in enumerate(arrays):
            tw.write(np.ascontiguousarray(arr), photometric="minisblack", metadata=None,
                     description=description if i == 0 else None)


def read_pages(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Read every page of a small multi-page TIFF written by :func:`write_pages`."""
    try:
        with tifffile.TiffFile(path) as tif:
            return [p.asarray(maxworkers=native_threads()) for p in tif.pages]
    except Exception as exc:
        raise InputDataError(f"{path}: cannot read ({_short(exc)})") from None


def check_readable(path: str | os.PathLike[str]) -> bool:
    """Cheap integrity check used by resume: the TIFF header and segment table are valid and
    the file is as long as they require. Never decodes pixels."""
    try:
        with TiffImage(path):
            return True
    except InputDataError:
        return False
