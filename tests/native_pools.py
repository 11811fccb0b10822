"""What the thread-budget tests read inside a worker: the size of every native pool.

A module of its own, with nothing heavy imported at its top, so that a pool worker or a task
subprocess can unpickle :func:`pools_after_task` and a stage tool can call :func:`pool_sizes`
while it exits (tests/test_threads.py).
"""

from __future__ import annotations

import importlib
from typing import Any

#: The modules of every stage, imported before the pools are read so that the libraries they
#: load late (scipy's and scikit-image's native code, astropy) are checked too.
STAGE_MODULES = ("exo2micro.stages.load", "exo2micro.stages.align_boundary",
                 "exo2micro.stages.align_interior", "exo2micro.stages.subtract",
                 "exo2micro.stages.detect", "exo2micro.stages.warp")


def pool_sizes() -> dict[str, Any]:
    """Thread count of every native pool of this process: ``{"libraries": [[name, threads],
    …], "opencv": n, "native_threads": n}``; the libraries are those threadpoolctl finds
    (BLAS, OpenMP)."""
    for name in STAGE_MODULES:
        importlib.import_module(name)
    import cv2
    from threadpoolctl import threadpool_info

    from exo2micro.resources import native_threads

    libraries = [[f"{info['internal_api']} {info['filepath']}", info["num_threads"]]
                 for info in threadpool_info()]
    return {"libraries": libraries, "opencv": cv2.getNumThreads(),
            "native_threads": native_threads()}


def pools_after_task(task: Any, on_stage: Any = None) -> dict[str, Any]:
    """The real task function (:func:`exo2micro.batch.tasks.process_one`), then the pool sizes
    of the process (or thread) that ran it, under ``result["pools"]``."""
    from exo2micro.batch.tasks import process_one

    result = process_one(task, on_stage)
    result["pools"] = pool_sizes()
    return result
