"""nextflow_schema.json, nextflow.config, main.nf and exo2micro.params.REGISTRY agree.

- both JSON schemas are valid draft 2020-12 schemas;
- every parameter of nextflow.config is in the schema and vice versa, with equal defaults;
- every pipeline parameter of the registry is a Nextflow parameter of the same name, type,
  default and range, and main.nf passes it to the right stages.
"""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest

from exo2micro.params import REGISTRY

from .conftest import REPO

SCHEMA_PATH = REPO / "nextflow_schema.json"
INPUT_SCHEMA_PATH = REPO / "exo2micro" / "assets" / "schema_input.json"
KIND_TO_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string"}
SCHEMA_TYPES = {"string", "integer", "number", "boolean"}
# Parameters whose config default is computed at run time (the schema then has no default).
COMPUTED_DEFAULTS = {"trace_report_suffix"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def schema_params(schema: dict) -> dict[str, dict]:
    props: dict[str, dict] = {}
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            assert name not in props, f"parameter {name} is in two schema groups"
            props[name] = spec
    return props


@pytest.fixture(scope="module")
def config_params(project_dump: dict) -> dict[str, dict]:
    """params.* assigned at the top level of nextflow.config (the defaults)."""
    found = {}
    for entry in project_dump["config"]:
        if entry["file"] == "nextflow.config" and entry["path"].startswith("params."):
            name = entry["path"].split(".", 1)[1]
            assert "." not in name, entry
            found[name] = entry
    return found


def _same(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def test_schema_is_valid_draft_2020_12(schema: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    refs = [item["$ref"] for item in schema["allOf"]]
    assert refs == [f"#/$defs/{name}" for name in schema["$defs"]], "allOf must list every group"


def test_samplesheet_schema_is_valid() -> None:
    input_schema = json.loads(INPUT_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(input_schema)
    assert set(input_schema["items"]["required"]) >= {"sample", "dye", "pre", "post"}
    rows = [
        {
            "sample": "CD070",
            "dye": "SybrGld",
            "pre": "a_pre_SybrGld.tif",
            "post": "a_post_SybrGld.tif",
            "site": "core 3",
        }
    ]
    jsonschema.Draft202012Validator(input_schema).validate(rows)


def test_input_parameter_points_to_the_samplesheet_schema(schema_params: dict) -> None:
    assert schema_params["input"]["schema"] == "exo2micro/assets/schema_input.json"


def test_every_schema_parameter_is_documented(schema_params: dict) -> None:
    for name, spec in schema_params.items():
        types = spec.get("type")
        assert set(types if isinstance(types, list) else [types]) <= SCHEMA_TYPES, name
        assert spec.get("description"), f"{name} has no description"
        if "default" in spec:
            jsonschema.Draft202012Validator(spec).validate(spec["default"])


def test_config_and_schema_have_the_same_parameters(
    config_params: dict, schema_params: dict
) -> None:
    assert set(config_params) == set(schema_params), (
        f"only in nextflow.config: {sorted(set(config_params) - set(schema_params))}; "
        f"only in nextflow_schema.json: {sorted(set(schema_params) - set(config_params))}"
    )


def test_config_and_schema_defaults_agree(config_params: dict, schema_params: dict) -> None:
    for name, entry in config_params.items():
        spec = schema_params[name]
        if name in COMPUTED_DEFAULTS:
            assert not entry["constant"] and "default" not in spec, name
            continue
        assert entry["constant"], f"params.{name} in nextflow.config should be a constant"
        value = entry["value"]
        if value is None:
            assert "default" not in spec, f"{name}: null in the config, so no default in the schema"
        else:
            assert "default" in spec, f"{name}: schema has no default (config: {value!r})"
            assert _same(spec["default"], value), (
                f"{name}: schema {spec['default']!r} != config {value!r}"
            )


def test_params_set_anywhere_are_known(project_dump: dict, schema_params: dict) -> None:
    """Params set in profiles or conf/*.config are schema parameters too."""
    for entry in project_dump["config"]:
        parts = entry["path"].split(".")
        if "params" in parts:
            name = parts[parts.index("params") + 1]
            assert name in schema_params, (
                f"{entry['file']}:{entry['line']} sets unknown params.{name}"
            )


@pytest.mark.parametrize("param", REGISTRY, ids=[p.name for p in REGISTRY])
def test_registry_parameter_is_a_pipeline_parameter(
    param, schema_params: dict, config_params: dict
) -> None:
    assert param.name in schema_params, f"{param.name} missing from nextflow_schema.json"
    spec = schema_params[param.name]
    # a numeric parameter that also takes words (manual_scale=exposure): number or one of them
    # (a text parameter with words is a choice among them: a string with that pattern)
    expected = ([KIND_TO_TYPE[param.kind], "string"] if param.words and param.kind is not str
                else KIND_TO_TYPE[param.kind])
    assert spec["type"] == expected, param.name
    if param.words:
        assert all(re.fullmatch(spec["pattern"], word) for word in param.words), param.name
    if param.default is None:
        assert "default" not in spec
        assert config_params[param.name]["value"] is None
    else:
        assert _same(spec["default"], param.default)
        assert _same(config_params[param.name]["value"], param.default)
    if param.kind in (int, float):
        assert _same(spec.get("minimum"), param.low), f"{param.name}: minimum"
        assert _same(spec.get("maximum"), param.high), f"{param.name}: maximum"
    assert spec["description"] == param.help
    assert f"`{param.abbr}`" in spec.get("help_text", ""), (
        f"{param.name}: abbreviation not documented"
    )


def test_main_nf_passes_registry_parameters_to_their_stages() -> None:
    text = (REPO / "main.nf").read_text()
    body = text[text.index("def registryParametersByStage()") :]
    body = body[: body.index("\n}\n")]
    table = {
        int(stage): re.findall(r"'([a-z_]+)'", names)
        for stage, names in re.findall(r"(\d):\s*\[(.*?)\]", body, flags=re.S)
    }
    expected: dict[int, list[str]] = {}
    for p in REGISTRY:
        expected.setdefault(p.stage, []).append(p.name)
    assert table == expected
