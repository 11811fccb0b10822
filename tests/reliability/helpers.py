"""Small inputs of the reliability catalogue: synthetic pairs and hand-made hostile TIFFs."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import tifffile

from exo2micro.synth import SynthResult, SynthSpec, generate_pair
from tests.runner_helpers import SIZE


def pair(raw: Path, sample: str = "S1", **spec: object) -> SynthResult:
    """One synthetic pair of the test size under ``raw``."""
    base = {"width": SIZE[0], "height": SIZE[1], "rotation_deg": 2.0, "scale": 1.0}
    return generate_pair(SynthSpec(sample=sample, **{**base, **spec}), raw)  # type: ignore[arg-type]


def set_tag(path: Path, name: str, value: int) -> None:
    """Overwrite the (short or long, inline) value of tag ``name`` of the first page."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[name]
        offset, dtype = tag.valueoffset, tag.dtype
    fmt = "<H" if int(dtype) == 3 else "<I"
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def gray(path: Path, shape: tuple[int, int] = (64, 64), **kwargs: object) -> Path:
    """A small grayscale TIFF with a bright square (tissue) on a dark background."""
    img = np.full(shape, 10, np.uint8)
    img[shape[0] // 4:3 * shape[0] // 4, shape[1] // 4:3 * shape[1] // 4] = 200
    tifffile.imwrite(path, img, **kwargs)  # type: ignore[arg-type]
    return path


def public_dir(tmp_path: Path) -> Path:
    """A folder a normal user (uid 65534) can reach: pytest's own tmp root is private, so
    every folder above ``tmp_path`` is opened for traversal (x only, not listing)."""
    for folder in (tmp_path, *tmp_path.parents):
        if folder == Path("/tmp"):
            break
        folder.chmod(folder.stat().st_mode | 0o111)
    return tmp_path


def public_checkout(root: Path) -> Path:
    """``root`` (the checkout and its venv), asserted reachable by a normal user: the
    permission tests run the package as uid 65534, which must be able to import it. A clone in
    a private folder (``mktemp -d`` is mode 0700) fails here with that reason, not later with
    an import error."""
    blocked = [str(p) for p in (root, *root.parents) if not os.stat(p).st_mode & 0o001]
    assert not blocked, (f"the permission tests need the checkout reachable by other users; "
                         f"not traversable: {', '.join(blocked)} (chmod o+x)")
    return root
