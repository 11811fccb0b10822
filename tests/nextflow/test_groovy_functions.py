"""The Groovy helper functions of main.nf and workflows/exo2micro.nf, run with real Groovy.

They are evaluated (render.groovy, one JVM) from their source as dumped by the checker, with a
stand-in for Nextflow's file(); this checks what they compute, not only that they parse.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from exo2micro.errors import RETRY_EXIT_CODES
from exo2micro.params import REGISTRY

from .conftest import JAVA_OPTIONS, REPO

RENDER = Path(__file__).with_name("render.groovy")


class Renderer:
    """render.groovy as a server: one JVM, one JSON request/answer per line."""

    def __init__(self, jar: Path) -> None:
        self.proc = subprocess.Popen(
            ["java", *JAVA_OPTIONS, "-cp", str(jar.resolve()), "groovy.ui.GroovyMain", str(RENDER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def render(self, functions: list[str], script: str, binding: dict[str, Any]) -> str:
        assert self.proc.stdin and self.proc.stdout
        request = {"functions": functions, "script": script, "binding": binding}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"rendering failed: {answer['error']}")
        return answer["script"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

# Nextflow's file(path, checkIfExists: true) for plain Groovy.
FILE_STANDIN = """
def file(Map options, Object path) {
    def p = java.nio.file.Paths.get(path.toString())
    if (options.checkIfExists && !java.nio.file.Files.exists(p)) {
        throw new IllegalArgumentException("no such file: ${p}")
    }
    return p
}
def file(Object path) { new File(path.toString()) }
"""


@pytest.fixture(scope="module")
def groovy(project_dump: dict, language_server_jar: Path):
    renderer = Renderer(language_server_jar)
    functions = [FILE_STANDIN] + [
        f["source"]
        for f in project_dump["functions"]
        if f["file"] in ("main.nf", "workflows/exo2micro.nf", "modules/local/utils.nf",
                         "modules/local/constants.nf")
    ]

    def call(expression: str, **binding):
        script = f"groovy.json.JsonOutput.toJson({expression})"
        return json.loads(renderer.render(functions, script, binding))

    yield call
    renderer.close()


def defaults() -> dict:
    config = {p.name: p.default for p in REGISTRY}
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            config.setdefault(name, spec.get("default"))
    return config


def test_stage_parameters_cascade(groovy) -> None:
    result = groovy("stageParameters(p)", p=defaults())
    for stage in range(1, 5):
        expected = {p.name: p.default for p in REGISTRY if p.stage <= stage}
        assert result[str(stage)] == expected, f"stage {stage}"


def test_validate_parameters_accepts_the_defaults(groovy) -> None:
    schema = str(REPO / "nextflow_schema.json")
    assert groovy("validateParameters(p, new File(s))", p=defaults(), s=schema) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"boundary_widht": 20},
         "unknown parameter --boundary_widht (did you mean --boundary_width?); valid parameters: "),
        ({"boundary-width": 20}, "unknown parameter --boundary-width"),
        ({"boundary_width": 0}, "--boundary_width = 0 is below the minimum 1"),
        ({"scale_max": 9.5}, "--scale_max = 9.5 is above the maximum"),
        ({"stopit": 2.5}, "--stopit must be of type integer"),
        ({"use_edges": "yes"}, "--use_edges must be of type boolean"),
        (
            {"checkpoint_format": "png"},
            "--checkpoint_format = 'png' is not one of tiff, fits, both, tiff-zstd",
        ),
        ({"max_retries": -1}, "--max_retries = -1 is below the minimum 0"),
    ],
)
def test_validate_parameters_rejects(groovy, change: dict, message: str) -> None:
    schema = str(REPO / "nextflow_schema.json")
    errors = groovy("validateParameters(p, new File(s))", p={**defaults(), **change}, s=schema)
    assert any(message in e for e in errors), errors


def test_camel_case_variants_are_not_unknown(groovy) -> None:
    """Nextflow adds `boundaryWidth` next to `boundary_width`-style names; they are not errors."""
    schema = str(REPO / "nextflow_schema.json")
    params = {**defaults(), "maxRetries": 2}
    assert groovy("validateParameters(p, new File(s))", p=params, s=schema) == []


def test_pair_from_row(groovy, tmp_path: Path) -> None:
    real = tmp_path / "raw"
    real.mkdir()
    (real / "a_pre_DAPI.tif").write_bytes(b"x")
    (real / "a_post_DAPI.tif").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(real)
    row = {
        "sample": "CD070",
        "dye": "DAPI",
        "pre": str(link / "a_pre_DAPI.tif"),
        "post": str(link / "a_post_DAPI.tif"),
        "mem_bytes": "1.5e9",
        "time_s": "12.2",
        "site": "core 3",
        "pixel_size_um": "0.5",
        "post_exposure_s": "",
    }
    meta, pre, post = groovy(
        "pairFromRow(r, '0.1.0+abc').collect { v -> v instanceof Map ? v : v.toString() }", r=row
    )
    assert meta == {
        "id": "CD070/DAPI",
        "sample": "CD070",
        "dye": "DAPI",
        "code": "0.1.0+abc",
        "mem_bytes": 1500000000,
        "time_s": 13,
        "extra": {"site": "core 3", "pixel_size_um": "0.5", "post_exposure_s": ""},
        # the image columns given (not empty): every stage tool takes them
        "image": {"pixel_size_um": "0.5"},
    }
    # the real location, not the link it was found through
    assert pre == str(real / "a_pre_DAPI.tif") and post == str(real / "a_post_DAPI.tif")


def test_image_options_give_every_fact_as_a_quoted_tool_option(groovy) -> None:
    meta = {"image": {"pixel_size_um": "0.5", "channel": "Cy5's", "post_exposure_s": "2"}}
    assert groovy("imageOptions(m)", m=meta) == (
        "--pixel-size-um '0.5' --channel 'Cy5'\\''s' --post-exposure-s '2'")
    assert groovy("imageOptions(m)", m={"id": "S/D"}) == ""


def test_merge_state(groovy) -> None:
    meta = {"id": "S/D"}
    previous = [meta, ["t1", "t2"], ["c1"], [], [], [], "s1"]
    new = [meta, ["t3"], [], [], ["x2"], ["p2"], "s2"]
    merged = groovy("mergeState(a + b.subList(1, 7))", a=previous, b=new)
    assert merged == [meta, ["t1", "t2", "t3"], ["c1"], [], ["x2"], ["p2"], ["s1", "s2"]]


def test_failure_rows(groovy, tmp_path: Path) -> None:
    record = tmp_path / "failure.tsv"
    record.write_text("65\t1\terror: raw_post/x.tif: file is truncated\n")
    meta = {"sample": "S01", "dye": "DAPI"}
    row = groovy("recordedFailureRow(m, 1, new File(f))", m=meta, f=str(record)).split("\t")
    assert row == ["S01", "DAPI", "1", "65", "1", "load failed: raw_post/x.tif: file is truncated"]
    row = groovy("killedRow(m, 2, 2)", m=meta).split("\t")
    assert row[:5] == ["S01", "DAPI", "3", "", "3"]
    assert "align_interior did not finish" in row[5] and "-resume" in row[5]
    header = groovy("failureHeader()").split("\t")
    assert header == ["sample", "dye", "stage", "exit_code", "attempts", "reason"]


def _error_strategies() -> list[str]:
    """The errorStrategy closures of conf/base.config: process-wide, then process_pair."""
    import re

    text = (REPO / "conf" / "base.config").read_text()
    found = re.findall(r"errorStrategy\s*=\s*(\{.*?\})\n", text)
    assert len(found) == 2, found
    return found


def _retry_exit_codes(project_dump: dict, groovy) -> list[int]:
    """process.ext.retry_exit_codes as conf/constants.config sets it, evaluated by Groovy."""
    (value,) = [e["value"] for e in project_dump["config"]
                if e["path"] == "process.ext.retry_exit_codes"]
    return groovy(value)


@pytest.mark.parametrize("attempt", [1, 2, 3])
@pytest.mark.parametrize("exit_status", [1, 2, 65, 70, 104, 125, 127, 130, 137, 140, 143, 145,
                                         146, 175, 255])
def test_error_strategy_for_every_exit_code_and_attempt(
    groovy, project_dump: dict, exit_status: int, attempt: int
) -> None:
    """The closures evaluated by Groovy with max_retries = 2 (3 attempts) and the task's
    ext.retry_exit_codes of conf/constants.config: the pair stages retry every failure, then
    ignore a pair killed on its last attempt and stop the run for anything else; the batch tasks
    retry only the kill codes (docs/usage.md, "Retries")."""
    process_wide, pair = _error_strategies()
    ext = {"retry_exit_codes": _retry_exit_codes(project_dump, groovy)}
    task = {"exitStatus": exit_status, "attempt": attempt, "ext": ext}
    params = {"max_retries": 2}
    killed = exit_status in RETRY_EXIT_CODES
    got_pair = groovy(f"({pair})()", task=task, params=params)
    got_batch = groovy(f"({process_wide})()", task=task, params=params)
    last = attempt > 2
    assert got_pair == ("retry" if not last else "ignore" if killed else "finish")
    assert got_batch == ("retry" if killed and not last else "finish")
