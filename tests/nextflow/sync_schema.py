"""Bring nextflow_schema.json in step with exo2micro.params.REGISTRY.

    python tests/nextflow/sync_schema.py          # rewrite the registry parameters' entries
    python tests/nextflow/sync_schema.py --check  # exit 1 if anything would change

Only the entries of registry parameters are touched (type, default, minimum, maximum,
description, help_text), in the stage group of the parameter; the other parameters and texts of
the schema are kept. The defaults in nextflow.config are printed when they differ (edit them by
hand; tests/nextflow/test_schema.py checks all three agree).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from exo2micro.params import REGISTRY, Param  # noqa: E402

SCHEMA = REPO / "nextflow_schema.json"
GROUPS = {
    1: "stage1_load_options",
    2: "stage2_align_boundary_options",
    3: "stage3_align_interior_options",
    4: "stage4_subtract_options",
    5: "stage5_detect_options",
}
#: Title and description of a stage group the schema does not have yet.
NEW_GROUPS = {
    5: ("Stage 5: detect", "Noise model, significance image and the catalogue of microbes."),
}
TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def entry(p: Param, old: dict) -> dict:
    # a numeric parameter that also takes words (manual_scale=exposure): number or one of them
    # (a text parameter with words is a choice among them: a string with that pattern)
    new: dict = {"type": [TYPES[p.kind], "string"] if p.words and p.kind is not str
                 else TYPES[p.kind]}
    if p.words:
        new["pattern"] = "^(" + "|".join(p.words) + ")$"
    if p.default is not None:
        new["default"] = p.default
    if p.kind in (int, float):
        if p.low is not None:
            new["minimum"] = p.low
        if p.high is not None:
            new["maximum"] = p.high
    new["description"] = p.help
    new["help_text"] = (
        f"exo2micro parameter `{p.name}` (stage {p.stage}; filename abbreviation `{p.abbr}`). "
        + ("Accepted for compatibility with exo2micro 2.x and ignored. " if p.ignored else "")
        + ("Leave unset (null) to skip it. " if p.optional else "")
        + f"Non-default values appear in the output file names as `_{p.abbr}<value>`."
    )
    new["fa_icon"] = old.get("fa_icon", "fas fa-sliders-h")
    return new


def config_defaults() -> dict[str, str]:
    text = (REPO / "nextflow.config").read_text()
    block = text[text.index("params {") :]
    return dict(
        re.findall(r"^\s{4}(\w+)\s*=\s*(.+?)\s*$", block[: block.index("\n}\n")], flags=re.M)
    )


def groovy(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("e-06", "e-6")


def main(check: bool) -> int:
    schema = json.loads(SCHEMA.read_text())
    before = json.dumps(schema, indent=4, ensure_ascii=False) + "\n"
    for stage, (title, description) in NEW_GROUPS.items():
        if GROUPS[stage] not in schema["$defs"]:
            schema["$defs"][GROUPS[stage]] = {"title": title, "type": "object",
                                              "fa_icon": "fas fa-microscope",
                                              "description": description, "properties": {}}
            schema["allOf"].append({"$ref": f"#/$defs/{GROUPS[stage]}"})
    for p in REGISTRY:
        for name, group in schema["$defs"].items():
            if name != GROUPS[p.stage]:
                group["properties"].pop(p.name, None)
        props = schema["$defs"][GROUPS[p.stage]]["properties"]
        props[p.name] = entry(p, props.get(p.name, {}))
    after = json.dumps(schema, indent=4, ensure_ascii=False) + "\n"
    changed = after != before
    config = config_defaults()
    stale = {
        p.name: (config.get(p.name), groovy(p.default))
        for p in REGISTRY
        if config.get(p.name) != groovy(p.default)
    }
    for name, (old, new) in stale.items():
        print(f"nextflow.config: params.{name} = {old} should be {new}")
    if check:
        if changed:
            print("nextflow_schema.json is out of date: run python tests/nextflow/sync_schema.py")
        return 1 if changed or stale else 0
    if changed:
        SCHEMA.write_text(after)
        print("updated nextflow_schema.json")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
