"""The pipeline run by a real Nextflow (tests/nextflow/README.md, "Real runs").

Every test here starts the pinned Nextflow runtime (scripts/setup-nextflow.sh) on a small
synthetic batch with the local executor, the project's venv tools on PATH and no container:
``-profile test`` against the local runner on the same batch, failed pairs under ``--lenient``,
retries of a task killed like the out-of-memory killer does (a pair still killed on its last
attempt is ignored), ``-resume`` after nothing, a stage-4 parameter and a raw TIFF changed, a
samplesheet with per-pair image columns, ``-stub-run``, ``--help`` and an unknown parameter.
Faults are injected from test-only configs given with ``-c``, never from production code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import tifffile

from exo2micro.synth import SynthSpec, batch_specs, generate_pair
from tests.runner_helpers import SIZE, make_raw

from .runtime import REPO, explain, process_name, run_pipeline, trace_rows

pytestmark = [pytest.mark.nextflow, pytest.mark.slow]

STAGES = ["LOAD", "ALIGN_BOUNDARY", "ALIGN_INTERIOR", "SUBTRACT", "DETECT"]
#: What SYNTH makes under -profile test (conf/test.config): 3 good pairs, 1 truncated, 1 pre only.
TEST_PROFILE_GOOD = 3
#: result.json values that must be the same whichever orchestrator ran the pair.
RESULT_KEYS = [
    ("status",),
    ("scale_estimate",),
    ("scale_percentile_value",),
    ("manual_scale",),
    ("alignment", "post_to_pre"),
    ("alignment", "estimated_accuracy_px"),
    ("alignment", "stage2", "status"),
    ("alignment", "stage3", "status"),
]


@dataclass
class Run:
    """One finished ``nextflow run``: its process, launch folder and output folder."""

    proc: subprocess.CompletedProcess[str]
    cwd: Path
    outdir: Path
    label: str
    #: manifest.json as this run left it (later runs may share the output folder)
    final_manifest: dict | None

    def explain(self) -> str:
        return explain(self.proc, self.cwd)

    def trace(self) -> list[dict[str, str]]:
        """This run's trace (several runs may share an output folder)."""
        return trace_rows(self.outdir, self.label)

    def manifest(self) -> dict:
        assert self.final_manifest is not None, f"no manifest.json:\n{self.explain()}"
        return self.final_manifest


