"""Raw-directory discovery: filename classification, layout diagnosis, strict/lenient, CLI."""

from __future__ import annotations

import builtins
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from exo2micro.batch.discover import (
    ALL_DYES,
    ESTIMATE_COLUMNS,
    RESERVED_COLUMNS,
    DiscoveryError,
    classify_filename,
    discover,
    load_schema,
    read_samplesheet,
    scan_raw_dir,
)
from exo2micro.batch.preflight import estimate_pair
from exo2micro.cli.discover import discover as discover_cmd
from exo2micro.cli.discover import split_names
from exo2micro.errors import EXIT_DATA, LayoutError, exit_code_for
from exo2micro.utils import discover_tasks
from tests.helpers_io import make_pair

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = b"not really a TIFF"  # discovery reads names only


def make_raw(root: Path, layout: dict[str, list[str]]) -> Path:
    """Create ``root/<sample>/<file>`` placeholders; a key '' puts files at the top level."""
    root.mkdir(parents=True, exist_ok=True)
    for sample, names in layout.items():
        folder = root / sample if sample else root
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(PLACEHOLDER)
    return root


def pair(sample_prefix: str, dye: str, ext: str = ".tif") -> list[str]:
    return [f"{sample_prefix}_pre_{dye}{ext}", f"{sample_prefix}_post_{dye}{ext}"]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "raw", {
        "CD070": ["Sample001_PreStain_SybrGld.tif", "Sample001_PostStain_SybrGld.tif",
                  "my_2024-03-15_pre_run3_DAPI.tiff", "my_2024-03-15_post_run3_DAPI.tiff"],
        "CD063": ["x_pre_run3_DAPI.tiff", "x_post_run3_DAPI.tiff", "whatever_post_Cy5.TIF",
                  "whatever_pre_Cy5.TIF"],
    })


# ---------------------------------------------------------------------- classification


@pytest.mark.parametrize(("name", "kind", "dye"), [
    # every name exo2micro 2.4 documents as valid
    ("Sample001_PreStain_SybrGld.tif", "pre", "SybrGld"),
    ("Sample001_PostStain_SybrGld.tif", "post", "SybrGld"),
    ("Sample001_PostStain_SybrGld.tiff", "post", "SybrGld"),
    ("my_2024_pre_run3_DAPI.tif", "pre", "DAPI"),
    ("my_2024-03-15_pre_run3_DAPI.tiff", "pre", "DAPI"),
    ("whatever_post_Cy5.TIF", "post", "Cy5"),
    ("whatever_post_Cy5.tiff", "post", "Cy5"),
    ("x_pre_run3_DAPI.tiff", "pre", "DAPI"),
    # marker spellings
    ("x_Pre-Stain_DAPI.tif", "pre", "DAPI"),
    ("x_POSTSTAINED_DAPI.Tiff", "post", "DAPI"),
    ("x_pre2_DAPI.tif", "pre", "DAPI"),
    ("x post.stain_DAPI.tif", "post", "DAPI"),
    ("PRE_DAPI.tif", "pre", "DAPI"),
    # false markers next to a real one
    ("Compressed_pre_DAPI.tif", "pre", "DAPI"),
    ("Cypress_post_DAPI.tif", "post", "DAPI"),
    ("Postgate_pre_DAPI.tif", "pre", "DAPI"),
    ("Prelim_post_DAPI.tif", "post", "DAPI"),
    ("Preview-scan_pre_DAPI.tif", "pre", "DAPI"),
])
def test_classify_valid_names(name: str, kind: str, dye: str) -> None:
    verdict = classify_filename(name)
    assert (verdict.kind, verdict.dye, verdict.reason) == (kind, dye, "")
    assert verdict.usable


