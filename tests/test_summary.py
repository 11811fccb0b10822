"""The batch summary: rows, text table and Problems, summary.tsv/md, manifest.json, the HTML
report (rendered in headless Chromium when available) and the ``e2m-summary`` tool."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from exo2micro import summary as S
from exo2micro.parallel import run_batch
from tests.runner_helpers import ROOT, child_env, make_raw

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished lenient batch: 2 complete pairs, a truncated one, an incomplete one."""
    root = tmp_path_factory.mktemp("batch")
    make_raw(root / "raw", 2, broken=True)
    run_batch(None, None, output_dir=root / "out", raw_dir=root / "raw", strict_dyes=False,
              params={"scale_percentile": 40}, show_progress=False)
    return root / "out"


def _result(sample: str, status: str = "complete", **kw: object) -> dict:
    return {"sample": sample, "dye": "DAPI", "status": status, "scale_estimate": 1.25,
            "stages": {"load": {"status": "complete", "timings_s": {"total": 1.5},
                                "peak_rss_bytes": 300 << 20}}, **kw}


# ------------------------------------------------------------------------------ rows/text
def test_rows_text_and_problems() -> None:
    rows = S.collect_rows(
        [(_result("A", meta={"site": "north"}), None),
         (_result("B", "error: worker process died (likely out of memory)",
                  error={"class": "WorkerDiedError", "stage": 3, "exit_code": 137,
                         "attempts": 2}), None)],
        skipped=[("C", "DAPI", "incomplete: no post-stain file")],
        expected=[("A", "DAPI", {"site": "north"}), ("D", "DAPI", {"site": "south"})],
        failures=[S.Failure("D", "DAPI", 2, 137, 3, "killed by the OOM killer")])
    assert [(r.key, r.state) for r in rows] == [
        ("A/DAPI", "complete"), ("B/DAPI", "error"), ("D/DAPI", "error"), ("C/DAPI", "skipped")]
    text = S.format_text(rows)
    assert text.splitlines()[0].split() == ["Sample", "Dye", "Moffat", "Status"]
    problems = text[text.index("Problems (3):"):]
    assert ("B/DAPI: error (stage 3, exit code 137, 2 attempts, WorkerDiedError): worker "
            "process died (likely out of memory)") in problems
    assert "D/DAPI: error (stage 2, exit code 137, 3 attempts): killed by the OOM killer" in \
        problems
    assert "C/DAPI: skipped: incomplete: no post-stain file" in problems
    assert rows[2].meta == {"site": "south"}


def test_files_written(tmp_path: Path) -> None:
    rows = S.collect_rows([(_result("A", meta={"site": "n"}, fingerprint="abc",
                                    outputs=["tiff/04_difference.tif"]), None)],
                          skipped=[("C", "DAPI", "missing")])
    paths = S.write_summary(tmp_path, rows, {"mode": "serial"})
    assert sorted(paths) == sorted(S.FILES) and all(p.is_file() for p in paths.values())
    tsv = list(csv.DictReader(paths["summary.tsv"].open(), delimiter="\t"))
    assert tsv[0]["sample"] == "A" and tsv[0]["site"] == "n" and tsv[0]["status"] == "complete"
    assert tsv[1]["status"] == "skipped" and tsv[1]["reason"] == "missing"
    manifest = json.loads(paths["manifest.json"].read_text())
    pair = manifest["pairs"][0]
    assert pair["result"] == "A/DAPI/result.json"
    assert pair["outputs"] == ["A/DAPI/tiff/04_difference.tif"]
    assert pair["peak_rss_bytes"]["max"] == 300 << 20 and pair["timings_s"] == {"load": 1.5}
    assert pair["fingerprint"] == "abc" and pair["meta"] == {"site": "n"}
    assert manifest["mode"] == "serial" and manifest["meta_columns"] == ["site"]
    md = paths["summary.md"].read_text()
    assert "| A | DAPI | 1.2500 | complete (to stage 1) |" in md and "## Problems (1)" in md


