"""The transform JSON read back: what a stage wrote comes back unchanged, and a file of the
wrong shape is refused with a message naming the file and the key (exit 65 upstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exo2micro.errors import InputDataError
from exo2micro.numerics.transform import TransformRecord

EYE = np.eye(3).tolist()


def test_a_written_transform_reads_back_unchanged(tmp_path: Path) -> None:
    rec = TransformRecord(np.array([[0.99, -0.05, 30.0], [0.05, 0.99, -12.0], [0, 0, 1.0]]),
                          "ok", 3, {"n_patches": 26, "patch_px": 128}, "")
    path = tmp_path / "03_interior.json"
    rec.save(path)
    again = TransformRecord.load(path)
    assert again.to_json() == rec.to_json()
    assert json.dumps(again.to_json()) == json.dumps(json.loads(path.read_text()))


@pytest.mark.parametrize(("data", "message"), [
    ({"post_to_pre": EYE, "stage": "3"}, r"x\.json: stage: expected an integer, found a string"),
    ({"post_to_pre": EYE, "metrics": [1]}, r"x\.json: metrics: expected an object"),
    ({"post_to_pre": EYE, "status": None}, r"x\.json: status: expected a string, found null"),
    ({"post_to_pre": [[1, 0, 0], [0, 1, 0], [0, 0, "x"]]},
     r"x\.json: post_to_pre\[2\]\[2\]: expected a number"),
    ({"post_to_pre": [[1, 0, 0], [0, 1, 0]]}, "finite 3×3 matrix"),
    ({"stage": 3}, "no post_to_pre"),
    ([EYE], "no post_to_pre"),
])
def test_a_transform_of_the_wrong_shape_is_refused_naming_the_key(data: Any,
                                                                  message: str) -> None:
    with pytest.raises(InputDataError, match=message):
        TransformRecord.from_json(data, "x.json")
