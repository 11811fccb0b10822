"""``result.json``: the one-file answer for a pair (docs/output.md), assembled from stage records.

A pair that ran to the end is ``complete``, or ``needs-review`` when the consistency check of
stage 4 (:mod:`exo2micro.numerics.review`) failed: finished, but its alignment (and so k) is
doubtful; ``review.problems`` says why in plain words.

Written by stage 4 on success and by the orchestrators when a pair fails, so every pair that
was attempted has one. Paths inside are relative to the pair folder.

Its typed form and JSON Schema are in :mod:`exo2micro.io.result_model`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from exo2micro import params as P
from exo2micro.errors import exit_code_for
from exo2micro.io.atomic import write_json_atomic
from exo2micro.io.layout import PairLayout
from exo2micro.io.records import read_record, stage1_physical
from exo2micro.io.result_model import ErrorInfo, PairResult
from exo2micro.numerics.review import problems_in_warnings
from exo2micro.numerics.transform import TransformRecord

#: Status of a finished pair whose consistency check failed.
NEEDS_REVIEW = "needs-review"


def _alignment(layout: PairLayout) -> dict[str, Any]:
    out: dict[str, Any] = {"post_to_pre": None, "residual_field": None,
                           "estimated_accuracy_px": None,
                           "stage2": {"status": "not run"}, "stage3": {"status": "not run"}}
    for stage, path in ((2, layout.boundary_transform()), (3, layout.interior_transform())):
        if not path.is_file():
            continue
        tr = TransformRecord.load(path)
        out[f"stage{stage}"] = {"status": tr.status, "reason": tr.reason,
                                "post_to_pre": tr.post_to_pre.tolist(),
                                "transform": layout.relative(path),
                                **{k: v for k, v in tr.metrics.items()
                                   if k in ("estimated_accuracy_px", "rotation_deg", "scale",
                                            "inlier_ratio", "n_patches", "residual_rms_px",
                                            "overlap_iou")}}
        out["post_to_pre"] = tr.post_to_pre.tolist()
        if stage == 3:
            out["residual_field"] = (tr.residual_field.to_json() if tr.residual_field
                                     else None)
            out["stage3"].update({k: tr.metrics[k] for k in ("residual_model",
                                                               "residual_field_max_px")
                                  if k in tr.metrics})
        if "estimated_accuracy_px" in tr.metrics:
            out["estimated_accuracy_px"] = tr.metrics["estimated_accuracy_px"]
    return out


def _detections(layout: PairLayout) -> dict[str, Any] | None:
    """Stage 5's summary (``n``, ``n_snr5``, ``threshold_sigma``, ``completeness_estimate``,
    ``catalog``, ``per_mm2``) when its record is complete and belongs to the current stage 4
    and parameters, else ``None``."""
    rec = read_record(layout.record(5))
    upstream = read_record(layout.record(4))
    if (rec is None or not rec.is_complete or rec.fingerprint != P.fingerprint(layout.params, 5)
            or rec.upstream_run_id != (upstream.run_id if upstream else None)):
        return None
    found = rec.info.get("detections")
    return found if isinstance(found, dict) else None


def build_result(layout: PairLayout, sample: str, dye: str, status: str,
                 meta: Mapping[str, str] | None = None,
                 error: ErrorInfo | None = None) -> PairResult:
    """Assemble the result of a pair from whatever stage records exist; ``error`` for a
    failed pair."""
    stages: dict[str, Any] = {}
    outputs: list[str] = []
    warnings: list[str] = []
    for stage, name in P.STAGE_NAMES.items():
        rec = read_record(layout.record(stage))
        if rec is None:
            continue
        stages[name] = {"status": rec.status, "timings_s": rec.timings_s,
                        "peak_rss_bytes": rec.peak_rss_bytes}
        outputs.extend(rec.outputs)
        warnings.extend(f"stage {stage}: {w}" for w in rec.warnings)
    found = read_record(layout.record(4))
    sub = found.info if found else {}
    scales = found.section("scales") if found else {}
    review = sub.get("review") if isinstance(sub.get("review"), dict) else None
    flagged = problems_in_warnings(warnings)  # failed checks reported as warnings
    if flagged:
        earlier = list((review or {}).get("problems") or [])
        review = {**(review or {}), "passed": False,
                  "problems": earlier + [p for p in flagged if p not in earlier]}
    if status == "complete" and review and review.get("problems"):
        status = NEEDS_REVIEW
    return PairResult(
        sample=sample,
        dye=dye,
        status=status,
        review=review,
        scale_estimate=scales.get("moffat"),
        scale_percentile_value=scales.get("percentile"),
        manual_scale=scales.get("manual"),
        k_model=sub.get("k_model"),
        scale_range=sub.get("scale_range"),
        scale_map=sub.get("scale_map"),
        pixel_size_um=stage1_physical(layout, "post")["pixel_size_um"],
        exposure=sub.get("exposure"),
        alignment=_alignment(layout),
        params=P.non_default(layout.params),
        suffix=layout.sfx(4),
        fingerprint=P.fingerprint(layout.params, 4),
        stages=stages,
        outputs=outputs,
        warnings=warnings,
        detections=_detections(layout),
        meta=dict(meta or {}),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        error=error,
    )


def write_result(layout: PairLayout, result: PairResult) -> None:
    """Write ``result`` to the pair's ``result.json`` (atomically)."""
    write_json_atomic(layout.result(), result.to_json())


def read_result(layout: PairLayout) -> PairResult:
    """The pair's ``result.json``, checked (:meth:`PairResult.from_json`). Raises ``OSError``
    when it cannot be read and ``ValueError`` when it is not JSON or not a result."""
    return PairResult.from_json(json.loads(layout.result().read_text()),
                                str(layout.result()))


def error_result(layout: PairLayout, sample: str, dye: str, exc: BaseException, *,
                 stage: int | None = None, meta: Mapping[str, str] | None = None,
                 attempts: int | None = None) -> PairResult:
    """Write and return the result of a failed pair: ``status = "error: <reason>"``."""
    result = build_result(layout, sample, dye, error_status(exc), meta,
                          error_info(exc, stage, attempts))
    write_result(layout, result)
    return result


def error_status(exc: BaseException) -> str:
    """``error: <reason>``: the first line of ``exc``'s message, else its class name."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"error: {reason}"


def error_info(exc: BaseException, stage: int | None, attempts: int | None) -> ErrorInfo:
    """The ``error`` of a failed pair's result."""
    return {"class": type(exc).__name__, "stage": stage, "exit_code": exit_code_for(exc),
            "attempts": attempts}