@pytest.mark.parametrize("name", [
    "Compressed_DAPI.tif", "Cypress_DAPI.tif", "Postgate_DAPI.tif", "Prelim_DAPI.tif",
    "Preview_DAPI.tif", "Postgate-Prelim_Cypress_DAPI.tif", "CD070pre_DAPI.tif",
])
def test_false_markers_are_not_markers(name: str) -> None:
    verdict = classify_filename(name)
    assert verdict.kind == "unmarked"
    assert not verdict.usable
    assert "no pre/post marker" in verdict.reason
    assert str(verdict).startswith(f"'{name}': ")


def test_near_miss_marker_gets_hint() -> None:
    verdict = classify_filename("Sample_PreSG_DAPI.tif")
    assert "'PreSG' is not a marker word" in verdict.reason


def test_both_markers_is_ambiguous_and_names_the_file() -> None:
    verdict = classify_filename("Sample001_pre_post_SybrGld.tif")
    assert verdict.kind == "ambiguous"
    assert verdict.dye == "SybrGld"
    assert "both a pre and a post marker" in verdict.reason
    assert "\n" not in str(verdict)
    assert str(verdict).startswith("'Sample001_pre_post_SybrGld.tif': ")


@pytest.mark.parametrize(("name", "fragment"), [
    ("prestain.tif", "no '_' in the name"),
    ("x_pre_.tif", "nothing after the last '_'"),
    ("x_pre_DAPI 2.tif", "dye 'DAPI 2'"),
    ("x_pre_DAPI.png", "not a .tif/.tiff file"),
])
def test_invalid_names(name: str, fragment: str) -> None:
    verdict = classify_filename(name)
    assert verdict.kind == "invalid"
    assert fragment in verdict.reason


def test_dye_that_is_a_marker_gets_hint() -> None:
    verdict = classify_filename("Sample_DAPI_pre.tif")
    assert verdict.kind == "unmarked"
    assert "the dye is the text after the last '_' (here 'pre')" in verdict.reason


# ---------------------------------------------------------------------- raw discovery


def test_discovers_every_pair_sorted_with_absolute_paths(raw: Path) -> None:
    found = discover(raw)
    assert [(p.sample, p.dye) for p in found.pairs] == [
        ("CD063", "Cy5"), ("CD063", "DAPI"), ("CD070", "DAPI"), ("CD070", "SybrGld")]
    p = found.pairs[-1]
    assert p.pre == raw / "CD070" / "Sample001_PreStain_SybrGld.tif"
    assert p.post == raw / "CD070" / "Sample001_PostStain_SybrGld.tif"
    assert p.pre.is_absolute() and p.extra == {}
    assert p.id == "CD070_SybrGld"
    assert found.skipped == [] and found.warnings == []


def test_relative_raw_dir_gives_absolute_paths(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(raw.parent)
    found = discover("raw", samples="CD070")
    assert {p.dye for p in found.pairs} == {"DAPI", "SybrGld"}
    assert all(p.pre.is_absolute() and p.pre.exists() for p in found.pairs)


@pytest.mark.parametrize("sample", ["Compressed", "Cypress", "Postgate", "Prelim", "Preview"])
def test_false_marker_sample_folders(tmp_path: Path, sample: str) -> None:
    raw = make_raw(tmp_path / "raw", {sample: [f"{sample}_pre_DAPI.tif",
                                               f"{sample}_post_DAPI.tif"]})
    (p,) = discover(raw).pairs
    assert (p.sample, p.dye) == (sample, "DAPI")
    assert p.pre.name == f"{sample}_pre_DAPI.tif"
    assert p.post.name == f"{sample}_post_DAPI.tif"


def test_hidden_files_and_folders_are_ignored_silently(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "._a_pre_DAPI.tif",
                                                ".DS_Store", "._a_post_DAPI.tif"],
                                      ".Trashes": ["b_pre_DAPI.tif"]})
    (raw / ".DS_Store").write_bytes(b"")
    found = discover(raw)
    assert [(p.sample, p.dye) for p in found.pairs] == [("CD070", "DAPI")]
    assert found.pairs[0].pre.name == "a_pre_DAPI.tif"
    assert found.skipped == [] and found.warnings == [] and found.ignored == []


