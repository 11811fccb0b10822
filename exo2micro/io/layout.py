"""Every output path of one (sample, dye) pair, in one place.

Both orchestrators and every stage tool use :class:`PairLayout`, so a file's name is decided
once. A name is the stage number, one name for the product (``01_pre_signal…``,
``02_icp_aligned_pre…``, ``03_interior_aligned_pre…``, ``04_difference…``,
``05_detect_significance…``), the cascading parameter suffix of
:func:`exo2micro.params.suffix`, so results of different settings coexist, and a variant tag
only where a product has variants (``04_difference…_percentile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exo2micro.params import STAGE_NAMES, suffix
from exo2micro.stage_params import PairParams
from exo2micro.suggest import did_you_mean

#: Image formats of checkpoints and difference images: TIFF, FITS or both. The name's codec
#: part says how TIFF tiles are stored: ``tiff``/``both`` uncompressed (the fastest to write
#: and read, and what every TIFF reader opens), ``-zstd`` zstd at level 1 (integer images —
#: the stage-1 signals — with horizontal differencing, about 45 % of the raw bytes; float
#: images without a predictor, which Bio-Formats cannot undo for floats, so they only shrink
#: to about 90 %), ``-deflate`` the same with deflate, for readers without zstd. FITS stays
#: uncompressed, for memory mapping (docs/output.md).
CHECKPOINT_FORMATS = ("tiff", "fits", "both", "tiff-zstd", "tiff-deflate", "both-zstd",
                      "both-deflate")
SCALE_KINDS = ("moffat", "percentile", "manual")


@dataclass(frozen=True)
class PairLayout:
    """Paths of one pair folder ``root`` for the resolved parameters ``params``."""

    root: Path
    params: PairParams

    def sfx(self, stage: int) -> str:
        return suffix(self.params, stage)

    # stage records -------------------------------------------------------------------
    def record(self, stage: int) -> Path:
        return self.root / "stages" / f"0{stage}_{STAGE_NAMES[stage]}{self.sfx(stage)}.json"

    # stage 1 ---------------------------------------------------------------------------
    def signal(self, which: str) -> Path:
        """Single-channel full-resolution image of ``which`` ('pre' or 'post')."""
        return self.root / "tiff" / f"01_{which}_signal{self.sfx(1)}.tif"

    def pyramid(self, which: str) -> Path:
        return self.root / "cache" / f"01_{which}_pyramid{self.sfx(1)}.tif"

    # stage 2 ---------------------------------------------------------------------------
    def boundary_transform(self) -> Path:
        return self.root / "transforms" / f"02_boundary{self.sfx(2)}.json"

    def icp_aligned_pre(self, fmt: str) -> Path:
        return self._image(fmt, f"02_icp_aligned_pre{self.sfx(2)}")

    # stage 3 ---------------------------------------------------------------------------
    def interior_transform(self) -> Path:
        return self.root / "transforms" / f"03_interior{self.sfx(3)}.json"

    def aligned_pre(self, fmt: str) -> Path:
        return self._image(fmt, f"03_interior_aligned_pre{self.sfx(3)}")

    # stage 4 ---------------------------------------------------------------------------
    def difference(self, fmt: str, kind: str = "moffat") -> Path:
        tag = "" if kind == "moffat" else f"_{kind}"
        return self._image(fmt, f"04_difference{self.sfx(4)}{tag}")

    def scale_map(self, fmt: str) -> Path:
        """The map of a spatially varying k (``k_model``), one px per 16 × 16 output px."""
        return self._image(fmt, f"04_scale_map{self.sfx(4)}")

    # stage 5 ---------------------------------------------------------------------------
    def significance(self, fmt: str) -> Path:
        """The significance image ``difference / σ`` of stage 5."""
        return self._image(fmt, f"05_detect_significance{self.sfx(5)}")

    def detections(self, ext: str) -> Path:
        """The source catalogue of stage 5: ``ext`` 'csv' or 'ecsv'."""
        return self.root / f"detections{self.sfx(5)}.{ext}"

    def plot(self, name: str) -> Path:
        """A PNG diagnostic; names carry the stage-4 suffix so settings coexist."""
        return self.root / "pipeline_output" / f"{name}{self.sfx(4)}.png"

    def stage_plot(self, name: str, stage: int) -> Path:
        return self.root / "pipeline_output" / f"{name}{self.sfx(stage)}.png"

    def result(self) -> Path:
        return self.root / "result.json"

    def _image(self, fmt: str, stem: str) -> Path:
        if fmt == "tiff":
            return self.root / "tiff" / f"{stem}.tif"
        if fmt == "fits":
            return self.root / "fits" / f"{stem}.fits"
        raise ValueError(f"image format must be 'tiff' or 'fits', got {fmt!r}")

    def relative(self, path: Path) -> str:
        """``path`` relative to the pair folder, as stored in records and result.json."""
        return str(Path(path).relative_to(self.root))


def formats(checkpoint_format: str) -> tuple[str, ...]:
    """The image formats written for a ``checkpoint_format`` (:data:`CHECKPOINT_FORMATS`)."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format must be one of {', '.join(CHECKPOINT_FORMATS)}, "
                         f"got {checkpoint_format!r}"
                         f"{did_you_mean(str(checkpoint_format), CHECKPOINT_FORMATS)}")
    base = checkpoint_format.split("-")[0]
    return ("tiff", "fits") if base == "both" else (base,)


def tiff_compression(checkpoint_format: str) -> str | None:
    """The tifffile codec of the TIFF checkpoints: 'zstd' for ``*-zstd``, 'deflate' for
    ``*-deflate``, ``None`` (uncompressed tiles) for plain ``tiff``/``both``/``fits``."""
    formats(checkpoint_format)  # validates
    _, _, codec = checkpoint_format.partition("-")
    return codec or None
