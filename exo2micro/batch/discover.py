"""Find the (sample, dye) pairs to process: raw-directory discovery and samplesheet I/O.

Raw layout (README, "Input: the raw folder"): ``raw/<sample>/<files>.tif|.tiff``; the folder name
is the sample id.
Discovery reads names only, never file contents.

Classification rule
-------------------
A TIFF named ``<words>_<dye>.tif`` is a **pre-stain** (post-stain) image when exactly one kind of
marker occurs among its ``<words>`` (split at ``_``, ``-``, ``.`` and spaces) — a marker being a
word that, ignoring case, is ``pre`` (``post``) optionally followed by digits, or begins with
``prestain`` (``poststain``) — and its dye is the text after the last ``_``.

So ``Sample001_PreStain_SybrGld.tif``, ``my_2024-03-15_pre_run3_DAPI.tiff``,
``whatever_post_Cy5.TIF`` and ``x_Pre-Stain_DAPI.tif`` are classified, while words such as
``Compressed``, ``Cypress``, ``Postgate``, ``Prelim`` or ``Preview`` are never taken for markers
(the public exo2micro matched bare substrings, so a sample called ``Postgate`` broke it). A name
with both kinds of marker, with neither, or without a dye is rejected with a one-line reason
naming the file. Hidden files (``.*``, including macOS ``._*``) are skipped silently; other
non-TIFF files are listed at debug level. A dye never contains ``_``: a requested dye such as
``SybrGld_microbe`` is answered with a hint to rename the files (``..._SybrGld-microbe.tif``).

Checks
------
:func:`scan_raw_dir` first diagnoses the layout — missing, not a folder, empty, TIFFs at the top
level without sample folders, no sample folder holding a TIFF — and raises :class:`DiscoveryError`
(a :class:`~exo2micro.errors.LayoutError`, exit 65) with the expected layout drawn as a tree.
:func:`discover` then resolves the requested samples × dyes (default: everything found): each
pair is runnable, or missing, incomplete (only pre or only post) or duplicate. Strict mode raises
one error listing every problem pair; lenient mode returns them as :class:`SkippedPair`.

Samplesheet (docs/usage.md, "A samplesheet"): ``sample,dye,pre,post`` plus any extra columns,
validated against ``assets/schema_input.json`` (the same file Nextflow's nf-schema plugin
uses). Row numbers in messages are line numbers of the file (the header is row 1).

Optional columns give one pair's image facts (:data:`IMAGE_COLUMNS`): ``pixel_size_um`` (µm,
both images), ``pre_pixel_size_um`` / ``post_pixel_size_um`` (one image; over
``pixel_size_um``), ``channel`` (index or OME channel name) and ``pre_exposure_s`` /
``post_exposure_s`` (s). They override the batch-wide parameters of the same names for that
pair only (:attr:`PairSpec.image`, :mod:`exo2micro.params` "Per-pair image facts") and are kept
in ``extra`` like any other column. An empty cell means "not given".
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from exo2micro.errors import LayoutError
from exo2micro.io.atomic import write_text_atomic
from exo2micro.suggest import did_you_mean

if TYPE_CHECKING:
    import jsonschema

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "assets" / "schema_input.json"
SAMPLESHEET_COLUMNS: tuple[str, ...] = ("sample", "dye", "pre", "post")
#: Resource-estimate columns written by ``e2m-discover --estimates`` (read by the Nextflow
#: pipeline's resource directives). They are not pair metadata: reading a sheet drops them.
ESTIMATE_COLUMNS: tuple[str, ...] = ("mem_bytes", "time_s", "disk_bytes")
#: Columns of a resolved samplesheet that are not pair metadata: every other column is an extra
#: one (PairSpec.extra; the Nextflow pipeline's meta.extra, modules/local/constants.nf).
RESERVED_COLUMNS: tuple[str, ...] = (*SAMPLESHEET_COLUMNS, *ESTIMATE_COLUMNS)
#: Optional columns holding one pair's image facts (module docstring); the schema declares them.
IMAGE_COLUMNS: tuple[str, ...] = ("pixel_size_um", "pre_pixel_size_um", "post_pixel_size_um",
                                  "channel", "pre_exposure_s", "post_exposure_s")
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
ALL_DYES = "*"
"""Dye of a :class:`SkippedPair` that stands for every dye of its sample (e.g. empty folder)."""

NAMING_RULE = (
    "file names are <words>_<dye>.tif|.tiff: the dye is the text after the last '_', and "
    "exactly one of the words (split at '_', '-', '.', spaces) marks the image as pre-stain "
    "('pre', 'Pre2', 'PreStain', 'pre-stain', ...) or post-stain ('post', 'PostStain', ...)"
)

_WORD_SPLIT = re.compile(r"[_\-.\s]+")
_MARKER = re.compile(r"(pre|post)(\d*|stain.*)", re.IGNORECASE)

FileKind = Literal["pre", "post", "ambiguous", "unmarked", "invalid"]


class DiscoveryError(LayoutError, FileNotFoundError):
    """Bad raw-dir layout, bad samplesheet or (strict mode) problem pairs; exit code 65.

    Also a :class:`FileNotFoundError`, which is what the public exo2micro's ``run_batch``
    raised, so existing ``except FileNotFoundError`` handlers keep working.
    """


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class PairSpec:
    """One runnable pair: the pre- and post-stain TIFF of ``(sample, dye)``.

    ``pre``/``post`` are absolute paths; ``extra`` holds the samplesheet's extra columns
    (site, timepoint, ...), empty for pairs found in a raw directory.
    """

    sample: str
    dye: str
    pre: Path
    post: Path
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def id(self) -> str:
        """``<sample>_<dye>``: the task name (Nextflow ``meta.id``); dyes never contain ``_``."""
        return f"{self.sample}_{self.dye}"

    @property
    def image(self) -> dict[str, Any]:
        """The pair's own image facts from its :data:`IMAGE_COLUMNS` (:func:`image_facts`)."""
        return image_facts(self.extra)


