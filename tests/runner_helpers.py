"""Shared helpers of the local-runner tests: small synthetic raw batches and CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from exo2micro.synth import SynthSpec, batch_specs, make_batch

ROOT = Path(__file__).resolve().parent.parent
#: Post size of the test pairs: big enough for every stage to succeed, small enough to be fast.
SIZE = (480, 400)


def make_raw(raw: Path, n: int = 2, *, broken: bool = False, size: tuple[int, int] = SIZE,
             dyes: Sequence[str] = ("SybrGld",)) -> list[tuple[str, str]]:
    """Write ``n`` synthetic samples × ``dyes`` under ``raw``; return the runnable pairs."""
    base = SynthSpec(width=size[0], height=size[1])
    specs = [replace(spec, dye=dye) for spec in batch_specs(n, base) for dye in dyes]
    make_batch(raw, specs, broken=broken)
    return [(s.sample, s.dye) for s in specs]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child ``python -m exo2micro``: the repository on the path."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def exo2micro_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "exo2micro", *args]


def run_exo2micro(*args: str, timeout: float = 120, **env: str
                  ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m exo2micro ARGS`` in a fresh process and capture its output."""
    return subprocess.run(exo2micro_cmd(*args), capture_output=True, text=True,
                          env=child_env(**env), timeout=timeout, check=False)
