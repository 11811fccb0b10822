"""Suggestions for mistyped names: one helper for every place a user gives a name (parameters,
samples, dyes, samplesheet columns), so the hint reads the same everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` most likely meant: a case-insensitive match, else the closest by
    :func:`difflib.get_close_matches` (ratio >= 0.6), else ``None``."""
    pool = list(candidates)
    same_case = [c for c in pool if c.lower() == word.lower()]
    close = same_case or difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the :func:`closest` candidate, else ``""``."""
    match = closest(word, candidates)
    return f"; did you mean '{match}'?" if match else ""
