"""Samplesheet I/O: schema, validation with row-level errors, round trip with discovery."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from exo2micro.discover import (
    SAMPLESHEET_COLUMNS,
    DiscoveryError,
    PairSpec,
    discover,
    load_samplesheet,
    load_schema,
    read_samplesheet,
    write_samplesheet,
    write_skipped,
)
from exo2micro.discover import SkippedPair as Skipped
from exo2micro.errors import EXIT_DATA, exit_code_for


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """``tmp_path/data`` with pre/post placeholders for CD070 and CD063 × DAPI."""
    for sample in ("CD070", "CD063"):
        for role in ("pre", "post"):
            touch(tmp_path / "data" / sample / f"x_{role}_DAPI.tif")
    return tmp_path / "data"


def write_sheet(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sheet_error(path: Path) -> str:
    with pytest.raises(DiscoveryError) as info:
        read_samplesheet(path)
    assert exit_code_for(info.value) == EXIT_DATA
    return str(info.value)


# ---------------------------------------------------------------------- schema


def test_schema_is_valid_nf_schema_style() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "array"
    items = schema["items"]
    assert items["required"] == list(SAMPLESHEET_COLUMNS)
    for column in ("pre", "post"):
        prop = items["properties"][column]
        assert prop["format"] == "file-path" and prop["exists"] is True
        assert prop["errorMessage"]
    assert schema["uniqueEntries"] == ["sample", "dye"]
    validator = jsonschema.Draft202012Validator(schema)
    good = {"sample": "CD070", "dye": "DAPI", "pre": "a b/x.TIF", "post": "y.tiff", "site": "A"}
    assert list(validator.iter_errors([good])) == []
    for bad in ({"sample": "CD 070"}, {"dye": "Sybr_Gld"}, {"pre": "x.png"}, {"sample": ".x"}):
        assert list(validator.iter_errors([{**good, **bad}])), bad


# ---------------------------------------------------------------------- reading


def test_relative_paths_are_relative_to_the_sheet(images: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_sheet(images / "sheets" / "samplesheet.csv",
                "sample,dye,pre,post\n"
                "CD070,DAPI,../CD070/x_pre_DAPI.tif,../CD070/x_post_DAPI.tif\n"
                f"CD063,DAPI,{images}/CD063/x_pre_DAPI.tif,"
                f"{images}/CD063/x_post_DAPI.tif\n")
    monkeypatch.chdir(tmp_path)  # not the sheet's folder
    pairs = read_samplesheet(Path("data/sheets/samplesheet.csv"))
    assert pairs == [
        PairSpec("CD070", "DAPI", images / "CD070" / "x_pre_DAPI.tif",
                 images / "CD070" / "x_post_DAPI.tif"),
        PairSpec("CD063", "DAPI", images / "CD063" / "x_pre_DAPI.tif",
                 images / "CD063" / "x_post_DAPI.tif"),
    ]
    assert all(p.pre.is_absolute() for p in pairs)


def test_extra_columns_are_preserved_and_round_trip(images: Path, tmp_path: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv",
                        "\ufeffsample, dye ,pre,post,site,timepoint,replicate\n"
                        "CD070,DAPI,CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif,A,t0,1\n"
                        "\n"
                        "CD063,DAPI,CD063/x_pre_DAPI.tif,CD063/x_post_DAPI.tif,B,,2\n")
    pairs = read_samplesheet(sheet)
    assert pairs[0].extra == {"site": "A", "timepoint": "t0", "replicate": "1"}
    assert pairs[1].extra == {"site": "B", "timepoint": "", "replicate": "2"}
    out = write_samplesheet(pairs, tmp_path / "copy" / "samplesheet.csv")
    assert out.read_text().splitlines()[0] == "sample,dye,pre,post,site,timepoint,replicate"
    assert read_samplesheet(out) == pairs
    only_site = write_samplesheet(pairs, tmp_path / "site.csv", extra_columns=["site"])
    assert [p.extra for p in read_samplesheet(only_site)] == [{"site": "A"}, {"site": "B"}]


def test_discover_write_read_round_trip(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for name in ("CD070/Sample001_PreStain_SybrGld.tif",
                 "CD070/Sample001_PostStain_SybrGld.tif",
                 "CD070/my_2024-03-15_pre_run3_DAPI.tiff",
                 "CD070/my_2024-03-15_post_run3_DAPI.tiff",
                 "Postgate/whatever_pre_Cy5.TIF", "Postgate/whatever_post_Cy5.TIF"):
        touch(raw / name)
    found = discover(raw).pairs
    sheet = write_samplesheet(found, tmp_path / "out" / "samplesheet.csv")
    assert read_samplesheet(sheet) == found
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind


def test_tsv_samplesheet(images: Path) -> None:
    sheet = write_sheet(images / "samplesheet.tsv",
                        "sample\tdye\tpre\tpost\nCD070\tDAPI\tCD070/x_pre_DAPI.tif\t"
                        "CD070/x_post_DAPI.tif\n")
    assert [p.id for p in read_samplesheet(sheet)] == ["CD070_DAPI"]


def test_filter_and_lenient_on_samplesheet(images: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv",
                        "sample,dye,pre,post\n"
                        "CD070,DAPI,CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif\n"
                        "CD063,DAPI,CD063/x_pre_DAPI.tif,CD063/missing.tif\n")
    found = load_samplesheet(sheet, samples=["CD070"])
    assert [p.id for p in found.pairs] == ["CD070_DAPI"]
    found = load_samplesheet(sheet, strict=False)
    assert [p.id for p in found.pairs] == ["CD070_DAPI"]
    (skip,) = found.skipped
    assert skip.reason.startswith("samplesheet.csv row 3 (sample=CD063, dye=DAPI): post file "
                                  "'CD063/missing.tif' does not exist")
    found = load_samplesheet(sheet, samples=["CD070", "CD071"], dyes=["DAPI", "Cy5"],
                             strict=False)
    reasons = {(s.sample, s.dye): s.reason for s in found.skipped}
    assert "no row for dye 'Cy5' of sample 'CD070'" in reasons["CD070", "Cy5"]
    assert "no row with sample 'CD071'" in reasons["CD071", "DAPI"]
    assert "did you mean 'CD070'?" in reasons["CD071", "DAPI"]


def test_header_only_sheet_has_no_pairs(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", "sample,dye,pre,post\n")
    found = load_samplesheet(sheet)
    assert found.pairs == [] and found.warnings == [f"samplesheet '{sheet}' has no data rows"]


# ---------------------------------------------------------------------- row-level errors


def test_missing_file_error_names_row(images: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv",
                        "sample,dye,pre,post\n"
                        "CD063,DAPI,CD063/x_pre_DAPI.tif,CD063/x_post_DAPI.tif\n"
                        "CD070,DAPI,x.tif,CD070/x_post_DAPI.tif\n")
    message = sheet_error(sheet)
    assert "samplesheet.csv row 3 (sample=CD070, dye=DAPI): pre file 'x.tif' does not exist" \
        in message
    assert str(images / "x.tif") in message


def test_missing_column(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", "sample,dye,pre\nCD070,DAPI,a.tif\n")
    first = sheet_error(sheet).splitlines()[0]
    assert "lacks column(s) 'post'" in first and "expected sample,dye,pre,post" in first


def test_misspelled_column_is_suggested(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", "sample,dye,pre,psot\nCD070,DAPI,a.tif,b.tif\n")
    first = sheet_error(sheet).splitlines()[0]
    assert "lacks column(s) 'post'" in first and "for 'post', did you mean 'psot'?" in first


def test_empty_sample_and_bad_values_all_listed(images: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv",
                        "sample,dye,pre,post\n"
                        ",DAPI,CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif\n"
                        "CD063,Sybr_Gld,CD063/x_pre_DAPI.tif,CD063/x_post_DAPI.tif\n"
                        "CD064,DAPI,CD063/x_pre_DAPI.png,CD063/x_post_DAPI.tif\n"
                        "CD065,DAPI,CD063/x_pre_DAPI.tif\n")
    lines = sheet_error(sheet).splitlines()
    assert lines[0] == f"samplesheet '{sheet}' has 4 invalid rows:"
    assert lines[1] == "  samplesheet.csv row 2 (dye=DAPI): 'sample' is empty"
    assert lines[2].startswith("  samplesheet.csv row 3 (sample=CD063, dye=Sybr_Gld): dye must")
    assert lines[2].endswith("(got 'Sybr_Gld')")
    assert lines[3].startswith("  samplesheet.csv row 4 (sample=CD064, dye=DAPI): pre must be")
    assert lines[4] == "  samplesheet.csv row 5 (sample=CD065, dye=DAPI): 'post' is empty"


def test_duplicate_rows(images: Path) -> None:
    row = "CD070,DAPI,CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif\n"
    sheet = write_sheet(images / "samplesheet.csv", "sample,dye,pre,post\n" + row + row)
    assert sheet_error(sheet).splitlines()[0] == (
        "samplesheet.csv row 3 (sample=CD070, dye=DAPI): duplicate of row 2 (same sample and dye)")


def test_same_file_for_pre_and_post(images: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv", "sample,dye,pre,post\n"
                        "CD070,DAPI,CD070/x_pre_DAPI.tif,./CD070/x_pre_DAPI.tif\n")
    assert "pre and post are the same file" in sheet_error(sheet)


def test_too_many_cells_and_empty_and_missing_sheet(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", "sample,dye,pre,post\nA,B,c.tif,d.tif,extra\n")
    assert sheet_error(sheet).startswith("s.csv row 2: 5 cells but the header has 4 columns")
    assert "is empty; expected the header" in sheet_error(write_sheet(tmp_path / "e.csv", ""))
    assert "does not exist" in sheet_error(tmp_path / "nope.csv")


# ---------------------------------------------------------------------- writing


def test_write_samplesheet_rejects_clashing_extra_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clash"):
        write_samplesheet([], tmp_path / "s.csv", extra_columns=["dye"])


def test_write_skipped_keeps_one_line_per_pair(tmp_path: Path) -> None:
    out = write_skipped([Skipped("CD070", "DAPI", "multi\nline\treason")], tmp_path / "s.tsv")
    assert out.read_text() == "sample\tdye\treason\nCD070\tDAPI\tmulti line reason\n"
