"""The batch summary: rows, text table and Problems, summary.tsv/md, counts.tsv, manifest.json,
the HTML report (rendered in headless Chromium when available) and the ``e2m-summary`` tool."""

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

from exo2micro import params as P
from exo2micro.io.layout import PairLayout
from exo2micro.parallel import run_batch
from exo2micro.report import summary as S
from exo2micro.report.captions import caption
from tests.runner_helpers import ROOT, child_env, make_raw

CHROMIUM = Path("/usr/bin/chromium")
#: Parameters of the batch: one pixel size for both images (the synthetic pre pixels are
#: `scale` times larger, 0.94 and 1.056 for SYN01/SYN02, so stage 4 warns that the sizes
#: disagree with the measured scale) and exposure times (ratio 2).
BATCH_PARAMS = {"scale_percentile": 40, "pixel_size_um": 0.65, "pre_exposure_s": 0.1,
                "post_exposure_s": 0.2}
PIXEL_WARNING = ("stage 4: the pixel sizes (pre 0.65 µm, post 0.65 µm) imply a pre→post scale "
                 "of 1.0000, but stage 2 measured 0.9413 (-5.9%); is a pixel size wrong?")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished lenient batch (:data:`BATCH_PARAMS`): 2 finished pairs (needing review for
    their pixel size), a truncated one, an incomplete one."""
    root = tmp_path_factory.mktemp("batch")
    make_raw(root / "raw", 2, broken=True)
    run_batch(None, None, output_dir=root / "out", raw_dir=root / "raw", strict_dyes=False,
              params=BATCH_PARAMS, show_progress=False)
    return root / "out"


def _plot(batch: Path, sample: str, name: str, stage: int = 4) -> str:
    """The path of a pair's plot in ``batch``, relative to it (the layout's name)."""
    layout = PairLayout(batch / sample / "SybrGld", P.resolve(BATCH_PARAMS))
    return layout.stage_plot(name, stage).relative_to(batch).as_posix()


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
    assert manifest["counts"] == {"complete": 0, "needs-review": 2, "error": 1, "skipped": 1}
    by_key = {f"{p['sample']}/{p['dye']}": p for p in manifest["pairs"]}
    ok = by_key["SYN01/SybrGld"]
    assert ok["status"] == "needs-review" and ok["scales"]["moffat"] > 0
    assert ok["scales"]["percentile"] > 0 and ok["last_stage"] == 5  # stage 5 is the last
    assert all(not Path(o).is_absolute() and (batch / o).is_file() for o in ok["outputs"])
    assert set(ok["peak_rss_bytes"]) >= {"load", "align_boundary", "align_interior",
                                         "subtract", "detect", "max"}
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
    assert _plot(batch, "SYN01", "difference_image") in links
    assert all((batch / link).is_file() for link in links)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert 'id="filter"' in page and "addEventListener('click'" in page


def test_thumbnail_is_small(batch: Path) -> None:
    png = batch / _plot(batch, "SYN01", "difference_image")
    out = batch.parent / "thumb.png"
    out.write_bytes(S.thumbnail_png(png))
    thumb, full = mpimg.imread(out), mpimg.imread(png)
    assert max(thumb.shape[:2]) <= S.THUMB_SIDE and thumb.shape[2] >= 3
    assert abs(thumb.shape[0] / thumb.shape[1] - full.shape[0] / full.shape[1]) < 0.05


def _chromium(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` with a throw-away profile and no network services."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium, "
                    "Debian package 'chromium') is not installed")
def test_report_renders_in_chromium(batch: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _chromium((batch / "report.html").as_uri(), tmp_path, f"--screenshot={shot}",
              "--window-size=1400,1000")
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
    assert counts["needs-review"] == 2 and counts["error"] == 1  # the three result.json files
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


# ------------------------------------------------------------------------ pixel size, exposure
def _physical(sample: str, dye: str = "DAPI", **kw: object) -> dict:
    """A finished result with a pixel size, exposure times and stage 5 counts."""
    physical = {"pixel_size_um": 0.65,
                "exposure": {"pre_s": 0.1, "post_s": 0.2, "ratio": 2.0, "k_net_of_exposure": 0.625},
                "detections": {"n": 15, "n_snr5": 12, "threshold_sigma": 4.0, "per_mm2": 30.0}}
    return _result(sample, dye=dye, **{**physical, **kw})


def test_pixel_size_and_exposure_ratio_in_every_table(tmp_path: Path) -> None:
    """#20: the pixel size (µm) and the exposure ratio with k net of exposure, per pair."""
    rows = S.collect_rows([(_physical("A"), None), (_result("B"), None)])
    paths = S.write_summary(tmp_path, rows)
    tsv = list(csv.DictReader(paths["summary.tsv"].open(), delimiter="\t"))
    assert (tsv[0]["pixel_size_um"], tsv[0]["exposure_ratio"], tsv[0]["k_net_of_exposure"]) == (
        "0.65", "2", "0.625")
    assert (tsv[1]["exposure_ratio"], tsv[1]["k_net_of_exposure"]) == ("", "")
    pair = json.loads(paths["manifest.json"].read_text())["pairs"][0]
    assert pair["pixel_size_um"] == 0.65
    assert pair["exposure"] == {"ratio": 2.0, "k_net_of_exposure": 0.625}
    md = paths["summary.md"].read_text()
    assert "| Sample | Dye | Moffat | Exposure ratio | k net of exposure | Pixel µm |" in md
    assert "| A | DAPI | 1.2500 | 2 | 0.6250 | 0.65 |" in md
    assert S.EXPOSURE_LEGEND in md and S.PIXEL_LEGEND in md
    text = S.format_text(rows)
    assert text.splitlines()[0].split()[:8] == ["Sample", "Dye", "Moffat", "Exposure", "ratio",
                                                "k", "net", "of"]
    page = paths["report.html"].read_text()
    for header in ("Exp. ratio", "k net of exp.", "Pixel µm"):
        assert f"<th>{html.escape(header)}</th>" in page
    assert '<td class="num" data-v="2.0">2</td>' in page
    assert '<td class="num" data-v="0.65">0.65</td>' in page
    assert html.escape(S.EXPOSURE_LEGEND) in page


