"""Synthetic pre/post-stain pairs with a known transform, scale and microbe population.

The generator writes raw-layout pairs (``<raw_dir>/<sample>/<sample>_PreStain_<dye>.tif`` and
``..._PostStain_<dye>.tif``) plus a ground-truth JSON ``<sample>_<dye>_truth.json`` in the same
folder (not a TIFF, so discovery ignores it). It streams: both images are rendered and written
band by band, so a 30 000 × 25 000 RGB pair needs a few hundred MB of RAM.

Image model (all intensities in *8-bit units*, "DN"; 16-bit modes multiply by
:data:`GAIN_16BIT`, the float mode divides by 255):

* **The scene** lives on the continuous *pre plane* (pre pixel coordinates ``u`` = column,
  ``v`` = row, pixel centres at integers) and is defined everywhere, also outside the pre frame:
  ``clean_pre(u, v) = M(u, v) · A(u, v)`` with ``M`` the tissue footprint in [0, 1] (an
  irregular blob with a soft edge, :class:`Footprint`) and ``A`` the autofluorescence texture:
  value noise at periods 300, 60, 15 and 4 px times a "grain" gain that is constant over
  regions bounded by sharp edges. Every pixel value depends only on its absolute coordinates
  and the seed, so any window renders the same numbers (:meth:`Scene.pre_clean`).
* **Pre** = ``clean_pre`` on the pre pixel grid + noise.
* **Post** (post pixel grid ``x``, ``y``) = ``k · clean_pre(post_to_pre · (x, y, 1))`` +
  microbes + noise. ``clean_pre`` is sampled at fractional coordinates by rendering it on its
  own grid around the needed area and warping with bicubic interpolation (OpenCV, 1/32 px
  coordinate quantisation). Microbes are Gaussian spots (σ 2–6 px) centred inside the tissue,
  present in post only.
* **Noise**: Gaussian with variance ``(noise·1 DN)² + noise·0.06 DN · signal`` (read noise plus
  a Poisson-like shot term), independent in pre and post, then quantised to the output dtype.
* **Channels**: RGB modes put the signal in the dye's channel (or split over two channels,
  ``signal_channels``) with 4 % crosstalk into the other colour channels.

The transform is a similarity about the image centres (:func:`post_to_pre_matrix`), following
the convention of :mod:`exo2micro.numerics.transform`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from scipy.special import ndtri

from exo2micro.errors import InputDataError, ParameterError
from exo2micro.io.atomic import atomic_path, write_json_atomic
from exo2micro.numerics import transform

CHANNEL_MODES: tuple[str, ...] = ("rgb8", "rgba8", "gray8", "gray16", "rgb16", "float32")
LAYOUTS: tuple[str, ...] = ("strips", "single-strip", "tiled")
COMPRESSIONS: tuple[str | None, ...] = (None, "lzw", "deflate", "zstd")
TEXTURES: tuple[str, ...] = ("rich", "featureless")

#: 16-bit modes store DN × this factor.
GAIN_16BIT = 200.0
#: Fraction of the signal leaking into each non-signal colour channel.
CROSSTALK = 0.04
#: Tile edge (px) of the ``tiled`` layout.
RAW_TILE = 512
#: Target size (bytes) of one strip of the ``strips`` layout (tifffile's default for
#: compressed data, used here for every compression).
STRIP_BYTES = 262144
#: Uncompressed size above which a TIFF is written as BigTIFF.
BIGTIFF_BYTES = 2**31 - 2**25
#: Target output size (bytes) of one streamed band of the strip layouts (the ``tiled`` layout
#: streams one row of tiles at a time).
BAND_BYTES = 16 * 2**20
#: Edge (px) of the post chunks warped at once, and width of the pre chunks rendered at once.
POST_CHUNK = 512
PRE_CHUNK_COLS = 1024

_COMPRESSION_TAGS: dict[str, int] = {"lzw": tifffile.COMPRESSION.LZW,
                                     "deflate": tifffile.COMPRESSION.ADOBE_DEFLATE,
                                     "zstd": tifffile.COMPRESSION.ZSTD}

#: Dye-name prefixes (lower case) → the RGB channel carrying the signal; first match wins,
#: unknown dyes are green.
_DYE_CHANNELS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sybr", "fitc", "gfp", "af488", "alexa488", "syto", "picogreen", "acridine"), "g"),
    (("dapi", "hoechst"), "b"),
    (("cy5", "cy3", "pi", "propidium", "tritc", "mcherry", "rfp", "texasred"), "r"),
)
_RGB = "rgb"

# Keys of the independent random streams derived from the seed.
_TAG_NOISE_PRE, _TAG_NOISE_POST, _TAG_MICROBES, _TAG_SCENE = 1, 2, 3, 4

# Texture: (period px, weight) of the value-noise octaves, the grain-geometry octave period,
# and the level mapping (DN) of the standardised texture.
_OCTAVES: tuple[tuple[float, float], ...] = ((300.0, 0.55), (60.0, 0.5), (15.0, 0.45),
                                             (4.0, 0.5))
_GRAIN_PERIOD = 40.0
_GRAIN_LEVELS = 32
_GRAIN_BAND = 10.0  # grain index = floor((grain_noise − 0.5) · _GRAIN_BAND)
_LEVEL_MID, _LEVEL_SPREAD, _LEVEL_MIN, _LEVEL_MAX = 80.0, 24.0, 8.0, 175.0
_FEATURELESS_LEVEL = 85.0
#: Standard deviation of one B-spline value-noise octave with uniform lattice values.
_OCTAVE_STD = 0.139

# Footprint: semi-axes as a fraction of half the smaller frame, harmonic orders, edge width.
_TISSUE_EXTENT = 0.82
_HARMONIC_ORDERS: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
_HARMONIC_BUDGET = 0.2
_FOOTPRINT_EDGE_PX = 3.0
#: Angular sectors of the footprint's fast inside/outside test.
_SECTORS = 4096

# Microbes: σ range (post px), covered radius (σ units), amplitude range (× k · mean level).
_MICROBE_SIGMA = (2.0, 6.0)
_MICROBE_COVER_RADIUS = 1.5
_MICROBE_AMPLITUDE = (0.6, 1.5)

# Noise model in DN: variance = (noise · read)² + noise · shot · signal.
_READ_NOISE, _SHOT_GAIN = 1.0, 0.06
#: Rows converted to the output dtype at once (bounds the noise buffer).
_CONVERT_ROWS = 64


@dataclass(frozen=True)
class _Mode:
    """An output pixel format: dtype, colour channels, alpha, output units per DN."""

    dtype: np.dtype[Any]
    colours: int  # signal-bearing channels (1 or 3)
    alpha: bool
    gain: float   # output value per DN

    @property
    def channels(self) -> int:
        return self.colours + int(self.alpha)

    @property
    def maximum(self) -> float:
        return float(np.iinfo(self.dtype).max) if self.dtype.kind == "u" else math.inf


_MODES: dict[str, _Mode] = {
    "rgb8": _Mode(np.dtype(np.uint8), 3, False, 1.0),
    "rgba8": _Mode(np.dtype(np.uint8), 3, True, 1.0),
    "gray8": _Mode(np.dtype(np.uint8), 1, False, 1.0),
    "gray16": _Mode(np.dtype(np.uint16), 1, False, GAIN_16BIT),
    "rgb16": _Mode(np.dtype(np.uint16), 3, False, GAIN_16BIT),
    "float32": _Mode(np.dtype(np.float32), 1, False, 1.0 / 255.0),
}


@dataclass(frozen=True)
class SynthSpec:
    """Everything that defines one synthetic pair; the same spec always gives the same files.

    Sizes are in pixels (``width``/``height`` of the post frame, ``pre_width``/``pre_height``
    of the pre frame, default the post size). ``rotation_deg`` (counter-clockwise as displayed)
    and ``scale`` (post/pre magnification) act about the image centres; ``tx``/``ty`` shift the
    post image further (post px). ``k`` is the true post/pre brightness ratio of the
    autofluorescence. ``microbe_coverage`` is the fraction of the post tissue area covered by
    microbes (0 to 0.5); ``microbe_brightness`` scales their amplitudes (1 = as bright as the
    autofluorescence, small values give faint microbes for detection tests).
    ``signal_channels`` (e.g. ``"g"`` or ``"rg"``) overrides the RGB
    channel(s) chosen from the dye. ``noise`` scales the noise (0 = quantisation only).
    ``tissue_offset`` shifts the tissue centre (pre px) so part of it can leave the frames.
    ``pixel_size_um`` (µm per post pixel; pre pixels are ``scale`` times larger, so the
    sizes imply the true magnification) is written as resolution tags (px per cm).
    ``layout``/``compression`` choose the TIFF structure (see :data:`LAYOUTS`); a compressed
    ``single-strip`` file is one strip that readers must decode whole (writing it holds the
    whole image in memory, as the microscope software that makes such files does).
    """

    sample: str = "SYN01"
    dye: str = "SybrGld"
    width: int = 2000
    height: int = 1600
    pre_width: int | None = None
    pre_height: int | None = None
    rotation_deg: float = 3.0
    scale: float = 1.03
    tx: float = 0.0
    ty: float = 0.0
    k: float = 1.35
    microbe_coverage: float = 0.02
    microbe_brightness: float = 1.0
    channel_mode: str = "rgb8"
    signal_channels: str | None = None
    seed: int = 0
    noise: float = 1.0
    texture: str = "rich"
    tissue_offset: tuple[float, float] = (0.0, 0.0)
    layout: str = "strips"
    compression: str | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        _check_name("sample", self.sample)
        _check_name("dye", self.dye)
        if "_" in self.dye:
            raise ParameterError(f"dye {self.dye!r} must not contain '_' (the dye is the text "
                                 "after the last '_' of a raw file name)")
        for name in ("width", "height", "pre_width", "pre_height"):
            value = getattr(self, name)
            if value is not None and not 16 <= value <= 200_000:
                raise ParameterError(f"{name} = {value} must be in [16, 200000] px")
        _check_range("rotation_deg", self.rotation_deg, -180.0, 180.0)
        _check_range("scale", self.scale, 0.25, 4.0)
        _check_range("k", self.k, 0.01, 100.0)
        _check_range("microbe_coverage", self.microbe_coverage, 0.0, 0.5)
        _check_range("microbe_brightness", self.microbe_brightness, 0.0, 100.0)
        _check_range("noise", self.noise, 0.0, 100.0)
        if self.pixel_size_um is not None:
            _check_range("pixel_size_um", self.pixel_size_um, 1e-4, 1e4)
        if len(self.tissue_offset) != 2:
            raise ParameterError(f"tissue_offset {self.tissue_offset!r} must be (dx, dy)")
        shifts = {"tx": self.tx, "ty": self.ty, "tissue_offset dx": self.tissue_offset[0],
                  "tissue_offset dy": self.tissue_offset[1]}
        for name, value in shifts.items():
            _check_range(name, value, -1e6, 1e6)
        if self.seed < 0:
            raise ParameterError(f"seed = {self.seed} must be ≥ 0")
        _check_choice("channel_mode", self.channel_mode, CHANNEL_MODES)
        _check_choice("texture", self.texture, TEXTURES)
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("compression", self.compression, COMPRESSIONS)
        if self.signal_channels is not None:
            chans = self.signal_channels.lower()
            if (not 1 <= len(chans) <= 2 or len(set(chans)) != len(chans)
                    or not set(chans) <= set(_RGB)):
                raise ParameterError(f"signal_channels {self.signal_channels!r} must be one or "
                                     "two distinct letters of 'rgb'")
            if _MODES[self.channel_mode].colours == 1:
                raise ParameterError(f"signal_channels needs an RGB channel_mode, not "
                                     f"{self.channel_mode!r}")

    @property
    def pre_size(self) -> tuple[int, int]:
        """(width, height) of the pre frame, px."""
        return (self.pre_width or self.width, self.pre_height or self.height)

    @property
    def mode(self) -> _Mode:
        """The output pixel format of ``channel_mode``."""
        return _MODES[self.channel_mode]

    def file_names(self) -> dict[str, str]:
        """File names (relative to the sample folder) of the pre, post and truth files."""
        return {"pre": f"{self.sample}_PreStain_{self.dye}.tif",
                "post": f"{self.sample}_PostStain_{self.dye}.tif",
                "truth": f"{self.sample}_{self.dye}_truth.json"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthSpec:
        """Rebuild a spec from :func:`dataclasses.asdict` output (e.g. ``truth["spec"]``)."""
        values = dict(data)
        values["tissue_offset"] = tuple(values.get("tissue_offset", (0.0, 0.0)))
        return cls(**values)


def _check_name(what: str, value: str) -> None:
    if (not value or value != value.strip() or value.startswith(".")
            or any(c in value for c in "/\\\0")):
        raise ParameterError(f"{what} {value!r} is not a usable file-name part")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ParameterError(f"{name} = {value!r} must be in [{low:g}, {high:g}]")


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ParameterError(f"{name} = {value!r} is not one of {', '.join(map(str, choices))}")


def dye_channel(dye: str) -> str:
    """The RGB channel letter (``r``, ``g`` or ``b``) a dye's fluorescence falls in."""
    name = dye.lower()
    for prefixes, channel in _DYE_CHANNELS:
        if name.startswith(prefixes):
            return channel
    return "g"


