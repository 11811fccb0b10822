"""The batch summary (docs/output.md): a text table, ``summary.tsv``, ``summary.md``,
``counts.tsv``, ``manifest.json`` and ``report.html`` at the top of the output folder.

Both orchestrators build it from the same inputs: the per-pair results (``result.json`` dicts,
written for every pair that was attempted), the pairs discovery skipped (sample, dye, reason),
and — under Nextflow — the pairs that were expected (the samplesheet) and the failures the
workflow recorded (stage, exit code, attempts). A pair that was expected but has no result is
reported as failed, so a pair killed before it could write anything still shows up.

Per pair the tables show the scales k, the exposure ratio and k net of exposure (when both
exposure times are known), the post image's physical pixel size (µm, when known) and stage 5's
microbe count (sources with SNR ≥ 5, per mm² of tissue when the pixel size is known); the
counts also form a sample × dye table (``summary.md``, ``report.html``, ``counts.tsv``). A
finished pair needs review when stage 4's consistency check failed or when its warnings hold
another failed check (:func:`exo2micro.numerics.review.problems_in_warnings`: pixel sizes that
disagree with the measured scale); it is listed first under Problems.

Every path written is relative to the output folder. ``report.html`` is one self-contained
page: inline CSS and vanilla JavaScript (sort by any column, filter by text), and per pair
small thumbnails of the difference image, the detections and key diagnostics, embedded as
base64 PNGs made by box-averaging the full PNGs (matplotlib's PNG reader/writer, no other
imaging dependency), each linking to the full-size file; under the column headers, each plot's
one-line caption (:func:`exo2micro.report.captions.caption`). The embedded thumbnails share a byte
budget (:data:`EMBED_BUDGET_BYTES`), filled column by column (every pair's difference image first):
past it a cell links to the full PNG without a thumbnail, so the page of a batch of thousands of
pairs stays under Seqera Platform's 10 MB preview limit and opens quickly.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exo2micro.io.atomic import write_json_atomic, write_text_atomic
from exo2micro.io.contracts import ContractError
from exo2micro.io.result_model import PairResult
from exo2micro.params import STAGE_NAMES
from exo2micro.report.captions import caption

#: Diagnostics shown as thumbnails in the HTML report, in column order (plot names of
#: :meth:`exo2micro.io.layout.PairLayout.plot`, without the parameter suffix).
THUMBNAILS: tuple[tuple[str, str], ...] = (
    ("difference_image", "Difference"),
    ("detections", "Detections"),
    ("registration", "Registration"),
    ("ratio_histogram", "Ratio histogram"),
)
#: Longest side (px) of a thumbnail.
THUMB_SIDE = 160
#: Bytes of base64 thumbnails one report embeds at most (Seqera Platform previews reports up
#: to 10 MB; the table itself takes about 1 kB a pair).
EMBED_BUDGET_BYTES = 7_000_000
FILES = ("summary.tsv", "summary.md", "counts.tsv", "manifest.json", "report.html")
#: Reason of an expected pair without a result (and without a recorded failure).
NO_RESULT = "no result: the pair did not finish (no result.json was written)"
#: Stage names in stage order (``result.json`` ``stages`` keys).
STAGE_KEYS = tuple(STAGE_NAMES[s] for s in sorted(STAGE_NAMES))
#: Row states; ``needs-review``: finished, but a consistency check failed
#: (exo2micro.numerics.review).
STATES = ("complete", "needs-review", "error", "skipped")


# ------------------------------------------------------------------------------ rows
@dataclass
class PairRow:
    """One line of the summary: a complete, failed or skipped pair."""

    sample: str
    dye: str
    state: str                       # one of STATES
    reason: str = ""                 # full reason for error/skipped
    moffat: float | None = None
    percentile: float | None = None
    manual: float | None = None
    k_model: str = ""                    # "global" or "smooth" (stage 4's k_model)
    k_range: tuple[float, float] | None = None   # min, max of k over the tissue
    accuracy_px: float | None = None
    pixel_size_um: float | None = None   # post frame, µm; None when unknown
    exposure_ratio: float | None = None  # post / pre exposure time; None unless both known
    k_net_of_exposure: float | None = None   # Moffat k / exposure_ratio
    detections: int | None = None        # stage 5 sources; None: stage 5 did not run
    detections_snr5: int | None = None   # of which SNR >= 5
    detections_per_mm2: float | None = None  # all sources per mm² of tissue (pixel size known)
    stage2: str = ""
    stage3: str = ""
    last_stage: int | None = None
    wall_s: float | None = None
    peak_rss_bytes: int | None = None
    attempts: int | None = None
    exit_code: int | None = None
    error_class: str = ""
    error_stage: int | None = None
    fingerprint: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    stage_peaks: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    result_path: str = ""
    pair_dir: Path | None = None     # where the pair's files are (for thumbnails)
    suffix: str = ""

    @property
    def key(self) -> str:
        return f"{self.sample}/{self.dye}"

    @property
    def status(self) -> str:
        """The short status shown in tables."""
        if (self.state == "complete" and self.last_stage is not None
                and self.last_stage < len(STAGE_KEYS)):
            return f"complete (to stage {self.last_stage})"
        return self.state

    @property
    def microbes_per_mm2(self) -> float | None:
        """Sources with SNR ≥ 5 per mm² of tissue (``None`` without a pixel size or stage 5):
        the all-source density scaled by their share (both over the same tissue area)."""
        if self.detections_per_mm2 is None or self.detections_snr5 is None:
            return None
        if not self.detections:
            return self.detections_per_mm2
        return self.detections_per_mm2 * self.detections_snr5 / self.detections

    def problem(self) -> str:
        """One line for the Problems section: what went wrong, where, how often."""
        details = []
        if self.error_stage is not None:
            details.append(f"stage {self.error_stage}")
        if self.exit_code is not None:
            details.append(f"exit code {self.exit_code}")
        if self.attempts:
            details.append(f"{self.attempts} attempt{'s' if self.attempts > 1 else ''}")
        if self.error_class:
            details.append(self.error_class)
        where = f" ({', '.join(details)})" if details else ""
        return f"{self.key}: {self.state}{where}: {self.reason}"


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(value: Any) -> int | None:
    v = _num(value)
    return None if v is None else int(v)


def _range(value: Any) -> tuple[float, float] | None:
    """``[min, max]`` of two numbers as a tuple, else ``None``."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = _num(value[0]), _num(value[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def row_from_result(result: PairResult, pair_dir: Path | None = None) -> PairRow:
    """A summary row from a checked ``result.json`` (complete, needs-review or error).

    A complete pair whose warnings hold a failed consistency check
    (:func:`exo2micro.numerics.review.problems_in_warnings`) needs review, with that warning as
    (part of) its reason."""
    from exo2micro.numerics.review import problems_in_warnings

    sample, dye, status = result.sample, result.dye, result.status
    state = status if status in ("complete", "needs-review") else "error"
    reason = status.split(":", 1)[1].strip() if ":" in status and state == "error" else ""
    flagged = problems_in_warnings(result.warnings)
    if state == "complete" and flagged:
        state = "needs-review"
    if state == "needs-review":
        problems = list((result.review or {}).get("problems") or [])
        reason = ("; ".join(problems + [f for f in flagged if f not in problems])
                  or "a consistency check failed")
    exposure, found = result.exposure or {}, result.detections or {}
    alignment, error, runner = result.alignment or {}, result.error or {}, result.runner or {}
    stages = result.stages
    timings = {k: _num(v.get("timings_s", {}).get("total")) for k, v in stages.items()}
    peaks = {k: _int(v.get("peak_rss_bytes")) for k, v in stages.items()}
    done = [i + 1 for i, k in enumerate(STAGE_KEYS)
            if stages.get(k, {}).get("status") == "complete"]
    wall = _num(runner.get("wall_s"))
    if wall is None and any(v is not None for v in timings.values()):
        wall = sum(v for v in timings.values() if v is not None)
    base = f"{sample}/{dye}"
    return PairRow(
        sample=sample, dye=dye, state=state, reason=reason,
        moffat=_num(result.scale_estimate),
        percentile=_num(result.scale_percentile_value),
        manual=_num(result.manual_scale),
        k_model=result.k_model or "",
        k_range=_range(result.scale_range),
        accuracy_px=_num(alignment.get("estimated_accuracy_px")),
        pixel_size_um=_num(result.pixel_size_um),
        exposure_ratio=_num(exposure.get("ratio")),
        k_net_of_exposure=_num(exposure.get("k_net_of_exposure")),
        detections=_int(found.get("n")), detections_snr5=_int(found.get("n_snr5")),
        detections_per_mm2=_num(found.get("per_mm2")),
        stage2=alignment.get("stage2", {}).get("status", ""),
        stage3=alignment.get("stage3", {}).get("status", ""),
        # the last stage that completed (the runner's `last_stage` is the one it was asked to
        # reach); a failure's own stage is `error_stage`
        last_stage=max(done) if done else None,
        wall_s=wall,
        peak_rss_bytes=max((v for v in peaks.values() if v is not None), default=None),
        attempts=_int(error.get("attempts")) or _int(runner.get("attempts")),
        exit_code=_int(error.get("exit_code")), error_class=error.get("class", ""),
        error_stage=_int(error.get("stage")), fingerprint=result.fingerprint or "",
        params=result.params, meta=dict(result.meta),
        timings_s={k: v for k, v in timings.items() if v is not None},
        stage_peaks={k: v for k, v in peaks.items() if v is not None},
        outputs=[f"{base}/{o}" for o in result.outputs],
        result_path=f"{base}/result.json", pair_dir=pair_dir,
        suffix=result.suffix or "")