def test_k_map_range_in_the_tables_and_its_thumbnail_in_the_report(tmp_path: Path) -> None:
    """A pair scaled with a map of k: its model and range in summary.tsv and manifest.json, and
    report.html gets a "k map" thumbnail column (only then)."""
    smooth = _result("A", k_model="smooth", scale_range=[1.21, 1.38])
    rows = S.collect_rows([(smooth, None), (_result("B", k_model="global",
                                                    scale_range=[1.25, 1.25]), None)])
    paths = S.write_summary(tmp_path, rows)
    tsv = list(csv.DictReader(paths["summary.tsv"].open(), delimiter="\t"))
    assert [(r["k_model"], r["k_min"], r["k_max"]) for r in tsv] == [
        ("smooth", "1.21", "1.38"), ("global", "1.25", "1.25")]
    pair = json.loads(paths["manifest.json"].read_text())["pairs"][0]
    assert (pair["k_model"], pair["scale_range"]) == ("smooth", [1.21, 1.38])
    page = paths["report.html"].read_text()
    assert ">k map</th>" in page and caption("scale_map") and html.escape(
        caption("scale_map")) in page
    plain = S.render_html(S.collect_rows([(_result("B", k_model="global"), None)]), tmp_path)
    assert ">k map</th>" not in plain


def test_exposure_and_pixel_columns_only_when_known() -> None:
    rows = S.collect_rows([(_result("B"), None)])
    text, md = S.format_text(rows), S.format_markdown(rows)
    page = S.render_html(rows, Path("."))
    for shown in (text, md, page):
        assert "Exposure ratio" not in shown and "Pixel µm" not in shown
        assert "Microbes" not in shown


def test_pixel_size_warning_makes_the_pair_need_review() -> None:
    """#20: the pixel-size check of stage 4 (a result.json warning) is listed under Problems
    like the other needs-review items, first; other warnings are not problems."""
    other = "stage 4: only 12 of 1000 tissue pixels (1.2%) are away from stain"
    rows = S.collect_rows([(_result("A", warnings=[other]), None),
                           (_result("B", warnings=[other, PIXEL_WARNING]), None),
                           (_result("C", "error: boom"), None)])
    by = {r.sample: r for r in rows}
    assert by["A"].state == "complete" and by["B"].state == "needs-review"
    assert by["B"].reason == PIXEL_WARNING.removeprefix("stage 4: ")
    problem = f"B/DAPI: needs-review: {by['B'].reason}"
    text = S.format_text(rows)
    problems = text[text.index("Problems (2):"):].splitlines()
    assert problems[1].strip().startswith(problem) and "C/DAPI: error" in problems[2]
    assert "0 complete" not in text and "1 need review" in text
    md = S.format_markdown(rows)
    assert f"- {problem}" in md and "## Problems (2)" in md
    page = S.render_html(rows, Path("."))
    problems_html = page[page.index('<section id="problems">'):]
    assert html.escape(by["B"].reason) in problems_html
    assert json.loads(json.dumps(S.manifest(rows)))["pairs"][1]["review"] == by["B"].reason
    # a review problem of stage 4 and the pixel-size check together
    both = S.collect_rows([(_result("D", "needs-review", review={"problems": ["re-mounted"]},
                                    warnings=[PIXEL_WARNING]), None)])
    assert both[0].reason == f"re-mounted; {PIXEL_WARNING.removeprefix('stage 4: ')}"