def test_non_tiff_files_are_listed_as_ignored(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "notes.txt", "a.jpg"],
                                      "": ["README.md"]})
    found = discover(raw)
    assert len(found.pairs) == 1
    assert sorted(Path(i).name for i in found.ignored) == ["README.md", "a.jpg", "notes.txt"]


def test_discovery_never_opens_image_files(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_schema()  # the schema is the only file discovery reads
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert not str(file).lower().endswith((".tif", ".tiff")), f"opened {file}"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert len(discover(raw).pairs) == 4


# ---------------------------------------------------------------------- layout diagnosis


def _layout_message(raw_dir: Path) -> str:
    with pytest.raises(DiscoveryError) as info:
        discover(raw_dir, strict=False)  # layout problems are fatal even when lenient
    err = info.value
    assert isinstance(err, LayoutError) and isinstance(err, FileNotFoundError)
    assert exit_code_for(err) == EXIT_DATA == 65
    message = str(err)
    assert "expected layout:" in message
    assert "Sample001_PreStain_SybrGld.tif" in message  # the tree is shown
    return message


def test_missing_raw_dir(tmp_path: Path) -> None:
    message = _layout_message(tmp_path / "nope")
    assert message.splitlines()[0].endswith("nope' does not exist")


def test_empty_raw_dir(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / ".DS_Store").write_bytes(b"")  # hidden files do not count
    assert "is empty" in _layout_message(tmp_path / "raw").splitlines()[0]


def test_raw_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "raw").write_bytes(b"")
    assert "is a file, not a folder" in _layout_message(tmp_path / "raw").splitlines()[0]


def test_loose_tiffs_without_sample_folders(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"": pair("a", "DAPI")})
    first = _layout_message(raw).splitlines()[0]
    assert "2 TIFF file(s) at the top level" in first
    assert "no sample folders" in first


def test_only_non_tiff_files_and_no_folders(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"": ["notes.txt"]})
    assert "no sample folders (only notes.txt)" in _layout_message(raw)


def test_sample_folders_without_tiffs(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["notes.txt"], "CD063": []})
    first = _layout_message(raw).splitlines()[0]
    assert "none of the 2 sample folder(s)" in first and "contains a .tif/.tiff file" in first


def test_loose_tiffs_next_to_sample_folders_only_warn(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"": ["stray_pre_DAPI.tif"], "CD070": pair("a", "DAPI")})
    found = discover(raw)
    assert len(found.pairs) == 1
    assert any("stray_pre_DAPI.tif" in w and "not in a sample folder" in w
               for w in found.warnings)
    assert scan_raw_dir(raw).loose_tiffs == ["stray_pre_DAPI.tif"]


def test_empty_sample_folder_is_a_problem(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": pair("a", "DAPI"), "CD063": ["notes.txt"]})
    with pytest.raises(DiscoveryError) as info:
        discover(raw)
    assert "CD063/*: folder" in str(info.value)
    assert "contains no .tif/.tiff file" in str(info.value)
    found = discover(raw, strict=False)
    assert [p.sample for p in found.pairs] == ["CD070"]
    assert [(s.sample, s.dye) for s in found.skipped] == [("CD063", ALL_DYES)]
    # not requested: only a warning
    found = discover(raw, samples=["CD070"])
    assert found.skipped == [] and any("CD063" in w for w in found.warnings)


def test_folder_with_only_unclassifiable_tiffs(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": pair("a", "DAPI"),
                                      "CD063": ["overview.tif", "scan_DAPI.tif"]})
    (skip,) = discover(raw, strict=False).skipped
    assert skip.sample == "CD063" and skip.dye == ALL_DYES
    assert "'overview.tif': no '_'" in skip.reason and "'scan_DAPI.tif'" in skip.reason


