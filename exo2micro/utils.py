"""The public exo2micro's ``exo2micro.utils`` helpers that scripts use, on top of
:mod:`.batch.discover`.

``discover_tasks`` keeps exo2micro 2.4's name, arguments and result keys (``present``,
``skipped``, ``warnings``) and adds ``pairs`` (the resolved
:class:`~exo2micro.batch.discover.PairSpec` objects with their file paths). Unlike exo2micro 2.4, a
raw directory with a bad layout always raises, and ``strict=True`` raises for problem pairs, so
typos surface before a long batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from exo2micro.batch.discover import discover

__all__ = ["discover_tasks"]


def discover_tasks(
    samples: str | Sequence[str] | None = None,
    dyes: str | Sequence[str] | None = None,
    raw_dir: str | os.PathLike[str] = "raw",
    strict: bool = True,
) -> dict[str, Any]:
    """Resolve the requested ``samples`` × ``dyes`` against the files in ``raw_dir``.

    ``None`` (or an empty list) for ``samples`` means every sample folder, for ``dyes`` every
    dye found in each sample's folder. A pair is present when its sample folder holds exactly
    one pre-stain and one post-stain TIFF of that dye (naming rule:
    :mod:`exo2micro.batch.discover`).

    Returns a dict with
      - ``present``: ``[(sample, dye), ...]`` runnable pairs, in request order;
      - ``pairs``: the same as :class:`~exo2micro.batch.discover.PairSpec` (with ``pre``/``post``);
      - ``skipped``: ``[(sample, dye, reason), ...]`` requested pairs that cannot run
        (always empty when ``strict``); ``dye`` is ``'*'`` for a whole unusable sample;
      - ``warnings``: one line per file that was not used (unclassifiable names, stray TIFFs).

    Raises:
        exo2micro.batch.discover.DiscoveryError: (a ``FileNotFoundError`` and a ``LayoutError``)
        when
            the raw directory's layout is unusable, or when ``strict`` and any requested pair
            is missing, incomplete or duplicated — one message listing every such pair.
    """
    found = discover(raw_dir, samples=samples, dyes=dyes, strict=strict)
    return {
        "present": [(p.sample, p.dye) for p in found.pairs],
        "pairs": found.pairs,
        "skipped": [(s.sample, s.dye, s.reason) for s in found.skipped],
        "warnings": list(found.warnings),
    }