def image_facts(columns: Mapping[str, Any]) -> dict[str, Any]:
    """One pair's image facts (:data:`exo2micro.params.PAIR_FACTS`) from its samplesheet
    columns or tool options: ``pixel_size_um`` gives both ``pre_pixel_size_um`` and
    ``post_pixel_size_um`` unless those are given; empty or ``None`` values are absent. Values
    are passed on as they are: :func:`exo2micro.params.resolve_pair` checks them when the pair
    runs (a samplesheet's are checked on reading, against the schema)."""
    given = {k: v for k, v in columns.items() if k in IMAGE_COLUMNS
             and v is not None and str(v).strip() != ""}
    both = given.pop("pixel_size_um", None)
    if both is not None:
        for which in ("pre", "post"):
            given.setdefault(f"{which}_pixel_size_um", both)
    return given


@dataclass(frozen=True)
class SkippedPair:
    """A requested pair that cannot run, with a one-line reason (``dye`` may be ``'*'``)."""

    sample: str
    dye: str
    reason: str

    def __str__(self) -> str:
        return f"{self.sample}/{self.dye}: {self.reason}"


@dataclass(frozen=True)
class FileVerdict:
    """How one TIFF name was classified: ``kind`` is pre/post, or ``reason`` says why not."""

    name: str
    kind: FileKind
    dye: str | None
    reason: str = ""

    @property
    def usable(self) -> bool:
        """True for a pre- or post-stain image with a valid dye."""
        return self.kind in ("pre", "post")

    def __str__(self) -> str:
        return f"'{self.name}': {self.reason or self.kind + '-stain image of dye ' + str(self.dye)}"