def test_invalid_sample_folder_name(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD 070": pair("a", "DAPI"), "CD063": pair("b", "DAPI")})
    found = discover(raw, strict=False)
    assert [p.sample for p in found.pairs] == ["CD063"]
    assert "not a valid sample id" in found.skipped[0].reason


# ---------------------------------------------------------------------- pair problems


def test_duplicates_name_both_files(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["run1_pre_DAPI.tif", "run2_pre_DAPI.tif",
                                                "run1_post_DAPI.tif"]})
    (skip,) = discover(raw, strict=False).skipped
    assert (skip.sample, skip.dye) == ("CD070", "DAPI")
    assert "duplicate: 2 pre-stain files ('run1_pre_DAPI.tif', 'run2_pre_DAPI.tif')" \
        in skip.reason


def test_same_stem_tif_and_tiff_is_a_duplicate(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "a_post_DAPI.tiff"]})
    (skip,) = discover(raw, strict=False).skipped
    assert "2 post-stain files ('a_post_DAPI.tif', 'a_post_DAPI.tiff')" in skip.reason


@pytest.mark.parametrize(("files", "missing", "only"), [
    (["a_pre_DAPI.tif"], "post", "a_pre_DAPI.tif"),
    (["a_PostStain_DAPI.tif"], "pre", "a_PostStain_DAPI.tif"),
])
def test_incomplete_pairs(tmp_path: Path, files: list[str], missing: str, only: str) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": files, "CD063": pair("b", "DAPI")})
    found = discover(raw, strict=False)
    assert [p.sample for p in found.pairs] == ["CD063"]
    (skip,) = found.skipped
    assert skip.reason == f"incomplete: no {missing}-stain file (only '{only}')"


def test_ambiguous_file_named_in_incomplete_pair(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["a_pre_DAPI.tif", "a_pre_post_DAPI.tif"]})
    (skip,) = discover(raw, strict=False).skipped
    assert "incomplete: no post-stain file" in skip.reason
    assert "rejected 'a_pre_post_DAPI.tif': both a pre and a post marker" in skip.reason


def test_dye_with_only_an_ambiguous_file(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "a_pre_post_Cy5.tif"]})
    found = discover(raw, strict=False)
    assert [p.dye for p in found.pairs] == ["DAPI"]
    (skip,) = found.skipped
    assert skip.reason.startswith("no usable pre- or post-stain file; rejected "
                                  "'a_pre_post_Cy5.tif': both a pre and a post marker")
    assert found.warnings == []  # named in the skipped reason already


def test_unused_files_of_a_complete_pair_are_warned(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "a_pre_post_DAPI.tif",
                                                "overview_DAPI.tif"]})
    found = discover(raw)
    assert len(found.pairs) == 1
    assert any("a_pre_post_DAPI.tif': both a pre and a post marker" in w
               for w in found.warnings)
    assert any("overview_DAPI.tif': no pre/post marker" in w for w in found.warnings)


def test_strict_lists_every_problem_in_one_error(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {
        "CD070": [*pair("a", "DAPI"), "a_pre_Cy5.tif"],
        "CD063": ["b_pre_DAPI.tif", "c_pre_DAPI.tif", "b_post_DAPI.tif"],
        "CD001": pair("c", "SybrGld"),
    })
    with pytest.raises(DiscoveryError) as info:
        discover(raw, samples=["CD070", "CD063", "CD999"], dyes=["DAPI", "Cy5"])
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"raw directory '{raw}': 5 requested pairs cannot run")
    body = "\n".join(lines[1:])
    for fragment in ("CD070/Cy5: incomplete: no post-stain file",
                     "CD063/DAPI: duplicate: 2 pre-stain files",
                     "CD063/Cy5: no pre/post file ending in '_Cy5.tif'",
                     "CD999/DAPI: no sample folder", "CD999/Cy5: no sample folder"):
        assert fragment in body
    assert "CD070/DAPI" not in body