def test_batch_summary_files(batch: Path) -> None:
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["counts"] == {"complete": 2, "needs-review": 0, "error": 1, "skipped": 1}
    by_key = {f"{p['sample']}/{p['dye']}": p for p in manifest["pairs"]}
    ok = by_key["SYN01/SybrGld"]
    assert ok["status"] == "complete" and ok["scales"]["moffat"] > 0
    assert ok["scales"]["percentile"] > 0 and ok["last_stage"] == 4
    assert all(not Path(o).is_absolute() and (batch / o).is_file() for o in ok["outputs"])
    assert set(ok["peak_rss_bytes"]) >= {"load", "align_boundary", "align_interior",
                                         "subtract", "max"}
    assert ok["attempts"] == 1 and len(ok["fingerprint"]) == 16
    bad = by_key["SYN01BROKEN/SybrGld"]
    assert bad["error"]["class"] == "InputDataError" and bad["error"]["exit_code"] == 65
    assert "truncated" in bad["reason"]
    text = (batch / "summary.md").read_text()
    assert "Percentile" in text and "SYN01INCOMPLETE/SybrGld: skipped" in text


# ------------------------------------------------------------------------------ HTML
def test_report_is_self_contained_with_thumbnails(batch: Path) -> None:
    page = (batch / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 * len(S.THUMBNAILS)
    links = re.findall(r'href="([^"]+)"', page)
    assert "SYN01/SybrGld/pipeline_output/difference_image_sp40.png" in links
    assert all((batch / link).is_file() for link in links)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert 'id="filter"' in page and "addEventListener('click'" in page


def test_thumbnail_is_small(batch: Path) -> None:
    png = batch / "SYN01" / "SybrGld" / "pipeline_output" / "difference_image_sp40.png"
    out = batch.parent / "thumb.png"
    out.write_bytes(S.thumbnail_png(png))
    thumb, full = mpimg.imread(out), mpimg.imread(png)
    assert max(thumb.shape[:2]) <= S.THUMB_SIDE and thumb.shape[2] >= 3
    assert abs(thumb.shape[0] / thumb.shape[1] - full.shape[0] / full.shape[1]) < 0.05


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium, "
                    "Debian package 'chromium') is not installed")
