"""Compare two output folders of ``exo2micro run``: every per-pair TIFF and detection catalogue
(``detections.csv``, ``detections.ecsv``) byte for byte (the random UUID an OME-TIFF's metadata
draws at each write aside) and the science values of every
``result.json`` (run-specific keys — timings, run ids, creation
times, the runner's record — are left out).

    .venv/bin/python bench/compare_outputs.py A B      # exit 0 when identical, 1 otherwise

Also imported by ``bench/fault_campaign.py`` and the fault-campaign test.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

#: result.json keys that hold what was measured and how; everything else describes the run.
SCIENCE_KEYS = ("sample", "dye", "status", "scale_estimate", "scale_percentile_value",
                "manual_scale", "alignment", "fingerprint", "params", "suffix", "outputs",
                "warnings", "meta")


#: The OME-XML of an OME-TIFF names the file with a fresh random UUID each time it is written.
_OME_UUID = re.compile(rb'UUID="urn:uuid:[0-9a-f-]+"')


def tiff_digest(path: Path) -> str:
    """SHA-256 of a TIFF's bytes, with the random OME UUID (if any) blanked: two writes of the
    same pixels, tags and layout give the same digest, whatever UUID each one drew. The UUID
    has the same length every time, so no offset in the file moves."""
    return hashlib.sha256(_OME_UUID.sub(b'UUID="urn:uuid:-"', path.read_bytes())).hexdigest()


#: Per-pair files compared byte for byte, besides the TIFFs.
CATALOGUES = ("detections.csv", "detections.ecsv")


def _digests(root: Path) -> dict[str, str]:
    files = [*root.rglob("*.tif"), *(p for name in CATALOGUES for p in root.rglob(name))]
    return {str(p.relative_to(root)): tiff_digest(p)
            for p in sorted(files) if not p.name.startswith(".")}


def science(path: Path) -> dict[str, Any]:
    """The science values of one ``result.json``."""
    data = json.loads(path.read_text())
    return {k: data.get(k) for k in SCIENCE_KEYS}


def compare(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """``(TIFFs and catalogues compared, result.json files compared, differences)`` of two
    output folders."""
    da, db = _digests(a), _digests(b)
    diffs = [f"only in one folder: {k}" for k in sorted(set(da) ^ set(db))]
    diffs += [f"differs: {k}" for k in sorted(set(da) & set(db)) if da[k] != db[k]]
    ra = {str(p.relative_to(a)) for p in a.rglob("result.json")}
    rb = {str(p.relative_to(b)) for p in b.rglob("result.json")}
    diffs += [f"result.json only in one folder: {k}" for k in sorted(ra ^ rb)]
    for rel in sorted(ra & rb):
        sa, sb = science(a / rel), science(b / rel)
        diffs += [f"{rel}: {k} differs" for k in SCIENCE_KEYS if sa[k] != sb[k]]
    return len(da), len(ra), diffs


def main(argv: list[str]) -> int:
    n_tiff, n_json, diffs = compare(Path(argv[0]), Path(argv[1]))
    print(f"{n_tiff} TIFFs and catalogues, {n_json} result.json compared: "
          f"{'identical' if not diffs else f'{len(diffs)} difference(s)'}")
    for line in diffs:
        print(f"  {line}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