def test_lenient_returns_runnable_and_skipped(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "a_pre_Cy5.tif"],
                                      "CD063": pair("b", "Cy5")})
    found = discover(raw, strict=False)
    assert [(p.sample, p.dye) for p in found.pairs] == [("CD063", "Cy5"), ("CD070", "DAPI")]
    assert [(s.sample, s.dye) for s in found.skipped] == [("CD070", "Cy5")]


def test_request_order_dedupe_and_single_string(raw: Path) -> None:
    found = discover(raw, samples=["CD070", "CD063", "CD070"], dyes=["DAPI"])
    assert [p.sample for p in found.pairs] == ["CD070", "CD063"]
    assert [p.dye for p in discover(raw, samples="CD063", dyes="Cy5").pairs] == ["Cy5"]


def test_default_dyes_are_per_sample(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": pair("a", "DAPI"), "CD063": pair("b", "Cy5")})
    assert len(discover(raw).pairs) == 2  # heterogeneous samples are fine in strict mode
    with pytest.raises(DiscoveryError, match="2 requested pairs cannot run"):
        discover(raw, dyes=["DAPI", "Cy5"])


def test_missing_sample_and_dye_hints(raw: Path) -> None:
    found = discover(raw, samples=["CD071", "CD070"], dyes=["dapi"], strict=False)
    reasons = {(s.sample, s.dye): s.reason for s in found.skipped}
    assert "no sample folder" in reasons["CD071", "dapi"]
    assert "did you mean 'CD070'?" in reasons["CD071", "dapi"]
    assert "did you mean 'DAPI'?" in reasons["CD070", "dapi"]
    assert "(dyes there: DAPI, SybrGld)" in reasons["CD070", "dapi"]


def test_dye_with_underscore_gets_hint(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["Sample001_PreStain_SybrGld_microbe.tif",
                                                "Sample001_PostStain_SybrGld_microbe.tif"]})
    found = discover(raw, dyes=["SybrGld_microbe"], strict=False)
    assert found.pairs == []
    (skip,) = found.skipped
    assert "dye names are the text after the last '_'" in skip.reason
    assert "'SybrGld_microbe' can never match" in skip.reason
    assert "did you mean 'microbe'?" in skip.reason
    assert "rename the files to end in '_SybrGld-microbe.tif'" in skip.reason
    with pytest.raises(DiscoveryError, match="can never match"):
        discover(raw, dyes=["SybrGld_microbe"])


def test_dashed_dye_name_works(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": pair("Sample001", "SybrGld-microbe")})
    (p,) = discover(raw, dyes=["SybrGld-microbe"]).pairs
    assert p.dye == "SybrGld-microbe" and p.id == "CD070_SybrGld-microbe"


def test_zero_runnable_pairs_is_fine_when_lenient(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["a_pre_DAPI.tif"]})
    found = discover(raw, strict=False)
    assert found.pairs == [] and len(found.skipped) == 1


# ---------------------------------------------------------------------- utils.discover_tasks


def test_discover_tasks_seed_api(raw: Path) -> None:
    result = discover_tasks(["CD070", "CD063"], ["DAPI", "SybrGld"], raw_dir=raw, strict=False)
    assert result["present"] == [("CD070", "DAPI"), ("CD070", "SybrGld"), ("CD063", "DAPI")]
    assert [p.id for p in result["pairs"]] == ["CD070_DAPI", "CD070_SybrGld", "CD063_DAPI"]
    (skip,) = result["skipped"]
    assert skip[:2] == ("CD063", "SybrGld") and "no pre/post file" in skip[2]
    assert result["warnings"] == []


