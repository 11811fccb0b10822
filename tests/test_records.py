"""Stage records and the resume check (exo2micro.io.records, docs/contracts.md)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from exo2micro import params as P
from exo2micro.cli.schema import schema
from exo2micro.errors import InputDataError
from exo2micro.io import records, tiffio
from exo2micro.io.atomic import write_json_atomic
from exo2micro.io.layout import PairLayout
from exo2micro.io.record_model import StageRecord
from exo2micro.pipeline import run_stage


def _layout(root: Path, **overrides: Any) -> PairLayout:
    return PairLayout(root, P.resolve(overrides))


def _image(path: Path) -> Path:
    data = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    tiffio.write_tiled(path, data.shape, data.dtype, iter([data[:16], data[16:32], data[32:]]),
                       tile=16)
    return path


def _complete(layout: PairLayout, stage: int, **info: Any) -> dict[str, Any]:
    """Write a stage's outputs (one tiled TIFF, one JSON) and its record; return the record."""
    run = records.StageRun(layout, stage)
    image = _image(layout.root / "tiff" / f"0{stage}_image{layout.sfx(stage)}.tif")
    transform = layout.root / "transforms" / f"0{stage}_t{layout.sfx(stage)}.json"
    write_json_atomic(transform, {"post_to_pre": np.eye(3)})
    with run.timed("work"):
        run.add_outputs([image, transform])
    run.warn("something to know")
    run.info.update(info)
    return run.record()


def test_record_contents(tmp_path: Path) -> None:
    layout = _layout(tmp_path, boundary_width=20)
    rec = _complete(layout, 2, extra_fact=7)
    on_disk = json.loads(layout.record(2).read_text())
    assert on_disk == rec
    assert layout.record(2).name == "02_align_boundary_bw20.json"
    assert rec["stage"] == 2 and rec["name"] == "align_boundary" and rec["status"] == "complete"
    assert rec["fingerprint"] == P.fingerprint(layout.params, 2) and rec["suffix"] == "_bw20"
    assert rec["params"] == P.stage_params(layout.params, 2)
    assert rec["outputs"] == ["tiff/02_image_bw20.tif", "transforms/02_t_bw20.json"]
    assert set(rec["timings_s"]) == {"work", "total"} and rec["peak_rss_bytes"] > 10 << 20
    assert rec["warnings"] == ["something to know"] and rec["extra_fact"] == 7
    assert rec["upstream_run_id"] is None and len(rec["run_id"]) == 32


