"""Stage records: the small JSON each stage writes last, and the resume check built on it.

A record lists what the stage did (parameters, fingerprint, outputs, timings, peak RSS,
warnings). It is written atomically *after* every output, so its presence with status
``complete`` means the outputs were complete when it was written. :func:`stage_is_current`
additionally re-checks that each output still exists and reads cleanly, and that the
fingerprint matches the current parameters — the three conditions of SPEC §5 for skipping.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exo2micro import params as P
from exo2micro.atomic import write_json_atomic
from exo2micro.layout import PairLayout, formats
from exo2micro.resources import peak_rss_bytes


def output_ok(path: Path) -> bool:
    """Cheap integrity check of one output by its type (never decodes full images)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    suffix = path.suffix.lower()
    if suffix in {".tif", ".tiff"}:
        from exo2micro.tiffio import check_readable

        return check_readable(path)
    if suffix == ".fits":
        from exo2micro.fitsio import check_readable as fits_ok

        return fits_ok(path)
    if suffix == ".json":
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return True
    return True


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or ``None`` when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stage_is_current(layout: PairLayout, stage: int, checkpoint_format: str | None = None
                     ) -> tuple[bool, str]:
    """Whether stage ``stage`` can be skipped, and why (or why not).

    With ``checkpoint_format``, a stage whose images come in that format (3, 4, and 2 with
    ``save_all_intermediates``) is current only if it wrote every format asked for now: a run
    that asks for FITS after a TIFF-only run writes the FITS files. (TIFF compression is not
    checked: compressed and plain TIFFs hold the same pixels.)
    """
    path = layout.record(stage)
    rec = read_record(path)
    if rec is None:
        return False, "no record"
    if rec.get("status") != "complete":
        return False, f"previous run ended with status {rec.get('status')!r}"
    if rec.get("fingerprint") != P.fingerprint(layout.params, stage):
        return False, "parameters or algorithm changed"
    if stage > 1:
        upstream = read_record(layout.record(stage - 1)) or {}
        if rec.get("upstream_run_id") != upstream.get("run_id"):
            return False, f"stage {stage - 1} was re-run since"
    outputs = rec.get("outputs", [])
    imaged = stage >= 3 or (stage == 2 and layout.params.get("save_all_intermediates"))
    if checkpoint_format is not None and imaged:
        for fmt in formats(checkpoint_format):
            if not any(rel.startswith(f"{fmt}/") for rel in outputs):
                return False, f"no {fmt.upper()} images yet (checkpoint_format {checkpoint_format})"
    for rel in outputs:
        if not output_ok(layout.root / rel):
            return False, f"output {rel} missing or unreadable"
    return True, "outputs present, fingerprint matches, files read cleanly"


@dataclass
class StageRun:
    """Collects what one stage run did, and writes its record when finished."""

    layout: PairLayout
    stage: int
    outputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    @contextmanager
    def timed(self, step: str):  # type: ignore[no-untyped-def]
        """Time a step of the stage into ``timings_s[step]`` (seconds, wall clock)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[step] = round(time.perf_counter() - t, 3)

    def add_outputs(self, paths: Sequence[Path]) -> None:
        self.outputs.extend(Path(p) for p in paths)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def record(self, status: str = "complete", extra: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
        """Write the stage record (last, atomically) and return it."""
        self.timings_s["total"] = round(time.perf_counter() - self._t0, 3)
        rec: dict[str, Any] = {
            "stage": self.stage,
            "name": P.STAGE_NAMES[self.stage],
            "status": status,
            "fingerprint": P.fingerprint(self.layout.params, self.stage),
            "params": P.stage_params(self.layout.params, self.stage),
            "suffix": self.layout.sfx(self.stage),
            "outputs": [self.layout.relative(p) for p in self.outputs],
            "timings_s": self.timings_s,
            "peak_rss_bytes": peak_rss_bytes(),
            "warnings": self.warnings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run_id": uuid.uuid4().hex,
            **self.info,
            **(extra or {}),
        }
        if self.stage > 1:
            upstream = read_record(self.layout.record(self.stage - 1)) or {}
            rec["upstream_run_id"] = upstream.get("run_id")
        write_json_atomic(self.layout.record(self.stage), rec)
        return rec


def require_stage(layout: PairLayout, stage: int) -> dict[str, Any]:
    """The complete record of stage ``stage``, or :class:`InputDataError` saying to run it.

    Stages call this for their upstream stage so a missing input is reported as
    "run stage N first" rather than as a missing file deep inside.
    """
    from exo2micro.errors import InputDataError

    rec = read_record(layout.record(stage))
    if rec is None or rec.get("status") != "complete":
        raise InputDataError(
            f"{layout.root}: stage {stage} ({P.STAGE_NAMES[stage]}) has not completed here "
            f"(no {layout.relative(layout.record(stage))}); run it first")
    return rec