def test_discover_tasks_strict_raises_file_not_found(raw: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        discover_tasks(["CD070", "CD999"], ["DAPI", "Cy5"], raw_dir=raw)
    message = str(info.value)
    assert "3 requested pairs cannot run" in message
    assert "CD070/Cy5" in message and "CD999/DAPI" in message and "CD999/Cy5" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_tasks(raw_dir=raw / "missing")


# ---------------------------------------------------------------------- CLI


def run_cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(discover_cmd, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr.splitlines()


def test_split_names() -> None:
    assert split_names(("A, B", "C", ",D,,")) == ["A", "B", "C", "D"]


def test_cli_writes_samplesheet_and_skipped(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": [*pair("a", "DAPI"), "a_pre_Cy5.tif"],
                                      "CD063": pair("b", "DAPI")})
    out, skipped = tmp_path / "out" / "samplesheet.csv", tmp_path / "skipped.tsv"
    code, err = run_cli("--raw-dir", str(raw), "--lenient", "--samples", "CD070,CD063",
                        "-s", "CD070", "--dyes", "DAPI", "-d", "Cy5",
                        "--out", str(out), "--skipped", str(skipped))
    assert code == 0
    assert err[0] == f"discover: raw directory '{raw}': 2 runnable pairs, 2 skipped"
    assert [(p.sample, p.dye) for p in read_samplesheet(out)] == [("CD070", "DAPI"),
                                                                  ("CD063", "DAPI")]
    rows = skipped.read_text().splitlines()
    assert rows[0] == "sample\tdye\treason"
    assert [r.split("\t")[:2] for r in rows[1:]] == [["CD070", "Cy5"], ["CD063", "Cy5"]]
    assert not list(tmp_path.rglob(".*tmp-*"))


def test_cli_skipped_tsv_has_header_when_nothing_skipped(raw: Path, tmp_path: Path) -> None:
    code, _ = run_cli("--raw-dir", str(raw), "--skipped", str(tmp_path / "s.tsv"))
    assert code == 0
    assert (tmp_path / "s.tsv").read_text() == "sample\tdye\treason\n"


def test_cli_strict_problem_exits_65(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["a_pre_DAPI.tif"], "CD063": pair("b", "DAPI")})
    out = tmp_path / "samplesheet.csv"
    code, err = run_cli("--raw-dir", str(raw), "--out", str(out))
    assert code == 65
    assert err[0].startswith(f"error: raw directory '{raw}': 1 requested pair cannot run")
    assert "CD070/DAPI: incomplete: no post-stain file" in err[1]
    assert not out.exists()


@pytest.mark.parametrize("setup", ["missing", "empty", "file", "loose"])
def test_cli_layout_errors_exit_65(tmp_path: Path, setup: str) -> None:
    raw = tmp_path / "raw"
    if setup == "empty":
        raw.mkdir()
    elif setup == "file":
        raw.write_bytes(b"")
    elif setup == "loose":
        make_raw(raw, {"": pair("a", "DAPI")})
    code, err = run_cli("--raw-dir", str(raw), "--lenient")
    assert code == 65
    assert err[0].startswith(f"error: raw directory '{raw}' ")
    assert "expected layout:" in err