def test_pixel_size_warning_of_a_real_run_is_a_problem(batch: Path) -> None:
    """The warning stage 4 writes (one pixel size for pre and post, scales 0.94 and 1.056)
    is recognised: both pairs need review for it, in result.json's own words."""
    text = (batch / "summary.md").read_text()
    for sample in ("SYN01", "SYN02"):
        result = json.loads((batch / sample / "SybrGld" / "result.json").read_text())
        assert result["status"] == "needs-review" and result["pixel_size_um"] == 0.65
        warning = next(w for w in result["warnings"] if "pixel sizes" in w)
        assert f"- {sample}/SybrGld: needs-review (1 attempt): " \
               f"{warning.removeprefix('stage 4: ')}" in text
        assert result["exposure"]["ratio"] == pytest.approx(2.0)
    tsv = {r["sample"]: r for r in csv.DictReader((batch / "summary.tsv").open(),
                                                   delimiter="\t")}
    assert float(tsv["SYN01"]["exposure_ratio"]) == pytest.approx(2.0)
    assert float(tsv["SYN01"]["pixel_size_um"]) == pytest.approx(0.65)


# ------------------------------------------------------------------------------ microbes
def test_microbe_counts_in_every_table(tmp_path: Path) -> None:
    """#16: stage 5's counts (n, n_snr5, per mm²) per pair in the TSV, the manifest, the text
    table, summary.md and report.html; SNR ≥ 5 per mm² is the all-source density × 12/15."""
    rows = S.collect_rows([(_physical("A"), None),
                           (_result("B", detections={"n": 7, "n_snr5": 7, "per_mm2": None}),
                            None), (_result("C"), None)])
    assert rows[0].microbes_per_mm2 == pytest.approx(24.0)
    paths = S.write_summary(tmp_path, rows)
    tsv = list(csv.DictReader(paths["summary.tsv"].open(), delimiter="\t"))
    assert [(r["detections_n"], r["detections_n_snr5"], r["detections_per_mm2"]) for r in tsv] \
        == [("15", "12", "30"), ("7", "7", ""), ("", "", "")]
    pairs = json.loads(paths["manifest.json"].read_text())["pairs"]
    assert pairs[0]["detections"] == {"n": 15, "n_snr5": 12, "per_mm2": 30.0}
    assert pairs[2]["detections"] is None
    text = S.format_text(rows).splitlines()
    assert "Microbes" in text[0] and "Microbes/mm²" in text[0]
    assert re.search(r"^A\s.*\s12 of 15\s+24\s+complete", text[2])
    assert re.search(r"^B\s.*\s7\s+-\s+complete", text[3])
    md = paths["summary.md"].read_text()
    assert "| A | DAPI | 1.2500 | 2 | 0.6250 | 0.65 | 12 of 15 | 24 | complete (to stage 1) |" \
        in md
    assert S.MICROBE_LEGEND in md
    page = paths["report.html"].read_text()
    assert '<td class="num" data-v="12">12 of 15</td>' in page
    assert '<td class="num" data-v="24.0">24</td>' in page
    assert "<th>Microbes</th>" in page and "<th>per mm²</th>" in page


def test_count_table_per_sample_and_dye(tmp_path: Path) -> None:
    """#16: microbes (SNR ≥ 5) per sample × dye: counts.tsv (numbers only), summary.md and
    report.html (with failed, skipped, not counted and needs-review marks), dyes and samples
    sorted whatever the order the pairs finished in."""
    rows = S.collect_rows(
        [(_physical("S1", "SybrGld", detections={"n": 3, "n_snr5": 3, "per_mm2": 1234.5}), None),
         (_physical("S1"), None),
         (_result("S3"), None),
         (_physical("S2", warnings=[PIXEL_WARNING]), None),
         (_result("S2", "error: boom", dye="SybrGld"), None)],
        skipped=[("S3", "SybrGld", "no post-stain file")])
    paths = S.write_summary(tmp_path, rows)
    assert paths["counts.tsv"] == tmp_path / "counts.tsv"
    assert paths["counts.tsv"].read_text().splitlines() == [
        "sample\tDAPI_n_snr5\tDAPI_n_snr5_per_mm2\tSybrGld_n_snr5\tSybrGld_n_snr5_per_mm2",
        "S1\t12\t24\t3\t1234.5",
        "S2\t12\t24\t\t",
        "S3\t\t\t\t"]
    md = paths["summary.md"].read_text()
    table = md[md.index("## Microbes per sample and dye"):md.index("## Problems")]
    assert S.COUNTS_LEGEND in table
    assert "| Sample | DAPI | SybrGld |" in table
    assert "| S1 | 12 (24/mm²) | 3 (1234/mm²) |" in table
    assert "| S2 | 12 * (24/mm²) | failed |" in table
    assert "| S3 | – | skipped |" in table
    page = paths["report.html"].read_text()
    section = page[page.index('<section id="microbes">'):page.index("<h2>Pairs</h2>")]
    assert "<th>DAPI</th><th>SybrGld</th>" in section
    assert '<td class="num complete">12<small>24 /mm²</small></td>' in section
    assert '<td class="num needs-review">12 *<small>24 /mm²</small></td>' in section
    assert '<td class="num error">failed</td>' in section
    assert '<td class="num skipped">skipped</td>' in section