def nextflow_run(cwd: Path, *args: str, outdir: str = "results", label: str = "run",
                 project: Path = REPO) -> Run:
    """``nextflow run <project> ARGS`` in ``cwd``; ``label`` names its pipeline_info reports."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = run_pipeline(cwd, *args, "--outdir", outdir, "--trace_report_suffix", label,
                        project=project)
    manifest = cwd / outdir / "manifest.json"
    final = json.loads(manifest.read_text()) if manifest.is_file() else None
    return Run(proc, cwd, cwd / outdir, label, final)


def copy_project(target: Path) -> Path:
    """The pipeline's files (and the package sources it hashes) copied to ``target``."""
    for name in ["main.nf", "nextflow.config", "nextflow_schema.json"]:
        shutil.copy2(REPO / name, target / name)
    for name in ["conf", "modules", "workflows", "bin", "exo2micro"]:
        shutil.copytree(REPO / name, target / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def pair_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def dig(data: dict, keys: tuple[str, ...]) -> object:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def approx(value: object) -> object:
    """``value`` with its numbers (also in nested lists) compared to 1e-12 relative."""
    if isinstance(value, list):
        return [approx(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-12, abs=1e-12)
    return value


def pair_tasks(run: Run) -> list[dict[str, str]]:
    return [row for row in run.trace() if process_name(row) in STAGES]


# ------------------------------------------------------------------------------------------
# -profile test


@pytest.fixture(scope="module")
def test_profile(tmp_path_factory: pytest.TempPathFactory) -> Run:
    # with the intermediates, so that the published tree can equal the local runner's
    return nextflow_run(tmp_path_factory.mktemp("profile-test"), "-profile", "test",
                        "--save_intermediates", "true")


def test_profile_test_completes_every_good_pair(test_profile: Run) -> None:
    assert test_profile.proc.returncode == 0, test_profile.explain()
    manifest = test_profile.manifest()
    assert manifest["counts"]["complete"] == TEST_PROFILE_GOOD, manifest["counts"]
    info = test_profile.outdir / "pipeline_info"
    for pattern in ["execution_trace_*.txt", "execution_report_*.html",
                    "execution_timeline_*.html", "pipeline_dag_*.html"]:
        assert list(info.glob(pattern)), f"pipeline_info/{pattern} missing"
    rows = (test_profile.outdir / "summary.tsv").read_text().splitlines()
    assert len(rows) == 1 + TEST_PROFILE_GOOD + 2, rows
    report = (test_profile.outdir / "report.html").read_text()
    for pair in manifest["pairs"]:
        assert pair["sample"] in report, f"report.html does not list {pair['sample']}"


def test_profile_test_reports_the_broken_pairs_with_their_reason(test_profile: Run) -> None:
    """The truncated TIFF is a data error (exit 65, one attempt, the tool's message); the pair
    without a post TIFF is skipped by discovery; the batch still succeeds (exit 0)."""
    assert test_profile.proc.returncode == 0, test_profile.explain()
    by_sample = {p["sample"]: p for p in test_profile.manifest()["pairs"]}
    broken = by_sample["SYN01BROKEN"]
    assert broken["status"] == "error", broken
    assert broken["error"]["exit_code"] == 65 and broken["error"]["attempts"] == 1, broken
    assert "file is truncated" in broken["reason"], broken
    assert by_sample["SYN01INCOMPLETE"]["status"] == "skipped"
    assert "no post-stain file" in by_sample["SYN01INCOMPLETE"]["reason"]
    load = [r for r in test_profile.trace()
            if process_name(r) == "LOAD" and r["tag"].startswith("SYN01BROKEN/")]
    assert [r["attempt"] for r in load] == ["1"], "a data error must not be retried"
    summary = (test_profile.outdir / "summary.md").read_text()
    assert "SYN01BROKEN/SybrGld: error (stage 1, exit code 65, 1 attempt)" in summary


def test_pair_folder_has_the_documented_outputs(test_profile: Run) -> None:
    for pair in test_profile.manifest()["pairs"]:
        if pair["status"] != "complete":
            continue
        folder = test_profile.outdir / pair["sample"] / pair["dye"]
        names = pair_files(folder)
        for expected in [
            "result.json",
            "stages/01_load.json",
            "stages/02_align_boundary.json",
            "stages/03_align_interior.json",
            "stages/04_subtract.json",
            "stages/05_detect.json",
            "detections.csv",
            "pipeline_output/detections.png",
            "transforms/02_boundary.json",
            "transforms/03_interior.json",
            "tiff/01_pre_signal.tif",
            "tiff/01_post_signal.tif",
            "tiff/03_interior_aligned_pre.tif",
            "pipeline_output/registration.png",
        ]:
            assert expected in names, f"{folder}: {expected} missing; has {sorted(names)}"
        assert any(n.startswith("tiff/04_difference") for n in names)
        assert "failure.tsv" not in names and not any(n.startswith("e2m_pair") for n in names)


def test_published_tree_equals_the_local_runner(test_profile: Run, tmp_path: Path) -> None:
    """Same files per pair, same result.json values, byte-identical images (TIFF; the FITS
    header carries its creation time, so FITS files are compared without it)."""
    assert test_profile.proc.returncode == 0, test_profile.explain()
    raw = test_profile.outdir / "synthetic_raw"
    local = tmp_path / "local"
    proc = subprocess.run(
        [sys.executable, "-m", "exo2micro", "run", "--raw-dir", str(raw), "--outdir", str(local),
         "--lenient"],
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"exo2micro run failed:\n{proc.stderr[-3000:]}"
    done = [p for p in test_profile.manifest()["pairs"] if p["status"] == "complete"]
    assert len(done) == TEST_PROFILE_GOOD
    for pair in done:
        rel = Path(pair["sample"]) / pair["dye"]
        ours, theirs = test_profile.outdir / rel, local / rel
        assert pair_files(ours) == pair_files(theirs), (
            f"{rel}: only under Nextflow: {sorted(pair_files(ours) - pair_files(theirs))}; "
            f"only in the local runner: {sorted(pair_files(theirs) - pair_files(ours))}"
        )
        a = json.loads((ours / "result.json").read_text())
        b = json.loads((theirs / "result.json").read_text())
        for keys in RESULT_KEYS:
            assert dig(a, keys) == approx(dig(b, keys)), f"{rel}: result.json {'.'.join(keys)}"
        for name in sorted(pair_files(ours)):
            if name.endswith((".tif", ".tiff")):
                assert (ours / name).read_bytes() == (theirs / name).read_bytes(), (
                    f"{rel}/{name} differs between Nextflow and the local runner"
                )


# ------------------------------------------------------------------------------------------
# strict discovery


def test_strict_discovery_stops_the_run_with_every_problem(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, n=1, broken=True)
    run = nextflow_run(tmp_path / "launch", "--raw_dir", str(raw))
    assert run.proc.returncode != 0, run.explain()
    text = run.proc.stdout + run.proc.stderr
    assert "SYN01INCOMPLETE" in text and "no post-stain file" in text, run.explain()
    assert not [r for r in run.trace() if process_name(r) in STAGES], "no pair may start"


# ------------------------------------------------------------------------------------------
# retries


def inject(path: Path, process: str, script: str, **more: str) -> Path:
    """A test-only config: ``script`` runs before the task's own script (beforeScript) of
    ``process``, and each of ``more`` (process name: script) before that process's."""
    blocks = "".join(f"    withName: '{name}' {{\n        beforeScript = {{ {code} }}\n    }}\n"
                     for name, code in {process: script, **more}.items())
    path.write_text("process {\n" + blocks + "}\n")
    return path


def test_a_task_killed_for_memory_is_retried_with_more_memory(tmp_path: Path) -> None:
    """On its first attempt ALIGN_BOUNDARY's tool dies of SIGKILL, as under the out-of-memory
    killer (exit 137): the task is retried with twice the memory and the pair completes."""
    raw = tmp_path / "raw"
    make_raw(raw, n=1)
    kill = (
        # an exported shell function shadows the tool on PATH inside the task script
        "task.attempt == 1 ? 'e2m-align-boundary() { sh -c \"kill -KILL \\\\$\\\\$\"; }; "
        "export -f e2m-align-boundary' : ''"
    )
    config = inject(tmp_path / "oom.config", "ALIGN_BOUNDARY", kill)
    run = nextflow_run(tmp_path / "launch", "--raw_dir", str(raw), "-c", str(config))
    assert run.proc.returncode == 0, run.explain()
    assert run.manifest()["counts"]["complete"] == 1
    rows = [r for r in run.trace() if process_name(r) == "ALIGN_BOUNDARY"]
    assert [(r["attempt"], r["status"], r["exit"]) for r in rows] == [
        ("1", "FAILED", "137"), ("2", "COMPLETED", "0")
    ], rows
    first, second = (float(r["memory"].split()[0]) for r in rows)
    assert second == pytest.approx(2 * first), rows


def test_an_internal_error_is_retried_then_stops_the_run(tmp_path: Path) -> None:
    """Exit 1 is not a data error: it fails the task (never cached), is retried, and after the
    last attempt the run finishes its running tasks and fails."""
    raw = tmp_path / "raw"
    make_raw(raw, n=1)
    config = inject(tmp_path / "exit1.config", "SUBTRACT",
                    "'e2m-subtract() { echo \"internal error: injected\" >&2; return 1; }; "
                    "export -f e2m-subtract'")
    run = nextflow_run(tmp_path / "launch", "--raw_dir", str(raw), "-c", str(config))
    assert run.proc.returncode != 0, run.explain()
    rows = [r for r in run.trace() if process_name(r) == "SUBTRACT"]
    assert [(r["attempt"], r["exit"]) for r in rows] == [("1", "1"), ("2", "1"), ("3", "1")], rows
    assert all(r["status"] == "FAILED" for r in rows), rows


def test_kill_codes_retry_a_batch_task_and_a_pair_killed_to_the_end_is_ignored(
    tmp_path: Path,
) -> None:
    """The retry exit codes (task.ext.retry_exit_codes, conf/constants.config) as both
    errorStrategy closures of conf/base.config read them: DISCOVER killed (137) on its first
    attempt is retried; one pair's ALIGN_BOUNDARY killed on every attempt is ignored after the
    last, so the other pair completes, the run succeeds and the summary names the stage."""
    raw = tmp_path / "raw"
    (killed, _dye), _other = make_raw(raw, n=2)
    suicide = "'{tool}() {{ sh -c \"kill -KILL \\\\$\\\\$\"; }}; export -f {tool}'"
    config = inject(
        tmp_path / "killed.config",
        "ALIGN_BOUNDARY",
        f"meta.sample == '{killed}' ? {suicide.format(tool='e2m-align-boundary')} : ''",
        DISCOVER=f"task.attempt == 1 ? {suicide.format(tool='e2m-discover')} : ''",
    )
    run = nextflow_run(tmp_path / "launch", "--raw_dir", str(raw), "--max_retries", "1",
                       "-c", str(config))
    assert run.proc.returncode == 0, run.explain()
    discover = [(r["attempt"], r["exit"]) for r in run.trace() if process_name(r) == "DISCOVER"]
    assert discover == [("1", "137"), ("2", "0")], discover
    rows = [(r["attempt"], r["status"], r["exit"]) for r in run.trace()
            if process_name(r) == "ALIGN_BOUNDARY" and r["tag"].startswith(f"{killed}/")]
    assert rows == [("1", "FAILED", "137"), ("2", "FAILED", "137")], rows
    manifest = run.manifest()
    assert manifest["counts"]["complete"] == 1, manifest["counts"]
    pair = next(p for p in manifest["pairs"] if p["sample"] == killed)
    assert "align_boundary did not finish" in pair["reason"], pair


# ------------------------------------------------------------------------------------------
# -resume


def resumed_result(run: Run, pair: str) -> dict:
    return json.loads((run.outdir / pair / "result.json").read_text())


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """One batch run five times in the same launch folder, from a copy of the pipeline: first,
    -resume with nothing changed, -resume with a stage-4 parameter changed, -resume after one
    raw pair was replaced, -resume after a change of the package's code."""
    root = tmp_path_factory.mktemp("resume")
    project = root / "project"
    project.mkdir()
    copy_project(project)
    raw = root / "raw"
    make_raw(raw, n=2)
    launch = root / "launch"

    def run(label: str, *args: str) -> Run:
        return nextflow_run(launch, "--raw_dir", str(raw), *args, label=label, project=project)

    runs = {"first": run("first")}
    runs["same"] = run("same", "-resume")
    runs["stage4"] = run("stage4", "-resume", "--scale_percentile", "99")
    # SYN02 re-exported with another true k: the same file names, new content
    result = resumed_result(runs["stage4"], "SYN02/SybrGld")
    assert result["scale_estimate"] != pytest.approx(1.6, rel=0.01), "pick another k"
    spec = replace(batch_specs(2, SynthSpec(width=SIZE[0], height=SIZE[1]))[1], k=1.6)
    new = generate_pair(spec, root / "replacement")
    for image in (new.pre_path, new.post_path):
        target = raw / "SYN02" / image.name
        assert target.exists(), sorted(p.name for p in (raw / "SYN02").iterdir())
        shutil.copyfile(image, target)
    runs["replaced"] = run("replaced", "-resume", "--scale_percentile", "99")
    # a `git pull` that changes the library: the same bin/ wrappers and container name
    with (project / "exo2micro" / "numerics" / "scale.py").open("a") as fh:
        fh.write("\n# a change of the code\n")
    runs["code"] = run("code", "-resume", "--scale_percentile", "99")
    for name, run in runs.items():
        assert run.proc.returncode == 0, f"{name} run:\n{run.explain()}"
    return runs


def test_only_results_are_published_by_default(resumed: dict[str, Run]) -> None:
    folder = resumed["first"].outdir / "SYN01" / "SybrGld"
    names = pair_files(folder)
    assert "result.json" in names and "transforms/03_interior.json" in names, sorted(names)
    assert any(n.startswith("tiff/04_difference") for n in names), sorted(names)
    intermediates = [n for n in names if n.startswith(("cache/", "tiff/01_", "tiff/03_"))]
    assert not intermediates, f"published without --save_intermediates: {intermediates}"


def test_an_identical_rerun_submits_no_pair_task(resumed: dict[str, Run]) -> None:
    rows = pair_tasks(resumed["same"])
    assert len(rows) == 2 * len(STAGES), rows
    assert {r["status"] for r in rows} == {"CACHED"}, rows


def test_a_stage4_parameter_reruns_only_stages_4_and_5(resumed: dict[str, Run]) -> None:
    rows = pair_tasks(resumed["stage4"])
    ran = sorted((process_name(r), r["tag"]) for r in rows if r["status"] != "CACHED")
    assert ran == sorted((stage, pair) for stage in ("SUBTRACT", "DETECT")
                         for pair in ("SYN01/SybrGld", "SYN02/SybrGld")), rows
    results = resumed["stage4"].manifest()["pairs"]
    assert all(p["status"] == "complete" for p in results)
    assert resumed_result(resumed["stage4"], "SYN01/SybrGld")["scale_percentile_value"]


def test_a_replaced_raw_tiff_reruns_its_pair_from_stage1(resumed: dict[str, Run]) -> None:
    rows = pair_tasks(resumed["replaced"])
    ran = sorted((process_name(r), r["tag"]) for r in rows if r["status"] != "CACHED")
    assert ran == sorted((stage, "SYN02/SybrGld") for stage in STAGES), rows
    after = resumed_result(resumed["replaced"], "SYN02/SybrGld")
    assert after["scale_estimate"] == pytest.approx(1.6, rel=0.01), after["scale_estimate"]


# ------------------------------------------------------------------------------------------
# per-pair image columns


def test_samplesheet_image_columns_reach_each_pair(tmp_path: Path) -> None:
    """docs/usage.md, "A samplesheet": each pair's own pixel sizes, channel and exposure times
    reach its LOAD and SUBTRACT tools (as options, so they are part of those tasks' hash) and
    its result.json and products; the pre/post sizes of SYN01 imply its true scale (no
    warning), the one size given for both images of SYN02 does not (the warning)."""
    raw = tmp_path / "raw"
    first, second = (replace(s, scale=scale) for s, scale in zip(
        batch_specs(2, SynthSpec(width=SIZE[0], height=SIZE[1])), (0.95, 1.06), strict=True))
    for spec in (first, second):  # magnifications far enough from 1 for the check to tell
        generate_pair(spec, raw)
    rows = ["sample,dye,pre,post,pre_pixel_size_um,post_pixel_size_um,pixel_size_um,channel,"
            "pre_exposure_s,post_exposure_s,site"]
    for spec, cells in ((first, f"{0.4 * 0.95!r},0.4,,,0.2,0.3,A"), (second, ",,0.65,1,,,B")):
        names = spec.file_names()
        rows.append(f"{spec.sample},{spec.dye},{raw / spec.sample / names['pre']},"
                    f"{raw / spec.sample / names['post']},{cells}")
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("\n".join(rows) + "\n")
    run = nextflow_run(tmp_path / "launch", "--input", str(sheet))
    assert run.proc.returncode == 0, run.explain()
    results = {spec.sample: json.loads((run.outdir / spec.sample / spec.dye / "result.json")
                                       .read_text()) for spec in (first, second)}
    one, two = results[first.sample], results[second.sample]
    # the pixel-size disagreement may make SYN02 need review, never fail
    assert (one["status"], two["status"] in ("complete", "needs-review")) == ("complete", True)
    assert one["pixel_size_um"] == pytest.approx(0.4)
    assert two["pixel_size_um"] == pytest.approx(0.65)
    assert one["exposure"]["ratio"] == pytest.approx(1.5) and two["exposure"]["ratio"] is None
    assert not any("pixel sizes" in w for w in one["warnings"]), one["warnings"]
    assert any("imply a pre→post scale of 1.0000" in w for w in two["warnings"]), two["warnings"]
    assert one["meta"]["site"] == "A" and one["suffix"] == two["suffix"] == ""
    for spec, size in ((first, "0.4"), (second, "0.65")):
        with tifffile.TiffFile(run.outdir / spec.sample / spec.dye / "tiff" / "04_difference.tif"
                               ) as tif:
            assert f'PhysicalSizeX="{size}" PhysicalSizeXUnit="µm"' in tif.ome_metadata


# ------------------------------------------------------------------------------------------
# stub run, help, parameter errors


def test_a_code_change_reruns_every_task(resumed: dict[str, Run]) -> None:
    rows = resumed["code"].trace()
    assert {process_name(r) for r in rows} >= {"DISCOVER", *STAGES, "SUMMARY"}, rows
    cached = [(process_name(r), r["tag"]) for r in rows if r["status"] == "CACHED"]
    assert not cached, f"reused after the code changed: {cached}"
    code = resumed["code"].manifest()["provenance"]["code_version"]
    before = resumed["replaced"].manifest()["provenance"]["code_version"]
    assert code != before and code.startswith("0.1.0+"), (before, code)


def test_stub_run_of_the_whole_workflow(tmp_path: Path) -> None:
    run = nextflow_run(tmp_path, "-profile", "test", "-stub-run")
    assert run.proc.returncode == 0, run.explain()
    processes = {process_name(r) for r in run.trace()}
    assert {"SYNTH", "DISCOVER", *STAGES, "SUMMARY"} <= processes, processes
    assert all(r["status"] == "COMPLETED" for r in run.trace())
    assert (run.outdir / "summary.tsv").is_file()


def test_help_lists_every_parameter_and_exits_0(tmp_path: Path) -> None:
    run = nextflow_run(tmp_path, "--help")
    assert run.proc.returncode == 0, run.explain()
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    for group in schema["$defs"].values():
        assert group["title"] in run.proc.stdout
        for name in group["properties"]:
            assert f"--{name} " in run.proc.stdout, f"--help does not list --{name}"
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_an_unknown_parameter_fails_with_the_valid_names(tmp_path: Path) -> None:
    run = nextflow_run(tmp_path, "-profile", "test", "--scale_percentil", "99")
    assert run.proc.returncode == 1, run.explain()
    text = run.proc.stdout + run.proc.stderr
    assert ("unknown parameter --scale_percentil (did you mean --scale_percentile?); valid "
            "parameters:") in text, run.explain()
    assert "scale_percentile" in text.split("valid parameters:", 1)[1]
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "pairs.txt"], "--input = 'pairs.txt' does not match the pattern"),
    (["--input", "missing.csv"], "--input missing.csv does not exist (expected a file)"),
    (["--raw_dir", "a_file.csv"], "--raw_dir a_file.csv is not a directory"),
    (["-profile", "test", "--container", "no tag"], "--container = 'no tag' does not match"),
    (["-profile", "test", "-params-file", "no-outdir.json"], "--outdir is required"),
    (["-profile", "test", "--checkpoint_format", "tif-zstd"],
     "--checkpoint_format = 'tif-zstd' is not one of tiff, fits, both, tiff-zstd, tiff-deflate, "
     "both-zstd, both-deflate (did you mean 'tiff-zstd'?)"),
])
def test_schema_rules_as_nf_schema_checks_them(args: list[str], message: str,
                                               tmp_path: Path) -> None:
    (tmp_path / "a_file.csv").write_text("sample,dye,pre,post\n")
    (tmp_path / "no-outdir.json").write_text('{"outdir": null}\n')
    proc = run_pipeline(tmp_path, *args)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and message in text, explain(proc, tmp_path)


