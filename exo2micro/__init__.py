"""exo2micro: find stained microbes on mineral samples.

Align a pre-stain image onto its post-stain partner to sub-pixel accuracy, estimate how much
brighter the mineral's autofluorescence became (k), subtract ``k · aligned_pre`` from post and
keep the microbes, with diagnostics. See ``docs/architecture.md`` for the map of the code.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The Python API (README, "Running a batch on one machine"), imported on first use so that
#: ``import exo2micro`` (and every command-line tool) stays cheap: ``exo2micro.SampleDye``,
#: ``exo2micro.run_batch``, ``exo2micro.MemoryTracker``.
_LAZY = {
    "SampleDye": "exo2micro.sampledye",
    "run_batch": "exo2micro.parallel",
    "MemoryTracker": "exo2micro.batch.memory",
}

__all__ = ["MemoryTracker", "SampleDye", "__version__", "run_batch"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'exo2micro' has no attribute {name!r}")
