"""Checkpoint formats: TIFF, FITS or both, compressed TIFF tiles, and resume across formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from exo2micro import params as P
from exo2micro.io.layout import CHECKPOINT_FORMATS, PairLayout, formats, tiff_compression
from exo2micro.io.tiffio import pyramid_bytes
from exo2micro.pipeline import run_pair
from tests.helpers_io import make_pair


@pytest.mark.parametrize(("fmt", "want"), [
    ("tiff", (("tiff",), None)), ("fits", (("fits",), None)),
    ("both", (("tiff", "fits"), None)), ("tiff-zstd", (("tiff",), "zstd")),
    ("both-deflate", (("tiff", "fits"), "deflate"))])
def test_formats_and_codec(fmt: str, want: tuple) -> None:
    assert fmt in CHECKPOINT_FORMATS
    assert (formats(fmt), tiff_compression(fmt)) == want


@pytest.mark.parametrize("fmt", ["fits-zstd", "tiff-lzw", "zstd"])
def test_unknown_format_is_refused(fmt: str) -> None:
    with pytest.raises(ValueError, match="checkpoint_format must be one of"):
        tiff_compression(fmt)


def _images(layout: PairLayout) -> dict[str, Path]:
    return {"signal": layout.signal("post"), "aligned": layout.aligned_pre("tiff"),
            "difference": layout.difference("tiff", "moffat")}


def test_plain_zstd_and_deflate_checkpoints_hold_the_same_pixels(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "raw", width=2400, height=1800, pre_width=None,
                     pre_height=None)
    runs = {}
    for fmt in ("tiff", "tiff-zstd", "tiff-deflate"):
        run_pair(pair.spec.sample, pair.spec.dye, pair.pre_path, pair.post_path,
                 tmp_path / fmt, threads=1, checkpoint_format=fmt)
        runs[fmt] = _images(PairLayout(tmp_path / fmt, P.resolve()))
    for name, plain_path in runs["tiff"].items():
        zstd, deflate = runs["tiff-zstd"][name], runs["tiff-deflate"][name]
        with tifffile.TiffFile(plain_path) as p, tifffile.TiffFile(zstd) as a, \
                tifffile.TiffFile(deflate) as b:
            assert p.pages.first.compression.name == "NONE", name  # the default: uncompressed
            assert a.pages.first.compression.name == "ZSTD", name
            assert b.pages.first.compression.name in ("DEFLATE", "ADOBE_DEFLATE"), name
            np.testing.assert_array_equal(a.asarray(), b.asarray(), err_msg=name)
            np.testing.assert_array_equal(p.asarray(), a.asarray(), err_msg=name)
            page = p.pages.first
            # the stage-1 signal is an intermediate: one level; the products are pyramidal
            n_levels = [len(t.series[0].levels) for t in (p, a, b)]
            assert (n_levels == [1] * 3 if name == "signal"
                    else len(set(n_levels)) == 1 and n_levels[0] > 1), (name, n_levels)
            assert p.is_ome and a.is_ome, name
            full = page.imagelength * page.imagewidth * page.dtype.itemsize
            plain = full if name == "signal" else pyramid_bytes(
                (page.imagelength, page.imagewidth), page.dtype)
        assert plain_path.stat().st_size >= plain, name
        # integer signals (horizontal predictor) shrink to ~45 %, float images (no predictor,
        # for Bio-Formats) to ~90 %
        assert zstd.stat().st_size < (0.5 if name == "signal" else 0.92) * plain, name


def test_asking_for_another_format_reruns_only_the_stages_that_write_images(
        tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "raw")

    def run(fmt: str) -> dict[int, str]:
        events: dict[int, str] = {}
        run_pair(pair.spec.sample, pair.spec.dye, pair.pre_path, pair.post_path,
                 tmp_path / "out", threads=1, checkpoint_format=fmt,
                 on_stage=lambda stage, event: events.__setitem__(stage, event))
        return events

    assert run("tiff") == {1: "done", 2: "done", 3: "done", 4: "done", 5: "done"}
    layout = PairLayout(tmp_path / "out", P.resolve())
    assert not layout.aligned_pre("fits").exists()
    assert run("tiff") == {1: "skipped", 2: "skipped", 3: "skipped", 4: "skipped",
                           5: "skipped"}
    assert run("both") == {1: "skipped", 2: "skipped", 3: "done", 4: "done", 5: "done"}
    assert layout.aligned_pre("fits").is_file() and layout.difference("fits").is_file()
    assert layout.significance("fits").is_file()
    # both formats are there now: asking for either one alone resumes
    assert run("fits") == {1: "skipped", 2: "skipped", 3: "skipped", 4: "skipped",
                           5: "skipped"}