def test_a_batch_that_selects_no_pair_fails(tmp_path: Path) -> None:
    """docs/contracts.md, "A batch that selects nothing": DISCOVER fails with exit 65 and its
    message; no pair task starts."""
    run = nextflow_run(tmp_path, "-profile", "test", "--dyes", "SybrGold")
    assert run.proc.returncode != 0, run.explain()
    text = run.proc.stdout + run.proc.stderr
    assert "nothing to run in" in text and "did you mean 'SybrGld'?" in text, run.explain()
    rows = run.trace()
    assert [(process_name(r), r["exit"]) for r in rows if process_name(r) == "DISCOVER"] == [
        ("DISCOVER", "65")], rows
    assert not [r for r in rows if process_name(r) in STAGES]


def test_site_config_parameters_are_accepted_with_a_warning(tmp_path: Path) -> None:
    """Institutional configs (`-profile <site>`, nf-core/configs style) set config_profile_* and
    custom_config_* parameters: the run goes on and says they are not used."""
    run = nextflow_run(tmp_path, "-profile", "test", "-stub-run",
                       "--config_profile_name", "mysite", "--custom_config_base", "/x")
    assert run.proc.returncode == 0, run.explain()
    text = run.proc.stdout + run.proc.stderr + (tmp_path / "nextflow.log").read_text()
    assert "--config_profile_name is a site (institutional) config parameter" in text, text[-3000:]
    assert "unknown parameter" not in text
