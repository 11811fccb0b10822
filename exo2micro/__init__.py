"""exo2micro: find stained microbes on mineral samples.

Align a pre-stain image onto its post-stain partner to sub-pixel accuracy, estimate how much
brighter the mineral's autofluorescence became (k), subtract ``k · aligned_pre`` from post and
keep the microbes, with diagnostics. See ``docs/architecture.md`` for the map of the code.
"""

from __future__ import annotations

__version__ = "0.1.0"
