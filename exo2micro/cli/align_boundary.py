"""``e2m-align-boundary`` / ``exo2micro align-boundary``: stage 2 for one pair
(see :mod:`exo2micro.stages.align_boundary`; the tool is
:func:`exo2micro.cli.common.transform_stage_command`)."""

from __future__ import annotations

from typing import Any

from exo2micro.cli.common import transform_stage_command
from exo2micro.stages.align_boundary import run_align_boundary


def _detail(rec: dict[str, Any]) -> str:
    """The done line's summary: status, rotation and scale."""
    return (f"{rec['transform_status']}, rotation {rec['rotation_deg']:.3f}°, scale "
            f"{rec['scale']:.4f}")


align_boundary = transform_stage_command(
    "align-boundary", 2, run_align_boundary,
    "Stage 2: similarity transform overlaying the tissue footprints (coarse alignment).",
    _detail)
