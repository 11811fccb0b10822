"""The parameter registry: names, defaults, filename abbreviations, types, ranges, help.

Every tunable of the public exo2micro is accepted under its own name (README, "Parameters"). Values
are
validated for type and range; unknown names are rejected with the list of valid ones.

Filename suffixes
-----------------
A checkpoint of stage *k* carries the non-default parameters of stages ≤ *k* as
``_<abbr><value>`` tokens in registry order (e.g. ``_bw20_rsFalse``). :func:`suffix` builds it
and :func:`params_from_suffix` parses it back; the round trip is exact for every parameter.

Fingerprints
------------
:func:`fingerprint` hashes the *effective* values of the parameters that can change stage *k*'s
output (those of stages ≤ *k*, minus the ones that are accepted but ignored) together with the
stage's algorithm version, so a resume re-runs a stage exactly when its result could differ.

Per-pair image facts
--------------------
A parameter dict may hold, under :data:`PAIR_KEY`, one pair's own image facts (samplesheet
columns, docs/usage.md): the pixel size of its pre and of its post image, its channel and its
exposure times (:data:`PAIR_FACTS`). Each overrides, for that pair only, the registry parameter
it is named after (:func:`exo2micro.stage_params.effective`). They are facts about the pair's
images, not settings, so they enter the fingerprint of the stage that reads them and of every
later stage, never a file suffix: a corrected pixel size re-runs the pair from stage 1 under
the same file names.

Typed parameters
----------------
:func:`resolve` returns :class:`~exo2micro.stage_params.PairParams`: the values as a read-only
mapping (what fingerprints and suffixes hash) with one frozen dataclass per stage, which is
what the stages read.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exo2micro.errors import ParameterError
from exo2micro.stage_params import PAIR_FACTS, PAIR_KEY, PairParams

#: Bumped when a stage's algorithm changes its output for the same parameters, so that resumed
#: runs recompute it.
ALGORITHM_VERSION: dict[int, int] = {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}

STAGE_NAMES: dict[int, str] = {1: "load", 2: "align_boundary", 3: "align_interior", 4: "subtract",
                              5: "detect"}


@dataclass(frozen=True)
class Param:
    """One tunable parameter.

    ``kind`` is ``bool``, ``int``, ``float`` or ``str``; ``low``/``high`` bound numeric values
    (inclusive); ``optional`` allows ``None``; ``words`` are strings a numeric parameter also
    accepts (``manual_scale=exposure``). ``ignored`` marks a reference parameter that our
    design does not use: it is accepted, reported once, and leaves outputs unchanged.
    """

    name: str
    default: Any
    abbr: str
    stage: int
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    optional: bool = False
    ignored: bool = False
    words: tuple[str, ...] = ()


REGISTRY: tuple[Param, ...] = (
    # --- stage 1: load
    Param("pad", 0, "pad", 1, int,
          "Zero border (px) added on every side of the output frame; 0 keeps outputs in the raw "
          "post pixel frame (exo2micro 2.4 defaulted to 2000).", 0, 20000),
    # --- stage 2: align-boundary (coarse similarity from tissue footprints)
    Param("use_edges", True, "ue", 2, bool,
          "Match the tissue boundary band rather than the filled footprint."),
    Param("boundary_width", 15, "bw", 2, int,
          "Width (px at coarse resolution) of the boundary band matched by stage 2.", 1, 200),
    Param("boundary_smooth", 10, "bs", 2, int,
          "Smoothing (px at coarse resolution) of the tissue mask before its boundary is taken.",
          0, 200),
    Param("rotation_search", True, "rs", 2, bool,
          "Search rotations within ±angle_range; if False, rotation starts at 0."),
    Param("angle_range", 20.0, "ar", 2, float, "Half-width (degrees) of the rotation search.",
          0.0, 180.0),
    Param("angle_step", 1.0, "astep", 2, float,
          "Step (degrees) of the rotation grid; the result is refined beyond the grid.",
          0.05, 45.0),
    Param("scale_search", True, "ss", 2, bool,
          "Search isotropic scale in [scale_min, scale_max]; if False, scale is fixed at 1."),
    Param("scale_min", 0.85, "smin", 2, float, "Smallest pre→post magnification searched.",
          0.2, 5.0),
    Param("scale_max", 1.15, "smax", 2, float, "Largest pre→post magnification searched.",
          0.2, 5.0),
    Param("scale_step", 0.05, "sstep", 2, float,
          "Step of the scale grid; the result is refined beyond the grid.", 0.001, 0.5),
    Param("multiscale", True, "ms", 2, bool,
          "Coarse-to-fine refinement over the alignment pyramid after the grid search."),
    Param("down_scale", 0.3, "ds", 2, float,
          "Accepted for compatibility and ignored: stage 2 works on the stage-1 pyramid at a "
          "size chosen from the image (≈1000 px).", 0.01, 1.0, ignored=True),
    Param("fine_ecc", False, "fecc", 2, bool,
          "Finish stage 2 with an intensity (ECC) refinement on the coarse footprints."),
    Param("max_translation", 200, "mtr", 2, int,
          "Largest displacement (px, full resolution) of any tissue pixel that stage 2's "
          "refinement may add to the grid-search result, beyond the grid's own resolution.",
          0, 100000),
    Param("max_rotation", 5.0, "mrot", 2, float,
          "Largest rotation (degrees) the refinement may add to the grid-search result.",
          0.0, 180.0),
    Param("max_scale_delta", 0.2, "msd", 2, float,
          "Largest relative scale change the refinement may add to the grid-search result.",
          0.0, 2.0),
    Param("max_scale_diff", 0.15, "msdf", 2, float,
          "Largest |scale − 1| accepted for the final stage-2 transform.", 0.0, 4.0),
    Param("stopit", 500, "sit", 2, int, "Iteration limit of the iterative refinements.", 1, 100000),
    Param("stopdelta", 1e-6, "sdl", 2, float, "Convergence threshold of the iterative refinements.",
          1e-12, 1.0),
    Param("save_all_intermediates", False, "sai", 2, bool,
          "Also write the stage-2 aligned pre image (02_icp_aligned_pre) and extra plots."),
    # --- stage 3: align-interior (sub-pixel refinement from interior texture)
    Param("interior_ecc", True, "iecc", 3, bool,
          "Refine stage 2 with local full-resolution measurements of interior texture; if "
          "False, stage 2's transform is final."),
    Param("interior_blur_base", 8.0, "iblur", 3, float,
          "Scale (px) of the band-pass filter applied to interior texture before matching.",
          0.5, 200.0),
    Param("interior_max_correction", 500, "imc", 3, int,
          "Largest displacement (px) of any tissue pixel stage 3 may apply on top of stage 2.",
          0, 100000),
    Param("interior_min_inlier_ratio", 0.4, "imir", 3, float,
          "Smallest fraction of local measurements that must agree with the fitted transform.",
          0.0, 1.0),
    # --- stage 4: subtract
    Param("scale_percentile", None, "sp", 4, float,
          "Also subtract with k = 10^percentile(log10 post/pre) at this percentile.", 0.0, 100.0,
          optional=True),
    Param("manual_scale", None, "msc", 4, float,
          "Also subtract with this fixed k, or with 'exposure': the post/pre exposure-time "
          "ratio.", 1e-6, 1e6, optional=True, words=("exposure",)),
    Param("k_model", "auto", "km", 4, str,
          "How k may vary across the field: 'smooth' fits a smooth map of k to per-tile "
          "estimates and subtracts with it, 'global' uses one k, 'auto' the map only when the "
          "tiles show that k varies significantly (docs/output.md).",
          words=("auto", "global", "smooth")),
    # --- stage 5: detect
    Param("detect_threshold", 4.8, "dth", 5, float,
          "Detection threshold (σ) on the matched-filter significance of the difference image "
          "(the larger of two Gaussian kernels, σ 2.5 and 5 px); 4.8 gives ≈ 0.3 false "
          "detections per Mpx of tissue on synthetic pairs.", 1.0, 100.0),
    Param("detect_min_area", 5, "dma", 5, int,
          "Fewest connected pixels above the threshold that make a source.", 1, 10000),
    Param("detect_deblend", True, "ddb", 5, bool,
          "Split touching sources with several peaks (multi-threshold deblending)."),
    # --- image metadata (issue #20): physical pixel size, channel, exposure times
    Param("pixel_size_um", None, "px", 1, float,
          "Physical pixel size (µm) of both raw images, overriding what their metadata says "
          "(OME-XML, ImageJ, resolution tags); None: read from the files.", 1e-4, 1e4,
          optional=True),
    Param("channel", None, "ch", 1, str,
          "The raw images' signal channel: an index (0, 1, …) or an OME channel name (letters, "
          "digits, . + -); None: the channel named after the dye, else the strongest.",
          optional=True),
    Param("pre_exposure_s", None, "pexp", 4, float,
          "Exposure time (s) of the pre image, overriding its OME-XML.", 1e-9, 1e5,
          optional=True),
    Param("post_exposure_s", None, "qexp", 4, float,
          "Exposure time (s) of the post image, overriding its OME-XML.", 1e-9, 1e5,
          optional=True),
)

BY_NAME: dict[str, Param] = {p.name: p for p in REGISTRY}
BY_ABBR: dict[str, Param] = {p.abbr: p for p in REGISTRY}
DEFAULTS: dict[str, Any] = {p.name: p.default for p in REGISTRY}

_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def _coerce(param: Param, value: Any) -> Any:
    """Convert ``value`` (a Python value or a string from a CLI/suffix) to ``param``'s type."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", ""}):
        if param.optional:
            return None
        raise ParameterError(f"parameter {param.name!r} cannot be None ({param.help})")
    if isinstance(value, str) and value.strip().lower() in param.words:
        return value.strip().lower()
    if param.kind is str:
        if param.words:  # a choice: only its words (matched above) are accepted
            raise ParameterError(f"parameter {param.name!r} = {value!r} must be one of "
                                 f"{', '.join(param.words)} ({param.help})")
        text = str(value).strip()
        if not re.fullmatch(r"[A-Za-z0-9.+-]+", text):
            raise ParameterError(f"parameter {param.name!r} = {value!r} must be letters, "
                                 f"digits, '.', '+' or '-' ({param.help})")
        return text
    if param.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ParameterError(f"parameter {param.name!r} must be true or false, got {value!r}")
    if isinstance(value, bool):
        raise ParameterError(f"parameter {param.name!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        kind = "an integer" if param.kind is int else "a number"
        raise ParameterError(f"parameter {param.name!r} must be {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise ParameterError(f"parameter {param.name!r} must be finite, got {value!r}")
    if param.kind is int:
        if number != int(number):
            raise ParameterError(f"parameter {param.name!r} must be an integer, got {value!r}")
        number = int(number)
    if (param.low is not None and number < param.low) or (
            param.high is not None and number > param.high):
        raise ParameterError(
            f"parameter {param.name!r} = {value!r} is out of range "
            f"[{_fmt(param.low)}, {_fmt(param.high)}]: {param.help}")
    return number


def _fmt(v: float | None) -> str:
    return "-inf" if v is None else format(v, "g")


def resolve_pair(facts: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate one pair's image facts (:data:`PAIR_FACTS`): each is checked like the parameter
    it overrides, ``None`` values are dropped. Raises :class:`ParameterError` naming the fact."""
    if facts is None:
        return {}
    if not isinstance(facts, Mapping):
        raise ParameterError(f"{PAIR_KEY!r} must map image facts ({', '.join(PAIR_FACTS)}) to "
                             f"values, got {facts!r}")
    unknown = sorted(set(facts) - set(PAIR_FACTS))
    if unknown:
        raise ParameterError(f"unknown per-pair image fact(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(PAIR_FACTS)}")
    out: dict[str, Any] = {}
    for name, value in facts.items():
        base = BY_NAME[PAIR_FACTS[name]]
        try:
            coerced = _coerce(base, value)
        except ParameterError as exc:
            raise ParameterError(f"per-pair {name}: {exc}") from None
        if coerced is not None:
            out[name] = coerced
    return out


def resolve(overrides: Mapping[str, Any] | None = None) -> PairParams:
    """Return the full, validated parameters: defaults updated with ``overrides``, with the
    typed view of each stage (:class:`~exo2micro.stage_params.PairParams`). Resolved
    parameters are returned unchanged, so a function may accept either.

    Raises :class:`ParameterError` naming the offending parameter; an unknown name lists every
    valid one. Cross-parameter rules (``scale_min <= scale_max``) are checked too.
    """
    if isinstance(overrides, PairParams):
        return overrides
    values = dict(DEFAULTS)
    unknown = sorted(set(overrides or {}) - set(BY_NAME) - {PAIR_KEY})
    if unknown:
        from exo2micro.suggest import closest

        named = [f"{name} (did you mean {near}?)" if (near := closest(name, BY_NAME)) else name
                 for name in unknown]
        raise ParameterError(
            f"unknown parameter(s) {', '.join(named)}; valid names: {', '.join(BY_NAME)}")
    for name, value in (overrides or {}).items():
        if name == PAIR_KEY:
            facts = resolve_pair(value)
            if facts:
                values[PAIR_KEY] = facts
        else:
            values[name] = _coerce(BY_NAME[name], value)
    if values["scale_min"] > values["scale_max"]:
        raise ParameterError(
            f"scale_min ({values['scale_min']:g}) must not exceed scale_max "
            f"({values['scale_max']:g})")
    check_grid(values)
    return PairParams(values)


#: Most rotation × scale cells stage 2's grid search may try. The defaults need 41 × 7 = 287;
#: each cell costs one FFT correlation at the search level (≈1000 px), so the cap bounds
#: stage 2 to roughly 70 times its default time instead of days.
MAX_GRID_CELLS = 20_000


def _grid_count(low: float, high: float, step: float) -> int:
    """Values of stage 2's grid from ``low`` to ``high`` by ``step`` (``high`` included)."""
    n = max(0, math.floor((high - low) / step + 1e-9))
    return n + 1 + (1 if low + step * n < high - 1e-9 else 0)


def grid_cells(values: Mapping[str, Any]) -> tuple[int, int]:
    """``(rotations, scales)`` that stage 2's grid search tries for resolved ``values``."""
    angles = (_grid_count(-values["angle_range"], values["angle_range"], values["angle_step"])
              if values["rotation_search"] else 1)
    scales = (_grid_count(values["scale_min"], values["scale_max"], values["scale_step"])
              if values["scale_search"] else 1)
    return angles, scales


def check_grid(values: Mapping[str, Any]) -> None:
    """Refuse a stage-2 grid larger than :data:`MAX_GRID_CELLS` (it would run for days)."""
    angles, scales = grid_cells(values)
    if angles * scales > MAX_GRID_CELLS:
        raise ParameterError(
            f"stage 2's grid search would try {angles * scales} rotation × scale cells "
            f"({angles} rotations from angle_range={values['angle_range']:g}, "
            f"angle_step={values['angle_step']:g} × {scales} scales from "
            f"scale_min={values['scale_min']:g}..scale_max={values['scale_max']:g}, "
            f"scale_step={values['scale_step']:g}), more than the limit of {MAX_GRID_CELLS}; "
            f"raise angle_step or scale_step, or narrow angle_range or scale_min..scale_max "
            f"(the result is refined beyond the grid)")


def ignored_notices(values: Mapping[str, Any]) -> list[str]:
    """One line per accepted-but-ignored parameter that was set to a non-default value."""
    return [f"parameter {p.name}={values[p.name]!r} is accepted for compatibility and ignored: "
            f"{p.help}" for p in REGISTRY if p.ignored and values.get(p.name) != p.default]


def non_default(values: Mapping[str, Any], max_stage: int = 4) -> dict[str, Any]:
    """The parameters of stages ≤ ``max_stage`` whose value differs from the default."""
    return {p.name: values[p.name] for p in REGISTRY
            if p.stage <= max_stage and p.name in values and values[p.name] != p.default}


def format_value(value: Any) -> str:
    """Format a parameter value for a filename suffix (shortest exact round-trip form)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, str)):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


#: Longest suffix (characters) spelled out; a longer one becomes ``_H<12 hex digits>`` so
#: that every output name stays far below the 255-byte limit of a file name.
MAX_SUFFIX = 120
HASHED_MARK = "H"


def spelled_suffix(values: Mapping[str, Any], stage: int) -> str:
    """The suffix of :func:`suffix` spelled out in full, whatever its length (the form
    :func:`params_from_suffix` parses)."""
    return "".join(f"_{BY_NAME[n].abbr}{format_value(v)}"
                   for n, v in non_default(values, stage).items() if not BY_NAME[n].ignored)


def suffix(values: Mapping[str, Any], stage: int) -> str:
    """The cascading filename suffix of stage ``stage``: ``_<abbr><value>`` per non-default
    parameter of stages ≤ ``stage``, in registry order; ``""`` when all are default.
    Ignored parameters are left out: they cannot change an output, so they must not rename it
    (which would force a needless re-run). A suffix longer than :data:`MAX_SUFFIX` is
    shortened to ``_H`` + the first 12 hex digits of its SHA-256 (the parameters are in every
    stage record)."""
    text = spelled_suffix(values, stage)
    if len(text) <= MAX_SUFFIX:
        return text
    return f"_{HASHED_MARK}{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def params_from_suffix(text: str) -> dict[str, Any]:
    """Parse a suffix built by :func:`suffix` back into ``{name: value}``.

    Each ``_``-separated token is matched against the longest abbreviation that is a prefix of
    it *and* whose remainder parses as that parameter's type (``msdf0.1`` is ``max_scale_diff``,
    ``msd0.1`` is ``max_scale_delta``). Raises :class:`ParameterError` on an unknown token.
    """
    out: dict[str, Any] = {}
    for token in filter(None, text.split("_")):
        if re.fullmatch(f"{HASHED_MARK}[0-9a-f]{{12}}", token):
            raise ParameterError(f"suffix token {token!r} is a shortened suffix (more than "
                                 f"{MAX_SUFFIX} characters of parameters); read the "
                                 f"parameters from the stage record stages/0N_*{token}.json")
        for abbr in sorted(BY_ABBR, key=len, reverse=True):
            if not token.startswith(abbr) or len(token) == len(abbr):
                continue
            param = BY_ABBR[abbr]
            try:
                out[param.name] = _coerce(param, token[len(abbr):])
            except ParameterError:
                continue
            break
        else:
            raise ParameterError(f"suffix token {token!r} does not name a parameter")
    return out


def fingerprint(values: Mapping[str, Any], stage: int) -> str:
    """A stable hash of what determines stage ``stage``'s output (parameters + algorithm)."""
    relevant = {p.name: values[p.name] for p in REGISTRY if p.stage <= stage and not p.ignored}
    relevant["__algorithm__"] = [ALGORITHM_VERSION[s] for s in range(1, stage + 1)]
    pair = {n: v for n, v in (values.get(PAIR_KEY) or {}).items()
            if BY_NAME[PAIR_FACTS[n]].stage <= stage}
    if pair:  # absent when none is given: fingerprints without per-pair facts stay as they were
        relevant["__pair__"] = pair
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_params(values: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """The parameters that belong to stage ``stage`` exactly (for its record)."""
    return {p.name: values[p.name] for p in REGISTRY if p.stage == stage}


def markdown_table(params: Iterable[Param] = REGISTRY) -> str:
    """The parameter table of the README, generated from the registry."""
    rows = ["| name | stage | default | abbr | range | meaning |", "|---|---|---|---|---|---|"]
    for p in params:
        rng = ("true/false" if p.kind is bool else "text" if p.kind is str
               else f"{_fmt(p.low)} … {_fmt(p.high)}")
        rng += "".join(f" or `{w}`" for w in p.words)
        if p.kind is str and p.words:  # a choice among words
            rng = " or ".join(f"`{w}`" for w in p.words)
        if p.optional:
            rng += " or None"
        rows.append(f"| `{p.name}` | {p.stage} | `{p.default}` | `{p.abbr}` | {rng} | {p.help} |")
    return "\n".join(rows)