def _safe_row(result: Any, pair_dir: Path | None) -> PairRow:
    """:func:`row_from_result` of parsed ``result.json``, or an error row saying why it is not
    a result (a list, no status, a value of the wrong type: :meth:`PairResult.from_json`'s
    message): one bad file never stops a summary. ``sample`` and ``dye`` come from the pair
    folder when the file lacks them."""
    data = result if isinstance(result, dict) else {}
    sample = str(data.get("sample") or (pair_dir.parent.name if pair_dir else "?"))
    dye = str(data.get("dye") or (pair_dir.name if pair_dir else "?"))
    where = f"{sample}/{dye}/result.json"
    try:
        typed = PairResult.from_json({**result, "sample": sample, "dye": dye}
                                     if isinstance(result, dict) else result, where)
    except ContractError as exc:
        return PairRow(sample, dye, "error", f"{exc}; re-run the pair", pair_dir=pair_dir,
                       result_path=where)
    return row_from_result(typed, pair_dir)


@dataclass(frozen=True)
class Failure:
    """What the orchestrator knows about a failed pair (a ``failures.tsv`` row)."""

    sample: str
    dye: str
    stage: int | None = None
    exit_code: int | None = None
    attempts: int | None = None
    reason: str = ""


def collect_rows(results: Iterable[tuple[Mapping[str, Any], Path | None]],
                 skipped: Iterable[tuple[str, str, str]] = (),
                 expected: Iterable[tuple[str, str, Mapping[str, str]]] = (),
                 failures: Iterable[Failure] = ()) -> list[PairRow]:
    """All summary rows: results (with the folder of their files), then expected pairs with no
    result (failed), then skipped pairs. Failures enrich the failed rows of their pair."""
    by_key = {(f.sample, f.dye): f for f in failures}
    rows: list[PairRow] = []
    seen: set[tuple[str, str]] = set()
    extras = {(s, d): dict(m) for s, d, m in expected}
    for result, pair_dir in results:
        row = _safe_row(result, pair_dir)
        row.meta = {**extras.get((row.sample, row.dye), {}), **row.meta}
        rows.append(row)
        seen.add((row.sample, row.dye))
    for (sample, dye), meta in extras.items():
        if (sample, dye) not in seen:
            rows.append(PairRow(sample, dye, "error", NO_RESULT, meta=meta))
            seen.add((sample, dye))
    for row in rows:
        fail = by_key.get((row.sample, row.dye))
        if fail is None or row.state != "error":
            continue
        row.error_stage = row.error_stage if row.error_stage is not None else fail.stage
        row.exit_code = fail.exit_code if fail.exit_code is not None else row.exit_code
        row.attempts = max(row.attempts or 0, fail.attempts or 0) or None
        if row.reason == NO_RESULT and fail.reason:
            row.reason = fail.reason
        elif fail.reason and fail.reason not in row.reason:
            row.reason = f"{row.reason}; {fail.reason}" if row.reason else fail.reason
    rows += [PairRow(s, d, "skipped", reason) for s, d, reason in skipped
             if (s, d) not in seen]
    return rows


