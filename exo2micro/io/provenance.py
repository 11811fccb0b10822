"""What software produced a batch: the versions recorded next to its results.

The Nextflow pipeline writes them into ``pipeline_info/software_versions_<date>.yml`` (from the
environment of the summary task, the same environment or container as every other task) and
``manifest.json``; see docs/output.md.
"""

from __future__ import annotations

import platform
from importlib import metadata

#: Distributions whose versions are recorded: exo2micro and the libraries its science rests on.
DISTRIBUTIONS = ("exo2micro", "numpy", "scipy", "opencv-python-headless", "tifffile",
                 "imagecodecs", "astropy", "matplotlib", "click", "psutil")


def software_versions() -> dict[str, str]:
    """``{name: version}`` of Python and of :data:`DISTRIBUTIONS` in this interpreter; a
    distribution that is not installed is recorded as ``"not installed"``."""
    versions = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def versions_yaml(versions: dict[str, str]) -> str:
    """The versions as a YAML mapping under ``exo2micro:`` (the nf-core ``versions.yml`` form:
    process name, then ``tool: version`` lines; every value quoted)."""
    lines = ["exo2micro:"] + [f'  {name}: "{value}"' for name, value in versions.items()]
    return "\n".join(lines) + "\n"
