"""``exo2micro run``: exit codes (0 with failed pairs, 2 usage/pre-flight/lock, 65 strict
layout), samplesheet input with extra columns, progress lines, and the real entry point."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from exo2micro.batch import preflight
from exo2micro.cli.run import run
from tests.runner_helpers import child_env, make_raw, run_exo2micro


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    make_raw(root, 2, broken=True)
    return root


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(run, list(args))
    return result.exit_code, result.output


def test_failed_pairs_still_exit_0_and_are_summarised(raw: Path, tmp_path: Path) -> None:
    proc = run_exo2micro("run", "--raw-dir", str(raw), "--outdir", str(tmp_path),
                         "--lenient", "--to-stage", "1", "--parallel", "process",
                         "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Pre-flight resource check" in out and "Problems (2):" in out
    assert "SYN01BROKEN/SybrGld: error (stage 1, exit code 65" in out
    assert "SYN01INCOMPLETE/SybrGld: skipped" in out
    # Not a terminal: plain progress lines, one per finished pair.
    assert "[3/3] " in proc.stderr and "SYN02/SybrGld: complete" in proc.stderr
    assert (tmp_path / "report.html").is_file()


def test_strict_layout_problems_exit_65_listing_every_pair(raw: Path, tmp_path: Path) -> None:
    proc = run_exo2micro("run", "--raw-dir", str(raw), "--outdir", str(tmp_path / "o"),
                         "--samples", "SYN01,SYN02", "--dyes", "SybrGld,DAPI")
    assert proc.returncode == 65
    err = proc.stderr
    assert err.startswith("error: ") and "SYN01/DAPI" in err and "SYN02/DAPI" in err
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(raw: Path, tmp_path: Path) -> None:
    code, out = _run("--outdir", str(tmp_path))
    assert code == 2 and "--raw-dir" in out
    code, out = _run("--raw-dir", str(raw), "--outdir", str(tmp_path), "--param", "bw=3")
    assert code == 2 and "unknown parameter" in out
    code, out = _run("--raw-dir", str(raw), "--outdir", str(tmp_path), "--timeout-per-task",
                     "5")
    assert code == 2 and "subprocess" in out


def test_preflight_refusal_exits_2_and_force_run_runs(raw: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: (1 << 20, "injected 1 MiB"))
    args = ["--raw-dir", str(raw), "--outdir", str(tmp_path), "--lenient", "--to-stage", "1",
            "--samples", "SYN01", "--parallel", "subprocess"]
    code, out = _run(*args)
    assert code == 2
    assert out.startswith("error: estimated peak RAM") and "To fix, any of:" in out
    code, out = _run(*args, "--force-run")
    assert code == 0, out
    result = json.loads((tmp_path / "SYN01" / "SybrGld" / "result.json").read_text())
    assert result["status"] == "complete" and result["runner"]["preflight"]["forced"]


def test_locked_output_folder_exits_2(raw: Path, tmp_path: Path) -> None:
    hold = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom exo2micro.batch.lock import OutputLock\n"
         "with OutputLock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "locked"
        proc = run_exo2micro("run", "--raw-dir", str(raw), "--outdir", str(tmp_path),
                             "--lenient")
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: output folder") and f"pid {hold.pid}" in \
            proc.stderr
    finally:
        hold.kill()
        hold.wait()


def test_samplesheet_input_carries_extra_columns(raw: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "pairs.csv"
    sample = raw / "SYN02"
    sheet.write_text("sample,dye,pre,post,site\n"
                     f"SYN02,SybrGld,{sample / 'SYN02_PreStain_SybrGld.tif'},"
                     f"{sample / 'SYN02_PostStain_SybrGld.tif'},north\n")
    code, out = _run("--input", str(sheet), "--outdir", str(tmp_path / "o"), "--to-stage", "1")
    assert code == 0, out
    rows = list(csv.DictReader((tmp_path / "o" / "summary.tsv").open(), delimiter="\t"))
    assert [(r["sample"], r["site"], r["status"]) for r in rows] == [
        ("SYN02", "north", "complete")]


def test_a_mistyped_checkpoint_format_names_the_closest(raw: Path, tmp_path: Path) -> None:
    code, out = _run("--raw-dir", str(raw), "--outdir", str(tmp_path),
                     "--checkpoint-format", "tif-zstd")
    assert code == 2, out
    assert "'tif-zstd' is not one of" in out and "Did you mean 'tiff-zstd'?" in out, out


@pytest.mark.parametrize(("selection", "exists"), [
    (["--samples", "NOPE"], "(found: SYN01, "),
    (["--dyes", "SybrGold"], "did you mean 'SybrGld'?"),
])
def test_a_batch_that_selects_no_pair_is_an_error(raw: Path, tmp_path: Path,
                                                   selection: list[str], exists: str) -> None:
    """Doing nothing is not a success (docs/contracts.md): exit 65 with what was asked and what
    exists; the summary is still written, listing the skipped entries."""
    code, out = _run("--raw-dir", str(raw), "--outdir", str(tmp_path), "--lenient", *selection)
    assert code == 65, out
    assert "error: nothing to run in" in out and "no complete pair matches the request" in out
    assert exists in out, out
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["complete"] == 0
