"""result.json's typed contract: round trip, checks on reading, its JSON Schema in the docs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from exo2micro import params as P
from exo2micro.cli.schema import schema
from exo2micro.io.contracts import ContractError
from exo2micro.io.layout import PairLayout
from exo2micro.io.result_model import SCHEMA_VERSION, PairResult, json_schema
from exo2micro.report import summary as S
from exo2micro.report.result import build_result, read_result, write_result

ROOT = Path(__file__).resolve().parent.parent
MATRIX = [[1.05, 0.1, -36.9], [-0.1, 1.05, -5.9], [0.0, 0.0, 1.0]]
#: A complete result as stage 5 and the local runner write it (keys in the written order).
COMPLETE = {
    "sample": "S1", "dye": "SybrGld", "status": "complete",
    "review": {"passed": True, "problems": [], "texture_correlation": 0.97,
               "best_other_orientation": {"orientation": "rotated by 180°", "correlation": 0.28}},
    "scale_estimate": 1.79, "scale_percentile_value": None, "manual_scale": None,
    "k_model": "global", "scale_range": [1.79, 1.79], "scale_map": None, "pixel_size_um": None,
    "exposure": {"pre_s": None, "post_s": None, "ratio": None, "k_net_of_exposure": None},
    "alignment": {"post_to_pre": MATRIX, "residual_field": None, "estimated_accuracy_px": 0.5,
                  "stage2": {"status": "ok", "reason": "", "post_to_pre": MATRIX,
                             "transform": "transforms/02_boundary.json", "rotation_deg": -5.7,
                             "scale": 0.94, "overlap_iou": 0.99},
                  "stage3": {"status": "fallback", "reason": "only 0 patch positions",
                             "post_to_pre": MATRIX, "transform": "transforms/03_interior.json",
                             "estimated_accuracy_px": 0.5, "n_patches": 0}},
    "params": {}, "suffix": "", "fingerprint": "59f0c0d0e7dc436e",
    "stages": {"load": {"status": "complete", "timings_s": {"stream": 0.04, "total": 0.058},
                        "peak_rss_bytes": 93933568}},
    "outputs": ["tiff/01_pre_signal.tif"], "warnings": ["stage 3: stage 3 fallback: ..."],
    "detections": {"n": 17, "n_snr5": 17, "threshold_sigma": 4.8,
                   "completeness_estimate": 0.88, "catalog": "detections.csv", "per_mm2": None},
    "meta": {}, "created": "2026-12-06T20:40:36+0000",
    "runner": {"mode": "serial", "attempts": 1, "threads": 1, "last_stage": 5, "wall_s": 0.7,
               "pid": 7534, "host": "vm"},
}


def _text(result: dict) -> str:
    """``result`` as result.json holds it."""
    return json.dumps(result, indent=2) + "\n"


def test_a_written_result_reads_back_to_the_same_bytes() -> None:
    typed = PairResult.from_json(json.loads(_text(COMPLETE)))
    assert typed.detections is not None and typed.detections["n"] == 17
    assert typed.schema_version == SCHEMA_VERSION and typed.extra == {}
    assert _text(typed.to_json()) == _text(COMPLETE)


def test_keys_it_does_not_know_are_kept_in_place_and_error_comes_before_runner() -> None:
    failed = {**{k: v for k, v in COMPLETE.items() if k != "runner"},
              "status": "error: boom", "error": {"class": "InputDataError", "stage": 1,
                                                  "exit_code": 65, "attempts": 1},
              "runner": COMPLETE["runner"], "added_later": [1, 2]}
    typed = PairResult.from_json(copy.deepcopy(failed))
    assert typed.extra == {"added_later": [1, 2]}
    assert _text(typed.to_json()) == _text(failed)


def test_build_result_writes_every_key_in_the_order_of_the_model(tmp_path: Path) -> None:
    """A pair without stage records still gets a full result.json (its keys: the model's, less
    error and runner); reading it back gives the same object."""
    layout = PairLayout(tmp_path / "S" / "D", P.resolve({}))
    layout.root.mkdir(parents=True)
    result = build_result(layout, "S", "D", "complete", {"site": "n"})
    write_result(layout, result)
    written = json.loads(layout.result().read_text())
    assert list(written) == [k for k in json_schema()["properties"]
                             if k not in ("error", "runner", "schema_version")]
    assert read_result(layout) == result


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.pop("status"), "result.json has no status"),
    (lambda r: r.update(scale_estimate="1.3"),
     "result.json: scale_estimate: expected a number or null, found a string ('1.3')"),
    (lambda r: r["alignment"]["stage2"].update(status=3),
     "result.json: alignment.stage2.status: expected a string, found a number (3)"),
    (lambda r: r["stages"]["load"]["timings_s"].update(total=None),
     "result.json: stages.load.timings_s.total: expected a number, found null"),
    (lambda r: r["outputs"].append(7), "result.json: outputs[1]: expected a string"),
    (lambda r: r.update(detections=[17]),
     "result.json: detections: expected an object or null, found an array ([17])"),
    (lambda r: r.update(review={"passed": "yes"}),
     "result.json: review.passed: expected true or false, found a string ('yes')"),
    (lambda r: r.update(meta={"run": 2}), "result.json: meta.run: expected a string"),
    (lambda r: r.update(schema_version=SCHEMA_VERSION + 1),
     f"result.json has schema version {SCHEMA_VERSION + 1}, written by a newer exo2micro"),
    (lambda r: r.update(schema_version=True), "result.json: schema_version: expected an "
                                              "integer, found a boolean (True)"),
])
def test_a_corrupt_result_is_refused_naming_the_key(change, message: str) -> None:
    data = copy.deepcopy(COMPLETE)
    change(data)
    with pytest.raises(ContractError) as err:
        PairResult.from_json(data)
    assert str(err.value).startswith(message), str(err.value)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^x/result.json is not a JSON object \(a list\)$"):
        PairResult.from_json([1, 2], "x/result.json")


def test_an_old_minimal_result_reads_with_defaults() -> None:
    """The Nextflow stub's result.json: sample, dye, status, scale_estimate only."""
    typed = PairResult.from_json({"sample": "S", "dye": "D", "status": "complete",
                                  "scale_estimate": 1.0})
    assert (typed.scale_estimate, typed.alignment, typed.stages, typed.fingerprint) == \
        (1.0, None, {}, None)
    assert not typed.is_written