# ------------------------------------------------------------------------------ text
#: What the scale columns mean, printed under every table that shows them.
SCALE_LEGEND = ("k is how much brighter the mineral's autofluorescence is in post than in pre "
                "(post/pre); Moffat: fitted to the histogram of log10(post/pre), and the k of "
                "the main difference image; Percentile / Manual: the k asked for with "
                "scale_percentile / manual_scale.")
#: What the exposure columns mean (shown when a pair has both exposure times).
EXPOSURE_LEGEND = ("Exposure ratio: post / pre exposure time (pre_exposure_s / post_exposure_s "
                   "or the images' OME metadata); k net of exposure: Moffat k / exposure ratio, "
                   "the change of the autofluorescence that the exposure times do not explain "
                   "(1 = none).")
#: What the pixel-size column means (shown when a pair's pixel size is known).
PIXEL_LEGEND = ("Pixel µm: the post image's physical pixel size (every output from stage 2 on "
                "is in the post frame).")
#: What the microbe columns mean (shown when stage 5 ran for a pair).
MICROBE_LEGEND = ("Microbes: the sources stage 5 detected with SNR ≥ 5 ('12 of 15': of 15 "
                  "above a detect_threshold below 5); Microbes/mm² (per mm²): those per mm² of "
                  "tissue, when the pixel size is known.")


def _fmt_density(v: float) -> str:
    """A count per mm²: whole numbers from 100 on, else three significant digits."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _microbes(row: PairRow) -> str:
    """The microbe count of a row: SNR ≥ 5 sources, 'N of M' when fewer than all sources."""
    if row.detections_snr5 is None:
        return ""
    if row.detections is not None and row.detections != row.detections_snr5:
        return f"{row.detections_snr5} of {row.detections}"
    return str(row.detections_snr5)


@dataclass(frozen=True)
class Column:
    """A value column of the pair tables (text, summary.md, report.html): its header, the
    row's value (the sort key in report.html), how the value is shown, and the legend that
    explains it."""

    header: str
    value: Callable[[PairRow], float | int | None]
    fmt: str = "{}"
    show: Callable[[PairRow], str] | None = None
    legend: str = ""
    long: str = ""   # the header in report.html, when it differs

    @property
    def html_header(self) -> str:
        return self.long or self.header

    def text(self, row: PairRow) -> str:
        """The cell's text ('' when the row has no value)."""
        v = self.value(row)
        if v is None:
            return ""
        return self.show(row) if self.show is not None else self.fmt.format(v)


