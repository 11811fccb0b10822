"""The end of a batch: the summary table on the terminal and the summary files on disk."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO


def print_summary(results: Sequence[Mapping[str, Any]],
                  skipped: Iterable[tuple[str, str, str]] = (),
                  file: TextIO | None = None) -> None:
    """Print the summary table (Sample, Dye, Moffat, Percentile/Manual, exposure ratio and k
    net of exposure, pixel size, microbes and microbes per mm² when any result has them,
    Status) and a Problems section with the full reason of every pair that needs review,
    failed or was skipped."""
    from exo2micro.report.summary import collect_rows, format_text

    rows = collect_rows([(r, None) for r in results], skipped)
    print(format_text(rows), file=file or sys.stdout, flush=True)


def write_batch_summary(output_dir: str | os.PathLike[str],
                        results: Sequence[Mapping[str, Any]],
                        skipped: Iterable[tuple[str, str, str]] = (),
                        extra: Mapping[str, Any] | None = None,
                        threads: int = 1) -> dict[str, Path]:
    """Write the summary files of a batch into ``output_dir`` (see
    :mod:`exo2micro.report.summary`)."""
    from exo2micro.report.summary import collect_rows, write_summary

    out = Path(output_dir)
    rows = collect_rows([(r, out / str(r.get("sample")) / str(r.get("dye"))) for r in results],
                        skipped)
    return write_summary(out, rows, extra, threads=threads)
