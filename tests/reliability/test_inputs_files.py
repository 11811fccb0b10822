"""Per-pair input problems are that pair's InputDataError (exit 65) with a clear first line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from exo2micro import params as P
from exo2micro.batch.discover import discover
from exo2micro.errors import EXIT_DATA, InputDataError, exit_code_for
from exo2micro.io.layout import PairLayout
from exo2micro.io.tiffio import TiffImage
from exo2micro.stages.load import run_load
from tests.reliability.helpers import gray, pair, public_checkout, public_dir, set_tag
from tests.runner_helpers import ROOT


def _refused(path: Path) -> str:
    with pytest.raises(InputDataError) as info:
        TiffImage(path).close()
    assert exit_code_for(info.value) == EXIT_DATA
    first = str(info.value).splitlines()[0]
    assert first.startswith(str(path))
    return first


def test_zero_rows_per_strip(tmp_path: Path) -> None:
    path = gray(tmp_path / "a.tif")
    set_tag(path, "RowsPerStrip", 0)
    assert "rows per strip" in _refused(path)


def test_unknown_compression_code(tmp_path: Path) -> None:
    path = gray(tmp_path / "a.tif", compression="zlib")
    set_tag(path, "Compression", 54321)
    assert "unsupported compression code 54321" in _refused(path)


def test_absurd_dimensions(tmp_path: Path) -> None:
    path = gray(tmp_path / "a.tif")
    set_tag(path, "ImageWidth", 400_000)
    set_tag(path, "ImageLength", 400_000)
    assert "implausible image size" in _refused(path)


@pytest.mark.parametrize("pages", [3, 12])
def test_multi_page_stack_is_refused_naming_the_count(tmp_path: Path, pages: int) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (pages, 40, 50), np.uint8),
                     photometric="minisblack")
    first = _refused(path)
    assert f"has {pages} image planes" in first and "key=N" in first


def test_pyramid_pages_are_not_a_stack(tmp_path: Path) -> None:
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((64, 64), np.uint8))
        tw.write(np.zeros((16, 16), np.uint8))
    TiffImage(path).close()


def test_unreadable_file_as_a_normal_user(tmp_path: Path) -> None:
    path = gray(public_dir(tmp_path) / "a.tif")
    path.chmod(0o000)
    code = ("import sys\nfrom exo2micro.io.tiffio import TiffImage\nfrom exo2micro.errors import "
            "InputDataError\ntry:\n    TiffImage(sys.argv[1])\nexcept InputDataError as e:\n"
            "    print(e)\n    sys.exit(65)\n")
    env = {**os.environ, "PYTHONPATH": str(public_checkout(ROOT))}
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, env=env, check=False)
    assert proc.returncode == EXIT_DATA, proc.stderr
    assert proc.stdout.startswith(f"{path}: cannot read file (Permission denied)")


def test_one_pixel_thin_image(tmp_path: Path) -> None:
    thin, ok = gray(tmp_path / "thin.tif", (1, 300)), gray(tmp_path / "ok.tif", (64, 64))
    layout = PairLayout(tmp_path / "out", P.resolve())
    with pytest.raises(InputDataError, match=r"thin.tif: image is 300×1 px; exo2micro needs"):
        run_load(thin, ok, layout)
    assert not any((tmp_path / "out").rglob("*.tif"))


def test_grayscale_pre_with_rgb_post(tmp_path: Path) -> None:
    res = pair(tmp_path / "raw")
    rgb = tifffile.imread(res.pre_path)
    tifffile.imwrite(res.pre_path, rgb[:, :, 1].copy())
    rec = run_load(res.pre_path, res.post_path, PairLayout(tmp_path / "out", P.resolve()))
    per = rec["channels_per_image"]
    assert per["pre"]["channels"] == [0] and per["post"]["channels"] == [1]
    assert any("colour channel" in w for w in rec["warnings"])


def test_background_subtracted_float_data(tmp_path: Path) -> None:
    res = pair(tmp_path / "raw", channel_mode="float32")
    for path in (res.pre_path, res.post_path):
        data = tifffile.imread(path).astype(np.float32)
        tifffile.imwrite(path, data - float(np.median(data)))
    assert (tifffile.imread(res.pre_path) < 0).mean() > 0.3
    rec = run_load(res.pre_path, res.post_path, PairLayout(tmp_path / "out", P.resolve()))
    assert rec["status"] == "complete" and rec["images"]["pre"]["value_range"][0] < 0


def test_symlink_loop_and_unlistable_sample_are_that_samples_problem(tmp_path: Path) -> None:
    raw = public_dir(tmp_path) / "raw"
    pair(raw, "GOOD")
    (raw / "LOOP").symlink_to(raw / "LOOP")
    locked = raw / "LOCKED"
    locked.mkdir()
    (locked / "x_pre_SybrGld.tif").write_bytes(b"")
    locked.chmod(0o000)
    try:
        code = ("import sys\nfrom exo2micro.batch.discover import discover\n"
                "d = discover(sys.argv[1], strict=False)\nprint([p.sample for p in d.pairs])\n"
                "print([str(s) for s in d.skipped])\n")
        raw.chmod(0o755)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-c", code, str(raw)], capture_output=True,
                              text=True,
                              env={**os.environ, "PYTHONPATH": str(public_checkout(ROOT))},
                              check=False, cwd="/")
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    pairs, skipped = proc.stdout.splitlines()
    assert pairs == "['GOOD']"
    assert "cannot list folder" in skipped and "LOCKED" in skipped
    assert [p.sample for p in discover(raw, strict=False).pairs] == ["GOOD"]
