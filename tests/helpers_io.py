"""Helpers shared by the foundation tests (params, tiffio, fitsio, atomic, records, stage 1).

Not a test module: it makes small synthetic pairs, deliberately broken TIFFs and runs the
``bin/`` executables in a real subprocess.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import tifffile

from exo2micro import synth

REPO = Path(__file__).resolve().parent.parent

#: A small pair that still has every ingredient (rotation, scale, unequal frames, microbes).
SMALL = synth.SynthSpec(sample="S1", dye="SybrGld", width=320, height=256, pre_width=300,
                        pre_height=270, seed=5)


def make_pair(raw_dir: Path, **changes: object) -> synth.SynthResult:
    """Generate ``SMALL`` with ``changes`` applied under ``raw_dir``."""
    return synth.generate_pair(replace(SMALL, **changes), raw_dir)


def patch_ifd_entry(path: Path, tag: int, value: int) -> None:
    """Overwrite the value of ``tag`` in the first IFD of a little-endian classic TIFF with the
    LONG ``value`` (forging a header, as a damaged or hostile file would)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\0", "expects a little-endian classic TIFF"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<HHII", data, entry, tag, 4, 1, value)
            path.write_bytes(bytes(data))
            return
    raise KeyError(f"tag {tag} not in the first IFD of {path}")


#: name → what the InputDataError message must say about that broken file.
CORRUPT_KINDS: dict[str, str] = {
    "zero_bytes": "file is empty",
    "text": "not a readable TIFF",
    "truncated": "truncated",
    "absurd_width": "implausible image size",
    "short_segment_table": "strips/tiles",
    "short_single_strip": "pixel data",
    "png": "not a readable TIFF",
}


def make_corrupt(folder: Path, kind: str) -> Path:
    """Write one broken ``.tif`` of ``kind`` (a key of :data:`CORRUPT_KINDS`) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bad_{kind}.tif"
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("sample,dye,pre,post\nthis is not an image\n")
    elif kind == "png":
        ok, png = cv2.imencode(".png", good)
        assert ok
        path.write_bytes(png.tobytes())
    else:
        single = kind == "short_single_strip"
        tifffile.imwrite(path, good, photometric="rgb", rowsperstrip=96 if single else 16)
        if kind == "truncated":
            full = path.read_bytes()
            path.write_bytes(full[:len(full) // 2])
        elif kind == "absurd_width":
            patch_ifd_entry(path, 256, 3_000_000_000)
        elif kind == "short_segment_table":  # a plausible height the strips do not cover
            patch_ifd_entry(path, 257, 40_000)
        elif kind == "short_single_strip":  # one strip, far too short for the declared width
            patch_ifd_entry(path, 256, 40_000)
    return path


def tool_env() -> dict[str, str]:
    """Environment for the ``bin/`` tools: this interpreter's folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def run_bin(tool: str, *args: str | os.PathLike[str], cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``bin/<tool> args…`` with this interpreter, stdin closed, output captured."""
    return subprocess.run([sys.executable, str(REPO / "bin" / tool), *map(str, args)],
                          cwd=cwd, env=tool_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (relative paths, sorted), hidden temporaries included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class WholeImage:
    """An in-memory 2-D image as the warp's window reader (``shape``, ``read_window``)."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.shape = img.shape

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.img[y0:y1, x0:x1, None]
