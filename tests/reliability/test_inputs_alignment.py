"""A wrong alignment is never "complete" without a warning: it is ``needs-review``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exo2micro.pipeline import run_pair
from exo2micro.report import summary as S
from exo2micro.report.result import NEEDS_REVIEW
from exo2micro.synth import spoil_pre
from tests.reliability.helpers import pair

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("how", "words"), [
    ("rot180", "seems rotated by 180° relative to post"),
    ("rot90", "does not match post in any of the 8 orientations"),
    ("mirror", "does not match post in any of the 8 orientations"),
    ("unrelated", "does not match post in any of the 8 orientations"),
])
def test_remounted_or_unrelated_pre_needs_review(tmp_path: Path, how: str, words: str) -> None:
    good, bad = pair(tmp_path / "raw", "GOOD"), spoil_pre(pair(tmp_path / "raw", "BAD"), how)
    results = []
    for res in (good, bad):
        pair_dir = tmp_path / "out" / res.spec.sample / res.spec.dye
        run_pair(res.spec.sample, res.spec.dye, res.pre_path, res.post_path, pair_dir,
                 threads=2)
        results.append((json.loads((pair_dir / "result.json").read_text()), pair_dir))
    (ok, _), (wrong, _) = results
    assert ok["status"] == "complete" and ok["review"]["passed"]
    assert wrong["status"] == NEEDS_REVIEW and words in wrong["review"]["problems"][0]
    rows = S.collect_rows(results)
    S.write_summary(tmp_path / "out", rows)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "1 complete, 1 need review" in md and "BAD/SybrGld: needs-review" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index('id="problems"') < html.index('id="pairs"')