@dataclass
class SampleFolder:
    """One sample folder of a raw directory: its TIFFs (classified) and other entries."""

    name: str
    path: Path
    tiffs: list[FileVerdict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    error: str = ""                 # why the folder could not be listed


@dataclass
class RawScan:
    """Everything :func:`scan_raw_dir` found (names only) in a raw directory."""

    root: Path
    folders: dict[str, SampleFolder]
    loose_tiffs: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass
class Discovery:
    """The resolved request: runnable pairs, skipped pairs and notes about unused files."""

    source: str
    pairs: list[PairSpec]
    skipped: list[SkippedPair] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- names


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """Return the samplesheet JSON schema (``assets/schema_input.json``)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


#: Names at the top of an output folder: a sample folder of the same name would collide.
RESERVED_SAMPLE_NAMES = frozenset({"summary.tsv", "summary.md", "counts.tsv", "manifest.json",
                                   "report.html", "pipeline_info", "synthetic_raw"})


def _name_problem(column: str, value: str) -> str | None:
    """Return the schema's error message if ``value`` is not a valid ``sample``/``dye`` name,
    or why a sample name is reserved (it names a batch-level output, docs/output.md)."""
    prop = load_schema()["items"]["properties"][column]
    if not re.search(prop["pattern"], value):
        return str(prop["errorMessage"])
    if column == "sample" and value.lower() in RESERVED_SAMPLE_NAMES:
        return (f"'{value}' is reserved: the output folder holds a batch file of that name "
                f"(reserved: {', '.join(sorted(RESERVED_SAMPLE_NAMES))})")
    return None


def is_tiff_name(name: str) -> bool:
    """True if ``name`` ends in ``.tif`` or ``.tiff`` in any case."""
    return name.lower().endswith(TIFF_SUFFIXES)


def classify_filename(name: str) -> FileVerdict:
    """Classify one file name (no path) by the rule in the module docstring.

    >>> classify_filename("Sample001_PreStain_SybrGld.tif")
    FileVerdict(name='Sample001_PreStain_SybrGld.tif', kind='pre', dye='SybrGld', reason='')
    """
    if not is_tiff_name(name):
        return FileVerdict(name, "invalid", None, "not a .tif/.tiff file")
    stem = name[: name.rfind(".")]
    if "_" not in stem:
        return FileVerdict(name, "invalid", None,
                           "no '_' in the name, so no dye (names end in '_<dye>.tif')")
    head, _, dye = stem.rpartition("_")
    if not dye:
        return FileVerdict(name, "invalid", None, "nothing after the last '_', so no dye")
    problem = _name_problem("dye", dye)
    if problem:
        return FileVerdict(name, "invalid", dye,
                           f"dye '{dye}' (the text after the last '_') is not valid: "
                           f"{problem}")
    words = [w for w in _WORD_SPLIT.split(head) if w]
    markers = [w for w in words if _MARKER.fullmatch(w)]
    roles = {_MARKER.fullmatch(w).group(1).lower() for w in markers}  # type: ignore[union-attr]
    if len(roles) == 2:
        return FileVerdict(name, "ambiguous", dye,
                           "both a pre and a post marker "
                           f"({', '.join(repr(m) for m in markers)}); keep only one")
    if not roles:
        hint = ""
        if _MARKER.fullmatch(dye):
            hint = (f"; the dye is the text after the last '_' (here '{dye}'), so the "
                    f"marker must come before it, e.g. '..._{dye}_<dye>.tif'")
        else:
            near = [w for w in words if w.lower().startswith(("pre", "post"))]
            if near:
                hint = (f"; {', '.join(repr(w) for w in near)} "
                        f"{'is' if len(near) == 1 else 'are'} not a marker word: "
                        f"separate it, e.g. '..._pre_...'")
        return FileVerdict(name, "unmarked", dye,
                           f"no pre/post marker word before the dye '{dye}'{hint}")
    return FileVerdict(name, roles.pop(), dye)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- layout


def expected_layout(raw_name: str = "raw") -> str:
    """The expected raw-directory layout as a small ASCII tree, plus the naming rule."""
    return (
        "expected layout:\n"
        f"  {raw_name}/\n"
        "    CD070/                              one folder per sample (folder name = sample id)\n"
        "      Sample001_PreStain_SybrGld.tif    pre-stain image of dye SybrGld\n"
        "      Sample001_PostStain_SybrGld.tif   post-stain image of dye SybrGld\n"
        "    CD063/\n"
        "      x_pre_run3_DAPI.tiff  x_post_run3_DAPI.tiff  ...\n"
        f"rule: {NAMING_RULE}"
    )


def _layout_error(raw: Path, message: str) -> DiscoveryError:
    return DiscoveryError(f"{message}\n{expected_layout(raw.name or str(raw))}")


def _list_dir(folder: Path) -> list[os.DirEntry[str]]:
    """Non-hidden entries of ``folder``, sorted by name."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _display(raw_dir: str | os.PathLike[str]) -> str:
    """The raw directory as the user wrote it, without a trailing '/'."""
    return os.fspath(raw_dir).rstrip("/") or "/"


def scan_raw_dir(raw_dir: str | os.PathLike[str]) -> RawScan:
    """List and classify a raw directory (names only) after diagnosing its layout.

    Raises :class:`DiscoveryError` when the directory is missing, is a file, is empty, holds
    TIFFs at the top level but no sample folders, or none of its sample folders holds a TIFF.
    """
    raw = Path(os.path.abspath(raw_dir))
    shown = _display(raw_dir)
    if not raw.exists():
        raise _layout_error(raw, f"raw directory '{shown}' does not exist")
    if not raw.is_dir():
        raise _layout_error(raw, f"raw directory '{shown}' is a file, not a folder")
    try:
        entries = _list_dir(raw)
        scan = RawScan(root=raw, folders={})
        for entry in entries:
            if is_tiff_name(entry.name) and not _is_dir(entry):
                scan.loose_tiffs.append(entry.name)
            elif not _is_dir(entry) and not entry.is_symlink():
                scan.ignored.append(entry.name)
            else:  # a folder, or a link that cannot be followed (a loop): a sample folder
                scan.folders[entry.name] = _scan_sample(entry.name, Path(entry.path), shown)
    except OSError as exc:
        raise _layout_error(raw, f"cannot read raw directory '{shown}': {exc}") from exc
    if not entries:
        raise _layout_error(raw, f"raw directory '{shown}' is empty")
    if not scan.folders:
        if scan.loose_tiffs:
            raise _layout_error(
                raw, f"raw directory '{shown}' has {len(scan.loose_tiffs)} TIFF file(s) at the "
                f"top level ({_short_list(scan.loose_tiffs, 3)}) but no sample folders: move "
                f"each sample's images into '{shown}/<sample>/'")
        raise _layout_error(raw, f"raw directory '{shown}' has no sample folders "
                                 f"(only {_short_list(scan.ignored, 3)})")
    if not any(f.tiffs or f.error for f in scan.folders.values()):
        raise _layout_error(
            raw, f"none of the {len(scan.folders)} sample folder(s) in '{shown}' contains a "
            f".tif/.tiff file ({_short_list(list(scan.folders), 5)})")
    for name in scan.ignored:
        log.debug("ignored non-TIFF file %s", raw / name)
    return scan


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, False when it cannot be told (a symlink loop, no permission)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _scan_sample(name: str, path: Path, shown: str) -> SampleFolder:
    """:func:`_scan_folder`, or a folder whose ``error`` says why it cannot be listed (no
    permission, a symlink loop): that sample's problem, never the whole raw folder's."""
    try:
        return _scan_folder(name, path)
    except OSError as exc:
        return SampleFolder(name, path, error=f"cannot list folder '{shown}/{name}' "
                                              f"({exc.strerror or type(exc).__name__})")


def _scan_folder(name: str, path: Path) -> SampleFolder:
    folder = SampleFolder(name=name, path=path)
    for entry in _list_dir(path):
        if not _is_dir(entry) and is_tiff_name(entry.name):
            folder.tiffs.append(classify_filename(entry.name))
        else:
            folder.ignored.append(entry.name + ("/" if _is_dir(entry) else ""))
            log.debug("ignored %s", path / entry.name)
    return folder


# --------------------------------------------------------------------------- resolution


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _dye_with_underscore_hint(dye: str, found_dyes: Iterable[str]) -> str:
    last = dye.rsplit("_", 1)[1]
    dashed = dye.replace("_", "-")
    mean = f"; did you mean '{last}'?" if last in set(found_dyes) else ""
    return (f"dye names are the text after the last '_' of a file name, so '{dye}' can never "
            f"match{mean} (to keep the name, rename the files to end in '_{dashed}.tif' and "
            f"request '{dashed}')")


def _raw_pair_verdicts(folder: SampleFolder) -> dict[str, PairSpec | str]:
    """dye -> runnable PairSpec or the reason it cannot run, for every dye with a marked file."""
    by_dye: dict[str, list[FileVerdict]] = {}
    for v in folder.tiffs:
        if v.dye is not None and v.kind in ("pre", "post", "ambiguous"):
            by_dye.setdefault(v.dye, []).append(v)
    out: dict[str, PairSpec | str] = {}
    for dye in sorted(by_dye):
        files = by_dye[dye]
        pre = [v.name for v in files if v.kind == "pre"]
        post = [v.name for v in files if v.kind == "post"]
        if len(pre) == 1 and len(post) == 1:
            out[dye] = PairSpec(folder.name, dye, folder.path / pre[0], folder.path / post[0])
            continue
        problems = [] if pre or post else ["no usable pre- or post-stain file"]
        for role, names, other in (("pre", pre, post), ("post", post, pre)):
            if len(names) > 1:
                problems.append(f"duplicate: {len(names)} {role}-stain files ({_quoted(names)})")
            elif not names and other:
                problems.append(f"incomplete: no {role}-stain file (only {_quoted(other)})")
        out[dye] = "; ".join(problems + [f"rejected {v}" for v in files if v.kind == "ambiguous"])
    return out


def _folder_problem(folder: SampleFolder, raw_shown: str) -> str | None:
    """Why a sample folder yields no pair at all, or None."""
    where = f"{raw_shown}/{folder.name}"
    problem = _name_problem("sample", folder.name)
    if problem:
        return f"folder name '{folder.name}' is not a valid sample id: {problem}; rename it"
    if folder.error:
        return folder.error
    if not folder.tiffs:
        other = f" (only {_short_list(folder.ignored, 3)})" if folder.ignored else ""
        return f"folder '{where}' contains no .tif/.tiff file{other}"
    if not any(v.kind in ("pre", "post", "ambiguous") for v in folder.tiffs):
        return (f"no TIFF in '{where}' is named as a pre/post image: "
                + "; ".join(str(v) for v in folder.tiffs[:3])
                + (f"; ... ({len(folder.tiffs)} files)" if len(folder.tiffs) > 3 else ""))
    return None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _names(values: str | Sequence[str] | None) -> list[str] | None:
    """A request list (a lone string counts as one name); None or empty means 'everything'."""
    if isinstance(values, str):
        values = [values]
    return _unique(values) if values else None


def _resolve(
    found: Mapping[str, Mapping[str, PairSpec | str]],
    sample_problems: Mapping[str, str],
    samples: list[str] | None,
    dyes: list[str] | None,
    missing_sample: Callable[[str], str],
    missing_dye: Callable[[str, str], str],
) -> tuple[list[PairSpec], list[SkippedPair]]:
    """Resolve the request samples × dyes (default: every sample in ``found`` order).

    ``found[sample][dye]`` is a runnable pair or a reason; ``sample_problems[sample]`` makes
    every pair of that sample a problem. ``missing_sample(sample)`` and
    ``missing_dye(sample, dye)`` say why a name that was not found at all cannot run.
    """
    all_samples = _unique([*found, *sample_problems])
    pairs: list[PairSpec] = []
    skipped: list[SkippedPair] = []
    for sample in samples or all_samples:
        if sample in sample_problems:
            skipped += [SkippedPair(sample, d, sample_problems[sample])
                        for d in (dyes or [ALL_DYES])]
            continue
        if sample not in found:
            reason = missing_sample(sample) + did_you_mean(sample, all_samples)
            skipped += [SkippedPair(sample, d, reason) for d in (dyes or [ALL_DYES])]
            continue
        have = found[sample]
        for dye in dyes or list(have):
            verdict = have.get(dye)
            if isinstance(verdict, PairSpec):
                pairs.append(verdict)
            elif verdict is not None:
                skipped.append(SkippedPair(sample, dye, verdict))
            elif "_" in dye:
                skipped.append(SkippedPair(sample, dye, _dye_with_underscore_hint(dye, have)))
            else:
                reason = missing_dye(sample, dye) + did_you_mean(dye, have)
                skipped.append(SkippedPair(sample, dye, reason))
    return pairs, skipped


def _check_strict(discovery: Discovery, strict: bool, epilogue: str) -> Discovery:
    """In strict mode raise one :class:`DiscoveryError` listing every skipped pair."""
    if strict and discovery.skipped:
        n = len(discovery.skipped)
        lines = [f"{discovery.source}: {n} requested pair{'s' if n > 1 else ''} cannot run "
                 "(strict mode; use --lenient / strict=False to skip them and run the rest):"]
        lines += [f"  {s}" for s in discovery.skipped]
        if epilogue:
            lines.append(epilogue)
        raise DiscoveryError("\n".join(lines))
    return discovery


def discover(
    raw_dir: str | os.PathLike[str] = "raw",
    samples: str | Sequence[str] | None = None,
    dyes: str | Sequence[str] | None = None,
    strict: bool = True,
) -> Discovery:
    """Resolve the requested ``samples`` × ``dyes`` (default: everything found) in ``raw_dir``.

    Without ``dyes`` each sample contributes the dyes found in its own folder. Layout problems
    always raise :class:`DiscoveryError`; problem pairs raise it in strict mode (one message
    listing every pair) and are returned in :attr:`Discovery.skipped` otherwise. Zero runnable
    pairs is not an error in lenient mode.
    """
    samples, dyes = _names(samples), _names(dyes)
    scan = scan_raw_dir(raw_dir)
    shown = _display(raw_dir)
    found: dict[str, dict[str, PairSpec | str]] = {}
    problems: dict[str, str] = {}
    warnings = [f"'{shown}/{n}': TIFF at the top level is not in a sample folder; ignored"
                for n in scan.loose_tiffs]
    requested = set(samples) if samples else set(scan.folders)
    for name, folder in scan.folders.items():
        problem = _folder_problem(folder, shown)
        if problem:
            problems[name] = problem
            if name not in requested:
                warnings.append(f"sample folder '{shown}/{name}' not used: {problem}")
            continue
        found[name] = verdicts = _raw_pair_verdicts(folder)
        if name in requested:
            # Ambiguous files of a pair that cannot run are already named in its reason.
            warnings += [f"'{shown}/{name}/{v.name}': {v.reason}" for v in folder.tiffs
                         if not v.usable and not (v.kind == "ambiguous"
                                                  and isinstance(verdicts.get(v.dye), str))]
    pairs, skipped = _resolve(
        found, problems, samples or sorted(scan.folders), dyes,
        missing_sample=lambda s: (f"no sample folder '{shown}/{s}' "
                                  f"(found: {_short_list(sorted(scan.folders))})"),
        missing_dye=lambda s, d: (f"no pre/post file ending in '_{d}.tif' in '{shown}/{s}' "
                                  f"(dyes there: {', '.join(found[s]) or 'none'})"))
    ignored = [f"{shown}/{n}" for n in scan.ignored] + [
        f"{shown}/{f.name}/{n}" for f in scan.folders.values() for n in f.ignored]
    discovery = Discovery(source=f"raw directory '{shown}'", pairs=pairs, skipped=skipped,
                          warnings=warnings, ignored=ignored)
    return _check_strict(discovery, strict, expected_layout(Path(shown).name or shown))


# --------------------------------------------------------------------------- samplesheet


def _sheet_dialect(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _row_label(sheet: str, line: int, row: Mapping[str, str]) -> str:
    who = ", ".join(f"{k}={row[k]}" for k in ("sample", "dye") if row.get(k))
    return f"{sheet} row {line}" + (f" ({who})" if who else "")


def _schema_message(error: jsonschema.ValidationError, row: Mapping[str, str]) -> str:
    """One line for a row-level schema error, preferring the schema's ``errorMessage``; the
    value is quoted as the cell of ``row`` reads."""
    if error.validator == "required":
        column = error.message.split("'")[1]
        return f"'{column}' is empty"
    schema = error.schema if isinstance(error.schema, dict) else {}
    custom = schema.get("errorMessage")
    value = row.get(str(error.path[0]), error.instance) if error.path else error.instance
    return f"{custom} (got '{value}')" if custom else error.message


def _typed(row: Mapping[str, str], properties: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` without empty cells (nf-schema treats them as absent, so 'required' reports
    them), numbers where the schema's column has type ``number`` and the cell is a finite one
    (as nf-schema converts cells before validating); other cells stay text, so the schema's
    type check names a cell that is not a number."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value == "":
            continue
        out[key] = value
        if (properties.get(key) or {}).get("type") == "number":
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                out[key] = number
    return out


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs of a CSV/TSV; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DiscoveryError(f"samplesheet '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DiscoveryError(f"cannot read samplesheet '{path}': {exc}") from exc
    reader = csv.reader(io.StringIO(text), delimiter=_sheet_dialect(path))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells]
        if header is None:
            header = cells
            continue
        if len(cells) > len(header):
            raise DiscoveryError(f"{path.name} row {reader.line_num}: {len(cells)} cells but "
                                 f"the header has {len(header)} columns")
        row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        rows.append((reader.line_num, row))
    if header is None:
        raise DiscoveryError(f"samplesheet '{path}' is empty; expected the header "
                             f"{','.join(SAMPLESHEET_COLUMNS)}")
    return header, rows


def _absolute(base: Path, value: str) -> Path:
    return Path(os.path.abspath(base / os.path.expanduser(value)))


def load_samplesheet(
    path: str | os.PathLike[str],
    samples: str | Sequence[str] | None = None,
    dyes: str | Sequence[str] | None = None,
    strict: bool = True,
) -> Discovery:
    """Read, validate and resolve a samplesheet like :func:`discover` does a raw directory.

    Structural problems — missing columns, empty or invalid names, non-TIFF paths, duplicate
    ``(sample, dye)`` rows — always raise :class:`DiscoveryError` listing every bad row. Rows
    whose files do not exist are problem pairs (fatal in strict mode, skipped otherwise).
    Relative paths are relative to the sheet's folder; extra columns go to ``PairSpec.extra``.
    """
    samples, dyes = _names(samples), _names(dyes)
    sheet = Path(path)
    header, rows = _read_rows(sheet)
    missing = [c for c in SAMPLESHEET_COLUMNS if c not in header]
    if missing:
        hints = "".join(did_you_mean(c, [h for h in header if h not in SAMPLESHEET_COLUMNS])
                        .replace("; did you mean", f"; for '{c}', did you mean", 1)
                        for c in missing)
        raise DiscoveryError(
            f"samplesheet '{sheet}' lacks column(s) {_quoted(missing)}; its header is "
            f"'{','.join(header)}', expected {','.join(SAMPLESHEET_COLUMNS)} (+ extra columns)"
            f"{hints}")
    import jsonschema  # only samplesheets need it (40 ms of every tool's start-up otherwise)

    errors: list[str] = []
    validator = jsonschema.Draft202012Validator(load_schema()["items"])
    properties = load_schema()["items"]["properties"]
    seen: dict[tuple[str, str], int] = {}
    found: dict[str, dict[str, PairSpec | str]] = {}
    for line, row in rows:
        label = _row_label(sheet.name, line, row)
        bad = [_schema_message(e, row)
               for e in validator.iter_errors(_typed(row, properties))]
        if bad:
            errors += [f"{label}: {b}" for b in bad]
            continue
        key = (row["sample"], row["dye"])
        if key in seen:
            errors.append(f"{label}: duplicate of row {seen[key]} (same sample and dye)")
            continue
        seen[key] = line
        pre, post = _absolute(sheet.parent, row["pre"]), _absolute(sheet.parent, row["post"])
        absent = [f"{role} file '{row[role]}' does not exist" + (
                  f" (looked for '{p}')" if p != Path(row[role]) else "")
                  for role, p in (("pre", pre), ("post", post)) if not p.is_file()]
        if pre == post:
            absent.append("pre and post are the same file")
        reserved = _name_problem("sample", row["sample"])
        if reserved:
            absent.append(f"sample name {reserved}")
        extra = {k: v for k, v in row.items() if k and k not in RESERVED_COLUMNS}
        found.setdefault(key[0], {})[key[1]] = (
            f"{label}: " + "; ".join(absent) if absent
            else PairSpec(key[0], key[1], pre, post, extra))
    if errors:
        n = len({e.split(":", 1)[0] for e in errors})  # a row may have several errors
        head = (errors[0] if len(errors) == 1 else
                f"samplesheet '{sheet}' has {n} invalid row{'s' if n > 1 else ''}:\n  "
                + "\n  ".join(errors))
        raise DiscoveryError(head + f"\nexpected columns: {','.join(SAMPLESHEET_COLUMNS)} "
                                    "(rows numbered as lines of the file; the header is row 1)")
    pairs, skipped = _resolve(
        found, {}, samples, dyes,
        missing_sample=lambda s: (f"no row with sample '{s}' in '{sheet.name}' "
                                  f"(samples: {_short_list(list(found))})"),
        missing_dye=lambda s, d: (f"no row for dye '{d}' of sample '{s}' in '{sheet.name}' "
                                  f"(dyes: {', '.join(found[s])})"))
    warnings = [] if rows else [f"samplesheet '{sheet}' has no data rows"]
    warnings += _near_image_columns(header)
    discovery = Discovery(source=f"samplesheet '{sheet}'", pairs=pairs, skipped=skipped,
                          warnings=warnings)
    return _check_strict(discovery, strict, "")


def _near_image_columns(header: Sequence[str]) -> list[str]:
    """A warning per extra column whose name is close to an image column's (a typo would
    silently leave the pair's value unused)."""
    known = (*RESERVED_COLUMNS, *IMAGE_COLUMNS)
    return [f"column '{column}' is kept as an extra column, not read as an image column"
            f"{hint}" for column in header
            if column and column not in known and (hint := did_you_mean(column, IMAGE_COLUMNS))]


def read_samplesheet(path: str | os.PathLike[str]) -> list[PairSpec]:
    """Every pair of a samplesheet, validated; any problem raises :class:`DiscoveryError`."""
    return load_samplesheet(path).pairs


def read_expected(samplesheet: str | os.PathLike[str]
                  ) -> list[tuple[str, str, dict[str, str]]]:
    """``(sample, dye, extra columns)`` of every row of a samplesheet (already validated by
    discovery; file paths are not checked here, the summary may run elsewhere)."""
    delimiter = "\t" if Path(samplesheet).suffix.lower() in (".tsv", ".txt") else ","
    with open(samplesheet, newline="", encoding="utf-8-sig") as fh:
        return [(row["sample"].strip(), row["dye"].strip(),
                 {k: (v or "").strip() for k, v in row.items()
                  if k and k not in SAMPLESHEET_COLUMNS and k not in ESTIMATE_COLUMNS})
                for row in csv.DictReader(fh, delimiter=delimiter)
                if (row.get("sample") or "").strip()]


def write_samplesheet(
    pairs: Iterable[PairSpec],
    path: str | os.PathLike[str],
    extra_columns: Sequence[str] | None = None,
    estimates: Sequence[Mapping[str, float] | None] | None = None,
) -> Path:
    """Write ``pairs`` as a ``sample,dye,pre,post[,estimates...][,extra...]`` CSV atomically.

    Paths are written absolute, so the sheet works from any folder (and under Nextflow).
    ``extra_columns`` defaults to every extra key of the pairs, in order of first appearance.
    ``estimates``, one mapping per pair with the keys of :data:`ESTIMATE_COLUMNS` (peak bytes,
    seconds, bytes written; ``None`` for empty cells), adds those columns, rounded up to
    integers. Returns the path.
    """
    pairs = list(pairs)
    if extra_columns is None:
        extra_columns = _unique(k for p in pairs for k in p.extra)
    clash = [c for c in extra_columns if c in RESERVED_COLUMNS]
    if clash:
        raise ValueError(f"extra column(s) {_quoted(clash)} clash with the standard columns")
    if estimates is not None and len(estimates) != len(pairs):
        raise ValueError(f"{len(estimates)} estimates for {len(pairs)} pairs")
    est_columns = ESTIMATE_COLUMNS if estimates is not None else ()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*SAMPLESHEET_COLUMNS, *est_columns, *extra_columns])
    for i, p in enumerate(pairs):
        row = estimates[i] if estimates is not None else None
        est = ["" if row is None else math.ceil(row[c]) for c in est_columns]
        writer.writerow([p.sample, p.dye, os.fspath(p.pre), os.fspath(p.post), *est,
                         *(p.extra.get(c, "") for c in extra_columns)])
    out = Path(path)
    write_text_atomic(out, buf.getvalue())
    return out


def write_skipped(skipped: Iterable[SkippedPair], path: str | os.PathLike[str]) -> Path:
    """Write skipped pairs as a ``sample<TAB>dye<TAB>reason`` TSV (header always) atomically."""
    lines = ["sample\tdye\treason"] + [
        "\t".join((s.sample, s.dye, " ".join(s.reason.split()))) for s in skipped]
    out = Path(path)
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


def nothing_to_run(source: str, skipped: Sequence[tuple[str, str, str]]) -> DiscoveryError:
    """The error of a batch that selects no runnable pair (exit 65, docs/contracts.md): doing
    nothing is never reported as a success. Names what was skipped and why (up to 10 entries;
    the reasons of a missing sample or dye say which exist)."""
    lines = [f"nothing to run in {source}: no complete pair matches the request"]
    lines += [f"  {sample}/{dye}: {reason}" for sample, dye, reason in skipped[:10]]
    if len(skipped) > 10:
        lines.append(f"  ... and {len(skipped) - 10} more (summary.md lists them all)")
    lines.append("List what there is with: exo2micro discover --raw-dir DIR (or --input SHEET)")
    return DiscoveryError("\n".join(lines))


def format_report(discovery: Discovery) -> str:
    """A short human report: counts first, then one line per skipped pair and per warning."""
    n, m = len(discovery.pairs), len(discovery.skipped)
    lines = [f"discover: {discovery.source}: {n} runnable pair{'' if n == 1 else 's'}, "
             f"{m} skipped"]
    lines += [f"  skipped {s}" for s in discovery.skipped]
    lines += [f"  warning: {w}" for w in discovery.warnings]
    if discovery.ignored:
        lines.append(f"  ignored {len(discovery.ignored)} non-TIFF entr"
                     f"{'y' if len(discovery.ignored) == 1 else 'ies'} "
                     f"({_short_list(discovery.ignored, 3)})")
    if n == 0:
        lines.append("  no runnable pairs: nothing to process")
    return "\n".join(lines)
