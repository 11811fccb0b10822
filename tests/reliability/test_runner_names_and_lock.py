"""TIFFs whose names do not classify are reported by ``exo2micro run`` as by ``exo2micro
discover`` (strict: an error; lenient: a skipped entry with the reason; always in the
summary), and the output lock never follows a link or clobbers anything."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from exo2micro.parallel import run_batch
from tests.reliability.runner_cases import first_line
from tests.runner_helpers import make_raw, run_exo2micro

ODD_NAMES = {"unmarked": "SYN01_scan_SybrGld.tif", "space": "SYN01_pre_Sybr Gld.tif",
             "no-dye": "SYN01_post_.tif"}


@pytest.fixture(scope="module")
def raw_odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw_odd")
    make_raw(raw, 2, size=(240, 200))
    src = next((raw / "SYN01").glob("*Pre*"))
    for name in ODD_NAMES.values():
        shutil.copy(src, raw / "SYN01" / name)
    return raw


def test_strict_run_refuses_unclassified_files(raw_odd: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_exo2micro("run", "--raw-dir", str(raw_odd), "--outdir", str(out), "--to-stage",
                         "1")
    assert done.returncode == 65, done.stderr
    assert first_line(done.stderr).startswith("error: raw directory")
    for name in ODD_NAMES.values():
        assert name in done.stderr
    assert not out.exists()


def test_lenient_run_skips_them_with_the_reason_and_runs_the_rest(raw_odd: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_exo2micro("run", "--raw-dir", str(raw_odd), "--outdir", str(out), "--to-stage",
                         "1", "--lenient", "--parallel", "serial")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["complete"] == 2
    assert manifest["counts"]["skipped"] == len(ODD_NAMES)
    problems = (out / "summary.md").read_text().split("## Problems")[1]
    assert f"{ODD_NAMES['unmarked']}: skipped: file not used: no pre/post marker" in problems
    assert "Sybr Gld" in problems and "is not valid" in problems
    assert f"{ODD_NAMES['no-dye']}: skipped: file not used: nothing after the last '_'" in \
        problems
    # ... and what discover says about the same files
    disc = run_exo2micro("discover", "--raw-dir", str(raw_odd), "--lenient")
    for name in ODD_NAMES.values():
        assert name in disc.stderr and name in done.stdout


def _run(out: Path, raw: Path) -> object:
    return run_exo2micro("run", "--raw-dir", str(raw), "--outdir", str(out), "--to-stage", "1",
                         "--parallel", "serial")


@pytest.fixture(scope="module")
def raw1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw1")
    make_raw(raw, 1, size=(240, 200))
    return raw


def test_planted_lock_symlink_is_refused_and_its_target_untouched(raw1: Path,
                                                                   tmp_path: Path) -> None:
    out, victim = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    victim.write_text("do not overwrite\n")
    os.symlink(victim, out / ".exo2micro.lock")
    done = _run(out, raw1)
    assert done.returncode == 2
    line = first_line(done.stderr)
    assert line.startswith("error: lock path") and "symbolic link" in line
    assert victim.read_text() == "do not overwrite\n"
    assert os.path.islink(out / ".exo2micro.lock")  # not replaced either
    assert not (out / "SYN01").exists()


def test_dangling_lock_symlink_creates_nothing(raw1: Path, tmp_path: Path) -> None:
    out, target = tmp_path / "out", tmp_path / "created-through-link"
    out.mkdir()
    os.symlink(target, out / ".exo2micro.lock")
    done = _run(out, raw1)
    assert done.returncode == 2 and "symbolic link" in first_line(done.stderr)
    assert not target.exists()


def test_lock_path_that_is_a_directory_is_refused(raw1: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".exo2micro.lock").mkdir(parents=True)
    done = _run(out, raw1)
    assert done.returncode == 2
    assert "is a directory" in first_line(done.stderr)


def test_stale_lock_file_of_a_killed_run_is_taken_over(raw1: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".exo2micro.lock").write_text('{"pid": 999999, "host": "gone"}\n')
    done = _run(out, raw1)
    assert done.returncode == 0, done.stderr
    assert not (out / ".exo2micro.lock").exists()


def test_no_lock_file_left_after_a_refused_run(raw1: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    done = run_exo2micro("run", "--raw-dir", str(raw1), "--outdir", str(out), "-s", "NOPE")
    assert done.returncode == 65
    assert not (out / ".exo2micro.lock").exists()
    # refused by the pre-flight check, inside the lock
    monkeypatch.setattr("exo2micro.batch.preflight.available_memory", lambda: (1 << 20, "tiny"))
    with pytest.raises(MemoryError):
        run_batch(None, None, raw_dir=raw1, output_dir=out, show_progress=False)
    assert out.is_dir() and not (out / ".exo2micro.lock").exists()