def active_channels(spec: SynthSpec) -> str:
    """The RGB channel letters carrying the signal, in order of share ("" for grey modes)."""
    if spec.mode.colours == 1:
        return ""
    return (spec.signal_channels or dye_channel(spec.dye)).lower()


def channel_weights(spec: SynthSpec) -> np.ndarray:
    """Per colour channel, the fraction of the signal it carries (alpha excluded).

    One signal channel gets 1.0, two get 0.6 and 0.4 (in the order given); the others get the
    :data:`CROSSTALK` fraction. Single-channel modes return ``[1.0]``.
    """
    chans = active_channels(spec)
    if not chans:
        return np.ones(1)
    weights = np.full(3, CROSSTALK)
    for letter, share in zip(chans, (1.0,) if len(chans) == 1 else (0.6, 0.4), strict=True):
        weights[_RGB.index(letter)] = share
    return weights


def post_to_pre_matrix(spec: SynthSpec) -> np.ndarray:
    """The true ``post_to_pre`` (3×3, raw pixel coordinates, :mod:`exo2micro.numerics.transform`).

    Pre is rotated by ``rotation_deg`` and magnified by ``scale`` about its centre pixel
    ``((W−1)/2, (H−1)/2)``, which lands on the post centre shifted by ``(tx, ty)``.
    """
    pw, ph = spec.pre_size
    return transform.similarity_post_to_pre(
        spec.rotation_deg, spec.scale, ((pw - 1) / 2.0, (ph - 1) / 2.0),
        ((spec.width - 1) / 2.0 + spec.tx, (spec.height - 1) / 2.0 + spec.ty))


