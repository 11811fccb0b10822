"""The typed form of ``result.json`` (built from the stage records by
:mod:`exo2micro.report.result`).

:class:`PairResult` is the JSON object of one pair: :meth:`PairResult.to_json` is what is
written, :meth:`PairResult.from_json` checks a file read back (the batch summary, resume) and
raises :class:`exo2micro.io.contracts.ContractError` naming the first key of the wrong type.
:func:`json_schema` is its JSON Schema, in docs/output.md (``exo2micro schema --markdown``).
Light to import (no numpy): the batch summary reads results through it.

Schema versions: a file without ``schema_version`` is version 1 (every ``result.json`` written
so far, whose bytes stay as they were). A version that changes the meaning or type of a key
writes ``schema_version``; a reader refuses versions newer than :data:`SCHEMA_VERSION` with a
message saying so. Adding keys needs no new version: readers keep keys they do not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, TypedDict

from exo2micro.io.contracts import check_version, load_fields
from exo2micro.io.contracts import json_schema as contract_schema

#: The ``result.json`` schema version this package writes and reads (see the module docstring).
SCHEMA_VERSION = 1

Matrix = Annotated[list[list[float]], "3x3 post_to_pre matrix, raw pixel coordinates"]


class Review(TypedDict, total=False):
    """Stage 4's consistency check (exo2micro.numerics.review)."""

    passed: bool
    problems: Annotated[list[str], "why the pair needs review, in plain words"]
    texture_correlation: Annotated[float | None, "texture correlation post / aligned pre"]


class Exposure(TypedDict, total=False):
    """Exposure times and what they explain of k."""

    pre_s: Annotated[float | None, "pre exposure time, s"]
    post_s: Annotated[float | None, "post exposure time, s"]
    ratio: Annotated[float | None, "post / pre exposure time"]
    k_net_of_exposure: Annotated[float | None, "Moffat k / ratio"]


class AlignmentStage(TypedDict, total=False):
    """One alignment stage's transform (``transforms/``) and its metrics."""

    status: Annotated[str, "ok, fallback, ..."]
    reason: Annotated[str, "why a fallback was kept ('' when none)"]
    post_to_pre: Matrix
    transform: Annotated[str, "path of the transform JSON"]
    estimated_accuracy_px: Annotated[float | None, "px"]
    rotation_deg: Annotated[float | None, "degrees"]
    scale: Annotated[float | None, "post px per pre px"]
    inlier_ratio: float | None
    n_patches: int
    residual_rms_px: Annotated[float | None, "px"]
    overlap_iou: float | None
    residual_model: Any
    residual_field_max_px: Annotated[float | None, "px"]


class Alignment(TypedDict, total=False):
    """The final transform pre -> post and the two alignment stages."""

    post_to_pre: Matrix | None
    residual_field: Annotated[dict[str, Any] | None,
                              "the non-rigid part (null for an affine pair)"]
    estimated_accuracy_px: Annotated[float | None, "px"]
    stage2: AlignmentStage
    stage3: AlignmentStage


class StageSummary(TypedDict, total=False):
    """What one stage's record says (stages/)."""

    status: str | None
    timings_s: Annotated[dict[str, float], "s per step; 'total' the whole stage"]
    peak_rss_bytes: Annotated[int | None, "bytes"]


class Detections(TypedDict, total=False):
    """Stage 5's summary."""

    n: Annotated[int, "sources"]
    n_snr5: Annotated[int, "sources with SNR >= 5"]
    threshold_sigma: Annotated[float, "detect_threshold"]
    completeness_estimate: Annotated[float | None, "fraction of injected sources recovered"]
    catalog: Annotated[str, "path of the CSV"]
    per_mm2: Annotated[float | None, "sources per mm² of tissue (null without a pixel size)"]