def test_no_count_table_without_stage_5() -> None:
    rows = S.collect_rows([(_result("A"), None)])
    assert "Microbes per sample" not in S.format_markdown(rows)
    assert 'id="microbes"' not in S.render_html(rows, Path("."))
    assert S.format_counts_tsv(rows) == "sample\tDAPI_n_snr5\tDAPI_n_snr5_per_mm2\nA\t\t\n"


def test_counts_of_a_real_run(batch: Path) -> None:
    """The counts of the real batch's result.json files reach counts.tsv and the tables."""
    lines = (batch / "counts.tsv").read_text().splitlines()
    assert lines[0] == "sample\tSybrGld_n_snr5\tSybrGld_n_snr5_per_mm2"
    by_sample = {line.split("\t")[0]: line.split("\t")[1:] for line in lines[1:]}
    for sample in ("SYN01", "SYN02"):
        found = json.loads((batch / sample / "SybrGld" / "result.json").read_text())["detections"]
        assert found["n_snr5"] > 0 and found["per_mm2"] > 0
        assert by_sample[sample] == [str(found["n_snr5"]),
                                     f"{found['per_mm2'] * found['n_snr5'] / found['n']:.6g}"]
    assert by_sample["SYN01BROKEN"] == ["", ""]  # failed: no count


def test_last_stage_counts_stage_5() -> None:
    """A pair whose run stopped after stage 4 is complete only to stage 4 (stage 5 exists)."""
    stages = {k: {"status": "complete"} for k in ("load", "align_boundary", "align_interior",
                                                   "subtract")}
    four = S.collect_rows([(_result("A", stages=stages), None)])[0]
    five = S.collect_rows([(_result("A", stages={**stages, "detect": {"status": "complete"}}),
                            None)])[0]
    assert (four.last_stage, four.status) == (4, "complete (to stage 4)")
    assert (five.last_stage, five.status) == (5, "complete")


# ------------------------------------------------------------------------------ report.html
def test_report_shows_the_detections_and_every_caption(batch: Path) -> None:
    """#16/#22: a thumbnail of the detections overlay, and under the thumbnail headers the
    one-line caption of each plot (the same sentence as in the PNG)."""
    page = (batch / "report.html").read_text()
    assert ("detections", "Detections") in S.THUMBNAILS
    links = re.findall(r'href="([^"]+)"', page)
    assert _plot(batch, "SYN01", "detections", 5) in links
    assert re.search(r'alt="Detections of SYN01/SybrGld" src="data:image/png;base64,', page)
    start = page.index('<tr class="captions">')
    captions = page[start:page.index("<tbody>", start)]
    for name, _label in S.THUMBNAILS:
        assert caption(name), name
        assert f'<div class="caption">{html.escape(caption(name))}</div>' in captions


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium, "
                    "Debian package 'chromium') is not installed")
def test_report_fits_a_1400px_window(batch: Path, tmp_path: Path) -> None:
    """Every column of the real batch's report (three k's, exposure, pixel size, microbes, four
    thumbnails with captions) fits a 1 400 px wide window: the page has no horizontal scroll.
    A copy of the page reports its own width through the DOM that Chromium dumps."""
    probe = tmp_path / "probe.html"
    page = (batch / "report.html").read_text()
    assert "Pixel µm" in page and "Exp. ratio" in page and "Percentile k" in page
    script = ("<script>document.body.dataset.width="
              "document.documentElement.scrollWidth</script></body>")
    probe.write_text(page.replace("</body>", script))
    done = _chromium(probe.as_uri(), tmp_path, "--window-size=1400,1000", "--dump-dom")
    width = re.search(r'data-width="(\d+)"', done.stdout)
    assert width, done.stderr[-2000:]
    assert int(width.group(1)) <= 1400


def test_every_batch_file_is_a_reserved_sample_name() -> None:
    """A sample folder named like a batch file (counts.tsv too) would collide with it."""
    from exo2micro.batch.discover import RESERVED_SAMPLE_NAMES

    assert set(S.FILES) <= RESERVED_SAMPLE_NAMES