# --------------------------------------------------------------------------------- the scene


def _sector(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Angular sector index in ``[0, _SECTORS)`` of direction ``(dx, dy)``, from a cheap
    monotonic stand-in for the polar angle (θ ∈ [0, 2π) ↦ [0, 4))."""
    c = dx / np.maximum(np.abs(dx) + np.abs(dy), 1e-300)
    pseudo = np.where(dy >= 0, 1.0 - c, 3.0 + c)
    return np.minimum((pseudo * (_SECTORS / 4.0)).astype(np.intp), _SECTORS - 1)


@dataclass(frozen=True)
class Footprint:
    """The tissue footprint on the pre plane: value 1 inside, 0 outside, a smooth edge.

    In normalised coordinates ``d = ((u − cx)/ax, (v − cy)/ay)`` (pre px) the boundary is the
    polar curve ``ρ(θ) = 1 + Σ a_n cos(nθ + φ_n)``; the edge ramps from 0 to 1 over about
    ``edge_px`` pre pixels. ``M ≥ 0.5`` is "tissue".
    """

    cx: float
    cy: float
    ax: float
    ay: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order n, amplitude a_n, phase φ_n rad)
    edge_px: float

    @property
    def _radius_px(self) -> float:
        """Pixels per unit of normalised radius (geometric mean of the semi-axes)."""
        return math.sqrt(self.ax * self.ay)

    def _curve(self, theta: np.ndarray) -> np.ndarray:
        """Normalised boundary radius ρ(θ)."""
        radius = np.ones_like(theta)
        for order, amplitude, phase in self.harmonics:
            radius += amplitude * np.cos(order * theta + phase)
        return radius

    @functools.cached_property
    def _sector_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per angular sector (:func:`_sector`), normalised radii inside/outside which the
        footprint is exactly 1/0 (the boundary's extremes over the sector and its neighbours,
        widened by the edge ramp and a safety margin)."""
        theta = np.linspace(0.0, 2.0 * math.pi, 64 * _SECTORS, endpoint=False)
        radius = self._curve(theta)
        sector = _sector(np.cos(theta), np.sin(theta))
        lo = np.full(_SECTORS, np.inf)
        hi = np.full(_SECTORS, -np.inf)
        np.minimum.at(lo, sector, radius)
        np.maximum.at(hi, sector, radius)
        lo = np.minimum.reduce([np.roll(lo, shift) for shift in (-1, 0, 1)])
        hi = np.maximum.reduce([np.roll(hi, shift) for shift in (-1, 0, 1)])
        ramp = self.edge_px / (2.0 * self._radius_px) + 1e-4
        return lo - ramp, hi + ramp

    def bbox(self) -> tuple[float, float, float, float]:
        """(u0, v0, u1, v1): a box of the pre plane outside which the footprint is 0."""
        rmax = float(self._sector_limits[1].max())
        return (self.cx - self.ax * rmax, self.cy - self.ay * rmax,
                self.cx + self.ax * rmax, self.cy + self.ay * rmax)

    def evaluate(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Footprint (float32 in [0, 1]) at pre-plane points; ``u``/``v`` broadcast together.

        Points are classified inside/outside with per-sector bounds (cheap arithmetic only);
        the exact boundary formula runs on the thin band between the bounds. Each value
        depends only on its own point.
        """
        dx = np.asarray((np.asarray(u, np.float64) - self.cx) / self.ax)
        dy = np.asarray((np.asarray(v, np.float64) - self.cy) / self.ay)
        dx, dy = np.broadcast_arrays(dx, dy)
        rho = np.sqrt(dx * dx + dy * dy)
        lo, hi = self._sector_limits
        sector = _sector(dx, dy)
        inner, outer = lo[sector], hi[sector]
        out = (rho <= inner).astype(np.float32)
        edge = (rho > inner) & (rho < outer)
        radius = self._curve(np.arctan2(dy[edge], dx[edge]))
        t = np.clip((radius - rho[edge]) * (self._radius_px / self.edge_px) + 0.5, 0.0, 1.0)
        out[edge] = t * t * (3.0 - 2.0 * t)
        return out

    def to_json(self) -> dict[str, Any]:
        """The parameters as the truth JSON's ``tissue`` entry."""
        return {"model": "M(u,v): polar blob rho(theta) = 1 + sum a_n cos(n theta + phi_n) in "
                         "d = ((u-cx)/ax, (v-cy)/ay), pre px; smoothstep edge of edge_px; "
                         "tissue where M >= 0.5",
                "cx": self.cx, "cy": self.cy, "ax": self.ax, "ay": self.ay,
                "harmonics": [list(h) for h in self.harmonics], "edge_px": self.edge_px}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Footprint:
        """The footprint of a truth JSON's ``tissue`` entry."""
        return cls(float(data["cx"]), float(data["cy"]), float(data["ax"]), float(data["ay"]),
                   tuple((int(n), float(a), float(p)) for n, a, p in data["harmonics"]),
                   float(data["edge_px"]))


def make_footprint(spec: SynthSpec) -> Footprint:
    """The footprint a spec's seed draws: centred on the pre frame (+ ``tissue_offset``),
    semi-axes :data:`_TISSUE_EXTENT` of the half-frame that fits both frames."""
    rng = np.random.default_rng([spec.seed, _TAG_SCENE, 0])
    pw, ph = spec.pre_size
    ax = 0.5 * _TISSUE_EXTENT * min(pw, spec.width / spec.scale)
    ay = 0.5 * _TISSUE_EXTENT * min(ph, spec.height / spec.scale)
    amps = rng.uniform(0.3, 1.0, len(_HARMONIC_ORDERS)) / np.asarray(_HARMONIC_ORDERS)
    amps *= _HARMONIC_BUDGET / amps.sum()
    phases = rng.uniform(0.0, 2.0 * math.pi, len(_HARMONIC_ORDERS))
    harmonics = tuple((n, float(a), float(p))
                      for n, a, p in zip(_HARMONIC_ORDERS, amps, phases, strict=True))
    return Footprint((pw - 1) / 2.0 + spec.tissue_offset[0], (ph - 1) / 2.0 +
                     spec.tissue_offset[1], ax, ay, harmonics, _FOOTPRINT_EDGE_PX)


def _lattice(key: int, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
    """Uniform [0, 1) float32 values at integer lattice points ``[j0, j1) × [i0, i1)`` (rows j,
    columns i), a pure hash of ``(key, i, j)``: any sub-lattice gives the same values."""
    i = np.arange(i0, i1, dtype=np.int64).astype(np.uint64)
    j = np.arange(j0, j1, dtype=np.int64).astype(np.uint64)
    z = (j[:, None] * np.uint64(0xD1B54A32D192ED03) + i[None, :] * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64(key))
    # splitmix64 finaliser
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _bspline_taps(start: int, count: int, period: float, offset: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline taps along one axis for pixels ``start .. start+count−1``.

    Returns the first lattice index of each pixel's 4 taps and the 4×count float32 weights.
    Both depend only on the absolute pixel coordinate.
    """
    s = (np.arange(start, start + count, dtype=np.float64) + offset) / period
    base = np.floor(s)
    t = s - base
    t2, t3 = t * t, t * t * t
    weights = np.stack([(1.0 - t) ** 3, 3.0 * t3 - 6.0 * t2 + 4.0,
                        -3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0, t3]) / 6.0
    return base.astype(np.int64) - 1, weights.astype(np.float32)


@dataclass(frozen=True)
class _Octave:
    """One value-noise octave: lattice period (px), hash key, lattice offset (px)."""

    period: float
    key: int
    offset: tuple[float, float]

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Value noise (float32, mean 0.5) on the pre-pixel window ``[y0, y0+h) × [x0, x0+w)``.

        Separable B-spline interpolation with a fixed order of operations, so a pixel's value
        is bitwise independent of the window it is rendered in.
        """
        ix, wx = _bspline_taps(x0, w, self.period, self.offset[0])
        iy, wy = _bspline_taps(y0, h, self.period, self.offset[1])
        lat = _lattice(self.key, int(ix[0]), int(ix[-1]) + 4, int(iy[0]), int(iy[-1]) + 4)
        cols = ix - ix[0]
        rows = iy - iy[0]
        across = wx[0] * lat[:, cols]
        for tap in range(1, 4):
            across += wx[tap] * lat[:, cols + tap]
        out = wy[0][:, None] * across[rows]
        for tap in range(1, 4):
            out += wy[tap][:, None] * across[rows + tap]
        return out


@dataclass(frozen=True)
class _Microbes:
    """Microbe catalogue in post pixel coordinates, sorted by ``y``; amplitudes in DN."""

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)

    def subset(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[tuple[float, ...]]:
        """(x, y, σ, amplitude) of the microbes whose 4σ support meets ``[x0, x1) × [y0, y1)``."""
        reach = 4.0 * _MICROBE_SIGMA[1]
        lo, hi = np.searchsorted(self.y, [y0 - reach, y1 + reach])
        sel = np.arange(lo, hi)
        sel = sel[(self.x[sel] >= x0 - reach) & (self.x[sel] < x1 + reach)]
        for i in sel:
            yield (float(self.x[i]), float(self.y[i]), float(self.sigma[i]),
                   float(self.amplitude[i]))


class Scene:
    """The deterministic scene of one spec: clean (noise-free) pre and post in DN.

    ``pre_clean``/``post_clean`` render any window; a pixel's value does not depend on the
    window, which is what lets the writers stream.
    """

    def __init__(self, spec: SynthSpec) -> None:
        self.spec = spec
        self.footprint = make_footprint(spec)
        self.post_to_pre = post_to_pre_matrix(spec)
        rng = np.random.default_rng([spec.seed, _TAG_SCENE, 1])
        keys = rng.integers(0, 2**63, len(_OCTAVES) + 1)
        self._octaves = tuple(_Octave(period, int(key), tuple(rng.uniform(0.0, period, 2)))
                              for (period, _), key in zip(_OCTAVES, keys[:-1], strict=True))
        self._weights = np.asarray([w for _, w in _OCTAVES]) / math.hypot(
            *(w for _, w in _OCTAVES))
        self._grain = _Octave(_GRAIN_PERIOD, int(keys[-1]),
                              tuple(rng.uniform(0.0, _GRAIN_PERIOD, 2)))
        self._grain_gain = rng.uniform(0.7, 1.3, _GRAIN_LEVELS).astype(np.float32)
        # Keep k · texture below saturation of 8-bit output for bright post images.
        self.amplitude = min(1.0, 1.5 / spec.k)
        self.microbes = self._draw_microbes()

    # --- pre plane

    def _texture(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Autofluorescence level A (DN, float32) before the footprint."""
        if self.spec.texture == "featureless":
            return np.full((h, w), _FEATURELESS_LEVEL * self.amplitude, np.float32)
        z = np.zeros((h, w), np.float32)
        for octave, weight in zip(self._octaves, self._weights, strict=True):
            z += np.float32(weight / _OCTAVE_STD) * (octave.render(x0, y0, w, h) - 0.5)
        level = np.floor((self._grain.render(x0, y0, w, h) - 0.5) * _GRAIN_BAND).astype(np.int64)
        gain = self._grain_gain[np.clip(level + _GRAIN_LEVELS // 2, 0, _GRAIN_LEVELS - 1)]
        value = gain * np.float32(_LEVEL_MID) + np.float32(_LEVEL_SPREAD) * z
        np.clip(value, _LEVEL_MIN, _LEVEL_MAX, out=value)
        return value * np.float32(self.amplitude)

    def pre_window(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Footprint M and clean pre ``M · A`` (DN), float32 (h, w), on the pre-pixel window
        whose top-left pixel is ``(x0, y0)``; the window may extend beyond the pre frame."""
        u0, v0, u1, v1 = self.footprint.bbox()
        if x0 > u1 or y0 > v1 or x0 + w - 1 < u0 or y0 + h - 1 < v0:
            zeros = np.zeros((h, w), np.float32)
            return zeros, zeros.copy()
        m = self.footprint.evaluate(np.arange(x0, x0 + w)[None, :], np.arange(y0, y0 + h)[:, None])
        if not m.any():
            return m, m.copy()
        return m, m * self._texture(x0, y0, w, h)

    def pre_clean(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Clean pre (DN, float32 (h, w)) on a pre-pixel window, see :meth:`pre_window`."""
        return self.pre_window(x0, y0, w, h)[1]

    # --- post frame

    def _draw_microbes(self) -> _Microbes:
        """Poisson-placed microbes with centres in the post tissue (footprint ≥ 0.5).

        The density makes the expected covered fraction (discs of radius 1.5 σ, overlaps
        counted once) equal to ``microbe_coverage``.
        """
        spec = self.spec
        rng = np.random.default_rng([spec.seed, _TAG_MICROBES])
        lo, hi = _MICROBE_SIGMA
        mean_area = math.pi * _MICROBE_COVER_RADIUS**2 * (hi**3 - lo**3) / (3.0 * (hi - lo))
        density = -math.log1p(-spec.microbe_coverage) / mean_area
        n = int(rng.poisson(density * spec.width * spec.height))
        x = rng.uniform(-0.5, spec.width - 0.5, n)
        y = rng.uniform(-0.5, spec.height - 0.5, n)
        sigma = rng.uniform(lo, hi, n)
        amplitude = (rng.uniform(*_MICROBE_AMPLITUDE, n) * spec.k * self.amplitude
                     * _FEATURELESS_LEVEL * spec.microbe_brightness)
        uv = transform.apply(self.post_to_pre, np.column_stack([x, y]))
        keep = self.footprint.evaluate(uv[:, 0], uv[:, 1]) >= 0.5
        order = np.argsort(y[keep], kind="stable")
        return _Microbes(*(a[keep][order] for a in (x, y, sigma, amplitude)))

    def post_window(self, x0: int, y0: int, w: int, h: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Post-frame window with top-left post pixel ``(x0, y0)``: the footprint M warped
        into post (float32), the clean post ``k · clean_pre ∘ post_to_pre + microbes`` (DN,
        float32) and the boolean microbe cover (within 1.5 σ of a centre)."""
        corners = np.array([[x0, y0], [x0 + w - 1, y0], [x0, y0 + h - 1],
                            [x0 + w - 1, y0 + h - 1]], np.float64)
        uv = transform.apply(self.post_to_pre, corners)
        u0, v0 = (math.floor(c) - 3 for c in uv.min(axis=0))
        u1, v1 = (math.ceil(c) + 4 for c in uv.max(axis=0))
        m_pre, clean_pre = self.pre_window(u0, v0, u1 - u0, v1 - v0)
        local = transform.affine_for_window(self.post_to_pre, (x0, y0), (u0, v0))[:2]
        flags = cv2.WARP_INVERSE_MAP
        m = cv2.warpAffine(m_pre, local, (w, h), flags=flags | cv2.INTER_LINEAR)
        post = cv2.warpAffine(clean_pre, local, (w, h), flags=flags | cv2.INTER_CUBIC)
        post *= np.float32(self.spec.k)
        covered = np.zeros((h, w), bool)
        cols = np.arange(x0, x0 + w, dtype=np.float64)
        rows = np.arange(y0, y0 + h, dtype=np.float64)
        for mx, my, sigma, amplitude in self.microbes.subset(x0, y0, x0 + w, y0 + h):
            # Support: pixels within 4 σ of the centre along each axis.
            c0 = max(0, math.ceil(mx - 4.0 * sigma) - x0)
            c1 = min(w, math.floor(mx + 4.0 * sigma) + 1 - x0)
            r0 = max(0, math.ceil(my - 4.0 * sigma) - y0)
            r1 = min(h, math.floor(my + 4.0 * sigma) + 1 - y0)
            if c0 >= c1 or r0 >= r1:
                continue
            dx2 = ((cols[c0:c1] - mx) / sigma) ** 2
            dy2 = ((rows[r0:r1] - my) / sigma) ** 2
            blob = amplitude * np.outer(np.exp(-0.5 * dy2), np.exp(-0.5 * dx2))
            post[r0:r1, c0:c1] += blob.astype(np.float32)
            covered[r0:r1, c0:c1] |= (dy2[:, None] + dx2[None, :]) <= _MICROBE_COVER_RADIUS**2
        return m, post, covered

    def post_clean(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Clean post (DN, float32 (h, w)), see :meth:`post_window`."""
        return self.post_window(x0, y0, w, h)[1]


# ------------------------------------------------------------------------ output conversion


#: Standard normal quantiles at 65 536 equiprobable levels: indexing it with uniform 16-bit
#: integers draws normal deviates (tails cut at ±4.3 σ) about twice as fast as numpy's
#: ``standard_normal``.
_NORMAL_TABLE = ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


def _row_normals(seed: int, tag: int, rows: range, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal float32 noise ``(len(rows), *shape)``: one generator per image row,
    so the noise of a row does not depend on how the image is cut into bands."""
    out = np.empty((len(rows), *shape), np.float32)
    for i, row in enumerate(rows):
        draws = np.random.default_rng([seed, tag, row]).integers(0, 65536, shape, np.uint16)
        np.take(_NORMAL_TABLE, draws, out=out[i])
    return out


def _to_output(signal: np.ndarray, y0: int, spec: SynthSpec, tag: int) -> np.ndarray:
    """Convert a clean band (DN, float32 (h, W)) starting at image row ``y0`` to the output
    dtype and channels: split over channels, add noise, scale, round and clip."""
    mode = spec.mode
    weights = channel_weights(spec).astype(np.float32)
    h, w = signal.shape
    out = np.empty((h, w, mode.channels), mode.dtype)
    read2 = np.float32((spec.noise * _READ_NOISE) ** 2)
    shot = np.float32(spec.noise * _SHOT_GAIN)
    for r0 in range(0, h, _CONVERT_ROWS):
        r1 = min(h, r0 + _CONVERT_ROWS)
        normals = _row_normals(spec.seed, tag, range(y0 + r0, y0 + r1), (mode.colours, w))
        for c, weight in enumerate(weights):
            value = signal[r0:r1] * weight
            sd = np.sqrt(read2 + shot * np.maximum(value, 0.0))
            value += sd * normals[:, c]
            value *= np.float32(mode.gain)
            if mode.dtype.kind == "u":
                np.rint(value, out=value)
            np.clip(value, 0.0, mode.maximum, out=value)
            out[r0:r1, :, c] = value
    if mode.alpha:
        out[..., -1] = np.iinfo(mode.dtype).max
    return out if mode.channels > 1 else out[..., 0]


# ------------------------------------------------------------------------------- TIFF writing


def _rows_per_strip(spec: SynthSpec, width: int, height: int) -> int:
    """RowsPerStrip of the strip layouts: the whole image, or strips of ~:data:`STRIP_BYTES`."""
    if spec.layout == "single-strip":
        return height
    mode = spec.mode
    return max(1, min(height, STRIP_BYTES // (width * mode.channels * mode.dtype.itemsize)))


def _band_rows(spec: SynthSpec, width: int, height: int) -> int:
    """Rows per streamed band: one row of tiles, or a whole number of strips holding about
    :data:`BAND_BYTES` (at most :data:`POST_CHUNK` rows)."""
    if spec.layout == "tiled":
        return RAW_TILE
    rps = _rows_per_strip(spec, width, height)
    row_bytes = width * spec.mode.channels * spec.mode.dtype.itemsize
    rows = min(POST_CHUNK, max(1, BAND_BYTES // row_bytes))
    return min(height, rps * max(1, rows // rps))


def _write_tiff(path: Path, bands: Iterator[np.ndarray], spec: SynthSpec, width: int,
                height: int, pixel_size_um: float | None = None) -> None:
    """Stream bands (full width, a whole number of strips/tiles each) into a TIFF with the
    spec's layout and compression, atomically; ``pixel_size_um`` (µm) becomes the
    X/YResolution tags in px per cm."""
    mode = spec.mode
    shape = (height, width, mode.channels) if mode.channels > 1 else (height, width)
    nbytes = height * width * mode.channels * mode.dtype.itemsize
    codec_tag = _COMPRESSION_TAGS.get(spec.compression or "")
    options: dict[str, Any] = {
        "shape": shape, "dtype": mode.dtype, "metadata": None,
        "photometric": "rgb" if mode.colours == 3 else "minisblack",
        "compression": codec_tag}
    if pixel_size_um is not None:
        options.update(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um),
                       resolutionunit="CENTIMETER")
    if mode.alpha:
        options["extrasamples"] = ("unassalpha",)
    data: Iterator[np.ndarray] | Iterator[bytes]
    if spec.layout == "tiled":
        options["tile"] = (RAW_TILE, RAW_TILE)
        data = (band[:, x:x + RAW_TILE] for band in bands for x in range(0, width, RAW_TILE))
    else:
        rps = _rows_per_strip(spec, width, height)
        options["rowsperstrip"] = rps
        data = _strip_bytes(bands, rps, codec_tag)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=nbytes > BIGTIFF_BYTES) as tw:
        tw.write(data, **options)


def _strip_bytes(bands: Iterable[np.ndarray], rows_per_strip: int, codec_tag: int | None
                 ) -> Iterator[bytes]:
    """Encoded strips of the bands (tifffile takes an iterator of encoded strips; raw
    strips may be yielded in any grouping, so a whole band goes at once)."""
    encode = None if codec_tag is None else tifffile.TIFF.COMPRESSORS[codec_tag]
    for band in bands:
        if encode is None:
            yield band.tobytes()
            continue
        for r in range(0, band.shape[0], rows_per_strip):
            yield encode(np.ascontiguousarray(band[r:r + rows_per_strip]))


# ------------------------------------------------------------------------------ pair writers


@dataclass
class PostTally:
    """Post pixel counts gathered while streaming: tissue (footprint ≥ 0.5), and microbe
    cover (within 1.5 σ of a microbe centre) inside tissue."""

    tissue: int = 0
    covered: int = 0


def iter_pre_bands(scene: Scene, band_rows: int, clean: bool = False) -> Iterator[np.ndarray]:
    """The pre image, band by band (``band_rows`` rows, full width), in the output dtype (or
    the clean DN float32 signal with ``clean=True``)."""
    pw, ph = scene.spec.pre_size
    for y0 in range(0, ph, band_rows):
        h = min(band_rows, ph - y0)
        signal = np.empty((h, pw), np.float32)
        for x0 in range(0, pw, PRE_CHUNK_COLS):
            w = min(PRE_CHUNK_COLS, pw - x0)
            signal[:, x0:x0 + w] = scene.pre_clean(x0, y0, w, h)
        yield signal if clean else _to_output(signal, y0, scene.spec, _TAG_NOISE_PRE)


def iter_post_bands(scene: Scene, band_rows: int, clean: bool = False,
                    tally: PostTally | None = None) -> Iterator[np.ndarray]:
    """The post image, band by band, like :func:`iter_pre_bands`; ``tally`` accumulates
    tissue and microbe-cover pixel counts."""
    spec = scene.spec
    for y0 in range(0, spec.height, band_rows):
        h = min(band_rows, spec.height - y0)
        signal = np.empty((h, spec.width), np.float32)
        for cy in range(0, h, POST_CHUNK):
            ch = min(POST_CHUNK, h - cy)
            for x0 in range(0, spec.width, POST_CHUNK):
                w = min(POST_CHUNK, spec.width - x0)
                m, post, covered = scene.post_window(x0, y0 + cy, w, ch)
                signal[cy:cy + ch, x0:x0 + w] = post
                if tally is not None:
                    tissue = m >= 0.5
                    tally.tissue += int(np.count_nonzero(tissue))
                    tally.covered += int(np.count_nonzero(covered & tissue))
        yield signal if clean else _to_output(signal, y0, spec, _TAG_NOISE_POST)


@dataclass
class SynthResult:
    """What :func:`generate_pair` wrote. ``post_path`` is ``None`` for an incomplete pair;
    ``defect`` says what was broken on purpose (``None`` for a good pair)."""

    spec: SynthSpec
    pre_path: Path
    post_path: Path | None
    truth_path: Path
    truth: dict[str, Any] = field(repr=False)
    defect: str | None = None

    def describe(self, root: Path | None = None) -> str:
        """One line for the console: files (relative to ``root``), geometry, k, defect."""
        def rel(p: Path | None) -> str:
            if p is None:
                return "(no post)"
            return os.path.relpath(p, root) if root is not None else str(p)

        s = self.spec
        line = (f"{s.sample}/{s.dye}: {rel(self.pre_path)} {rel(self.post_path)} truth "
                f"{rel(self.truth_path)} ({s.width}×{s.height} {s.channel_mode}, rotation "
                f"{s.rotation_deg:g}°, scale {s.scale:g}, k {s.k:g})")
        return f"{line} [{self.defect}]" if self.defect else line


def generate_pair(spec: SynthSpec, raw_dir: str | os.PathLike[str], with_post: bool = True
                  ) -> SynthResult:
    """Write one pair and its truth JSON under ``raw_dir/<sample>/``; return what was written.

    Pre and post are streamed concurrently (two threads), each TIFF atomically; the truth JSON
    is written last. ``with_post=False`` writes pre only (an incomplete pair).
    """
    folder = Path(raw_dir) / spec.sample
    names = spec.file_names()
    scene = Scene(spec)
    pw, ph = spec.pre_size
    tally = PostTally()
    pre_path, post_path = folder / names["pre"], folder / names["post"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(_write_tiff, pre_path,
                            iter_pre_bands(scene, _band_rows(spec, pw, ph)), spec, pw, ph,
                            None if spec.pixel_size_um is None
                            else spec.pixel_size_um * spec.scale)]
        if with_post:
            jobs.append(pool.submit(
                _write_tiff, post_path,
                iter_post_bands(scene, _band_rows(spec, spec.width, spec.height), tally=tally),
                spec, spec.width, spec.height, spec.pixel_size_um))
        for job in jobs:
            job.result()
    truth = _truth(scene, tally if with_post else None)
    truth_path = folder / names["truth"]
    write_json_atomic(truth_path, truth)
    return SynthResult(spec, pre_path, post_path if with_post else None, truth_path, truth)


def _truth(scene: Scene, tally: PostTally | None) -> dict[str, Any]:
    """The ground-truth record of a pair (see the module docstring for the model)."""
    spec = scene.spec
    pw, ph = spec.pre_size
    mode = spec.mode
    weights = channel_weights(spec)
    names = spec.file_names()
    pre_mask = _mask_on_grid(scene.footprint, np.eye(3), (pw, ph), 8.0)
    truth: dict[str, Any] = {
        "generator": "exo2micro.synth",
        "convention": "post_to_pre: raw post pixel (x=col, y=row, integer centres) -> raw pre "
                      "pixel; aligned_pre(x, y) = pre(post_to_pre @ (x, y, 1))",
        "sample": spec.sample, "dye": spec.dye,
        "files": {"pre": names["pre"], "post": names["post"]},
        "post_to_pre": scene.post_to_pre.tolist(),
        "pre_to_post": np.linalg.inv(scene.post_to_pre).tolist(),
        "k": spec.k, "rotation_deg": spec.rotation_deg, "scale": spec.scale,
        "translation": [spec.tx, spec.ty],
        "translation_note": "extra shift (post px) after rotating/scaling pre about its centre "
                            "pixel onto the post centre pixel",
        "centre_pre": [(pw - 1) / 2.0, (ph - 1) / 2.0],
        "centre_post": [(spec.width - 1) / 2.0, (spec.height - 1) / 2.0],
        "post_shape": [spec.height, spec.width], "pre_shape": [ph, pw],
        "channel_mode": spec.channel_mode, "dtype": mode.dtype.name, "channels": mode.channels,
        "signal_channels": list(active_channels(spec)),
        "channel_weights": weights.tolist(),
        "value_gain": mode.gain,
        "seed": spec.seed, "texture": spec.texture,
        "noise": {"level": spec.noise, "read_sigma_dn": spec.noise * _READ_NOISE,
                  "shot_gain_dn": spec.noise * _SHOT_GAIN,
                  "model": "variance = read_sigma^2 + shot_gain * signal (DN), × value_gain"},
        "microbe_coverage": spec.microbe_coverage,
        "microbe_count": len(scene.microbes),
        "microbe_model": "Gaussian spots, sigma 2-6 post px, centres in post tissue; a pixel "
                         "is covered within 1.5 sigma of a centre",
        "microbes": _microbe_truth(scene.microbes, mode.gain * float(weights.max())),
        "tissue": scene.footprint.to_json(),
        "tissue_fraction_pre": float(pre_mask.mean()),
        "layout": spec.layout, "compression": spec.compression,
        "spec": asdict(spec),
    }
    if tally is not None:
        truth["tissue_fraction_post"] = tally.tissue / (spec.width * spec.height)
        truth["microbe_coverage_actual"] = tally.covered / max(1, tally.tissue)
    return truth


def _microbe_truth(microbes: _Microbes, gain: float) -> dict[str, Any]:
    """The true microbes as columns: centre ``x``, ``y`` (raw post px, x = column, y = row,
    pixel centres at integers), Gaussian ``sigma`` (px), ``peak`` and integrated ``flux`` in
    counts of the strongest signal channel (before noise, clipping and rounding:
    ``flux = 2π σ² · peak``)."""
    peak = microbes.amplitude * gain
    return {"x": np.round(microbes.x, 4).tolist(), "y": np.round(microbes.y, 4).tolist(),
            "sigma": np.round(microbes.sigma, 4).tolist(),
            "peak": np.round(peak, 4).tolist(),
            "flux": np.round(2 * math.pi * microbes.sigma**2 * peak, 3).tolist(),
            "units": "x, y, sigma: post px; peak, flux: counts of the strongest signal "
                     "channel"}


# ------------------------------------------------------------------------ truth evaluation


def load_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a truth JSON written by :func:`generate_pair`."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        np.asarray(data["post_to_pre"], dtype=np.float64).reshape(3, 3)
        Footprint.from_json(data["tissue"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{path}: not a readable synth truth JSON ({exc})") from None
    return data


def _mask_on_grid(fp: Footprint, to_pre: np.ndarray, size: tuple[int, int], factor: float
                  ) -> np.ndarray:
    """Footprint ≥ 0.5 on the 1/``factor`` grid of a frame of ``size`` = (width, height):
    cell (i, j) is the full-resolution point ``(j·f + (f−1)/2, i·f + (f−1)/2)`` (the
    convention of :func:`exo2micro.numerics.transform.grid_points`), mapped to pre by ``to_pre``."""
    off = (factor - 1.0) / 2.0
    x = np.arange(math.ceil(size[0] / factor)) * factor + off
    y = np.arange(math.ceil(size[1] / factor)) * factor + off
    a = np.asarray(to_pre, np.float64)
    mask = np.empty((y.size, x.size), bool)
    step = max(1, 2**18 // x.size)  # rows per block: bounds the float64 temporaries
    for r in range(0, y.size, step):
        yb = y[r:r + step, None]
        u = a[0, 0] * x[None, :] + a[0, 1] * yb + a[0, 2]
        v = a[1, 0] * x[None, :] + a[1, 1] * yb + a[1, 2]
        mask[r:r + step] = fp.evaluate(u, v) >= 0.5
    return mask


def truth_tissue_mask_post(truth: dict[str, Any], factor: float = 1.0) -> np.ndarray:
    """Boolean tissue mask in the POST frame at 1/``factor`` resolution, from a truth dict.

    Shape ``(ceil(H/f), ceil(W/f))``; cell ``(i, j)`` is the post point
    ``(j·f + (f−1)/2, i·f + (f−1)/2)`` (as :func:`exo2micro.numerics.transform.grid_points`), tissue
    where the footprint there is ≥ 0.5. Deterministic from the JSON alone.
    """
    height, width = truth["post_shape"]
    return _mask_on_grid(Footprint.from_json(truth["tissue"]), np.asarray(truth["post_to_pre"]),
                         (width, height), factor)


def truth_tissue_mask_pre(truth: dict[str, Any], factor: float = 1.0) -> np.ndarray:
    """Like :func:`truth_tissue_mask_post`, in the PRE frame."""
    height, width = truth["pre_shape"]
    return _mask_on_grid(Footprint.from_json(truth["tissue"]), np.eye(3), (width, height), factor)


def truth_microbes(truth: dict[str, Any]) -> np.ndarray:
    """The microbes of a pair, (N, 4) float64 rows ``x, y, σ`` (post px) and amplitude (DN),
    regenerated from the spec stored in the truth."""
    microbes = Scene(SynthSpec.from_dict(truth["spec"])).microbes
    return np.column_stack([microbes.x, microbes.y, microbes.sigma, microbes.amplitude])


# ---------------------------------------------------------------------------------- batches


def batch_specs(n: int, base: SynthSpec | None = None, prefix: str = "SYN") -> list[SynthSpec]:
    """``n`` specs named ``<prefix>01``, ``<prefix>02``, …: the ``base`` spec with a seed,
    rotation (±12°), scale (0.93–1.07), k (1.1–1.8) and shift (±30 px) drawn per pair from
    ``base.seed``."""
    base = base or SynthSpec()
    rng = np.random.default_rng([base.seed, 99])
    digits = max(2, len(str(n)))
    return [replace(base, sample=f"{prefix}{i + 1:0{digits}d}", seed=base.seed + i,
                    rotation_deg=round(float(rng.uniform(-12.0, 12.0)), 2),
                    scale=round(float(rng.uniform(0.93, 1.07)), 3),
                    k=round(float(rng.uniform(1.1, 1.8)), 3),
                    tx=round(float(rng.uniform(-30.0, 30.0)), 1),
                    ty=round(float(rng.uniform(-30.0, 30.0)), 1))
            for i in range(n)]


def make_batch(raw_dir: str | os.PathLike[str], specs: Sequence[SynthSpec], broken: bool = False,
               ) -> list[SynthResult]:
    """Write every spec's pair under ``raw_dir``; with ``broken``, also one pair whose post
    TIFF is truncated (``<first sample>BROKEN``) and one with pre only
    (``<first sample>INCOMPLETE``), for demonstrating lenient mode.

    Raises :class:`ParameterError` if two specs share a (sample, dye).
    """
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.sample, spec.dye) in seen:
            raise ParameterError(f"two specs for sample {spec.sample!r}, dye {spec.dye!r}")
        seen.add((spec.sample, spec.dye))
    results = [generate_pair(spec, raw_dir) for spec in specs]
    if broken:
        first = specs[0] if specs else SynthSpec()
        results.append(_broken_pair(raw_dir, replace(first, sample=f"{first.sample}BROKEN",
                                                     seed=first.seed + 1000)))
        incomplete = generate_pair(replace(first, sample=f"{first.sample}INCOMPLETE",
                                           seed=first.seed + 2000), raw_dir, with_post=False)
        incomplete.defect = "incomplete pair: post missing"
        _record_defect(incomplete)
        results.append(incomplete)
    return results


def _broken_pair(raw_dir: str | os.PathLike[str], spec: SynthSpec) -> SynthResult:
    """A pair whose post TIFF is cut to 60 % of its bytes."""
    result = generate_pair(spec, raw_dir)
    post = Path(raw_dir) / spec.sample / spec.file_names()["post"]
    size = post.stat().st_size
    keep = int(size * 0.6)
    with open(post, "rb+") as fh:
        fh.truncate(keep)
    result.defect = f"post TIFF truncated to {keep} of {size} bytes"
    _record_defect(result)
    return result


def _record_defect(result: SynthResult) -> None:
    result.truth["defect"] = result.defect
    write_json_atomic(result.truth_path, result.truth)


#: Ways :func:`spoil_pre` can make a pair whose pre image does not match its post as stated:
#: the sample re-mounted (rotated by 90°/180°/270° or mirrored) or an unrelated pre image.
PRE_DEFECTS: tuple[str, ...] = ("rot90", "rot180", "rot270", "mirror", "unrelated")


def spoil_pre(result: SynthResult, how: str) -> SynthResult:
    """Replace the pre TIFF of a generated pair by a re-mounted or unrelated one (``how`` in
    :data:`PRE_DEFECTS`), record the defect in its truth JSON and return the result.

    ``rot*`` turn the pre pixel grid counter-clockwise as displayed, ``mirror`` flips it left
    to right, ``unrelated`` renders the pre of another seed. The whole pre image is held in
    memory (meant for test-sized pairs).
    """
    _check_choice("how", how, PRE_DEFECTS)
    pre = result.pre_path
    if how == "unrelated":
        import tempfile

        with tempfile.TemporaryDirectory(dir=pre.parent) as tmp_dir:
            other = generate_pair(replace(result.spec, seed=result.spec.seed + 7919), tmp_dir,
                                  with_post=False)
            data = tifffile.imread(other.pre_path)
    else:
        data = tifffile.imread(pre)
        data = np.fliplr(data) if how == "mirror" else np.rot90(data, int(how[3:]) // 90)
    with atomic_path(pre) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(data), photometric=(
            "rgb" if data.ndim == 3 and data.shape[2] >= 3 else "minisblack"), metadata=None)
    result.defect = {"mirror": "pre image mirrored", "unrelated": "pre image of another sample"
                     }.get(how, f"pre image rotated by {how[3:]}°")
    _record_defect(result)
    return result
