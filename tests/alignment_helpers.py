"""Shared helpers of the alignment tests: build a synthetic pair, run stages, measure error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exo2micro.io.layout import PairLayout
from exo2micro.numerics.transform import TransformRecord, displacement_stats, grid_points
from exo2micro.params import resolve
from exo2micro.pipeline import run_pair
from exo2micro.synth import SynthSpec, generate_pair, truth_tissue_mask_post


@dataclass
class AlignedPair:
    """A synthetic pair run through stages 1..``to_stage``."""

    spec: SynthSpec
    truth: dict[str, Any]
    layout: PairLayout
    pre: Path
    post: Path

    def transform(self, stage: int) -> TransformRecord:
        path = (self.layout.boundary_transform() if stage == 2
                else self.layout.interior_transform())
        return TransformRecord.load(path)

    def error(self, stage: int, factor: int = 4) -> dict[str, float]:
        """Displacement error (px) of stage ``stage``'s transform over true tissue pixels."""
        xy = grid_points(truth_tissue_mask_post(self.truth, factor), factor)
        return displacement_stats(self.transform(stage).post_to_pre,
                                  np.asarray(self.truth["post_to_pre"]), xy)


def make_aligned(tmp: Path, *, to_stage: int = 3, params: dict[str, Any] | None = None,
                 **spec_kw: Any) -> AlignedPair:
    """Generate a pair under ``tmp/raw`` and run it to ``to_stage`` in ``tmp/out``."""
    spec_kw.setdefault("width", 1200)
    spec_kw.setdefault("height", 1000)
    spec = SynthSpec(**spec_kw)
    res = generate_pair(spec, tmp / "raw")
    pair_dir = tmp / "out" / spec.sample / spec.dye
    run_pair(spec.sample, spec.dye, res.pre_path, res.post_path, pair_dir, params=params,
             to_stage=to_stage, threads=2)
    assert res.post_path is not None
    return AlignedPair(spec, res.truth, PairLayout(pair_dir, resolve(params)), res.pre_path,
                       res.post_path)
