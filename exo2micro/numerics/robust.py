"""Robust statistics of many small samples at once, bit for bit as numpy computes them.

Stage 5 takes medians of thousands of tiles a block (rows of a 2-D array). ``np.median(a,
axis=1)`` partitions each row around three ranks (the two middle ones and the last, which
moves NaNs to the end for its NaN check) and is 4–6× slower than one partition per row;
:func:`row_median` partitions once and finds the other middle value and the NaNs with cheap
reductions, giving the same numbers.
"""

from __future__ import annotations

import numpy as np


def row_median(values: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """The median of each row of a 2-D floating-point array: the same numbers as
    ``np.median(values, axis=1, keepdims=keepdims)`` (same dtype and shape; a row holding a
    NaN gets numpy's own result; an even-length row's median is the mean of its two middle
    values in the array's dtype). Only a tie between ``0.0`` and ``-0.0`` may come out with
    the other sign.

    Memory: one partitioned copy of ``values``. Other dtypes and empty arrays go to
    ``np.median`` itself."""
    if values.ndim != 2 or values.dtype.kind != "f" or values.size == 0:
        return np.median(values, axis=1, keepdims=keepdims)
    n = values.shape[1]
    half = n // 2
    part = np.partition(values, half, axis=1)
    if n % 2:
        med = part[:, half].copy()  # not a view that keeps the partitioned copy alive
    else:
        # the other middle value is the largest of the lower part; np.median averages the
        # two with np.mean over an axis of length 2, as here
        below = part[:, :half].max(axis=1)
        med = np.mean(np.stack([below, part[:, half]], axis=1), axis=1)
    has_nan = np.isnan(part[:, half:]).any(axis=1)  # NaNs sort last: some land at or above half
    if has_nan.any():  # numpy's own NaN (its sign bit included), for the rare rows with one
        med[has_nan] = np.median(values[has_nan], axis=1)
    return med[:, None] if keepdims else med
