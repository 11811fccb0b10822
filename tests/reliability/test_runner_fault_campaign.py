"""A seeded subset of ``bench/fault_campaign.py``: the runner SIGKILLed once in each mode, in
a different stage each time; no process of the killed run survives it, and the resumed run's
TIFFs and result.json science values are byte-identical to an uninterrupted run's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.runner_helpers import ROOT


def _campaign_module() -> object:
    spec = importlib.util.spec_from_file_location("fault_campaign",
                                                  ROOT / "bench" / "fault_campaign.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sigkill_in_every_mode_and_stage_resumes_to_identical_outputs(tmp_path: Path) -> None:
    campaign = _campaign_module()
    kills = campaign.run_campaign(  # type: ignore[attr-defined]
        tmp_path, kills=4, seed=7, n_pairs=1, log=False)
    assert [(k.mode, k.target_stage) for k in kills] == [
        ("serial", 1), ("process", 2), ("thread", 3), ("subprocess", 4)]
    for k in kills:
        assert k.survivors == 0, f"{k.mode}: a worker outlived the SIGKILLed runner"
        assert k.resumed_rc == 0, k
        assert not k.differences, (k.mode, k.differences)
    assert any(k.at_stage is not None for k in kills)  # killed mid-batch, not after it