def value_columns(rows: Sequence[PairRow]) -> list[Column]:
    """The value columns of the pair tables: Moffat k always; percentile and manual k,
    exposure ratio and k net of exposure, pixel size, microbes and microbes per mm² when any
    row has them."""
    cols = [Column("Moffat", lambda r: r.moffat, "{:.4f}", legend=SCALE_LEGEND, long="Moffat k")]
    if any(r.percentile is not None for r in rows):
        cols.append(Column("Percentile", lambda r: r.percentile, "{:.4f}", long="Percentile k"))
    if any(r.manual is not None for r in rows):
        cols.append(Column("Manual", lambda r: r.manual, "{:.4f}", long="Manual k"))
    if any(r.exposure_ratio is not None for r in rows):
        cols += [Column("Exposure ratio", lambda r: r.exposure_ratio, "{:.4g}",
                        legend=EXPOSURE_LEGEND, long="Exp. ratio"),
                 Column("k net of exposure", lambda r: r.k_net_of_exposure, "{:.4f}",
                        long="k net of exp.")]
    if any(r.pixel_size_um is not None for r in rows):
        cols.append(Column("Pixel µm", lambda r: r.pixel_size_um, "{:.4g}",
                           legend=PIXEL_LEGEND))
    if any(r.detections_snr5 is not None for r in rows):
        cols.append(Column("Microbes", lambda r: r.detections_snr5, show=_microbes,
                           legend=MICROBE_LEGEND))
    if any(r.microbes_per_mm2 is not None for r in rows):
        cols.append(Column("Microbes/mm²", lambda r: r.microbes_per_mm2,
                           show=lambda r: _fmt_density(r.microbes_per_mm2 or 0.0),
                           long="per mm²"))
    return cols


def _legends(columns: Sequence[Column]) -> list[str]:
    """The legends of ``columns``, in column order."""
    return [c.legend for c in columns if c.legend]


def _table_cells(rows: Sequence[PairRow], columns: Sequence[Column]
                 ) -> tuple[list[str], list[list[str]]]:
    header = ["Sample", "Dye", *(c.header for c in columns), "Status"]
    body = [[r.sample, r.dye, *(c.text(r) or "-" for c in columns), r.status] for r in rows]
    return header, body


def format_text(rows: Sequence[PairRow]) -> str:
    """exo2micro 2.4's table (Sample, Dye, Moffat[, Percentile][, Manual], Status, with the
    exposure, pixel-size and microbe columns of :func:`value_columns` before Status when a pair
    has them) followed by the legends and a Problems section with the full reason of every
    pair that needs review, failed or was skipped."""
    if not rows:
        return "No pairs were run (no runnable pairs)."
    columns = value_columns(rows)
    header, body = _table_cells(rows, columns)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*cells) for cells in body]
    problems = _problems(rows)
    lines += ["", *_legends(columns), "", _counts_line(rows)]
    if problems:
        lines.append("")
        lines.append(f"Problems ({len(problems)}):")
        lines += [f"  {r.problem()}" for r in problems]
    return "\n".join(lines)


def _counts(rows: Sequence[PairRow]) -> dict[str, int]:
    return {s: sum(r.state == s for r in rows) for s in STATES}


def _counts_line(rows: Sequence[PairRow]) -> str:
    counts = _counts(rows)
    return (f"{len(rows)} pair(s): {counts['complete']} complete, {counts['needs-review']} "
            f"need review, {counts['error']} failed, {counts['skipped']} skipped")


def _problems(rows: Sequence[PairRow]) -> list[PairRow]:
    """Rows for the Problems section: those needing review first, then failed, skipped."""
    return sorted((r for r in rows if r.state != "complete"), key=lambda r: STATES.index(r.state))


def _meta_columns(rows: Sequence[PairRow]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r.meta))


TSV_COLUMNS = ("sample", "dye", "status", "reason", "scale_moffat", "scale_percentile",
               "manual_scale", "k_model", "k_min", "k_max", "accuracy_px", "pixel_size_um",
               "exposure_ratio", "k_net_of_exposure", "detections_n", "detections_n_snr5",
               "detections_per_mm2", "stage2", "stage3", "last_stage", "wall_s",
               "peak_rss_bytes", "attempts", "exit_code", "error_class", "error_stage",
               "fingerprint", "result")


def _tsv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return " ".join(str(v).split())


def format_tsv(rows: Sequence[PairRow]) -> str:
    meta = _meta_columns(rows)
    names = [*TSV_COLUMNS, *(m if m not in TSV_COLUMNS else f"meta_{m}" for m in meta)]
    lines = ["\t".join(names)]
    for r in rows:
        k_min, k_max = r.k_range or (None, None)
        values = [r.sample, r.dye, r.state, r.reason, r.moffat, r.percentile, r.manual,
                  r.k_model, k_min, k_max, r.accuracy_px, r.pixel_size_um, r.exposure_ratio,
                  r.k_net_of_exposure,
                  r.detections, r.detections_snr5, r.detections_per_mm2,
                  r.stage2, r.stage3, r.last_stage, r.wall_s, r.peak_rss_bytes,
                  r.attempts, r.exit_code, r.error_class, r.error_stage, r.fingerprint,
                  r.result_path, *(r.meta.get(m) for m in meta)]
        lines.append("\t".join(_tsv_value(v) for v in values))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ counts
#: What the sample × dye count table shows, printed above it.
COUNTS_LEGEND = ("Microbes (sources with SNR ≥ 5) per sample and dye, and per mm² of tissue "
                 "when the pixel size is known; * the pair needs review; failed / skipped: see "
                 "Problems; – stage 5 did not run.")


