"""Samplesheet I/O: schema, validation with row-level errors, round trip with discovery, and
the per-pair image columns (pixel sizes, channel, exposure times) through a local run."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import tifffile

from exo2micro import params as P
from exo2micro.batch.api import run_batch
from exo2micro.batch.discover import (
    IMAGE_COLUMNS,
    SAMPLESHEET_COLUMNS,
    DiscoveryError,
    PairSpec,
    discover,
    image_facts,
    load_samplesheet,
    load_schema,
    read_samplesheet,
    write_samplesheet,
    write_skipped,
)
from exo2micro.batch.discover import SkippedPair as Skipped
from exo2micro.batch.plan import build_task_list, split_options
from exo2micro.errors import EXIT_DATA, ParameterError, exit_code_for
from exo2micro.io.layout import PairLayout
from exo2micro.stage_params import effective
from exo2micro.synth import SynthSpec, batch_specs, make_batch
from tests.runner_helpers import SIZE


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


# ---------------------------------------------------------------------- per-pair image facts


def test_schema_declares_the_image_columns_with_the_parameters_ranges() -> None:
    """The per-pair columns share type and range with the parameter each one overrides."""
    properties = load_schema()["items"]["properties"]
    for column in IMAGE_COLUMNS:
        prop = properties[column]
        base = P.BY_NAME[P.PAIR_FACTS.get(column, column)]
        assert prop["errorMessage"].startswith(f"{column} must be"), column
        if base.kind is float:
            assert prop["type"] == "number", column
            assert (prop["minimum"], prop["maximum"]) == (base.low, base.high), column
        else:
            assert prop["type"] == "string" and prop["pattern"], column
    assert "pixel_size_um" not in load_schema()["items"]["required"]


def test_image_columns_are_checked_row_by_row(images: Path) -> None:
    ok = "CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif"
    sheet = write_sheet(images / "samplesheet.csv",
                        "sample,dye,pre,post,pixel_size_um,pre_pixel_size_um,channel,"
                        "post_exposure_s\n"
                        f"CD070,DAPI,{ok},abc,,,\n"
                        f"CD071,DAPI,{ok},,-0.5,,\n"
                        f"CD072,DAPI,{ok},nan,,red channel,0\n"
                        f"CD073,DAPI,{ok},0.325,,1,0.2\n")
    lines = sheet_error(sheet).splitlines()
    assert lines[0] == f"samplesheet '{sheet}' has 3 invalid rows:"  # 5 errors
    assert lines[1] == ("  samplesheet.csv row 2 (sample=CD070, dye=DAPI): pixel_size_um must be "
                        "the pixel size in µm of both images: a number from 0.0001 to 10000 "
                        "(got 'abc')")
    assert lines[2].startswith("  samplesheet.csv row 3 (sample=CD071, dye=DAPI): "
                               "pre_pixel_size_um must be the pixel size in µm of the pre-stain")
    assert lines[2].endswith("(got '-0.5')")
    row4 = [line for line in lines if "row 4 " in line]
    assert [line.split(": ", 1)[1].split(" must")[0] for line in row4] == [
        "pixel_size_um", "channel", "post_exposure_s"], row4
    assert "(got 'nan')" in row4[0] and "(got 'red channel')" in row4[1]
    assert not any("row 5 " in line for line in lines)  # a valid row


def test_image_columns_give_the_pairs_own_facts_and_round_trip(images: Path,
                                                               tmp_path: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv",
                        "sample,dye,pre,post,pixel_size_um,post_pixel_size_um,channel,site\n"
                        "CD070,DAPI,CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif,0.5,0.45,DAPI,A\n"
                        "CD063,DAPI,CD063/x_pre_DAPI.tif,CD063/x_post_DAPI.tif,,,,B\n")
    first, second = read_samplesheet(sheet)
    assert first.image == {"pre_pixel_size_um": "0.5", "post_pixel_size_um": "0.45",
                           "channel": "DAPI"}
    assert second.image == {}
    assert first.extra["site"] == "A" and first.extra["pixel_size_um"] == "0.5"
    copy = write_samplesheet([first, second], tmp_path / "pairs.csv")
    assert [p.image for p in read_samplesheet(copy)] == [first.image, {}]
    assert image_facts({"pixel_size_um": 0.3, "pre_exposure_s": None, "channel": ""}) == {
        "pre_pixel_size_um": 0.3, "post_pixel_size_um": 0.3}


def test_a_mistyped_image_column_is_warned_about(images: Path) -> None:
    sheet = write_sheet(images / "samplesheet.csv",
                        "sample,dye,pre,post,pixelsize_um,site\n"
                        "CD070,DAPI,CD070/x_pre_DAPI.tif,CD070/x_post_DAPI.tif,0.5,A\n")
    found = load_samplesheet(sheet)
    assert found.pairs[0].image == {}
    assert found.warnings == ["column 'pixelsize_um' is kept as an extra column, not read as an "
                              "image column; did you mean 'pixel_size_um'?"]


def test_pair_facts_enter_the_fingerprint_not_the_file_names(images: Path) -> None:
    """A pair's own pixel size overrides the batch-wide parameter for that pair only; it changes
    the fingerprint of stage 1 and later (so resume re-runs the pair), never a file suffix."""
    pairs = [PairSpec("CD070", "DAPI", images / "a.tif", images / "b.tif",
                      {"pixel_size_um": "0.5", "post_exposure_s": "0.3"}),
             PairSpec("CD063", "DAPI", images / "c.tif", images / "d.tif")]
    tasks = build_task_list(pairs, {"pixel_size_um": 0.9})
    own, batch = (P.resolve(split_options(opts)[1]) for _, _, opts in tasks)
    assert own[P.PAIR_KEY] == {"pre_pixel_size_um": 0.5, "post_pixel_size_um": 0.5,
                               "post_exposure_s": 0.3}
    assert P.PAIR_KEY not in batch
    assert effective(own, "pre_pixel_size_um") == 0.5
    assert effective(batch, "pre_pixel_size_um") == 0.9
    assert effective(own, "pre_exposure_s") is None
    assert all(P.suffix(own, s) == P.suffix(batch, s) == "_px0.9" for s in P.STAGE_NAMES)
    assert all(P.fingerprint(own, s) != P.fingerprint(batch, s) for s in P.STAGE_NAMES)
    exposure_only = P.resolve({P.PAIR_KEY: {"post_exposure_s": 0.3}})
    assert [P.fingerprint(exposure_only, s) == P.fingerprint(P.resolve(), s)
            for s in P.STAGE_NAMES] == [True, True, True, False, False]
    with pytest.raises(ParameterError, match="per-pair pre_pixel_size_um"):
        P.resolve({P.PAIR_KEY: {"pre_pixel_size_um": "-1"}})
    with pytest.raises(ParameterError, match="unknown per-pair image fact"):
        P.resolve({P.PAIR_KEY: {"pixel_size": 1}})


def _physical_size(path: Path) -> float:
    with tifffile.TiffFile(path) as tif:
        found = re.search(r'PhysicalSizeX="([^"]+)" PhysicalSizeXUnit="µm"', tif.ome_metadata)
    assert found, f"{path}: no PhysicalSizeX in its OME-XML"
    return float(found.group(1))


def test_a_run_gives_each_pair_its_own_pixel_size(tmp_path: Path) -> None:
    """Two pairs of one samplesheet with their own pixel sizes and exposure times: each pair's
    result.json and products carry its own; sizes that imply the true pre→post scale give no
    warning, one size for both images of a magnified pair does; a corrected size re-runs that
    pair from stage 1 under the same file names, the other pair stays as it was."""
    base = SynthSpec(width=SIZE[0], height=SIZE[1])
    good, off = (replace(s, scale=scale) for s, scale in zip(batch_specs(2, base), (0.95, 1.06),
                                                               strict=True))
    make_batch(tmp_path / "raw", [good, off])

    def sheet(off_size: str) -> Path:
        rows = ["sample,dye,pre,post,pre_pixel_size_um,post_pixel_size_um,pixel_size_um,channel,"
                "pre_exposure_s,post_exposure_s"]
        for spec, cells in ((good, f"{0.4 * 0.95!r},0.4,,1,0.2,0.3"),
                            (off, f",,{off_size},,,")):
            names = spec.file_names()
            rows.append(f"{spec.sample},{spec.dye},raw/{spec.sample}/{names['pre']},"
                        f"raw/{spec.sample}/{names['post']},{cells}")
        return write_sheet(tmp_path / "samplesheet.csv", "\n".join(rows) + "\n")

    out = tmp_path / "out"
    # stage 5 reads no pixel size of its own (its per-mm² counts follow stage 1's post size)
    results = run_batch(None, None, samplesheet=sheet("0.65"), output_dir=out, to_stage=4,
                        show_progress=False)
    by_sample = {r["sample"]: r for r in results}
    first, second = by_sample[good.sample], by_sample[off.sample]
    # the pixel-size disagreement may make the second pair need review, never fail
    assert (first["status"], second["status"] in ("complete", "needs-review")) == (
        "complete", True), results
    assert first["pixel_size_um"] == pytest.approx(0.4)
    assert second["pixel_size_um"] == pytest.approx(0.65)
    assert first["exposure"]["ratio"] == pytest.approx(1.5)
    assert second["exposure"]["ratio"] is None
    assert not any("pixel sizes" in w for w in first["warnings"]), first["warnings"]
    assert any("imply a pre→post scale of 1.0000" in w for w in second["warnings"]), (
        second["warnings"])
    for spec, size in ((good, 0.4), (off, 0.65)):
        layout = PairLayout(out / spec.sample / spec.dye, P.resolve())
        for image in (layout.difference("tiff"), layout.aligned_pre("tiff"),
                      layout.signal("post")):
            assert _physical_size(image) == pytest.approx(size), image
    first_load = json.loads((out / good.sample / good.dye / "stages/01_load.json").read_text())
    assert first_load["images"]["pre"]["pixel_size_um"] == pytest.approx(0.38)
    assert first_load["images"]["pre"]["pixel_size_source"] == "samplesheet"
    assert first_load["channels"]["channels"] == [1]  # green: SybrGld's in the synthetic RGB
    assert "parameter channel" in first_load["channels"]["reason"]
    assert first_load["pair"]["channel"] == "1"

    before = {s.sample: json.loads((out / s.sample / s.dye / "stages/01_load.json").read_text())
              for s in (good, off)}
    again = run_batch(None, None, samplesheet=sheet("0.7"), output_dir=out, to_stage=4,
                      show_progress=False)
    assert {r["sample"]: r["pixel_size_um"] for r in again} == {
        good.sample: pytest.approx(0.4), off.sample: pytest.approx(0.7)}
    after = {s.sample: json.loads((out / s.sample / s.dye / "stages/01_load.json").read_text())
             for s in (good, off)}
    assert after[good.sample]["run_id"] == before[good.sample]["run_id"]
    assert after[off.sample]["run_id"] != before[off.sample]["run_id"]
    assert sorted(p.name for p in (out / off.sample / off.dye / "stages").iterdir()) == [
        f"0{s}_{name}.json" for s, name in P.STAGE_NAMES.items() if s <= 4]


def test_stage_tools_take_and_check_the_pairs_own_facts(tmp_path: Path) -> None:
    """e2m-load / e2m-subtract take the per-pair values as options (what the Nextflow tasks
    pass) and refuse a bad one as a usage error (exit 2) naming it, before reading anything."""
    from click.testing import CliRunner

    from exo2micro.cli.load import load
    from exo2micro.cli.subtract import subtract

    common = ["--sample", "CD070", "--dye", "DAPI", "--pair-dir", str(tmp_path / "pair")]
    done = CliRunner().invoke(load, ["--pre", str(tmp_path / "a.tif"), "--post",
                                     str(tmp_path / "b.tif"), "--pre-pixel-size-um", "0",
                                     *common])
    assert done.exit_code == 2, done.output
    assert "per-pair pre_pixel_size_um" in done.output and "out of range" in done.output
    done = CliRunner().invoke(subtract, ["--post-exposure-s", "-1", *common])
    assert done.exit_code == 2 and "per-pair post_exposure_s" in done.output, done.output
    done = CliRunner().invoke(load, ["--pre", "a.tif", "--post", "b.tif", "--channel", "a b",
                                     *common])
    assert done.exit_code == 2 and "per-pair channel" in done.output, done.output
