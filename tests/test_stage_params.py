"""The typed per-stage parameters: every registry parameter reaches its stage's view, the views
are frozen, resolving is done once, per-pair facts override the batch-wide values."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from exo2micro import params as P
from exo2micro.stage_params import PairParams

VIEWS = {1: "load", 2: "boundary", 3: "interior", 4: "subtract", 5: "detect"}


def _other_value(p: P.Param) -> Any:
    """A valid value of ``p`` different from its default."""
    if p.kind is bool:
        return not p.default
    if p.kind is str:
        return next(w for w in p.words if w != p.default) if p.words else "1"
    if p.default is None:
        return p.kind(p.low if p.low is not None and p.low > 0 else 1)
    low, high = p.low if p.low is not None else 0, p.high if p.high is not None else 1e6
    candidate = p.kind((p.default + high) / 2) if p.default < high else p.kind(low)
    return candidate if candidate != p.default else p.kind(low)


@pytest.mark.parametrize("param", [p for p in P.REGISTRY if not p.ignored], ids=lambda p: p.name)
def test_every_parameter_reaches_the_view_of_its_stage(param: P.Param) -> None:
    base = P.resolve()
    overrides = {param.name: _other_value(param)}
    if param.name in ("scale_min", "scale_max"):  # keep scale_min <= scale_max
        overrides = {"scale_min": 0.9, "scale_max": 1.1}
    changed = P.resolve(overrides)
    view = VIEWS[param.stage]
    assert getattr(changed, view) != getattr(base, view), (
        f"{param.name} (stage {param.stage}) does not reach PairParams.{view}")


def test_an_ignored_parameter_changes_no_view() -> None:
    base, changed = P.resolve(), P.resolve({"down_scale": 0.5})
    assert all(getattr(changed, v) == getattr(base, v) for v in VIEWS.values())
    assert changed["down_scale"] == 0.5  # still recorded


def test_views_are_frozen_and_the_mapping_read_only() -> None:
    values = P.resolve({"detect_threshold": 6})
    assert values.detect.threshold == 6.0 and values["detect_threshold"] == 6.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        values.detect.threshold = 3.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        values["detect_threshold"] = 3.0  # type: ignore[index]


def test_resolving_resolved_parameters_returns_them_unchanged() -> None:
    values = P.resolve({"boundary_width": 20})
    assert P.resolve(values) is values
    assert isinstance(values, PairParams) and dict(values) == dict(P.resolve(dict(values)))


def test_resolved_parameters_survive_a_process_boundary() -> None:
    values = P.resolve({"angle_range": 10.0, "pair": {"channel": "2"}})
    back = pickle.loads(pickle.dumps(values))
    assert dict(back) == dict(values) and back.boundary == values.boundary
    assert back.load == values.load
    assert P.fingerprint(back, 5) == P.fingerprint(values, 5)


def test_a_pairs_own_facts_override_the_batch_wide_parameters() -> None:
    values = P.resolve({"pixel_size_um": 0.3, "post_exposure_s": 2.0, "channel": "0",
                        "pair": {"pre_pixel_size_um": 0.5, "pre_exposure_s": 1.0,
                                 "channel": "DAPI"}})
    assert dict(values.load.pixel_size_um) == {"pre": (0.5, "samplesheet"),
                                               "post": (0.3, "parameter")}
    assert values.load.channel == "DAPI"
    assert dict(values.load.pair_facts) == {"pre_pixel_size_um": 0.5, "pre_exposure_s": 1.0,
                                            "channel": "DAPI"}
    assert (values.subtract.pre_exposure_s, values.subtract.post_exposure_s) == (1.0, 2.0)
    assert dict(P.resolve().load.pixel_size_um) == {"pre": (None, None), "post": (None, None)}
