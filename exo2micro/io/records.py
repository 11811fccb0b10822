"""Stage records: the small JSON each stage writes last, and the resume check built on it.

A record lists what the stage did (parameters, fingerprint, outputs with their checksums,
timings, peak RSS, warnings); stage 1's also lists the identity of both raw TIFFs. It is
written atomically *after* every output, so its presence with status ``complete`` means the
outputs were complete when it was written. :func:`stage_is_current` re-checks that the
fingerprint matches the current parameters, that stage 1's raw inputs are still the same files
(size and content hash), that the upstream stage was not re-run since, and that every output
still has the size and checksum recorded — the resume rule of docs/contracts.md ("Resume").
A record is read back through its typed form (:class:`exo2micro.io.record_model.StageRecord`):
one that cannot be read or does not match it makes the stage not current.

Checksums (:func:`file_checksum`) are BLAKE2b over the whole file up to
:data:`FULL_HASH_BYTES`; beyond that over :data:`SAMPLED_BLOCKS` blocks of
:data:`BLOCK_BYTES` evenly spaced from the first byte to the last (for a 1.5 GiB checkpoint
16 MiB are read), plus the size. Raw inputs get the cheap form (:data:`RAW_BLOCKS` blocks: the
header, the first and last strips or tiles and evenly spaced data in between, 1 MiB read).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exo2micro import params as P
from exo2micro.io.atomic import write_json_atomic
from exo2micro.io.layout import PairLayout, formats
from exo2micro.io.record_model import StageRecord
from exo2micro.io.tiffio import OmeMeta
from exo2micro.resources import peak_rss_bytes

#: Files up to this size (bytes) are hashed whole.
FULL_HASH_BYTES = 64 << 20
#: Size (bytes) of one sampled block of a larger file.
BLOCK_BYTES = 64 << 10
#: Blocks hashed of a large output (evenly spaced, first and last included).
SAMPLED_BLOCKS = 256
#: Blocks hashed of a raw input TIFF (its identity; cheap, survives copies).
RAW_BLOCKS = 16


def file_checksum(path: Path, blocks: int = SAMPLED_BLOCKS) -> str:
    """``"blake2b:<hex>"`` of the file's size and content: the whole file when it is at most
    :data:`FULL_HASH_BYTES` (and at most ``blocks`` × :data:`BLOCK_BYTES`), else ``blocks``
    evenly spaced blocks of :data:`BLOCK_BYTES`, the first at byte 0 and the last ending at
    the last byte. Raises :class:`OSError` when the file cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest.update(size.to_bytes(8, "little"))
        if size <= min(FULL_HASH_BYTES, blocks * BLOCK_BYTES):
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        else:
            last = size - BLOCK_BYTES
            for i in range(blocks):
                digest.update(os.pread(fh.fileno(), BLOCK_BYTES, last * i // (blocks - 1)))
    return f"blake2b:{digest.hexdigest()}"


def raw_identity(path: Path) -> dict[str, Any]:
    """Identity of a raw input TIFF: absolute path, size, mtime_ns and the cheap content hash.
    Raises :class:`OSError` when it cannot be read."""
    st = Path(path).stat()
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "hash": file_checksum(Path(path), RAW_BLOCKS)}


def inputs_changed(recorded: Mapping[str, Any], inputs: Mapping[str, Path]) -> str | None:
    """Why the raw inputs differ from the identities recorded by stage 1, or ``None``.

    A raw file is the same when its size and content hash are; a new path or mtime alone (the
    raw folder was moved or copied) does not make a stage stale."""
    for which in ("pre", "post"):
        old = recorded.get(which) or {}
        try:
            new = raw_identity(inputs[which])
        except (OSError, KeyError):
            return f"the raw {which} image {inputs.get(which)} cannot be read"
        if (old.get("bytes"), old.get("hash")) != (new["bytes"], new["hash"]):
            same_path = old.get("path") == new["path"]
            what = "was replaced or re-exported" if same_path else "is a different file"
            return (f"the raw {which} image {new['path']} {what} since stage 1 ran "
                    f"({old.get('bytes')} → {new['bytes']} bytes, content hash "
                    f"{'same' if old.get('hash') == new['hash'] else 'differs'})")
    return None


def output_ok(path: Path) -> bool:
    """Cheap integrity check of one output by its type (never decodes full images)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    suffix = path.suffix.lower()
    if suffix in {".tif", ".tiff"}:
        from exo2micro.io.tiffio import check_readable

        return check_readable(path)
    if suffix == ".fits":
        from exo2micro.io.fitsio import check_readable as fits_ok

        return fits_ok(path)
    if suffix == ".json":
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return True
    return True


def load_record(path: Path) -> StageRecord:
    """The record at ``path``, checked (:meth:`StageRecord.from_json`, messages naming the
    file). Raises :class:`OSError` (:class:`FileNotFoundError` when absent) when it cannot be
    read and :class:`ValueError` when it is not JSON or not a stage record."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path.name} is not JSON ({exc})") from None
    return StageRecord.from_json(data, path.name)


def read_record(path: Path) -> StageRecord | None:
    """The record at ``path``, or ``None`` when absent, unreadable or not a stage record."""
    try:
        return load_record(path)
    except (OSError, ValueError):
        return None


