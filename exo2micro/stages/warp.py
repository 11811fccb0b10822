"""Warp the full-resolution pre image into the post frame, streamed in tiles.

The output frame is the raw post frame extended by ``pad`` px on every side: output pixel
``(x, y)`` is raw post pixel ``(x − pad, y − pad)``, so
``out(x, y) = pre(post_to_pre @ (x − pad, y − pad, 1))`` with bicubic interpolation; pixels
that map outside the pre frame are 0 (no data). With a residual field (stage 3 of a non-rigid
pair) the source is ``post_to_pre(x) + field(x)``, evaluated per chunk and sampled with
``cv2.remap`` instead of ``cv2.warpAffine``.

The output is produced in blocks of :data:`~exo2micro.io.tiffio.TILE` rows, each block in column
chunks of :data:`CHUNK` px. For each chunk only the pre window that the chunk maps into (plus a
margin for the interpolation kernel) is read from the tiled stage-1 image and warped with
OpenCV, whose warp functions refuse images wider than 32 767 px — chunking is needed anyway.
At 20° rotation a 512 × 2048 chunk needs a pre window of about 1 200 × 2 100 px, so the
reads overlap little and memory stays at a few chunks whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from exo2micro.io.tiffio import TILE, OmeMeta
from exo2micro.numerics.transform import ResidualField, affine_for_window, apply
from exo2micro.stages.streaming import lookahead

#: Column chunk width (px) of the streamed warp.
CHUNK = 2048
#: Extra pre pixels read around each chunk's footprint (bicubic kernel reach + rounding).
MARGIN = 4


class WindowReader(Protocol):
    """Anything with ``shape`` (h, w) and ``read_window(y0, y1, x0, x1) -> (h, w, c)``."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


def output_shape(post_shape: tuple[int, int], pad: int) -> tuple[int, int]:
    """(height, width) of the output frame for a raw post frame of ``post_shape``."""
    return post_shape[0] + 2 * pad, post_shape[1] + 2 * pad