def test_report_renders_in_chromium(batch: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1400,1000",
           (batch / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    img = mpimg.imread(shot)[:, :, :3]
    assert img.shape[:2] == (1000, 1400)
    dark = (img.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.6 and img.std() > 0.05  # text and thumbnails, not a blank page
    # The problem row is rendered in its colour (light red) somewhere on the page.
    reddish = (img[:, :, 0] > 0.95) & (img[:, :, 1] < 0.92) & (img[:, :, 2] < 0.92)
    assert reddish.mean() > 0.001


# ------------------------------------------------------------------------------ CLI
def _summary_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """bin/e2m-summary run by this interpreter (its shebang's ``python3`` may be another one
    on PATH, without exo2micro's dependencies)."""
    return subprocess.run([sys.executable, str(ROOT / "bin" / "e2m-summary"), *args],
                          capture_output=True, text=True, env=child_env(), timeout=120,
                          check=False)


def test_summary_cli_from_result_files(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "summary"
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("sample,dye,pre,post,site\n"
                     "SYN01,SybrGld,/x/pre.tif,/x/post.tif,north\n"
                     "SYN02,SybrGld,/x/pre.tif,/x/post.tif,south\n"
                     "SYN09,SybrGld,/x/pre.tif,/x/post.tif,east\n")
    skipped = tmp_path / "skipped.tsv"
    skipped.write_text("sample\tdye\treason\nSYN07\tDAPI\tno post-stain file\n")
    failures = tmp_path / "failures.tsv"
    failures.write_text("sample\tdye\tstage\texit_code\tattempts\treason\n"
                        "SYN09\tSybrGld\t3\t137\t3\tout of memory after 3 attempts\n")
    results = [str(batch / s / "SybrGld" / "result.json") for s in ("SYN01", "SYN02")]
    proc = _summary_cli("--outdir", str(out), "--samplesheet", str(sheet), "--skipped",
                        str(skipped), "--failures", str(failures), "--threads", "2", *results)
    assert proc.returncode == 0, proc.stderr
    assert ("SYN09/SybrGld: error (stage 3, exit code 137, 3 attempts): out of memory after 3 "
            "attempts") in proc.stdout
    assert "SYN07/DAPI: skipped: no post-stain file" in proc.stdout
    tsv = {r["sample"]: r for r in csv.DictReader((out / "summary.tsv").open(),
                                                   delimiter="\t")}
    assert tsv["SYN01"]["site"] == "north" and tsv["SYN09"]["status"] == "error"
    assert tsv["SYN09"]["exit_code"] == "137" and tsv["SYN07"]["status"] == "skipped"
    # Thumbnails are found next to the result files and linked at the published layout.
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * len(S.THUMBNAILS)


def test_expected_pair_without_result_or_failure_record() -> None:
    rows = S.collect_rows([], expected=[("E", "DAPI", {})])
    assert rows[0].state == "error" and rows[0].reason == S.NO_RESULT


def test_summary_cli_default_glob_and_zero_pairs(batch: Path, tmp_path: Path) -> None:
    proc = _summary_cli("--outdir", str(batch))
    assert proc.returncode == 0, proc.stderr
    counts = json.loads((batch / "manifest.json").read_text())["counts"]
    assert counts["complete"] == 2 and counts["error"] == 1  # from the three result.json files
    empty = tmp_path / "empty"
    proc = _summary_cli("--outdir", str(empty))
    assert proc.returncode == 0, proc.stderr
    assert "No pairs were run" in proc.stdout
    assert json.loads((empty / "manifest.json").read_text())["pairs"] == []
    assert np.all([(empty / f).is_file() for f in S.FILES])


def test_report_stays_under_the_platform_preview_limit_at_1000_pairs(tmp_path: Path) -> None:
    """1 000 pairs with real diagnostic PNGs: the embedded thumbnails stop at the budget, every
    pair keeps its links, and the page stays under Seqera Platform's 10 MB preview limit."""
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    rng = np.random.default_rng(0)
    for name, _label in S.THUMBNAILS:  # noisy 640x512 colour plots: thumbnails that do not shrink
        mpimg.imsave(png_dir / f"{name}.png", rng.random((512, 640, 3)))
    results = []
    for i in range(1000):
        folder = tmp_path / f"S{i:04d}" / "DAPI"
        (folder / "pipeline_output").mkdir(parents=True)
        for name, _label in S.THUMBNAILS:
            os.link(png_dir / f"{name}.png", folder / "pipeline_output" / f"{name}.png")
        results.append(({"sample": f"S{i:04d}", "dye": "DAPI", "status": "complete",
                         "scale_estimate": 1.3}, folder))
    rows = S.collect_rows(results, (), (), ())
    page = S.render_html(rows, tmp_path, threads=2)
    assert len(page.encode()) < 10_000_000, len(page.encode())
    embedded = page.count("data:image/png;base64,")
    assert 50 < embedded < 3 * 1000, embedded  # noise: the largest thumbnails there are
    # every pair links its difference image, embedded or not
    assert page.count('pipeline_output/difference_image.png"') == 1000


def test_last_stage_is_the_last_completed_one_and_the_failure_has_its_own() -> None:
    """A pair that failed in stage 1 of a run asked to reach stage 4 completed no stage."""
    failed = {"sample": "S1", "dye": "DAPI", "status": "error: truncated",
              "stages": {"load": {"status": "error"}},
              "error": {"stage": 1, "exit_code": 65, "class": "InputDataError"},
              "runner": {"last_stage": 4}}
    partial = {"sample": "S2", "dye": "DAPI", "status": "error: boom",
               "stages": {"load": {"status": "complete"}, "align_boundary": {"status": "complete"},
                          "align_interior": {"status": "error"}},
               "error": {"stage": 3, "exit_code": 1}, "runner": {"last_stage": 4}}
    rows = {r.sample: r for r in S.collect_rows([(failed, None), (partial, None)])}
    assert (rows["S1"].last_stage, rows["S1"].error_stage) == (None, 1)
    assert (rows["S2"].last_stage, rows["S2"].error_stage) == (2, 3)
    tsv = list(csv.DictReader(io.StringIO(S.format_tsv(list(rows.values()))), delimiter="\t"))
    assert [(r["last_stage"], r["error_stage"]) for r in tsv] == [("", "1"), ("2", "3")]


def test_every_table_explains_its_k_columns() -> None:
    """'Moffat' alone means nothing to a newcomer: the text table, summary.md and report.html
    say what k is and where each scale comes from."""
    row = {"sample": "S1", "dye": "DAPI", "status": "complete", "scale_estimate": 1.3,
           "scale_percentile_value": 1.4}
    rows = S.collect_rows([(row, None)])
    for text in (S.format_text(rows), S.format_markdown(rows)):
        assert "Moffat" in text and S.SCALE_LEGEND in text
    assert html.escape(S.SCALE_LEGEND) in S.render_html(rows, Path("."))
    assert "brighter" in S.SCALE_LEGEND and "log10(post/pre)" in S.SCALE_LEGEND
