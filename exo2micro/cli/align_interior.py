"""``e2m-align-interior`` / ``exo2micro align-interior``: stage 3 for one pair
(see :mod:`exo2micro.stages.align_interior`; the tool is
:func:`exo2micro.cli.common.transform_stage_command`)."""

from __future__ import annotations

from typing import Any

from exo2micro.cli.common import transform_stage_command
from exo2micro.stages.align_interior import run_align_interior


def _detail(rec: dict[str, Any]) -> str:
    """The done line's summary: status and estimated accuracy."""
    return (f"{rec['transform_status']}, estimated accuracy "
            f"{rec['estimated_accuracy_px']:.3f} px")


align_interior = transform_stage_command(
    "align-interior", 3, run_align_interior,
    "Stage 3: sub-pixel refinement from interior texture, then warp pre into the post frame.",
    _detail)
