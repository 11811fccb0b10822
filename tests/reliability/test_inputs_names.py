"""Names the user controls never break outputs; summaries survive bad result.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exo2micro import params as P
from exo2micro.batch.discover import discover
from exo2micro.errors import ParameterError
from exo2micro.report import summary as S
from tests.reliability.helpers import pair


@pytest.mark.parametrize("name", ["summary.tsv", "report.html", "manifest.json", "pipeline_info"])
def test_sample_named_like_a_batch_file_is_skipped(tmp_path: Path, name: str) -> None:
    pair(tmp_path / "raw", "GOOD")
    (tmp_path / "raw" / name).mkdir()
    (tmp_path / "raw" / name / "x_pre_SybrGld.tif").write_bytes(b"")
    found = discover(tmp_path / "raw", strict=False)
    assert [p.sample for p in found.pairs] == ["GOOD"]
    assert any(name in str(s) and "reserved" in str(s) for s in found.skipped)


def test_report_links_are_url_encoded(tmp_path: Path) -> None:
    key = "CD#1%?é"
    png = tmp_path / key / "SybrGld" / "pipeline_output" / "difference_image.png"
    png.parent.mkdir(parents=True)
    import matplotlib.image as mpimg
    import numpy as np

    mpimg.imsave(png, np.zeros((8, 8)))
    row = S.PairRow(key, "SybrGld", "complete", pair_dir=png.parent.parent)
    page = S.render_html([row], tmp_path)
    assert 'href="CD%231%25%3F%C3%A9/SybrGld/pipeline_output/difference_image.png"' in page


def test_many_non_default_parameters_make_a_short_name() -> None:
    values = P.resolve({"boundary_width": 21, "boundary_smooth": 11, "angle_range": 33.3333,
                        "angle_step": 0.123456, "scale_min": 0.812345, "scale_max": 1.198765,
                        "scale_step": 0.0123456, "max_translation": 12345,
                        "max_rotation": 4.56789, "max_scale_delta": 0.198765,
                        "max_scale_diff": 0.145678, "stopit": 4321, "stopdelta": 1.2345e-7,
                        "interior_blur_base": 7.654321, "interior_max_correction": 4321,
                        "scale_percentile": 99.54321, "manual_scale": 1.23456789})
    assert len(P.spelled_suffix(values, 4)) > P.MAX_SUFFIX
    text = P.suffix(values, 4)
    assert len(text) == 14 and text.startswith("_H")
    with pytest.raises(ParameterError, match="shortened suffix"):
        P.params_from_suffix(text)


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("data", "reason"), [
    ([1, 2], "not a JSON object"),
    ({"sample": "B", "dye": "D"}, "has no status"),
    ({"sample": "B", "dye": "D", "status": "complete", "stages": ["x"],
      "scale_estimate": "big", "alignment": "none", "runner": {"wall_s": "soon"},
      "outputs": [3, "a.png"], "meta": [1]}, "scale_estimate: expected a number or null"),
    ({"sample": "B", "dye": "D", "status": "complete", "runner": {"wall_s": "soon"}},
     "runner.wall_s: expected a number or null, found a string ('soon')"),
    ({"sample": "B", "dye": "D", "status": "complete", "added_later": {"x": 1}}, None),
])
def test_summary_survives_result_files_of_the_wrong_shape(tmp_path: Path, data: object,
                                                          reason: str | None) -> None:
    good = _write(tmp_path / "A" / "D" / "result.json",
                  {"sample": "A", "dye": "D", "status": "complete", "scale_estimate": 1.3})
    bad = _write(tmp_path / "B" / "D" / "result.json", data)
    rows = S.collect_rows(S.read_result_files([good, bad]))
    S.write_summary(tmp_path, rows)
    by_key = {r.key: r for r in rows}
    assert by_key["A/D"].state == "complete" and by_key["A/D"].moffat == 1.3
    if reason is None:
        assert by_key["B/D"].state == "complete" and by_key["B/D"].moffat is None
    else:
        assert by_key["B/D"].state == "error" and reason in by_key["B/D"].reason
        assert "B/D" in (tmp_path / "summary.md").read_text().split("## Problems")[1]