def count_table(rows: Sequence[PairRow]) -> tuple[list[str], list[tuple[str, dict[str, PairRow]]]]:
    """The dyes (sorted) and per sample (sorted) its rows by dye, the first row of a pair
    when there are several: the layout of the sample × dye count table (sorted, because the
    orchestrators list pairs in the order they finished or were found)."""
    dyes = sorted({r.dye for r in rows})
    samples: dict[str, dict[str, PairRow]] = {}
    for r in rows:
        samples.setdefault(r.sample, {}).setdefault(r.dye, r)
    return dyes, sorted(samples.items())


def _count_cell(row: PairRow | None) -> tuple[str, str]:
    """(count, per mm²) shown in a cell of the count table ('' for a pair not in the batch)."""
    if row is None:
        return "", ""
    if row.state == "error":
        return "failed", ""
    if row.state == "skipped":
        return "skipped", ""
    if row.detections_snr5 is None:
        return "–", ""
    mark = " *" if row.state == "needs-review" else ""
    density = row.microbes_per_mm2
    return f"{row.detections_snr5}{mark}", "" if density is None else _fmt_density(density)


def has_counts(rows: Sequence[PairRow]) -> bool:
    """Whether stage 5 counted microbes for any row (the count tables are shown then)."""
    return any(r.detections_snr5 is not None for r in rows)


def format_counts_tsv(rows: Sequence[PairRow]) -> str:
    """``counts.tsv``: one line per sample, per dye the columns ``<dye>_n_snr5`` (sources with
    SNR ≥ 5) and ``<dye>_n_snr5_per_mm2`` (those per mm² of tissue); empty where the pair did
    not run stage 5, failed, was skipped or (per mm²) has no pixel size."""
    dyes, samples = count_table(rows)
    names = ["sample", *(f"{d}_{c}" for d in dyes for c in ("n_snr5", "n_snr5_per_mm2"))]
    lines = ["\t".join(_tsv_value(n) for n in names)]
    for sample, by_dye in samples:
        values: list[Any] = [sample]
        for d in dyes:
            row = by_dye.get(d)
            if row is not None and row.state in ("complete", "needs-review"):
                values += [row.detections_snr5, row.microbes_per_mm2]
            else:
                values += [None, None]
        lines.append("\t".join(_tsv_value(v) for v in values))
    return "\n".join(lines) + "\n"


def _markdown_counts(rows: Sequence[PairRow]) -> list[str]:
    """The sample × dye count table of summary.md (empty when no pair counted microbes)."""
    if not has_counts(rows):
        return []
    dyes, samples = count_table(rows)
    out = ["", "## Microbes per sample and dye", "", COUNTS_LEGEND, "",
           "| Sample | " + " | ".join(_md(d) for d in dyes) + " |",
           "|" + "---|" * (len(dyes) + 1)]
    for sample, by_dye in samples:
        cells = []
        for d in dyes:
            count, density = _count_cell(by_dye.get(d))
            cells.append(f"{count} ({density}/mm²)" if density else count)
        out.append(f"| {_md(sample)} | " + " | ".join(_md(c) for c in cells) + " |")
    return out


# ------------------------------------------------------------------------------ markdown
def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_markdown(rows: Sequence[PairRow], title: str = "exo2micro batch summary") -> str:
    out = [f"# {title}", "", f"{_counts_line(rows)}.", ""]
    if rows:
        columns = value_columns(rows)
        header, body = _table_cells(rows, columns)
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in body]
        out += ["", "\n\n".join(_legends(columns))]
        out += _markdown_counts(rows)
    else:
        out.append("No runnable pairs.")
    problems = _problems(rows)
    if problems:
        out += ["", f"## Problems ({len(problems)})", ""]
        out += [f"- {_md(r.problem())}" for r in problems]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ manifest