def warp_window(pre: WindowReader, post_to_pre: np.ndarray, y0: int, y1: int, x0: int, x1: int,
                pad: int = 0, interpolation: int = cv2.INTER_CUBIC,
                field: ResidualField | None = None) -> np.ndarray:
    """Aligned pre for output pixels ``[y0:y1, x0:x1]`` as float32 (0 outside the pre frame).

    With a ``field`` the source of each pixel is ``post_to_pre(x) + field(x)``, evaluated for
    this window only and sampled with :func:`cv2.remap` (same cubic kernel); without one the
    window is an affine warp."""
    h, w = y1 - y0, x1 - x0
    origin = (float(x0 - pad), float(y0 - pad))  # raw post coords of the window's top-left
    if field is not None:
        return _remap_window(pre, post_to_pre, field, origin, (h, w), interpolation)
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float) + origin
    pre_pts = apply(post_to_pre, corners)
    ph, pw = pre.shape
    px0 = max(0, int(np.floor(pre_pts[:, 0].min())) - MARGIN)
    py0 = max(0, int(np.floor(pre_pts[:, 1].min())) - MARGIN)
    px1 = min(pw, int(np.ceil(pre_pts[:, 0].max())) + MARGIN + 1)
    py1 = min(ph, int(np.ceil(pre_pts[:, 1].max())) + MARGIN + 1)
    if px1 <= px0 or py1 <= py0:
        return np.zeros((h, w), np.float32)
    src = pre.read_window(py0, py1, px0, px1)[:, :, 0].astype(np.float32)
    local = affine_for_window(post_to_pre, origin, (px0, py0))
    # Pixels beyond the pre frame must read as "no data" (0), but pixels inside it near the
    # window's edge must see their true neighbours: the window already includes them (MARGIN),
    # and only a window edge that is the pre frame's edge gets the constant 0 border.
    return cv2.warpAffine(src, local[:2], (w, h), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _remap_window(pre: WindowReader, post_to_pre: np.ndarray, field: ResidualField,
                  origin: tuple[float, float], shape: tuple[int, int], interpolation: int
                  ) -> np.ndarray:
    """:func:`warp_window` with a residual field: per-pixel source maps, one pre read."""
    h, w = shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64) + origin[0],
                         np.arange(h, dtype=np.float64) + origin[1])
    dx, dy = field.on_window(origin[0], origin[1], w, h)
    a = post_to_pre
    map_x = a[0, 0] * xs + a[0, 1] * ys + a[0, 2] + dx
    map_y = a[1, 0] * xs + a[1, 1] * ys + a[1, 2] + dy
    ph, pw = pre.shape
    px0 = max(0, int(np.floor(map_x.min())) - MARGIN)
    py0 = max(0, int(np.floor(map_y.min())) - MARGIN)
    px1 = min(pw, int(np.ceil(map_x.max())) + MARGIN + 1)
    py1 = min(ph, int(np.ceil(map_y.max())) + MARGIN + 1)
    if px1 <= px0 or py1 <= py0:
        return np.zeros((h, w), np.float32)
    src = pre.read_window(py0, py1, px0, px1)[:, :, 0].astype(np.float32)
    return cv2.remap(src, (map_x - px0).astype(np.float32), (map_y - py0).astype(np.float32),
                     interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def iter_warped_blocks(pre: WindowReader, post_to_pre: np.ndarray, out_shape: tuple[int, int],
                       pad: int = 0, block_rows: int = TILE, threads: int = 1,
                       progress: Callable[[int], None] | None = None,
                       field: ResidualField | None = None) -> Iterator[np.ndarray]:
    """Yield consecutive full-width float32 row blocks of the aligned pre image.

    The chunks of the *next* block are computed by a pool of ``threads`` workers while the
    caller consumes the current one (encodes and writes it), so warping overlaps I/O
    (:func:`exo2micro.stages.streaming.lookahead` with two blocks ahead); at most two blocks
    (2 × 512 rows × width × 4 bytes) are in memory besides the caller's. Each worker copies
    its chunk into the block itself: the copy into a fresh block (its first touch, which
    costs the kernel's page zeroing) is then spread over the pool instead of holding up the
    caller's thread, which at 30 000 px wide spent most of its time on it while the workers
    waited.
    """
    h, w = out_shape

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        def start(y0: int) -> Callable[[], np.ndarray]:
            """Submit the column chunks of the block at ``y0``; return the wait for them."""
            y1 = min(h, y0 + block_rows)
            block = np.empty((y1 - y0, w), np.float32)

            def fill(x0: int) -> None:
                x1 = min(w, x0 + CHUNK)
                block[:, x0:x1] = warp_window(pre, post_to_pre, y0, y1, x0, x1, pad,
                                              cv2.INTER_CUBIC, field)

            chunks = [pool.submit(fill, x0) for x0 in range(0, w, CHUNK)]

            def assemble() -> np.ndarray:
                for future in chunks:
                    future.result()
                if progress:
                    progress(block.shape[0])
                return block

            return assemble

        yield from lookahead(start, range(0, h, block_rows), 2)


def warp_to_files(pre: WindowReader, post_to_pre: np.ndarray, out_shape: tuple[int, int],
                  pad: int, outputs: dict[str, Path],
                  fits_header: Callable[[], object] | None = None,
                  compression: str | None = None, threads: int = 1,
                  ome: OmeMeta | None = None, field: ResidualField | None = None) -> None:
    """Warp once and write the aligned pre (float32) in every requested format.

    The TIFF is a pyramidal OME-TIFF (``ome``: its OME-XML facts; see
    :func:`exo2micro.io.tiffio.write_tiled`).

    ``outputs`` maps ``'tiff'`` and/or ``'fits'`` to paths; ``fits_header`` builds the FITS
    header. With both formats the TIFF is written first and the FITS is streamed from it, so
    the warp runs once and no full-size copy is ever held.
    """
    from exo2micro.io.fitsio import write_streamed
    from exo2micro.io.tiffio import TiffImage, write_tiled

    blocks = iter_warped_blocks(pre, post_to_pre, out_shape, pad, threads=threads, field=field)
    if "tiff" in outputs:
        write_tiled(outputs["tiff"], out_shape, np.float32, blocks, compression=compression,
                    ome=ome)
        if "fits" not in outputs:
            return
        with TiffImage(outputs["tiff"]) as written:
            write_streamed(outputs["fits"], out_shape, fits_header(),  # type: ignore[misc,arg-type]
                           (b[:, :, 0] for _, b in written.iter_rows(TILE)))
        return
    write_streamed(outputs["fits"], out_shape, fits_header(), blocks)  # type: ignore[misc,arg-type]