def _run_id(path: Path) -> str | None:
    """The ``run_id`` of the record at ``path`` (``None`` when it has none or no record)."""
    rec = read_record(path)
    return rec.run_id if rec else None


def stage_is_current(layout: PairLayout, stage: int, checkpoint_format: str | None = None,
                     inputs: Mapping[str, Path] | None = None) -> tuple[bool, str]:
    """Whether stage ``stage`` can be skipped, and why (or why not).

    ``inputs`` (``{"pre": path, "post": path}``, stage 1 only) are the raw TIFFs this run
    would read; without them stage 1's record is checked against the files it names. A
    stage-1 record of exo2micro's loader without raw identities (an older version) is stale.

    With ``checkpoint_format``, a stage whose images come in that format (3, 4, and 2 with
    ``save_all_intermediates``) is current only if it wrote every format asked for now: a run
    that asks for FITS after a TIFF-only run writes the FITS files. (TIFF compression is not
    checked: compressed and plain TIFFs hold the same pixels.)
    """
    try:
        rec = load_record(layout.record(stage))
    except FileNotFoundError:
        return False, "no record"
    except (OSError, ValueError) as exc:
        return False, f"record unreadable: {exc}"
    if not rec.is_complete:
        return False, f"previous run ended with status {rec.status!r}"
    if rec.fingerprint != P.fingerprint(layout.params, stage):
        return False, "parameters or algorithm changed"
    if stage == 1 and "inputs" in rec.info:
        identity = rec.info.get("input_identity")
        if not isinstance(identity, dict):
            return False, "no identity of the raw images recorded (older exo2micro)"
        raws = inputs or {w: Path(v) for w, v in rec.section("inputs").items()}
        changed = inputs_changed(identity, raws)
        if changed:
            return False, changed
    if stage > 1 and rec.upstream_run_id != _run_id(layout.record(stage - 1)):
        return False, f"stage {stage - 1} was re-run since"
    outputs, checksums = rec.outputs, rec.checksums
    if checksums is None:
        return False, "no output checksums recorded (older exo2micro)"
    imaged = stage >= 3 or (stage == 2 and layout.params.get("save_all_intermediates"))
    if checkpoint_format is not None and imaged:
        for fmt in formats(checkpoint_format):
            if not any(rel.startswith(f"{fmt}/") for rel in outputs):
                return False, f"no {fmt.upper()} images yet (checkpoint_format {checkpoint_format})"
    for rel in outputs:
        path = layout.root / rel
        if not output_ok(path):
            return False, f"output {rel} missing or unreadable"
        try:
            same = file_checksum(path) == checksums.get(rel)
        except OSError:
            same = False
        if not same:
            return False, f"output {rel} changed since it was written (checksum differs)"
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
        """Write the stage record (last, atomically) and return it as written
        (:meth:`StageRecord.to_json`); ``extra`` adds to :attr:`info`."""
        self.timings_s["total"] = round(time.perf_counter() - self._t0, 3)
        rec = StageRecord(
            stage=self.stage,
            name=P.STAGE_NAMES[self.stage],
            status=status,
            fingerprint=P.fingerprint(self.layout.params, self.stage),
            params=P.stage_params(self.layout.params, self.stage),
            suffix=self.layout.sfx(self.stage),
            outputs=[self.layout.relative(p) for p in self.outputs],
            checksums={self.layout.relative(p): file_checksum(p) for p in self.outputs
                       if p.is_file()},
            timings_s=self.timings_s,
            peak_rss_bytes=peak_rss_bytes(),
            warnings=self.warnings,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            run_id=uuid.uuid4().hex,
            upstream_run_id=_run_id(self.layout.record(self.stage - 1)) if self.stage > 1
            else None,
            info={**self.info, **(extra or {})},
        ).to_json()
        write_json_atomic(self.layout.record(self.stage), rec)
        return rec


def require_stage(layout: PairLayout, stage: int) -> StageRecord:
    """The complete record of stage ``stage``, or :class:`InputDataError` saying to run it.

    Stages call this for their upstream stage so a missing input is reported as
    "run stage N first" rather than as a missing file deep inside.
    """
    from exo2micro.errors import InputDataError

    rec = read_record(layout.record(stage))
    if rec is None or not rec.is_complete:
        raise InputDataError(
            f"{layout.root}: stage {stage} ({P.STAGE_NAMES[stage]}) has not completed here "
            f"(no {layout.relative(layout.record(stage))}); run it first")
    return rec


def stage1_physical(layout: PairLayout, which: str) -> dict[str, Any]:
    """Stage 1's physical facts of ``which`` ('pre' or 'post'): ``pixel_size_um`` (µm) and
    ``exposure_s`` (s), ``None`` when unknown or stage 1 has no record."""
    rec = read_record(layout.record(1))
    image = rec.section("images").get(which) if rec else None
    if not isinstance(image, dict):
        image = {}
    return {"pixel_size_um": image.get("pixel_size_um"), "exposure_s": image.get("exposure_s")}


def product_ome(layout: PairLayout, name: str, dye: str, description: str | None = None
                ) -> OmeMeta:
    """The OME-XML facts of an output image in the post frame: its name, the dye as channel
    name and the post image's pixel size (docs/output.md)."""
    return OmeMeta(name, dye, stage1_physical(layout, "post")["pixel_size_um"], description)