def manifest(rows: Sequence[PairRow], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The machine-readable summary: one entry per pair with relative paths."""
    from exo2micro import __version__

    pairs = []
    for r in rows:
        entry: dict[str, Any] = {
            "sample": r.sample, "dye": r.dye, "status": r.state, "reason": r.reason or None,
            "result": r.result_path or None, "outputs": r.outputs,
            "scales": {"moffat": r.moffat, "percentile": r.percentile, "manual": r.manual},
            "k_model": r.k_model or None,
            "scale_range": list(r.k_range) if r.k_range else None,
            "accuracy_px": r.accuracy_px, "alignment": {"stage2": r.stage2 or None,
                                                        "stage3": r.stage3 or None},
            "pixel_size_um": r.pixel_size_um,
            "exposure": {"ratio": r.exposure_ratio, "k_net_of_exposure": r.k_net_of_exposure},
            "detections": None if r.detections is None else {
                "n": r.detections, "n_snr5": r.detections_snr5,
                "per_mm2": r.detections_per_mm2},
            "last_stage": r.last_stage, "timings_s": r.timings_s, "wall_s": r.wall_s,
            "peak_rss_bytes": {**r.stage_peaks, "max": r.peak_rss_bytes},
            "attempts": r.attempts, "fingerprint": r.fingerprint or None, "params": r.params,
            "meta": r.meta}
        if r.state == "needs-review":
            entry["review"] = r.reason
        if r.state == "error":
            entry["error"] = {"class": r.error_class or None, "stage": r.error_stage,
                              "exit_code": r.exit_code, "attempts": r.attempts,
                              "reason": r.reason}
        pairs.append(entry)
    return {"exo2micro_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "paths": "relative to this file's folder",
            "counts": _counts(rows), "meta_columns": _meta_columns(rows),
            **(extra or {}), "pairs": pairs}


# ------------------------------------------------------------------------------ HTML
def _find_png(row: PairRow, name: str, output_dir: Path) -> tuple[Path, str] | None:
    """The PNG diagnostic ``name`` of a pair: (file to read, link relative to output_dir)."""
    rels = [o for o in row.outputs if o.endswith(".png")
            and os.path.basename(o).startswith(name)]
    rels += [f"{row.key}/pipeline_output/{name}{row.suffix}.png",
             f"{row.key}/pipeline_output/{name}.png"]
    for rel in dict.fromkeys(rels):
        inside = rel[len(row.key) + 1:]
        for base, link in ((row.pair_dir, rel), (output_dir / row.key, rel)):
            if base is not None and (base / inside).is_file():
                return base / inside, link
    return None


def thumbnail_png(path: str | os.PathLike[str], max_side: int = THUMB_SIDE) -> bytes:
    """A small PNG of ``path``: box-averaged by an integer factor so that the longer side is
    at most ``max_side`` (block means keep thin lines and faint structure visible)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = np.asarray(mpimg.imread(os.fspath(path)), dtype=np.float32)  # PNG: floats in [0, 1]
    if img.ndim == 2:
        img = img[:, :, None]
    factor = max(1, math.ceil(max(img.shape[:2]) / max_side))
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    img = img[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).mean(axis=(1, 3))
    buf = io.BytesIO()
    if img.shape[2] == 1:
        mpimg.imsave(buf, img[:, :, 0], format="png", cmap="gray", vmin=0.0, vmax=1.0)
    else:
        mpimg.imsave(buf, np.clip(img, 0.0, 1.0), format="png")
    return buf.getvalue()


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.2em 0 .4em}
.counts span{display:inline-block;margin-right:1em;padding:.1em .6em;border-radius:1em}
.counts .complete{background:#e3f5ea}.error{background:#fde4e4}.skipped{background:#fff3d6}
tr.complete td.status{color:#116b32}
#problems li{margin:.2em 0}#problems b{font-family:ui-monospace,monospace}
#filter{width:28em;padding:.35em;font-size:1em;margin-right:1em}
table{border-collapse:collapse;margin-top:.6em}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:middle;text-align:left}
#pairs th,#pairs td{padding:.2em .35em}#pairs th{font-size:12px}
th{background:#f2f2f2;cursor:pointer;user-select:none;position:sticky;top:0}
th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
#pairs{font-size:13px}
td.thumb{min-width:104px}td.thumb img{display:block;max-width:100%;max-height:150px}
tr.captions td{vertical-align:top;background:#fafafa}
.caption{min-width:104px;max-width:170px;font-size:.85em;line-height:1.25;color:#555}
.legend{font-size:.9em;color:#444;margin:.4em 0}
table.microbes th{cursor:default;position:static}
table.microbes small{display:block;color:#555}
tr.error td.status{color:#a40000;font-weight:600}.needs-review{background:#fbe3f7}
tr.needs-review td.status{color:#8a0070;font-weight:600}tr.skipped td.status{color:#8a5a00}
td.status summary{cursor:pointer}
.reason{min-width:14em;max-width:24em;font-size:.9em;font-weight:400;color:#222;
overflow-wrap:anywhere}
"""

_JS = """
(function(){
 const table=document.getElementById('pairs'); if(!table) return;
 const body=table.tBodies[0], rows=Array.from(body.rows), filter=document.getElementById('filter'),
       count=document.getElementById('count');
 function apply(){
  const terms=filter.value.toLowerCase().split(/\\s+/).filter(Boolean); let n=0;
  rows.forEach(r=>{const t=r.textContent.toLowerCase();
   const ok=terms.every(s=>t.includes(s)); r.style.display=ok?'':'none'; if(ok) n++;});
  count.textContent=n+' of '+rows.length+' pairs shown';
 }
 filter.addEventListener('input',apply);
 Array.from(table.tHead.rows[0].cells).forEach((th,i)=>{
  if(th.dataset.nosort) return;
  th.addEventListener('click',()=>{
   const asc=!th.classList.contains('asc');
   Array.from(th.parentNode.cells).forEach(c=>c.classList.remove('asc','desc'));
   th.classList.add(asc?'asc':'desc');
   const key=r=>{const c=r.cells[i]; const v=c.dataset.v!==undefined?c.dataset.v:c.textContent;
    const x=parseFloat(v); return isNaN(x)||v===''?[1,v.toLowerCase()]:[0,x];};
   rows.sort((a,b)=>{const ka=key(a),kb=key(b);
    const c=ka[0]-kb[0]||(ka[1]<kb[1]?-1:ka[1]>kb[1]?1:0); return asc?c:-c;});
   rows.forEach(r=>body.appendChild(r));
  });
 });
 apply();
})();
"""


def _cell(value: Any, kind: str = "", fmt: str = "{}", shown: str | None = None) -> str:
    """A table cell of ``value`` (its sort key), shown as ``shown`` or formatted by ``fmt``."""
    if value is None or value == "":
        return f'<td class="{kind}" data-v=""></td>'
    if shown is None:
        shown = fmt.format(value) if not isinstance(value, str) else value
    return f'<td class="{kind}" data-v="{html.escape(str(value))}">{html.escape(shown)}</td>'


def _status_cell(row: PairRow) -> str:
    """The status cell; a reason folds out under the status (closed, it takes no width, and the
    row's text still holds it for the filter)."""
    status = html.escape(row.status)
    if not row.reason:
        return f'<td class="status" data-v="{status}">{status}</td>'
    return (f'<td class="status" data-v="{status}"><details><summary>{status}</summary>'
            f'<div class="reason">{html.escape(row.reason)}</div></details></td>')


def _thumbnail_cell(row: PairRow, name: str, label: str, output_dir: Path,
                    embed: bool = True) -> str:
    """A table cell with the embedded thumbnail of a diagnostic (``embed``), or a plain link,
    linking to the full PNG."""
    found = _find_png(row, name, output_dir)
    if found is None:
        return "<td></td>"
    path, link = found
    href = html.escape(urllib.parse.quote(link))
    plain = f'<td><a href="{href}">{html.escape(label)}</a></td>'
    if not embed:
        return plain
    try:
        data = base64.b64encode(thumbnail_png(path)).decode()
    except (OSError, ValueError, SyntaxError):  # unreadable PNG: link only
        return plain
    return (f'<td class="thumb"><a href="{href}"><img alt="{html.escape(label)} of '
            f'{html.escape(row.key)}" src="data:image/png;base64,{data}"></a></td>')


def thumbnail_columns(rows: Sequence[PairRow]) -> tuple[tuple[str, str], ...]:
    """The plots shown as thumbnail columns: :data:`THUMBNAILS`, and the map of k when a pair
    was scaled with one (``k_model`` smooth)."""
    if any(r.k_model == "smooth" for r in rows):
        return (*THUMBNAILS, ("scale_map", "k map"))
    return THUMBNAILS


def _thumbnail_cells(rows: Sequence[PairRow], output_dir: Path, threads: int,
                     budget: int = EMBED_BUDGET_BYTES) -> list[list[str]]:
    """The thumbnail cells of every row, column by column until the embedded thumbnails reach
    ``budget`` bytes; the cells after that are plain links (and cost no decoding). PNG decoding
    and encoding run in ``threads`` threads, a batch of ``threads`` cells at a time (zlib and the
    block averages release the GIL), which matters for hundreds of pairs."""
    from concurrent.futures import ThreadPoolExecutor

    columns = thumbnail_columns(rows)
    jobs = [(c, i) for c in range(len(columns)) for i in range(len(rows))]
    cells: dict[tuple[int, int], str] = {}
    used = 0
    step = max(1, threads) * 4
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(jobs), step):
            chunk = jobs[start:start + step]
            embed = used < budget
            made = pool.map(lambda job, embed=embed: _thumbnail_cell(
                rows[job[1]], *columns[job[0]], output_dir, embed), chunk)
            for job, cell in zip(chunk, made):
                cells[job] = cell
                used += len(cell) if embed else 0
    return [[cells[(c, i)] for c in range(len(columns))] for i in range(len(rows))]


def _count_table_html(rows: Sequence[PairRow]) -> str:
    """The sample × dye count table of report.html ('' when no pair counted microbes)."""
    if not has_counts(rows):
        return ""
    dyes, samples = count_table(rows)
    ths = "".join(f"<th>{html.escape(d)}</th>" for d in dyes)
    trs = []
    for sample, by_dye in samples:
        cells = []
        for d in dyes:
            row = by_dye.get(d)
            count, density = _count_cell(row)
            extra = f"<small>{html.escape(density)} /mm²</small>" if density else ""
            state = row.state if row is not None else ""
            cells.append(f'<td class="num {state}">{html.escape(count)}{extra}</td>')
        trs.append(f"<tr><td>{html.escape(sample)}</td>{''.join(cells)}</tr>")
    return (f'<section id="microbes"><h2>Microbes per sample and dye</h2>'
            f"<p>{html.escape(COUNTS_LEGEND)}</p><table class=\"microbes\"><thead><tr>"
            f"<th>Sample</th>{ths}</tr></thead><tbody>{''.join(trs)}</tbody></table></section>")


def render_html(rows: Sequence[PairRow], output_dir: str | os.PathLike[str],
                title: str = "exo2micro batch report", threads: int = 1) -> str:
    """The self-contained HTML report (see the module docstring); ``threads`` make the
    thumbnails."""
    out_dir = Path(output_dir)
    thumbs = _thumbnail_cells(rows, out_dir, threads)
    counts = _counts(rows)
    columns = value_columns(rows)
    meta = _meta_columns(rows)
    head = ["Sample", "Dye", "Status", *(c.html_header for c in columns)]
    tail = ["Accuracy px", "Stage 2 / 3", "Wall s", "Peak RSS GiB", "Tries", *meta]
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    plots = thumbnail_columns(rows)
    ths += "".join(f'<th data-nosort="1">{html.escape(label)}</th>' for _, label in plots)
    ths += "".join(f"<th>{html.escape(h)}</th>" for h in tail)
    captions = (f'<tr class="captions"><td colspan="{len(head)}"></td>'
                + "".join(f'<td><div class="caption">{html.escape(caption(name))}</div></td>'
                          for name, _ in plots)
                + f'<td colspan="{len(tail)}"></td></tr>')
    trs = []
    for r, thumb in zip(rows, thumbs):
        cells = [_cell(r.sample), _cell(r.dye), _status_cell(r),
                 *(_cell(c.value(r), "num", shown=c.text(r)) for c in columns), *thumb]
        cells += [_cell(r.accuracy_px, "num", "{:.3f}"),
                  _cell(" / ".join((r.stage2 or "-", r.stage3 or "-"))
                        if r.stage2 or r.stage3 else None),
                  _cell(r.wall_s, "num", "{:.1f}"),
                  _cell(None if r.peak_rss_bytes is None else r.peak_rss_bytes / 2**30, "num",
                        "{:.2f}"),
                  _cell(r.attempts, "num"), *(_cell(r.meta.get(m)) for m in meta)]
        trs.append(f'<tr class="{r.state}">' + "".join(cells) + "</tr>")
    problems = _problems(rows)
    prob_html = ""
    if problems:
        items = "".join(f"<li><b>{html.escape(r.key)}</b> "
                        f"{html.escape(r.problem()[len(r.key) + 2:])}</li>" for r in problems)
        prob_html = (f'<section id="problems"><h2>Problems ({len(problems)})</h2>'
                     f"<ul>{items}</ul></section>")
    created = time.strftime("%Y-%m-%d %H:%M")
    legends = "".join(f'<p class="legend">{html.escape(t)}</p>' for t in _legends(columns))
    table = (f'<input id="filter" type="search" placeholder="Filter rows: words that must all '
             f'appear, e.g. error CD070"><span id="count"></span>'
             f'<table id="pairs"><thead><tr>{ths}</tr>{captions}</thead>'
             f'<tbody>{"".join(trs)}</tbody></table>{legends}'
             if rows else "<p>No runnable pairs.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Created {created}. Paths are relative to this "
            f"page's folder; click a thumbnail for the full image, a column header to sort."
            f'</p><p class="counts"><span class="complete">{counts["complete"]} complete</span>'
            f'<span class="needs-review">{counts["needs-review"]} need review</span>'
            f'<span class="error">{counts["error"]} failed</span>'
            f'<span class="skipped">{counts["skipped"]} skipped</span></p>{prob_html}'
            f"{_count_table_html(rows)}<h2>Pairs</h2>{table}"
            f"<script>{_JS}</script></body></html>\n")


# ------------------------------------------------------------------------------ files
def write_summary(output_dir: str | os.PathLike[str], rows: Sequence[PairRow],
                  extra: Mapping[str, Any] | None = None, threads: int = 1) -> dict[str, Path]:
    """Write ``summary.tsv``, ``summary.md``, ``counts.tsv``, ``manifest.json`` and
    ``report.html`` into ``output_dir`` (atomically, each) and return their paths. ``threads``
    make the report's thumbnails."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    write_text_atomic(paths["summary.tsv"], format_tsv(rows))
    write_text_atomic(paths["summary.md"], format_markdown(rows))
    write_text_atomic(paths["counts.tsv"], format_counts_tsv(rows))
    write_json_atomic(paths["manifest.json"], manifest(rows, extra))
    write_text_atomic(paths["report.html"], render_html(rows, out, threads=threads))
    return paths


# ------------------------------------------------------------------------------ inputs
def read_result_files(paths: Iterable[str | os.PathLike[str]]
                      ) -> list[tuple[dict[str, Any], Path]]:
    """Load ``result.json`` files; a file that cannot be parsed becomes an error result."""
    out = []
    for p in paths:
        path = Path(p)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            data = {"sample": path.parent.parent.name, "dye": path.parent.name,
                    "status": f"error: unreadable result file {path}: {exc}"}
        out.append((data, path.parent))
    return out


def _read_tsv(path: str | os.PathLike[str], columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a TSV with the given columns; a header row naming them is optional."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for cells in csv.reader(fh, delimiter="\t"):
            if not cells or not any(c.strip() for c in cells):
                continue
            if [c.strip().lower() for c in cells[:2]] == list(columns[:2]):
                continue
            rows.append(dict(zip(columns, (c.strip() for c in cells))))
    return rows


def read_skipped(path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """``sample, dye, reason`` rows (as written by ``e2m-discover --skipped``)."""
    return [(r.get("sample", ""), r.get("dye", ""), r.get("reason", ""))
            for r in _read_tsv(path, ("sample", "dye", "reason"))]


def read_failures(path: str | os.PathLike[str]) -> list[Failure]:
    """``sample, dye, stage, exit_code, attempts, reason`` rows written by the workflow."""
    return [Failure(r.get("sample", ""), r.get("dye", ""), _int(r.get("stage")),
                    _int(r.get("exit_code")), _int(r.get("attempts")), r.get("reason", ""))
            for r in _read_tsv(path, ("sample", "dye", "stage", "exit_code", "attempts",
                                      "reason"))]
