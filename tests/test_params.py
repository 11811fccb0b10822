"""Tests of the parameter registry (exo2micro.params): suffixes, validation, fingerprints."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from exo2micro import params as P
from exo2micro.errors import ParameterError
from exo2micro.pipeline import prepare

#: exo2micro 2.4's abbreviations (README, "Parameters"), in its order.
REFERENCE_ABBRS = ("pad", "ue", "bw", "bs", "rs", "ar", "astep", "ss", "smin", "smax", "sstep",
                   "ms", "ds", "fecc", "mtr", "mrot", "msd", "msdf", "sit", "sdl", "sai", "iecc",
                   "iblur", "imc", "imir", "sp", "msc")


def non_default_value(p: P.Param) -> Any:
    """A valid value different from ``p``'s default, of ``p``'s type, not trivially round."""
    if p.kind is bool:
        return not p.default
    if p.kind is str:  # a choice (words): another of its words
        return next((w for w in p.words if w != p.default), "DAPI")
    if p.optional and p.default is None:
        return p.low + (p.high - p.low) * 0.3137
    if p.kind is int:
        return int(p.low) + 7 if p.default != int(p.low) + 7 else int(p.low) + 8
    value = (p.default + p.low) / 2 if p.default != p.low else p.default * 1.5
    try:
        P.resolve({p.name: value})
    except ParameterError:  # a cross-parameter rule (scale_max below scale_min): go up instead
        value = (p.default + p.high) / 2
    return float(value)


def test_registry_matches_the_reference_names_and_abbreviations() -> None:
    assert tuple(p.abbr for p in P.REGISTRY)[:len(REFERENCE_ABBRS)] == REFERENCE_ABBRS
    assert len(P.BY_NAME) == len(P.BY_ABBR) == len(P.REGISTRY)
    assert P.DEFAULTS["pad"] == 0  # our own default (README, "Parameters")
    assert P.DEFAULTS["boundary_width"] == 15 and P.DEFAULTS["scale_percentile"] is None


def test_defaults_give_empty_suffixes() -> None:
    values = P.resolve()
    assert all(P.suffix(values, stage) == "" for stage in P.STAGE_NAMES)
    assert P.params_from_suffix("") == {}


@pytest.mark.parametrize("param", P.REGISTRY, ids=lambda p: p.name)
def test_every_parameter_round_trips_through_its_suffix(param: P.Param) -> None:
    value = non_default_value(param)
    values = P.resolve({param.name: value})
    text = P.suffix(values, max(P.STAGE_NAMES))
    if param.ignored:  # cannot change an output, so it must not rename one
        assert text == ""
        text = f"_{param.abbr}{P.format_value(values[param.name])}"
    else:
        assert text.startswith(f"_{param.abbr}") and text.count("_") == 1
    parsed = P.params_from_suffix(text)
    assert parsed == {param.name: values[param.name]}
    assert type(parsed[param.name]) is param.kind


def test_optional_parameters_round_trip_and_none_is_the_default() -> None:
    values = P.resolve({"scale_percentile": 2.5, "manual_scale": 1.35})
    assert P.suffix(values, 4) == "_sp2.5_msc1.35"
    assert P.params_from_suffix("_sp2.5_msc1.35") == {"scale_percentile": 2.5,
                                                      "manual_scale": 1.35}
    back = P.resolve({"scale_percentile": 2.5, "manual_scale": None})
    assert P.suffix(back, 4) == "_sp2.5"
    assert P.resolve({"manual_scale": "none"})["manual_scale"] is None


@pytest.mark.parametrize("overrides", [
    {"multiscale": False, "max_scale_delta": 0.1, "max_scale_diff": 0.1, "manual_scale": 0.5},
    {"max_scale_delta": 0.0, "max_scale_diff": 0.0, "manual_scale": 2.0},
    {"scale_search": False, "scale_step": 0.01, "scale_min": 0.9, "scale_max": 1.2,
     "stopit": 50, "stopdelta": 1e-8, "save_all_intermediates": True, "scale_percentile": 3.0},
    {"angle_range": 5.0, "angle_step": 0.25},
    {"angle_range": 0.0, "angle_step": 2.0, "scale_step": 0.5},
], ids=["ms-msd-msdf-msc", "zero-values", "s-family", "ar-astep", "ar0"])
def test_prefix_colliding_abbreviations_round_trip(overrides: dict[str, Any]) -> None:
    values = P.resolve(overrides)
    text = P.suffix(values, 4)
    assert text.count("_") == len(overrides)
    assert P.params_from_suffix(text) == {n: values[n] for n in overrides}


def test_all_parameters_at_once_round_trip() -> None:
    values = P.resolve({p.name: non_default_value(p) for p in P.REGISTRY})
    text = P.spelled_suffix(values, max(P.STAGE_NAMES))
    used = [p for p in P.REGISTRY if not p.ignored]
    assert [t for t in text.split("_") if t] == [
        f"{p.abbr}{P.format_value(values[p.name])}" for p in used]
    assert P.params_from_suffix(text) == {p.name: values[p.name] for p in used}


def test_float_suffix_values_are_short_and_exact() -> None:
    assert P.suffix(P.resolve({"angle_range": 10}), 2) == "_ar10"
    assert P.suffix(P.resolve({"stopdelta": 1e-8}), 2) == "_sdl1e-08"
    assert P.suffix(P.resolve({"manual_scale": 1e6}), 4) == "_msc1000000"
    assert P.params_from_suffix("_msc1000000") == {"manual_scale": 1e6}


def test_unknown_suffix_token_is_rejected() -> None:
    with pytest.raises(ParameterError, match="'zz3' does not name a parameter"):
        P.params_from_suffix("_bw20_zz3")
    with pytest.raises(ParameterError, match="does not name"):
        P.params_from_suffix("_bw")  # an abbreviation without a value


def test_suffix_cascades_over_stages() -> None:
    values = P.resolve({"pad": 100, "boundary_width": 20, "interior_blur_base": 4.0,
                        "scale_percentile": 1.0})
    assert P.suffix(values, 1) == "_pad100"
    assert P.suffix(values, 2) == "_pad100_bw20"
    assert P.suffix(values, 3) == "_pad100_bw20_iblur4"
    assert P.suffix(values, 4) == "_pad100_bw20_iblur4_sp1"
    stage3_only = P.resolve({"interior_blur_base": 4.0})
    assert P.suffix(stage3_only, 2) == "" and P.suffix(stage3_only, 3) == "_iblur4"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"boundary_width": "wide"}, r"'boundary_width' must be an integer, got 'wide'"),
    ({"boundary_width": 2.5}, r"'boundary_width' must be an integer, got 2.5"),
    ({"angle_range": True}, r"'angle_range' must be a number, got True"),
    ({"use_edges": "maybe"}, r"'use_edges' must be true or false, got 'maybe'"),
    ({"use_edges": 2}, r"'use_edges' must be true or false"),
    ({"angle_range": float("nan")}, r"'angle_range' must be finite"),
    ({"angle_range": 400}, r"'angle_range' = 400 is out of range \[0, 180\]"),
    ({"pad": -1}, r"'pad' = -1 is out of range \[0, 20000\]"),
    ({"interior_min_inlier_ratio": 1.5}, r"out of range \[0, 1\]"),
    ({"boundary_width": None}, r"'boundary_width' cannot be None"),
    ({"pad": ""}, r"'pad' cannot be None"),
])
def test_validation_messages(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        P.resolve(overrides)


def test_scale_min_above_scale_max_is_rejected() -> None:
    with pytest.raises(ParameterError, match=r"scale_min \(1.1\) must not exceed scale_max "
                                             r"\(1.05\)"):
        P.resolve({"scale_min": 1.1, "scale_max": 1.05})
    assert P.resolve({"scale_min": 1.0, "scale_max": 1.0})["scale_max"] == 1.0
    # a search range that excludes 1 is allowed (e.g. a known magnification change)
    assert P.resolve({"scale_min": 1.05, "scale_max": 1.25})["scale_min"] == 1.05


def test_strings_from_the_command_line_are_coerced() -> None:
    values = P.resolve({"pad": "50", "use_edges": "no", "angle_range": "12.5",
                        "fine_ecc": "TRUE", "stopit": "1e3"})
    assert values["pad"] == 50 and type(values["pad"]) is int
    assert values["use_edges"] is False and values["fine_ecc"] is True
    assert values["angle_range"] == 12.5 and values["stopit"] == 1000


def test_unknown_name_lists_every_valid_name() -> None:
    with pytest.raises(ParameterError) as info:
        P.resolve({"boundry_width": 20, "pad": 3})
    text = str(info.value)
    assert "unknown parameter(s) boundry_width (did you mean boundary_width?)" in text
    assert all(name in text for name in P.BY_NAME)


def test_unknown_name_without_a_close_one_gets_no_guess() -> None:
    with pytest.raises(ParameterError) as info:
        P.resolve({"xyz": 1})
    assert "unknown parameter(s) xyz;" in str(info.value)


def test_ignored_parameter_gives_one_notice_and_keeps_the_fingerprint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    default = P.resolve()
    changed = P.resolve({"down_scale": 0.5})
    notices = P.ignored_notices(changed)
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "down_scale=0.5" in notices[0] and "ignored" in notices[0]
    assert P.ignored_notices(default) == []
    assert all(P.fingerprint(changed, s) == P.fingerprint(default, s) for s in P.STAGE_NAMES)
    with caplog.at_level(logging.WARNING, logger="exo2micro"):
        prepare(tmp_path, {"down_scale": 0.5}, threads=1)
    assert [r.getMessage() for r in caplog.records] == notices


def test_fingerprint_is_stable_across_orderings() -> None:
    overrides = {"pad": 10, "boundary_width": 30, "fine_ecc": True, "manual_scale": 2.0}
    forward = P.resolve(overrides)
    names = list(forward)
    random.Random(4).shuffle(names)
    shuffled = {n: forward[n] for n in names}
    for stage in P.STAGE_NAMES:
        assert P.fingerprint(forward, stage) == P.fingerprint(shuffled, stage)
        assert P.fingerprint(forward, stage) == P.fingerprint(P.resolve(overrides), stage)
    assert len({P.fingerprint(forward, s) for s in P.STAGE_NAMES}) == len(P.STAGE_NAMES)


@pytest.mark.parametrize(("name", "value", "changed_stages"), [
    ("pad", 5, {1, 2, 3, 4, 5}),
    ("boundary_width", 20, {2, 3, 4, 5}),
    ("interior_ecc", False, {3, 4, 5}),
    ("manual_scale", 1.5, {4, 5}),
    ("detect_threshold", 4.0, {5}),
])
def test_fingerprint_changes_from_the_parameters_stage_on(name: str, value: Any,
                                                         changed_stages: set[int]) -> None:
    default, changed = P.resolve(), P.resolve({name: value})
    differ = {s for s in P.STAGE_NAMES if P.fingerprint(default, s) != P.fingerprint(changed, s)}
    assert differ == changed_stages


def test_fingerprint_follows_the_algorithm_version(monkeypatch: pytest.MonkeyPatch) -> None:
    values = P.resolve()
    before = {s: P.fingerprint(values, s) for s in P.STAGE_NAMES}
    monkeypatch.setitem(P.ALGORITHM_VERSION, 3, P.ALGORITHM_VERSION[3] + 1)
    after = {s: P.fingerprint(values, s) for s in P.STAGE_NAMES}
    assert {s for s in before if before[s] != after[s]} == {3, 4, 5}


def test_stage_params_and_non_default() -> None:
    values = P.resolve({"pad": 4, "boundary_width": 20, "manual_scale": 2.0})
    assert P.stage_params(values, 1) == {"pad": 4, "pixel_size_um": None, "channel": None}
    assert set(P.stage_params(values, 3)) == {"interior_ecc", "interior_blur_base",
                                              "interior_max_correction",
                                              "interior_min_inlier_ratio"}
    assert P.non_default(values, 2) == {"pad": 4, "boundary_width": 20}
    assert P.non_default(values) == {"pad": 4, "boundary_width": 20, "manual_scale": 2.0}


def test_markdown_table_lists_every_parameter() -> None:
    table = P.markdown_table()
    lines = table.splitlines()
    assert lines[0].startswith("| name | stage | default | abbr |")
    assert len(lines) == 2 + len(P.REGISTRY)
    for p, line in zip(P.REGISTRY, lines[2:], strict=True):
        assert line.startswith(f"| `{p.name}` | {p.stage} | `{p.default}` | `{p.abbr}` |")
    assert "or None" in table and "true/false" in table