def test_the_summary_reports_a_corrupt_result_as_an_error_naming_the_key(tmp_path: Path) -> None:
    data = copy.deepcopy(COMPLETE)
    data["detections"]["n"] = "17"
    path = tmp_path / "S1" / "SybrGld" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(_text(data))
    (row,) = S.collect_rows(S.read_result_files([path]))
    assert row.state == "error"
    assert row.reason == ("S1/SybrGld/result.json: detections.n: expected an integer, found a "
                          "string ('17'); re-run the pair")


def test_resume_keeps_a_current_result_and_rebuilds_one_that_is_not_a_result(
        tmp_path: Path) -> None:
    """A finished pair's result.json is reused when it is a valid result of these parameters;
    one that is not a result (or unreadable) is rebuilt from the stage records."""
    from exo2micro.sampledye import SampleDye

    pair = SampleDye("S1", "SybrGld", tmp_path)
    layout = pair.layout
    layout.root.mkdir(parents=True)
    current = {**COMPLETE, "fingerprint": P.fingerprint(layout.params, 4)}
    layout.result().write_text(_text(current))
    assert pair._complete_result(layout, 5).to_json() == current
    layout.result().write_text(_text({**current, "stages": []}))
    with pytest.raises(ValueError, match="stages: expected an object, found an array"):
        read_result(layout)
    rebuilt = pair._complete_result(layout, 5)
    assert rebuilt.stages == {} and rebuilt.created != COMPLETE["created"]


def test_the_json_schema_in_docs_output_md_is_generated_from_the_model() -> None:
    doc = (ROOT / "docs" / "output.md").read_text()
    block = re.search(r"<!-- result-schema:start.*?-->\n(.*?)\n<!-- result-schema:end -->",
                      doc, re.S)
    assert block is not None
    generated = CliRunner().invoke(schema, ["--markdown"]).output.strip()
    assert block.group(1).strip() == generated, "run: exo2micro schema --markdown"
    assert json.loads(generated.removeprefix("```json").removesuffix("```")) == json_schema()


def test_the_schema_lists_every_key_a_complete_result_has() -> None:
    assert set(COMPLETE) <= set(json_schema()["properties"])
    assert json_schema()["required"] == ["sample", "dye", "status"]
