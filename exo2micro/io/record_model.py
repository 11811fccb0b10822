"""The typed form of a stage record (``stages/0N_<name>[_suffix].json``, see
:mod:`exo2micro.io.records`).

:class:`StageRecord` is the envelope every stage writes (stage, parameters and fingerprint,
outputs with their checksums, timings, peak RSS, warnings, creation time and run ids) and
keeps the stage's own keys in :attr:`StageRecord.info`, an open mapping.
:meth:`StageRecord.to_json` is what is written; :meth:`StageRecord.from_json` checks a record
read back (resume, ``result.json``) and raises :class:`exo2micro.io.contracts.ContractError`
naming the first envelope key of the wrong type. Light to import (no numpy).

Schema versions work as in :mod:`exo2micro.io.result_model`: a record without
``schema_version`` is version 1 (every record written so far, whose bytes stay as they were);
a reader refuses versions newer than :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any

from exo2micro.io.contracts import check_version, load_fields
from exo2micro.io.contracts import json_schema as contract_schema

#: The stage-record schema version this package writes and reads (see the module docstring).
SCHEMA_VERSION = 1
#: Name of the field holding the stage's own keys.
INFO = "info"
#: Envelope keys written after the stage's own keys (stages 2 … 5 only).
_TAIL = ("upstream_run_id",)


@dataclass
class StageRecord:
    """A stage record: the envelope keys in the order written, then :attr:`info`, then
    ``upstream_run_id`` (stages 2 … 5).

    Every key is written; none is required when reading: a key missing from an older or
    partial record reads as its default (``checksums`` ``None``: none recorded, ``status``
    ``None``: not complete), and :meth:`to_json` of such a record writes the defaults.
    """

    stage: Annotated[int | None, "1 … 5"] = None
    name: Annotated[str | None, "the stage's name (load, align_boundary, ...)"] = None
    status: Annotated[str | None, "complete, or why the run did not complete"] = None
    fingerprint: Annotated[str | None, "the stage's parameter and algorithm fingerprint"] = None
    params: Annotated[dict[str, Any], "the parameters the stage depends on"] = \
        field(default_factory=dict)
    suffix: Annotated[str | None, "file-name suffix of the stage's parameters"] = None
    outputs: Annotated[list[str], "relative to the pair folder"] = field(default_factory=list)
    checksums: Annotated[dict[str, str] | None, "by output; absent in older records"] = None
    timings_s: Annotated[dict[str, float], "s per step; 'total' the whole stage"] = \
        field(default_factory=dict)
    peak_rss_bytes: Annotated[int | None, "bytes"] = None
    warnings: list[str] = field(default_factory=list)
    created: Annotated[str | None, "local time, %Y-%m-%dT%H:%M:%S%z"] = None
    run_id: Annotated[str | None, "unique id of this run of the stage"] = None
    upstream_run_id: Annotated[str | None, "run_id of the upstream stage's record (stages 2 … 5)"
                               ] = None
    schema_version: Annotated[int, "absent in version 1"] = SCHEMA_VERSION
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.info) & {f.name for f in fields(self)})
        if clash:
            raise ValueError(f"stage {self.stage}: the stage's own key {clash[0]!r} is an "
                             "envelope key of its record")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the record file (values shared, not copied)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in (INFO, "schema_version", *_TAIL)}
        if self.schema_version != 1:
            out["schema_version"] = self.schema_version
        out.update(self.info)
        if self.stage is not None and self.stage > 1:
            out.update({name: getattr(self, name) for name in _TAIL})
        return out

    @classmethod
    def from_json(cls, data: Any, what: str = "stage record") -> StageRecord:
        """Check a parsed record and return its typed form; ``what`` names the file in
        messages. Raises :class:`ContractError` (a ``ValueError``) for an envelope value of the
        wrong type or a schema version newer than
        :data:`SCHEMA_VERSION`."""
        found = load_fields(cls, data, what, rest=INFO)
        check_version(found.get("schema_version", 1), SCHEMA_VERSION, what)
        return cls(**found)

    @property
    def is_complete(self) -> bool:
        """Whether the run that wrote the record completed."""
        return self.status == "complete"

    def section(self, key: str) -> dict[str, Any]:
        """The stage's own object ``key`` of :attr:`info` (``{}`` when absent or not an
        object)."""
        value = self.info.get(key)
        return value if isinstance(value, dict) else {}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a stage record's envelope (docs/output.md)."""
    return contract_schema(StageRecord, "stage record",
                           "The envelope of a stage record, stages/0N_<name>[_suffix].json "
                           "(exo2micro.io.record_model.StageRecord); each stage adds its own "
                           "keys.", rest=INFO)