def test_complete_stage_is_current(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    _complete(layout, 1)
    assert records.stage_is_current(layout, 1) == (
        True, "outputs present, fingerprint matches, files read cleanly")


@pytest.mark.parametrize(("damage", "reason"), [
    ("delete-image", "output tiff/01_image.tif missing or unreadable"),
    ("truncate-image", "output tiff/01_image.tif missing or unreadable"),
    ("empty-json", "output transforms/01_t.json missing or unreadable"),
    ("bad-json", "output transforms/01_t.json missing or unreadable"),
    ("no-record", "no record"),
    ("garbled-record", "record unreadable: 01_load.json is not a JSON object (a list)"),
    ("unparseable-record", "record unreadable: 01_load.json is not JSON (Expecting ':' "
                           "delimiter: line 1 column 10 (char 9))"),
    ("failed-status", "previous run ended with status 'error: boom'"),
    ("fingerprint", "parameters or algorithm changed"),
])
def test_damaged_stage_is_not_current(tmp_path: Path, damage: str, reason: str) -> None:
    layout = _layout(tmp_path)
    rec = _complete(layout, 1)
    image, transform = (tmp_path / rel for rel in rec["outputs"])
    if damage == "delete-image":
        image.unlink()
    elif damage == "truncate-image":
        image.write_bytes(image.read_bytes()[:-200])
    elif damage == "empty-json":
        transform.write_bytes(b"")
    elif damage == "bad-json":
        transform.write_text('{"post_to_pre": [[1, 0')
    elif damage == "no-record":
        layout.record(1).unlink()
    elif damage == "garbled-record":
        layout.record(1).write_text("[1, 2]")
    elif damage == "unparseable-record":
        layout.record(1).write_text('{"stage" 1')
    else:
        key, value = {"failed-status": ("status", "error: boom"),
                      "fingerprint": ("fingerprint", "0" * 16)}[damage]
        write_json_atomic(layout.record(1), {**rec, key: value})
    assert records.stage_is_current(layout, 1) == (False, reason)


def test_record_written_while_an_output_is_missing_is_not_current(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    run = records.StageRun(layout, 1)
    run.add_outputs([layout.signal("pre"), _image(layout.signal("post"))])
    run.record()
    assert records.stage_is_current(layout, 1) == (
        False, "output tiff/01_pre_signal.tif missing or unreadable")


def test_algorithm_change_makes_the_stage_and_downstream_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout(tmp_path)
    _complete(layout, 1)
    _complete(layout, 2)
    monkeypatch.setitem(P.ALGORITHM_VERSION, 1, P.ALGORITHM_VERSION[1] + 1)
    for stage in (1, 2):
        assert records.stage_is_current(layout, stage) == (
            False, "parameters or algorithm changed")


def test_ignored_parameter_keeps_the_record_current(tmp_path: Path) -> None:
    _complete(_layout(tmp_path, down_scale=0.5), 2)
    # an ignored parameter changes neither file names nor fingerprints: both settings share
    # the record, so changing it never forces a re-run
    assert _layout(tmp_path, down_scale=0.5).record(2) == _layout(tmp_path).record(2)
    assert records.stage_is_current(_layout(tmp_path, down_scale=0.5), 2)[0]
    assert records.stage_is_current(_layout(tmp_path), 2)[0]


def test_rerun_upstream_stage_makes_downstream_stale(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    first = _complete(layout, 1)
    second = _complete(layout, 2)
    assert second["upstream_run_id"] == first["run_id"]
    assert records.stage_is_current(layout, 2)[0]
    rerun = _complete(layout, 1)
    assert rerun["run_id"] != first["run_id"]
    assert records.stage_is_current(layout, 1)[0]
    assert records.stage_is_current(layout, 2) == (False, "stage 1 was re-run since")
    _complete(layout, 2)
    assert records.stage_is_current(layout, 2)[0]


def test_different_settings_keep_separate_records(tmp_path: Path) -> None:
    plain, padded = _layout(tmp_path), _layout(tmp_path, pad=10)
    _complete(plain, 1)
    assert records.stage_is_current(padded, 1) == (False, "no record")
    _complete(padded, 1)
    assert records.stage_is_current(plain, 1)[0] and records.stage_is_current(padded, 1)[0]
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == [
        "01_load.json", "01_load_pad10.json"]


def test_run_stage_skips_current_stages_and_forces(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    calls: list[int] = []

    def work() -> dict[str, Any]:
        calls.append(1)
        return _complete(layout, 1)

    first, skipped = run_stage(1, layout, work)
    assert not skipped and len(calls) == 1
    again, skipped = run_stage(1, layout, work)
    assert skipped and again["run_id"] == first["run_id"] and len(calls) == 1
    forced, skipped = run_stage(1, layout, work, force=True)
    assert not skipped and forced["run_id"] != first["run_id"] and len(calls) == 2


def test_require_stage(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    with pytest.raises(InputDataError, match=r"stage 1 \(load\) has not completed here "
                                             r"\(no stages/01_load.json\); run it first"):
        records.require_stage(layout, 1)
    rec = _complete(layout, 1)
    assert records.require_stage(layout, 1).to_json() == rec


def test_output_ok_by_type(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "plot.png").write_bytes(b"\x89PNG")
    (tmp_path / "fake.tif").write_text("not a tiff")
    (tmp_path / "fake.fits").write_text("not a fits")
    assert records.output_ok(_image(tmp_path / "real.tif"))
    assert records.output_ok(tmp_path / "plot.png")
    for name in ("empty.png", "fake.tif", "fake.fits", "absent.json"):
        assert records.output_ok(tmp_path / name) is False, name
    assert records.read_record(tmp_path / "fake.tif") is None


def test_a_pixel_size_disagreement_makes_result_json_need_review(tmp_path: Path) -> None:
    """result.json and the summary agree: the failed pixel-size check is a review problem."""
    from exo2micro.report.result import build_result
    from exo2micro.report.summary import row_from_result

    check = ("the pixel sizes (pre 0.65 µm, post 0.65 µm) imply a pre→post scale of 1.0000, "
             "but stage 2 measured 0.9413 (-5.9%); is a pixel size wrong?")
    layout = PairLayout(tmp_path / "S" / "D", P.resolve({}))
    layout.record(4).parent.mkdir(parents=True)
    layout.record(4).write_text(json.dumps({"status": "complete", "warnings": [check]}))
    result = build_result(layout, "S", "D", "complete")
    assert result.status == "needs-review" and result.review is not None
    assert result.review["problems"] == [check] and result.review["passed"] is False
    assert row_from_result(result).reason == check  # named once, not twice


@pytest.mark.parametrize("stage", [1, 2])
def test_record_round_trips_byte_identical(tmp_path: Path, stage: int) -> None:
    layout = _layout(tmp_path, boundary_width=20)
    _complete(layout, stage, extra_fact={"nested": [1, 2.5, None]})
    path = layout.record(stage)
    rec = records.load_record(path)
    assert rec.info == {"extra_fact": {"nested": [1, 2.5, None]}} and rec.is_complete
    assert json.dumps(rec.to_json(), indent=2) + "\n" == path.read_text()
    assert ("upstream_run_id" in rec.to_json()) == (stage > 1)
    assert list(rec.to_json())[-1] == ("upstream_run_id" if stage > 1 else "extra_fact")


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("timings_s", [1.5], "timings_s: expected an object, found an array ([1.5])"),
    ("outputs", "tiff/01_image.tif", "outputs: expected an array, found a string"),
    ("checksums", {"tiff/01_image.tif": 7}, "checksums.tiff/01_image.tif: expected a string"),
    ("stage", "1", "stage: expected an integer or null, found a string ('1')"),
    ("schema_version", 2, "schema version 2, written by a newer exo2micro; this one reads up "
                          "to 1"),
])
def test_record_with_a_wrong_envelope_is_not_current(tmp_path: Path, key: str, value: Any,
                                                     reason: str) -> None:
    layout = _layout(tmp_path)
    rec = _complete(layout, 1)
    write_json_atomic(layout.record(1), {**rec, key: value})
    current, why = records.stage_is_current(layout, 1)
    assert not current and why.startswith("record unreadable: 01_load.json") and reason in why
    assert records.read_record(layout.record(1)) is None
    with pytest.raises(InputDataError, match="has not completed here"):
        records.require_stage(layout, 1)


def test_record_without_a_status_is_not_current(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    rec = _complete(layout, 1)
    write_json_atomic(layout.record(1), {k: v for k, v in rec.items() if k != "status"})
    assert records.stage_is_current(layout, 1) == (
        False, "previous run ended with status None")


def test_record_of_an_older_exo2micro_without_checksums_is_not_current(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    rec = _complete(layout, 1)
    write_json_atomic(layout.record(1), {k: v for k, v in rec.items() if k != "checksums"})
    assert records.load_record(layout.record(1)).checksums is None
    assert records.stage_is_current(layout, 1) == (
        False, "no output checksums recorded (older exo2micro)")


def test_stage_keys_may_not_shadow_the_envelope(tmp_path: Path) -> None:
    run = records.StageRun(_layout(tmp_path), 1)
    run.info["warnings"] = "none"
    with pytest.raises(ValueError, match="the stage's own key 'warnings' is an envelope key"):
        run.record()


def test_the_record_schema_in_docs_output_md_is_generated_from_the_model() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "output.md").read_text()
    block = re.search(r"<!-- record-schema:start.*?-->\n(.*?)\n<!-- record-schema:end -->",
                      doc, re.S)
    assert block is not None
    generated = CliRunner().invoke(schema, ["--record", "--markdown"]).output.strip()
    assert block.group(1).strip() == generated, "run: exo2micro schema --record --markdown"
    assert set(json.loads(generated.removeprefix("```json").removesuffix("```"))["properties"]) \
        == {f.name for f in dataclasses.fields(StageRecord)} - {"info"}