ErrorInfo = TypedDict("ErrorInfo", {
    "class": Annotated[str, "exception class"],
    "stage": Annotated[int | None, "the stage that failed"],
    "exit_code": Annotated[int | None, "exit code of a stage tool for this error"],
    "attempts": Annotated[int | None, "tries so far"],
}, total=False)
ErrorInfo.__doc__ = "Why a pair failed (error results only)."


class Runner(TypedDict, total=False):
    """How the local runner ran the pair (absent for the stage tools)."""

    mode: str
    attempts: Annotated[int | None, "tries so far"]
    last_stage: Annotated[int | None, "the stage the run was asked to reach"]
    wall_s: Annotated[float | None, "wall time of the run, s"]


@dataclass
class PairResult:
    """``result.json``: the typed form of the file, its keys in the order written.

    Only ``sample``, ``dye`` and ``status`` are required when reading (the summary takes
    ``sample`` and ``dye`` from the pair folder when missing); other keys that are missing
    read as their defaults.
    ``error`` and ``runner`` are written only when set; ``extra`` keeps keys this version does
    not declare (written last, in their order).
    """

    sample: str
    dye: str
    status: Annotated[str, "complete, needs-review or 'error: <reason>'"]
    review: Review | None = None
    scale_estimate: Annotated[float | None, "Moffat k (median over the tissue when k varies)"] \
        = None
    scale_percentile_value: Annotated[float | None, "k of scale_percentile"] = None
    manual_scale: Annotated[float | None, "k of manual_scale"] = None
    k_model: Annotated[str | None, "global or smooth: the model of k stage 4 used"] = None
    scale_range: Annotated[list[float] | None, "[min, max] of k over the tissue"] = None
    scale_map: Annotated[str | None, "path of the k map (null for one k)"] = None
    pixel_size_um: Annotated[float | None, "µm, post frame (null when unknown)"] = None
    exposure: Exposure | None = None
    alignment: Alignment | None = None
    params: Annotated[dict[str, Any], "the non-default parameters"] = field(default_factory=dict)
    suffix: Annotated[str | None, "file-name suffix of stage 4's parameters"] = None
    fingerprint: Annotated[str | None, "stage 4's parameter fingerprint"] = None
    stages: Annotated[dict[str, StageSummary], "by stage name"] = field(default_factory=dict)
    outputs: Annotated[list[str], "relative to the pair folder"] = field(default_factory=list)
    warnings: Annotated[list[str], "'stage N: ...'"] = field(default_factory=list)
    detections: Annotated[Detections | None, "null until stage 5 ran"] = None
    meta: Annotated[dict[str, str], "extra samplesheet columns, --meta"] = \
        field(default_factory=dict)
    created: Annotated[str | None, "local time, %Y-%m-%dT%H:%M:%S%z"] = None
    error: ErrorInfo | None = None
    runner: Runner | None = None
    schema_version: Annotated[int, "absent in version 1"] = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    #: Keys written only when not ``None``.
    _OPTIONAL = ("error", "runner")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``result.json`` (values shared, not copied)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("extra", "schema_version")
               and not (f.name in self._OPTIONAL and getattr(self, f.name) is None)}
        if self.schema_version != 1:
            out["schema_version"] = self.schema_version
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Any, what: str = "result.json") -> PairResult:
        """Check parsed ``result.json`` and return its typed form; ``what`` names the file in
        messages. Raises :class:`ContractError` (a ``ValueError``) for a value of the wrong
        type, a missing ``status`` or a schema version newer than :data:`SCHEMA_VERSION`."""
        found = load_fields(cls, data, what)
        check_version(found.get("schema_version", 1), SCHEMA_VERSION, what)
        return cls(**found)

    @property
    def is_written(self) -> bool:
        """Whether this result belongs in a ``result.json`` (the pair's parameters were
        known: a failure before that has only the in-memory result)."""
        return self.fingerprint is not None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``result.json`` (docs/output.md)."""
    return contract_schema(PairResult, "result.json",
                           "What happened to one pair (exo2micro.io.result_model.PairResult).")
