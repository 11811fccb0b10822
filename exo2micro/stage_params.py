"""Typed, frozen parameters of each stage, resolved once per pair.

:func:`exo2micro.params.resolve` validates a parameter mapping once, at the boundary where it
enters (the Python API, a CLI, a batch task in its worker), and returns :class:`PairParams`:
a read-only mapping ``name → value`` (what fingerprints, file suffixes and records hash and
print) that also carries one frozen dataclass per stage (:attr:`PairParams.load` …
:attr:`PairParams.detect`). A stage reads its own dataclass — ``p.detect.threshold``, never
``values["detect_threshold"]`` — so a misspelt name is an ``AttributeError`` at the line that
makes it, and each stage's signature says which parameters can change its output.

Per-pair image facts (samplesheet columns: pixel sizes, channel, exposure times) are folded
into the views here: :attr:`LoadParams.channel` is the pair's own channel if it has one, else
the batch-wide parameter. ``tests/test_stage_params.py`` checks that every registry parameter
reaches the view of the stage it belongs to.

Units: lengths in px of the full-resolution post frame unless named otherwise, angles in
degrees, pixel sizes in µm, exposure times in s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, TypeVar

_V = TypeVar("_V")

#: Key of a parameter dict under which one pair's image facts are (module docstring).
PAIR_KEY = "pair"
#: Per-pair image facts → the registry parameter each overrides for its pair (and shares type,
#: range and stage with): pixel sizes (µm) of pre and post, channel, exposure times (s).
PAIR_FACTS: dict[str, str] = {"pre_pixel_size_um": "pixel_size_um",
                              "post_pixel_size_um": "pixel_size_um", "channel": "channel",
                              "pre_exposure_s": "pre_exposure_s",
                              "post_exposure_s": "post_exposure_s"}


def effective(values: Mapping[str, Any], fact: str) -> Any:
    """The value of image fact ``fact`` (:data:`PAIR_FACTS`) for this pair: its own value
    when the pair has one, else the batch-wide parameter's (``None``: read from the files)."""
    pair = values.get(PAIR_KEY) or {}
    return pair[fact] if fact in pair else values.get(PAIR_FACTS[fact])


def _pick(cls: type[_V], values: Mapping[str, Any]) -> _V:
    """``cls`` with each field taken from the registry value of the same name."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def _given(values: Mapping[str, Any], fact: str) -> tuple[Any, str | None]:
    """The value of image fact ``fact`` for this pair and where it was given: ``'samplesheet'``
    (the pair's own), ``'parameter'`` (batch-wide) or ``None`` (not given: read the files)."""
    value = effective(values, fact)
    if value is None:
        return None, None
    return value, "samplesheet" if fact in (values.get(PAIR_KEY) or {}) else "parameter"


@dataclass(frozen=True)
class LoadParams:
    """Stage 1 (load). ``pad``: zero border (px) of the output frame; ``channel``: index or OME
    name of the signal channel (``None``: named after the dye, else the strongest);
    ``pixel_size_um``: ``{'pre', 'post'} → (µm, source)``, source as in :func:`_given`;
    ``pair_facts``: the pair's own image facts, for the stage record."""

    pad: int
    channel: str | None
    pixel_size_um: Mapping[str, tuple[float | None, str | None]]
    pair_facts: Mapping[str, Any]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> LoadParams:
        return cls(pad=int(values["pad"]), channel=effective(values, "channel"),
                   pixel_size_um=MappingProxyType(
                       {w: _given(values, f"{w}_pixel_size_um") for w in ("pre", "post")}),
                   pair_facts=MappingProxyType(dict(values.get(PAIR_KEY) or {})))


@dataclass(frozen=True)
class BoundaryParams:
    """Stage 2 (align-boundary): the grid search (rotation in degrees, scale as pre→post
    magnification), the footprint features (px at the search level), the refinement's
    iteration limits and gates (``max_translation`` in full-resolution px), and whether to
    write the stage-2 aligned pre (``save_all_intermediates``, in the frame grown by ``pad``)."""

    use_edges: bool
    boundary_width: int
    boundary_smooth: int
    rotation_search: bool
    angle_range: float
    angle_step: float
    scale_search: bool
    scale_min: float
    scale_max: float
    scale_step: float
    multiscale: bool
    fine_ecc: bool
    max_translation: int
    max_rotation: float
    max_scale_delta: float
    max_scale_diff: float
    stopit: int
    stopdelta: float
    save_all_intermediates: bool
    pad: int


@dataclass(frozen=True)
class InteriorParams:
    """Stage 3 (align-interior): whether to refine at all, the band-pass scale (px), the
    largest correction on top of stage 2 (px), the inlier fraction a fit needs, stage 2's
    rotation range (degrees, for the rotation rescue) and the output frame's ``pad`` (px)."""

    interior_ecc: bool
    interior_blur_base: float
    interior_max_correction: int
    interior_min_inlier_ratio: float
    angle_range: float
    pad: int


@dataclass(frozen=True)
class SubtractParams:
    """Stage 4 (subtract): the k model (``auto``/``global``/``smooth``), the optional extra
    scales (a percentile of log10 post/pre; a fixed k or ``'exposure'``), the exposure times
    (s) given for pre and post (the pair's own, else the parameters; ``None``: from the
    files' OME metadata) and the frame's ``pad`` (px)."""

    k_model: str
    scale_percentile: float | None
    manual_scale: float | str | None
    pre_exposure_s: float | None
    post_exposure_s: float | None
    pad: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SubtractParams:
        return cls(k_model=str(values["k_model"]), scale_percentile=values["scale_percentile"],
                   manual_scale=values["manual_scale"],
                   pre_exposure_s=effective(values, "pre_exposure_s"),
                   post_exposure_s=effective(values, "post_exposure_s"),
                   pad=int(values["pad"]))


@dataclass(frozen=True)
class DetectParams:
    """Stage 5 (detect): the threshold (σ of the matched-filter significance), the fewest
    connected pixels of a source, whether touching sources are deblended, and the frame's
    ``pad`` (px; the catalogue is in the raw post frame)."""

    threshold: float
    min_area: int
    deblend: bool
    pad: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DetectParams:
        return cls(threshold=float(values["detect_threshold"]),
                   min_area=int(values["detect_min_area"]),
                   deblend=bool(values["detect_deblend"]), pad=int(values["pad"]))


class PairParams(Mapping[str, Any]):
    """The validated parameters of one pair (or of a batch before per-pair facts): a read-only
    mapping of every registry name (plus :data:`PAIR_KEY` when the pair has
    image facts) and the typed view of each stage, built once here. Build it with
    :func:`exo2micro.params.resolve`, which returns an instance unchanged."""

    __slots__ = ("_values", "boundary", "detect", "interior", "load", "subtract")

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values: Mapping[str, Any] = MappingProxyType(dict(values))
        self.load = LoadParams.from_values(values)
        self.boundary = _pick(BoundaryParams, values)
        self.interior = _pick(InteriorParams, values)
        self.subtract = SubtractParams.from_values(values)
        self.detect = DetectParams.from_values(values)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __reduce__(self) -> tuple[Any, ...]:
        return PairParams, (dict(self._values),)