def test_cli_zero_pairs_lenient_is_an_error(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", {"CD070": ["a_pre_DAPI.tif"]})
    out = tmp_path / "samplesheet.csv"
    code, err = run_cli("--raw-dir", str(raw), "--lenient", "--out", str(out))
    assert code == 65
    assert err[0].endswith(": 0 runnable pairs, 1 skipped")
    assert "  no runnable pairs: nothing to process" in err
    assert any(line.startswith("error: nothing to run in") for line in err), err
    assert any("CD070/DAPI: incomplete" in line for line in err), err
    assert out.read_text() == "sample,dye,pre,post\n"


@pytest.mark.parametrize("args", [[], ["--raw-dir", "raw", "--input", "s.csv"],
                                  ["--raw-dir", "raw", "--bogus"]])
def test_cli_usage_errors_exit_2(args: list[str]) -> None:
    code, _ = run_cli(*args)
    assert code == 2


def test_cli_reads_samplesheet(raw: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.csv"
    run_cli("--raw-dir", str(raw), "--out", str(sheet))
    code, err = run_cli("--input", str(sheet), "--dyes", "DAPI")
    assert code == 0
    assert err[0] == f"discover: samplesheet '{sheet}': 2 runnable pairs, 0 skipped"


def test_bin_executable_runs_as_a_subprocess(raw: Path, tmp_path: Path) -> None:
    tool = REPO / "bin" / "e2m-discover"
    assert tool.stat().st_mode & 0o111, "bin/e2m-discover must be executable"
    out = tmp_path / "samplesheet.csv"
    proc = subprocess.run([sys.executable, str(tool), "--raw-dir", str(raw), "--out", str(out)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (f"discover: raw directory '{raw}': 4 runnable pairs, "
                                           "0 skipped")
    assert len(read_samplesheet(out)) == 4
    proc = subprocess.run([sys.executable, str(tool), "--raw-dir", str(tmp_path / "nope")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 65
    assert proc.stderr.startswith("error: raw directory")


def test_cli_estimates_are_the_preflight_model_and_replace_old_columns(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    good = make_pair(raw, sample="GOOD")
    broken = make_pair(raw, sample="BROKEN")
    data = broken.post_path.read_bytes()
    broken.post_path.write_bytes(data[: len(data) // 2])
    sheet = tmp_path / "pairs.csv"
    code, err = run_cli("--raw-dir", str(raw), "--out", str(sheet), "--estimates",
                        "--param", "scale_percentile=99.5", "--checkpoint-format", "both",
                        "--threads", "1")
    assert code == 0, err
    assert any(line.startswith("  BROKEN/SybrGld: no estimate: ") and "truncated" in line
               for line in err)
    rows = {r["sample"]: r for r in csv.DictReader(sheet.open())}
    assert list(rows["GOOD"]) == list(RESERVED_COLUMNS)
    want = estimate_pair(good.pre_path, good.post_path, {"scale_percentile": 99.5}, "both",
                         threads=1)
    assert int(rows["GOOD"]["mem_bytes"]) == want.mem_bytes
    assert int(rows["GOOD"]["disk_bytes"]) == want.disk_bytes
    assert int(rows["GOOD"]["time_s"]) == math.ceil(max(s.time_s for s in want.stages.values()))
    # the broken pair still runs (and fails in stage 1 with its reason): empty estimates
    assert [rows["BROKEN"][c] for c in ESTIMATE_COLUMNS] == ["", "", ""]
    # read back, the estimate columns are not pair metadata, and a new run replaces them
    assert all(p.extra == {} for p in read_samplesheet(sheet))
    again = tmp_path / "again.csv"
    code, _ = run_cli("--input", str(sheet), "--lenient", "--out", str(again), "--estimates")
    assert code == 0
    header = again.read_text().splitlines()[0]
    assert header == ",".join(RESERVED_COLUMNS)


def test_cli_estimates_count_the_threads_the_pairs_will_run_with(tmp_path: Path) -> None:
    """Nextflow's DISCOVER runs on 1 CPU but estimates for the pair tasks' CPUs: memory
    grows with threads, so the request must count them (--estimate-threads)."""
    raw = tmp_path / "raw"
    good = make_pair(raw, sample="GOOD")
    mem = {}
    for n in (1, 8):
        sheet = tmp_path / f"pairs{n}.csv"
        code, err = run_cli("--raw-dir", str(raw), "--out", str(sheet), "--estimates",
                            "--threads", "1", "--estimate-threads", str(n))
        assert code == 0, err
        mem[n] = int(next(csv.DictReader(sheet.open()))["mem_bytes"])
        assert mem[n] == estimate_pair(good.pre_path, good.post_path, {}, "tiff",
                                       threads=n).mem_bytes
    assert mem[8] > mem[1]


def test_cli_rejects_bad_parameters_before_anything_runs(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.csv"
    code, err = run_cli("--raw-dir", str(raw), "--out", str(out), "--param", "bogus=1")
    assert code == 2 and err[0].startswith("error: unknown parameter(s) bogus; valid names: pad")
    code, err = run_cli("--raw-dir", str(raw), "--param", "angle_range=999")
    assert code == 2 and "angle_range" in err[0]
    assert not out.exists()
