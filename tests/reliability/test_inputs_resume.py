"""Resume notices changed raw inputs and changed outputs (docs/contracts.md, "Resume")."""

from __future__ import annotations

import shutil
from pathlib import Path

from exo2micro import params as P
from exo2micro.io.layout import PairLayout
from exo2micro.io.records import stage_is_current
from exo2micro.stages.load import run_load
from tests.reliability.helpers import pair


def _loaded(tmp_path: Path) -> tuple[PairLayout, Path, Path]:
    res = pair(tmp_path / "raw")
    layout = PairLayout(tmp_path / "out", P.resolve())
    run_load(res.pre_path, res.post_path, layout, compression="zstd")
    assert stage_is_current(layout, 1)[0]
    return layout, res.pre_path, res.post_path


def test_reexported_pre_under_the_same_name_is_stale(tmp_path: Path) -> None:
    layout, pre, post = _loaded(tmp_path)
    other = pair(tmp_path / "other", seed=5)
    shutil.copyfile(other.pre_path, pre)
    current, why = stage_is_current(layout, 1, inputs={"pre": pre, "post": post})
    assert not current and "pre image" in why and "replaced or re-exported" in why
    assert not stage_is_current(layout, 1)[0]  # also without being told the inputs


def test_swapped_pre_and_post_are_stale(tmp_path: Path) -> None:
    layout, pre, post = _loaded(tmp_path)
    tmp = pre.with_name("swap.tif")
    pre.rename(tmp)
    post.rename(pre)
    tmp.rename(post)
    assert not stage_is_current(layout, 1, inputs={"pre": pre, "post": post})[0]


def test_samplesheet_pointing_at_other_files_is_stale(tmp_path: Path) -> None:
    layout, _, post = _loaded(tmp_path)
    other = pair(tmp_path / "other", seed=9)
    current, why = stage_is_current(layout, 1, inputs={"pre": other.pre_path, "post": post})
    assert not current and "is a different file" in why


def test_copied_raw_folder_stays_current(tmp_path: Path) -> None:
    layout, pre, post = _loaded(tmp_path)
    copy = shutil.copytree(pre.parent, tmp_path / "copy")
    assert stage_is_current(layout, 1, inputs={"pre": copy / pre.name,
                                                "post": copy / post.name})[0]


def test_corrupt_compressed_checkpoint_is_redone(tmp_path: Path) -> None:
    layout, _, _ = _loaded(tmp_path)
    sig = layout.signal("pre")
    data = bytearray(sig.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    sig.write_bytes(bytes(data))
    current, why = stage_is_current(layout, 1)
    assert not current and why == f"output {layout.relative(sig)} changed since it was " \
                                   f"written (checksum differs)"


def test_truncated_png_is_not_current(tmp_path: Path) -> None:
    from exo2micro.io.records import StageRun

    layout = PairLayout(tmp_path, P.resolve())
    png = tmp_path / "pipeline_output" / "plot.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    run = StageRun(layout, 4)
    run.add_outputs([png])
    run.record()
    png.write_bytes(png.read_bytes()[:1000])
    assert not stage_is_current(layout, 4)[0]
