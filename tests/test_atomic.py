"""Atomic writes (exo2micro.io.atomic) and what a SIGKILL mid-write leaves behind
(docs/contracts.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exo2micro import params as P
from exo2micro.io import atomic, fitsio, records, tiffio
from exo2micro.io.layout import PairLayout
from tests.helpers_io import REPO, files_under

#: A child process that streams a large image slowly into ``argv[2]`` with the writer named by
#: ``argv[1]``, printing "started" once its first block has been handed to the writer.
SLOW_WRITER = """
import sys, time
import numpy as np
from exo2micro.io import fitsio, tiffio
from exo2micro import params

kind, out = sys.argv[1], sys.argv[2]
h, w = 16384, 4096

def blocks():
    for y in range(0, h, 512):
        yield np.full((512, w), y % 251, np.uint16)
        if y == 512:
            print("started", flush=True)
        time.sleep(0.05 if y < 1024 else 5)

if kind == "tiff":
    tiffio.write_tiled(out, (h, w), np.uint16, blocks())
else:
    header = fitsio.make_header(sample="s", dye="d", stage=3, params=params.resolve())
    fitsio.write_streamed(out, (h, w), header, blocks())
"""


def _kill_mid_write(kind: str, final: Path) -> Path:
    """Start the slow writer, SIGKILL it once its temp file holds data; return the temp file."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, kind, str(final)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        while True:
            temps = [p for p in final.parent.iterdir() if atomic.TMP_MARK in p.name]
            if temps and temps[0].stat().st_size > 1 << 20:
                break
            assert time.monotonic() < deadline, "the writer never wrote its temp file"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return temps[0]


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize(("kind", "name"), [("tiff", "tiff/01_post_signal.tif"),
                                            ("fits", "fits/03_interior_aligned_pre.fits")])
def test_sigkill_mid_write_leaves_nothing_a_resume_accepts(tmp_path: Path, kind: str,
                                                           name: str) -> None:
    final = tmp_path / name
    final.parent.mkdir(parents=True)
    temp = _kill_mid_write(kind, final)
    assert not final.exists()
    assert temp.name.startswith(f".{final.name}{atomic.TMP_MARK}")
    assert records.output_ok(final) is False
    # even the half-written bytes themselves fail the integrity check of their type
    check = tiffio.check_readable if kind == "tiff" else fitsio.check_readable
    assert check(temp) is False
    layout = PairLayout(tmp_path, P.resolve())
    assert records.stage_is_current(layout, 1) == (False, "no record")
    assert atomic.remove_stale_temps(tmp_path) == [temp]
    assert files_under(tmp_path) == []


def test_atomic_path_commits_on_success(tmp_path: Path) -> None:
    final = tmp_path / "new" / "deep" / "out.bin"
    with atomic.atomic_path(final) as tmp:
        assert tmp.parent == final.parent and atomic.TMP_MARK in tmp.name
        tmp.write_bytes(b"complete")
        assert not final.exists()
    assert final.read_bytes() == b"complete"
    assert files_under(tmp_path) == ["new/deep/out.bin"]


def test_atomic_path_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    atomic.write_json_atomic(final, {"version": 1})
    with pytest.raises(RuntimeError, match="writer crashed"), atomic.atomic_path(final) as tmp:
        tmp.write_text('{"version": 2, "half')
        raise RuntimeError("writer crashed")
    assert json.loads(final.read_text()) == {"version": 1}
    assert files_under(tmp_path) == ["out.json"]


def test_temp_names_are_unique_hidden_siblings(tmp_path: Path) -> None:
    final = tmp_path / "a.tif"
    names = {atomic.temp_path_for(final) for _ in range(50)}
    assert len(names) == 50
    assert all(p.parent == tmp_path and p.name.startswith(".a.tif.tmp-") for p in names)
    assert all(f"-{os.getpid()}-" in p.name for p in names)


def test_json_writer_knows_numpy_and_paths(tmp_path: Path) -> None:
    obj = {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "p": Path("tiff/a.tif")}
    atomic.write_json_atomic(tmp_path / "r.json", obj)
    assert json.loads((tmp_path / "r.json").read_text()) == {"n": 3, "x": 0.5, "a": [0, 1, 2],
                                                            "p": "tiff/a.tif"}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic.write_json_atomic(tmp_path / "bad.json", {"o": object()})
    assert files_under(tmp_path) == ["r.json"]


def test_remove_stale_temps_removes_only_leftovers(tmp_path: Path) -> None:
    keep = ["tiff/01_pre_signal.tif", "stages/01_load.json", ".hidden_but_final.txt",
            "notes.tmp-like.txt"]
    leftovers = ["tiff/.01_pre_signal.tif.tmp-123-0", "stages/.01_load.json.tmp-9-4",
                 ".result.json.tmp-77-1"]
    for rel in keep + leftovers:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    removed = atomic.remove_stale_temps(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in removed) == sorted(leftovers)
    assert files_under(tmp_path) == sorted(keep)
    assert atomic.remove_stale_temps(tmp_path) == []
