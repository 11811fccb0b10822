"""Output folders that cannot take the outputs: under a regular file or ``/dev/null``,
read-only, immutable, full. The run is refused (exit 2) or the pair fails with a reason that
says so — ``cannot write PATH: …`` / ``disk full (N bytes free at PATH)`` — as the first line,
the other pairs complete, the batch summary is written when it can be, and no lock file is
left."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from exo2micro.io.oserrors import StorageError
from exo2micro.parallel import run_batch
from tests.faults import raise_in_stage
from tests.reliability.runner_cases import first_line
from tests.runner_helpers import child_env, exo2micro_cmd, make_raw, run_exo2micro


@pytest.fixture(scope="module")
def raw2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw2")
    make_raw(raw, 2, size=(240, 200))
    return raw


def _run(raw: Path, out: str | Path, *extra: str, prefix: tuple[str, ...] = ()
         ) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, *exo2micro_cmd("run", "--raw-dir", str(raw), "--outdir", str(out),
                                   "--to-stage", "1", "--parallel", "serial", *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=120,
                          check=False)


@pytest.mark.parametrize("where", ["file", "file/sub", "/dev/null", "/dev/null/sub"])
def test_output_folder_that_is_not_a_folder(where: str, raw2: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me\n")
    out = where if where.startswith("/") else str(tmp_path / where)
    done = run_exo2micro("run", "--raw-dir", str(raw2), "--outdir", out, "--to-stage", "1")
    assert done.returncode == 2, done.stderr
    line = first_line(done.stderr)
    assert line.startswith("error: cannot write ") and "is not a folder" in line, line
    assert "Traceback" not in done.stderr
    assert blocker.read_text() == "keep me\n"


def test_read_only_output_folder(raw2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    # root ignores permission bits: drop the capability that lets it
    drop = ("setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override")
    done = _run(raw2, out, prefix=drop)
    assert done.returncode == 2, done.stderr
    line = first_line(done.stderr)
    assert line == (f"error: cannot write {out}: read-only (permission denied, or the folder is "
                    f"immutable)"), done.stderr
    assert "Traceback" not in done.stderr
    assert list(out.iterdir()) == []


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    yield out
    subprocess.run(["chattr", "-i", str(out)], check=True)


def test_immutable_output_folder(raw2: Path, immutable: Path) -> None:
    done = _run(raw2, immutable)
    assert done.returncode == 2, done.stderr
    assert first_line(done.stderr).startswith(f"error: cannot write {immutable}: read-only")
    assert list(immutable.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_the_pairs_reason(raw2: Path, tiny_disk: Path) -> None:
    out = tiny_disk / "out"
    done = _run(raw2, out, "--force-run", "-s", "SYN01")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "SYN01" / "SybrGld" / "result.json").read_text())
    assert result["status"].startswith("error: disk full ("), result["status"]
    assert f"bytes free at {tiny_disk}" in result["status"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["error"] == 1
    assert not (out / ".exo2micro.lock").exists()


@pytest.mark.parametrize("err, reason", [(errno.ENOSPC, "disk full ("),
                                         (errno.EROFS, "cannot write "),
                                         (errno.EDQUOT, "disk full (")])
def test_storage_error_mid_stage_names_the_cause(err: int, reason: str, raw2: Path,
                                                 tmp_path: Path) -> None:
    results = run_batch(None, None, raw_dir=raw2, output_dir=tmp_path, to_stage=1,
                        show_progress=False, task_fn=partial(raise_in_stage, "SYN01/SybrGld",
                                                             err))
    bad, good = results
    assert bad["status"].startswith(f"error: {reason}"), bad["status"]
    assert ".tmp-" not in bad["status"]  # the folder, not an atomic write's temp name
    assert bad["error"]["exit_code"] == 2  # not retried: more memory would not help
    assert good["status"] == "complete"
    assert (tmp_path / "summary.md").is_file()


def test_summary_that_cannot_be_written_is_a_warning(raw2: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "summary.tsv").mkdir()  # in the way of the summary file
    results = run_batch(None, None, raw_dir=raw2, output_dir=tmp_path, to_stage=1,
                        show_progress=False)
    assert [r["status"] for r in results] == ["complete", "complete"]
    out = capsys.readouterr().out
    assert "WARNING: batch summary not written: cannot write" in out
    assert "SYN02" in out.split("WARNING")[1]  # the table is still printed


def test_storage_error_class_is_an_oserror_with_exit_2() -> None:
    exc = StorageError("cannot write x: read-only", errno.EROFS)
    assert isinstance(exc, OSError) and exc.exit_code == 2 and str(exc).startswith("cannot")
