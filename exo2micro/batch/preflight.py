"""Pre-flight: a pair's peak memory, disk and time from its TIFF headers, and the batch check.

Estimating a pair
-----------------
:func:`estimate_pair` reads only the two raw TIFF headers (:func:`exo2micro.io.tiffio.read_info`)
and returns, per stage and in total, the peak resident memory of a fresh process running the
stage (``mem_bytes``), the bytes the stage writes (``disk_bytes``) and its wall time at one
thread (``time_s``, an upper bound).

Memory is a linear model per stage over measured components (:data:`FEATURES`): a fixed
baseline (the Python process with numpy, OpenCV, tifffile, matplotlib imported), per-thread
buffers, the alignment pyramid, raw row blocks, the raw reader's decoded-segment cache (a file
stored as one compressed strip must be decoded whole), streamed float32 output blocks per
thread, the tile caches of the tiled intermediates and the plot previews. Which components a
stage uses follows from its code; the coefficients (bytes per pixel, bytes per byte) are
measured, not guessed: ``bench/memory_model.py --write`` runs pairs of four sizes, 1–4 threads
and two raw layouts through :func:`exo2micro.pipeline.run_pair` and fits them to the peak RSS
each stage records, into ``assets/memory_model.json``. Disk is computed exactly from the
output layout (tile padding, formats, active scales) plus a measured allowance for the PNGs.

Stage 1 handles pre and post in two threads when ``threads ≥ 2``, so their per-image terms add
up; with one thread they are taken one at a time (the larger counts). ``threads=None`` assumes
the concurrent (larger) case.

The batch check
---------------
:func:`check` compares the estimate of a batch with the machine: peak RAM of the tasks that run
at once (the largest estimates, one per concurrent worker) with :func:`available_memory` (the
smaller of free memory and the cgroup limit's headroom), and the bytes to write with the free
space at the output folder. Each resource is OK (≤ 80 %), HIGH (80–100 %, a warning) or
EXCEEDS AVAILABLE (> 100 %): then :class:`PreflightMemoryError` (a :class:`MemoryError`) or
:class:`PreflightDiskError` (an :class:`OSError`) is raised with a remediation list that shows
the current values — unless ``force_run`` downgrades it to a warning, which is recorded in every
task's result. Stages that are already current (resume) are left out of the estimate.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exo2micro import params as P
from exo2micro.errors import InputDataError, ResourceError
from exo2micro.io.layout import PairLayout, formats
from exo2micro.io.records import stage_is_current
from exo2micro.io.tiffio import READER_CACHE_BYTES, TILE, ImageInfo, read_info
from exo2micro.numerics.pyramid import first_factor
from exo2micro.resources import available_memory, current_rss_bytes, load_strips_in_flight
from exo2micro.stage_params import PairParams

MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "memory_model.json"

#: Longest side of stage 4's plot previews (:data:`exo2micro.stages.subtract.PREVIEW_MAX_SIDE`).
PREVIEW_SIDE = 2048

#: Memory components, each in bytes or pixels as named (see :func:`features`).
FEATURES: tuple[str, ...] = (
    "one",                # 1: the fixed baseline
    "threads",            # thread count: per-thread buffers of OpenCV and the stage pools
    "level_px",           # level-1 pyramid pixels of pre + post
    "level_px_conc",      # level-1 pyramid pixels of the images stage 1 handles at once
    "raw_block_conc",     # bytes of the raw 512-row blocks stage 1 holds, images at once
    "raw_cache_bytes",    # decoded-segment caches of both raw readers (open all of stage 1)
    "out_block",          # bytes of one float32 512-row output block
    "out_block_threads",  # bytes of one float32 512-row output block × threads
    "signal_cache",       # tile caches of the tiled intermediates a stage reads
    "preview_px",         # pixels of the plot previews (output frame reduced to ≤ 2048 px)
)

#: Fraction of available memory/disk above which a warning is printed, and the refusal limit.
WARN_FRACTION = 0.8
#: :data:`WARN_FRACTION` as the messages state it ("80 %").
WARN_PERCENT = f"{WARN_FRACTION * 100:g} %"
REFUSE_FRACTION = 1.0


class PreflightMemoryError(ResourceError, MemoryError):
    """Estimated peak RAM exceeds the available memory (exit code 2 from the CLI)."""


class PreflightDiskError(ResourceError, OSError):
    """Estimated output size exceeds the free disk space (exit code 2 from the CLI)."""


# ------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class MemoryModel:
    """Coefficients of the per-stage memory and time models (``assets/memory_model.json``).

    ``memory[stage][feature]`` is bytes per unit of the feature; ``time[stage][feature]``
    seconds per unit (``one``, ``raw_px``, ``out_px``). ``baseline_bytes`` is the RSS of a
    fresh process after importing the pipeline; ``png_bytes`` the PNG diagnostics of a pair.
    """

    memory: dict[int, dict[str, float]]
    time: dict[int, dict[str, float]]
    baseline_bytes: float
    png_bytes: float
    calibration: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str] = MODEL_PATH) -> MemoryModel:
        data = json.loads(Path(path).read_text())
        return cls(memory={int(s): dict(v) for s, v in data["memory"].items()},
                   time={int(s): dict(v) for s, v in data["time"].items()},
                   baseline_bytes=float(data["baseline_bytes"]),
                   png_bytes=float(data["png_bytes"]),
                   calibration=dict(data.get("calibration", {})))

    def to_json(self) -> dict[str, Any]:
        return {"memory": {str(s): v for s, v in self.memory.items()},
                "time": {str(s): v for s, v in self.time.items()},
                "baseline_bytes": self.baseline_bytes, "png_bytes": self.png_bytes,
                "calibration": self.calibration}


@functools.lru_cache(maxsize=1)
def default_model() -> MemoryModel:
    """The shipped model (read once per process)."""
    return MemoryModel.load()


# ------------------------------------------------------------------------------ features
def _info(image: str | os.PathLike[str] | ImageInfo) -> ImageInfo:
    return image if isinstance(image, ImageInfo) else read_info(image)


def _level_px(info: ImageInfo) -> int:
    f = first_factor(info.height, info.width)
    return -(-info.height // f) * -(-info.width // f)


def _raw_cache(info: ImageInfo) -> int:
    if info.memmappable:
        return 0
    return min(info.decoded_bytes, max(READER_CACHE_BYTES, info.largest_segment_bytes))


def _decodes_whole(info: ImageInfo) -> bool:
    """Mirrors :attr:`exo2micro.io.tiffio.TiffImage.decodes_whole` from the header."""
    return not info.memmappable and info.largest_segment_bytes > READER_CACHE_BYTES


def features(pre: ImageInfo, post: ImageInfo, values: PairParams,
             threads: int | None) -> dict[str, float]:
    """The memory components of a pair (see :data:`FEATURES`) for ``threads`` threads."""
    # stage 1 reads pre and post one at a time when either must be decoded whole
    concurrent = (threads is None or threads >= 2) and not (_decodes_whole(pre)
                                                            or _decodes_whole(post))
    n_threads = 2 if threads is None else max(1, int(threads))

    def conc(a: float, b: float) -> float:
        return a + b if concurrent else max(a, b)

    pad = values.load.pad
    out_h, out_w = post.height + 2 * pad, post.width + 2 * pad
    itemsize = {w: np.dtype(i.dtype).itemsize for w, i in (("pre", pre), ("post", post))}
    signal = {w: i.height * i.width * itemsize[w] for w, i in (("pre", pre), ("post", post))}
    reduce = max(1, math.ceil(max(out_h, out_w) / PREVIEW_SIDE))
    raws = (pre, post)
    return {
        "one": 1.0,
        "threads": float(n_threads),
        "level_px": float(_level_px(pre) + _level_px(post)),
        "level_px_conc": float(conc(_level_px(pre), _level_px(post))),
        "raw_block_conc": float(conc(TILE * pre.width * pre.samples * itemsize["pre"],
                                     TILE * post.width * post.samples * itemsize["post"])
                                * load_strips_in_flight(n_threads, concurrent)),
        "raw_cache_bytes": float(conc(*(_raw_cache(i) for i in raws))),
        "out_block": float(TILE * out_w * 4),
        "out_block_threads": float(TILE * out_w * 4 * n_threads),
        "signal_cache": float(sum(min(READER_CACHE_BYTES, b) for b in signal.values())
                              + min(READER_CACHE_BYTES, out_h * out_w * 4)),
        "preview_px": float(-(-out_h // reduce) * -(-out_w // reduce)),
    }


def _tiled_bytes(h: int, w: int, itemsize: int) -> int:
    return -(-h // TILE) * TILE * -(-w // TILE) * TILE * itemsize


def _image_bytes(h: int, w: int, itemsize: int, fmt: str) -> int:
    """Bytes of one written image: a tiled TIFF (tiles padded) or a FITS (2880-byte blocks)."""
    if fmt == "tiff":
        return _tiled_bytes(h, w, itemsize)
    return -(-(h * w * itemsize) // 2880) * 2880 + 2880 * 2


def stage_disk_bytes(stage: int, pre: ImageInfo, post: ImageInfo, values: PairParams,
                     checkpoint_format: str, model: MemoryModel) -> int:
    """Bytes stage ``stage`` writes for a pair (exact for images; records are a few kB).

    Stage 1 assumes one signal channel (native dtype); a dye summed over several channels
    writes the widened dtype (twice the bytes for 8-bit RGB).
    """
    pad = values.load.pad
    out_h, out_w = post.height + 2 * pad, post.width + 2 * pad
    fmts = formats(checkpoint_format)
    small = 64 << 10  # stage record, transforms, result.json
    if stage == 1:
        return small + sum(
            _tiled_bytes(i.height, i.width, np.dtype(i.dtype).itemsize)
            + _level_px(i) * 4 * 4 // 3 for i in (pre, post))
    if stage == 4:  # one difference image per active scale
        extra = (values.subtract.scale_percentile, values.subtract.manual_scale)
        images = 1 + sum(v is not None for v in extra)
    else:  # stage 3's aligned pre, stage 5's significance; stage 2's only with
        # save_all_intermediates
        images = int(stage in (3, 5) or (stage == 2 and values.boundary.save_all_intermediates))
    written = sum(_image_bytes(out_h, out_w, 4, f) for f in fmts) * images
    pngs = model.png_bytes if stage in (4, 5) else 0
    return int(small + written + pngs)


@dataclass(frozen=True)
class StageEstimate:
    """Estimate of one stage: peak RSS, bytes written, wall seconds at one thread."""

    mem_bytes: int
    disk_bytes: int
    time_s: float


@dataclass(frozen=True)
class Estimate:
    """Estimate of a pair over the stages that run: the peak of the per-stage peaks, the sum
    of bytes written and of times."""

    mem_bytes: int
    disk_bytes: int
    time_s: float
    stages: dict[int, StageEstimate] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mem_bytes": self.mem_bytes, "disk_bytes": self.disk_bytes,
                "time_s": round(self.time_s, 1),
                "stages": {str(s): vars(e) for s, e in self.stages.items()}}


def grid_time_factor(values: Mapping[str, Any]) -> float:
    """How many times longer than at the default grid stage 2 runs for ``values``: its time
    is dominated by the rotation × scale grid search (:func:`exo2micro.params.grid_cells`),
    so it grows with the number of cells (never estimated below the fitted default)."""
    default = math.prod(P.grid_cells(P.DEFAULTS))
    return max(1.0, math.prod(P.grid_cells(values)) / default)


def estimate_pair(pre: str | os.PathLike[str] | ImageInfo, post: str | os.PathLike[str] | ImageInfo,
                  params: Mapping[str, Any] | None = None, checkpoint_format: str = "tiff", *,
                  threads: int | None = None, stages: Iterable[int] = P.STAGE_NAMES,
                  model: MemoryModel | None = None) -> Estimate:
    """Estimate peak RSS, disk and time of running ``stages`` of one pair, from headers only.

    ``pre``/``post`` are raw TIFF paths or their :class:`~exo2micro.io.tiffio.ImageInfo`;
    ``params`` are parameter overrides (validated). Raises
    :class:`~exo2micro.errors.InputDataError` for an unreadable header.
    """
    model = model or default_model()
    values = P.resolve(params)
    pre_i, post_i = _info(pre), _info(post)
    feats = features(pre_i, post_i, values, threads)
    pad = values.load.pad
    raw_px = pre_i.height * pre_i.width * pre_i.samples + post_i.height * post_i.width * (
        post_i.samples)
    out_px = (post_i.height + 2 * pad) * (post_i.width + 2 * pad)
    time_feats = {"one": 1.0, "raw_px": float(raw_px), "out_px": float(out_px)}
    per_stage: dict[int, StageEstimate] = {}
    for stage in stages:
        mem = sum(c * feats[f] for f, c in model.memory.get(stage, {}).items())
        secs = sum(c * time_feats[f] for f, c in model.time.get(stage, {}).items())
        if stage == 2:  # the model was fitted at the default grid; time follows its size
            secs *= grid_time_factor(values)
        per_stage[stage] = StageEstimate(
            int(max(mem, model.baseline_bytes)),
            stage_disk_bytes(stage, pre_i, post_i, values, checkpoint_format, model), secs)
    if not per_stage:
        return Estimate(0, 0, 0.0, {})
    return Estimate(max(e.mem_bytes for e in per_stage.values()),
                    sum(e.disk_bytes for e in per_stage.values()),
                    sum(e.time_s for e in per_stage.values()), per_stage)


# ------------------------------------------------------------------------------ batch plan
class PairLike(Protocol):
    """Anything with ``sample``, ``dye``, ``pre`` and ``post`` (e.g. a discovered PairSpec)."""

    sample: str
    dye: str
    pre: Path
    post: Path


def stages_to_run(pair_dir: str | os.PathLike[str], values: PairParams,
                  from_stage: int | None = None, to_stage: int | None = None,
                  force: bool = False, checkpoint_format: str | None = None) -> list[int]:
    """The stages a resume-aware run of a pair will execute: from the first stage that is not
    current (or ``from_stage``, or stage 1 with ``force``) to ``to_stage``."""
    last = to_stage or max(P.STAGE_NAMES)
    first = 1 if force else (from_stage or last + 1)
    layout = PairLayout(Path(pair_dir), values)
    for stage in range(1, min(first, last + 1)):
        if not stage_is_current(layout, stage, checkpoint_format)[0]:
            first = stage
            break
    return list(range(first, last + 1))


@dataclass(frozen=True)
class PairPlan:
    """A pair of the batch with the stages it will run and their estimate (``None`` when its
    headers could not be read: the pair will fail with that reason when it runs)."""

    sample: str
    dye: str
    stages: list[int]
    estimate: Estimate | None
    problem: str = ""


def plan_batch(pairs: Sequence[PairLike], output_dir: str | os.PathLike[str],
               params: Mapping[str, Any] | None = None, checkpoint_format: str = "tiff", *,
               from_stage: int | None = None, to_stage: int | None = None, force: bool = False,
               threads: int | None = None, model: MemoryModel | None = None) -> list[PairPlan]:
    """Estimate every pair of a batch over the stages that will actually run."""
    values = P.resolve(params)
    plans = []
    for pair in pairs:
        stages = stages_to_run(Path(output_dir) / pair.sample / pair.dye, values, from_stage,
                               to_stage, force, checkpoint_format)
        try:
            est = estimate_pair(pair.pre, pair.post, values, checkpoint_format,
                                threads=threads, stages=stages, model=model)
        except InputDataError as exc:
            plans.append(PairPlan(pair.sample, pair.dye, stages, None, str(exc)))
            continue
        plans.append(PairPlan(pair.sample, pair.dye, stages, est))
    return plans


# ------------------------------------------------------------------------------ the check
def fmt_bytes(n: float) -> str:
    """Human-readable size in binary units (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def free_disk(path: str | os.PathLike[str]) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _band(fraction: float) -> str:
    if fraction > REFUSE_FRACTION:
        return "exceeds"
    return "high" if fraction > WARN_FRACTION else "ok"


_MARK = {"ok": "✓", "high": "⚠ HIGH", "exceeds": "✗ EXCEEDS AVAILABLE"}


@dataclass
class Preflight:
    """Outcome of :func:`check`: the report lines, the numbers, and what it warned about."""

    lines: list[str]
    mem_needed: int
    mem_available: int
    mem_source: str
    disk_needed: int
    disk_free: int
    time_s: float
    mem_band: str
    disk_band: str
    forced: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def report(self) -> str:
        return "\n".join(self.lines)

    def to_json(self) -> dict[str, Any]:
        """What each task's result records about the pre-flight check."""
        return {"mem_needed_bytes": self.mem_needed, "mem_available_bytes": self.mem_available,
                "mem_source": self.mem_source, "disk_needed_bytes": self.disk_needed,
                "disk_free_bytes": self.disk_free, "estimated_time_s": round(self.time_s, 1),
                "memory": self.mem_band, "disk": self.disk_band, "forced": self.forced,
                "warnings": list(self.warnings)}


def _need(mems: Sequence[int], concurrent: int, in_process: bool, model: MemoryModel) -> int:
    """RAM the ``concurrent`` largest tasks need beyond what is in use now.

    Tasks in fresh processes (pool workers, subprocesses) each bring their own baseline; tasks
    run inside this process (serial, threads) share its baseline, which is already in use.
    """
    top = sorted(mems, reverse=True)[:concurrent]
    if not in_process:
        return int(sum(top))
    shared = min(current_rss_bytes(), model.baseline_bytes)
    return int(sum(max(0, m - shared) for m in top))


def max_workers_fitting(mems: Sequence[int], available: int, limit: int) -> int:
    """The largest worker count ≤ ``limit`` whose concurrent peak stays within
    :data:`WARN_FRACTION` of ``available`` (0 if even one task does not)."""
    ordered = sorted(mems, reverse=True)
    best = 0
    for n in range(1, limit + 1):
        if sum(ordered[:n]) <= WARN_FRACTION * available:
            best = n
    return best


#: Share of a pair's one-thread time that its threads divide (Amdahl's law): one 30 000 ×
#: 25 000 pair ran 38.9 s on 4 CPUs and 36.6 s on 16 (a 16-CPU node, docs/benchmarks.md),
#: i.e. about a quarter of its work runs in parallel; small pairs are dominated by fixed costs.
THREAD_SHARE = 0.25
#: ``auto`` takes the fewest workers whose estimated batch wall time is within this fraction of
#: the least (fewer workers: less memory, more threads per pair).
WALL_TOLERANCE = 0.02


def pair_seconds(one_thread_s: float, threads: int) -> float:
    """Estimated wall time (s) of a pair that takes ``one_thread_s`` on one thread, on
    ``threads`` threads (:data:`THREAD_SHARE`)."""
    return one_thread_s * (1 - THREAD_SHARE + THREAD_SHARE / max(1, threads))


def batch_seconds(times_s: Sequence[float], workers: int, threads: int) -> float:
    """Estimated wall time (s) of pairs of one-thread times ``times_s`` on ``workers`` workers
    of ``threads`` threads each: the longest first, each to the worker that is free first."""
    free = [0.0] * max(1, workers)
    for t in sorted(times_s, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + pair_seconds(t, threads))
    return max(free)


def fastest_workers(times_s: Sequence[float], budget: int, limit: int) -> int:
    """Worker count (1 … ``limit``) whose batch wall time (:func:`batch_seconds`, with
    ``budget // workers`` threads each) is least; of those within :data:`WALL_TOLERANCE` of it,
    the fewest. Many small pairs get many single-thread workers; a few large ones get fewer
    workers with more threads each."""
    walls = {w: batch_seconds(times_s, w, max(1, budget // w)) for w in range(1, max(1, limit) + 1)}
    least = min(walls.values())
    return min(w for w, wall in walls.items() if wall <= least * (1 + WALL_TOLERANCE))


def _memory_remedies(plans: Sequence[PairPlan], mems: Sequence[int], available: int,
                     mode: str, workers: int, values: PairParams) -> list[str]:
    out = []
    if mode in ("process", "thread") and workers > 1:
        fit = max_workers_fitting(mems, available, workers - 1)
        if fit >= 1:
            out.append(f"reduce n_workers (--workers) from {workers} to {fit}: {fit} × up to "
                       f"{fmt_bytes(max(mems))} fits in {WARN_PERCENT} of {fmt_bytes(available)}")
        out.append(f"use serial mode (parallel=False, --parallel serial): one task at a time "
                   f"needs up to {fmt_bytes(max(mems))}")
    if values.load.pad > 0:
        out.append(f"reduce pad from {values.load.pad} to 0 (the padded output frame is held "
                   f"in blocks by stages 3-4)")
    sized = sorted(((p.estimate.mem_bytes, f"{p.sample}/{p.dye}") for p in plans
                    if p.estimate is not None), reverse=True)
    if len(sized) > 1:
        out.append("run the largest pairs separately: " + ", ".join(
            f"{name} ({fmt_bytes(mem)})" for mem, name in sized[:3]))
    out.append("close other applications, or ask for more memory (Slurm --mem, a bigger "
               "machine, the Nextflow pipeline with per-pair memory)")
    out.append("force_run=True (--force-run) to run anyway: not recommended, the OOM killer "
               "may stop tasks half-way (their outputs stay consistent and resume re-runs them)")
    return out


def _disk_remedies(needed: int, free: int, output_dir: str | os.PathLike[str],
                   checkpoint_format: str, values: PairParams) -> list[str]:
    out = [f"free at least {fmt_bytes(needed - free)} at {output_dir}, or choose an output "
           f"folder on a larger disk (--outdir)"]
    if len(formats(checkpoint_format)) == 2:
        out.append("write one image format only: checkpoint_format='tiff' or 'fits' "
                   f"(currently '{checkpoint_format}'; halves the image bytes)")
    if values.boundary.save_all_intermediates:
        out.append("set save_all_intermediates=False (currently True; skips the stage-2 "
                   "aligned image)")
    if values.load.pad > 0:
        out.append(f"reduce pad from {values.load.pad} to 0 (smaller output images)")
    out.append("run fewer pairs at a time (--samples/--dyes)")
    out.append("force_run=True (--force-run) to run anyway: not recommended")
    return out


def check(plans: Sequence[PairPlan], *, output_dir: str | os.PathLike[str], mode: str,
          workers: int, params: Mapping[str, Any] | None = None,
          checkpoint_format: str = "tiff", force_run: bool = False,
          memory: tuple[int, str] | None = None, disk: int | None = None,
          model: MemoryModel | None = None) -> Preflight:
    """Check a planned batch against available memory and disk (see the module docstring).

    ``mode`` is ``serial``, ``process``, ``thread`` or ``subprocess``; ``workers`` the number of
    tasks that run at once. ``memory`` (bytes, source) and ``disk`` (free bytes) override the
    measured values (tests, what-if). Raises :class:`PreflightMemoryError` /
    :class:`PreflightDiskError` on a refusal unless ``force_run``.
    """
    model = model or default_model()
    values = P.resolve(params)
    avail, source = memory if memory is not None else available_memory()
    free = disk if disk is not None else free_disk(output_dir)
    ests = [p.estimate for p in plans if p.estimate is not None and p.stages]
    mems = [e.mem_bytes for e in ests] or [0]
    concurrent = max(1, min(workers, len(ests)))
    need = _need(mems, concurrent, mode in ("serial", "thread"), model)
    disk_need = sum(e.disk_bytes for e in ests)
    secs = sum(e.time_s for e in ests) / concurrent
    mem_frac = need / avail if avail > 0 else (math.inf if need else 0.0)
    disk_frac = disk_need / free if free > 0 else (math.inf if disk_need else 0.0)
    mem_band, disk_band = _band(mem_frac), _band(disk_frac)
    who = (f"{concurrent} at once × up to {fmt_bytes(max(mems))}" if concurrent > 1
           else f"1 task at a time, up to {fmt_bytes(max(mems))}")
    lines = ["=== Pre-flight resource check ===",
             f"RAM:  estimated peak {fmt_bytes(need)} ({who}) vs {fmt_bytes(avail)} available "
             f"[{source}] ({mem_frac:.0%}) {_MARK[mem_band]}",
             f"Disk: estimated {fmt_bytes(disk_need)} to write vs {fmt_bytes(free)} free at "
             f"{output_dir} ({disk_frac:.0%}) {_MARK[disk_band]}",
             f"Time: roughly {fmt_seconds(secs)} for {len(ests)} pair(s) to run "
             f"({concurrent} at a time; one-thread upper bound)"]
    skipped = len([p for p in plans if p.estimate is not None and not p.stages])
    if skipped:
        lines.append(f"Resume: {skipped} pair(s) already complete for these settings")
    lines += [f"Unreadable: {p.sample}/{p.dye}: {p.problem}" for p in plans if p.problem]
    lines.append("=" * len(lines[0]))
    result = Preflight(lines, need, avail, source, disk_need, free, secs, mem_band, disk_band)
    if mem_band == "high":
        result.warnings.append(f"estimated peak RAM {fmt_bytes(need)} is {mem_frac:.0%} of the "
                               f"available {fmt_bytes(avail)}")
    if disk_band == "high":
        result.warnings.append(f"estimated output {fmt_bytes(disk_need)} is {disk_frac:.0%} of "
                               f"the free {fmt_bytes(free)}")
    refusals: list[Exception] = []
    if mem_band == "exceeds":
        remedies = _memory_remedies(plans, mems, avail, mode, concurrent, values)
        refusals.append(PreflightMemoryError(
            f"estimated peak RAM {fmt_bytes(need)} exceeds the available {fmt_bytes(avail)} "
            f"[{source}] ({mem_frac:.0%})\n" + result.report + "\nTo fix, any of:\n"
            + "\n".join(f"  - {r}" for r in remedies)))
    if disk_band == "exceeds":
        remedies = _disk_remedies(disk_need, free, output_dir, checkpoint_format, values)
        refusals.append(PreflightDiskError(
            f"estimated output {fmt_bytes(disk_need)} exceeds the free disk space "
            f"{fmt_bytes(free)} at {output_dir} ({disk_frac:.0%})\n" + result.report
            + "\nTo fix, any of:\n" + "\n".join(f"  - {r}" for r in remedies)))
    if refusals and not force_run:
        raise refusals[0]
    if refusals:
        result.forced = True
        result.warnings += [f"force_run: {str(e).splitlines()[0]}" for e in refusals]
    return result
