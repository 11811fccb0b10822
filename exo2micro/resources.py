"""Process resources: peak RSS, the CPU budget and native thread pools.

CPU budget (README, "Running a batch on one machine"): an explicit value wins, then
``SLURM_CPUS_PER_TASK``, then the CPU
affinity mask, then the cgroup CPU quota, then the host's count — so a 4-core Slurm allocation
on a 128-core node counts 4.

Native thread pools follow the budget, never the host's core count, in every process that does
pipeline work (the runner, pool workers, task subprocesses, each stage tool): the entry points
set the OpenMP/BLAS variables before numpy is imported (:func:`set_thread_env`), and
:func:`configure_threads` sizes the pools again at run time — the BLAS/OpenMP libraries already
loaded (threadpoolctl), OpenCV, and the worker count of tifffile's codecs
(:func:`native_threads`); the stages' own thread pools take the thread count as an argument —
so that workers × threads never oversubscribe the budget.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

#: Threads per native pool in this process, set by :func:`configure_threads`.
_native_threads: int | None = None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (bytes) since start or the last
    :func:`reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    """Current resident set size of this process (bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0); False if unsupported.

    Lets one process report the peak of each stage separately.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cfs_quota/period``), if limited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return q / p
    except (OSError, ValueError):
        pass
    return None


def cpu_budget(explicit: int | None = None) -> tuple[int, str]:
    """Number of CPUs this run may use, and where the number came from."""
    if explicit is not None and explicit > 0:
        return int(explicit), "explicit value"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm), "SLURM_CPUS_PER_TASK"
    candidates: list[tuple[int, str]] = []
    if hasattr(os, "sched_getaffinity"):
        candidates.append((len(os.sched_getaffinity(0)), "CPU affinity"))
    quota = _cgroup_cpu_quota()
    if quota is not None:
        candidates.append((max(1, math.floor(quota)), "cgroup CPU quota"))
    if candidates:
        return min(candidates)
    return os.cpu_count() or 1, "host CPU count"


def set_thread_env(n: int) -> None:
    """Set the OpenMP/BLAS thread variables to ``n``: read by those libraries when they load,
    so in this process only if numpy is not imported yet, and in every child process."""
    for var in _THREAD_ENV:
        os.environ[var] = str(max(1, int(n)))


def configure_threads(n: int) -> None:
    """Size every native thread pool of this process (and of its children) to ``n`` threads.

    The environment (:func:`set_thread_env`) for libraries loaded later and for children; the
    BLAS/OpenMP libraries already loaded (numpy's and scipy's OpenBLAS, any OpenMP runtime)
    through threadpoolctl; OpenCV; and :func:`native_threads`, the worker count of tifffile's
    codecs.
    """
    global _native_threads
    n = max(1, int(n))
    _native_threads = n
    set_thread_env(n)
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(n)
    threadpool_limits(limits=n)


def load_strip_threads(threads: int, concurrent: bool) -> int:
    """Threads that read, decode and reduce one raw image's strips in stage 1 (1: its writing
    thread does it itself): half of ``threads`` when pre and post are streamed at once
    (``concurrent``), else 1 (one image at a time: a raw file that must be decoded whole)."""
    return max(1, int(threads) // 2) if concurrent else 1


def load_strips_in_flight(threads: int, concurrent: bool) -> int:
    """Raw strips of one image that stage 1 holds at once: the one being written, and with
    strip threads (:func:`load_strip_threads` ≥ 2) one more than their number."""
    n = load_strip_threads(threads, concurrent)
    return 1 if n < 2 else n + 1


def native_threads() -> int:
    """Threads one native pool of this process may use (e.g. tifffile's ``maxworkers``): the
    value of the last :func:`configure_threads`, else the CPU budget."""
    return _native_threads if _native_threads is not None else cpu_budget()[0]


# ----------------------------------------------------------------------------- memory
#: cgroup v1 reports "no limit" as a huge number (page-rounded 2**63 − 1); anything above this
#: is treated as unlimited.
_CGROUP_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, key: str) -> int:
    """One ``key value`` line of a cgroup ``memory.stat`` file (0 when absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_memory_headroom(root: Path = Path("/sys/fs/cgroup"),
                           proc_cgroup: Path = Path("/proc/self/cgroup")
                           ) -> tuple[int, int] | None:
    """``(limit, headroom)`` in bytes of the tightest memory cgroup this process is in.

    Reads cgroup v2 (``memory.max``, ``memory.current``) or v1 (``memory.limit_in_bytes``,
    ``memory.usage_in_bytes``) for the process's cgroup and each ancestor up to the mount root
    and returns the level with the least headroom. Usage excludes inactive page cache
    (``inactive_file``), which the kernel reclaims before it kills anything. ``None`` when no
    level has a limit (or cgroups are not readable).
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str, str, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            candidates.append((root, rel, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            candidates.append((root / "memory", rel, "memory.limit_in_bytes",
                               "memory.usage_in_bytes"))
    best: tuple[int, int] | None = None
    for base, rel, limit_name, usage_name in candidates:
        inactive_key = "inactive_file" if limit_name == "memory.max" else "total_inactive_file"
        folder = base / rel.strip("/")
        while True:
            limit = _read_int(folder / limit_name)
            usage = _read_int(folder / usage_name)
            if limit is not None and usage is not None and limit < _CGROUP_UNLIMITED:
                usage -= _stat_value(folder / "memory.stat", inactive_key)
                headroom = max(0, limit - max(0, usage))
                if best is None or headroom < best[1]:
                    best = (limit, headroom)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return best


def available_memory() -> tuple[int, str]:
    """Memory a new task may use (bytes) and where the number came from.

    The smaller of the system's available memory (``psutil``: free + reclaimable) and the
    headroom under the cgroup memory limit, so a container or Slurm job limit is honoured even
    when the host has plenty free.
    """
    import psutil

    system = int(psutil.virtual_memory().available)
    cgroup = cgroup_memory_headroom()
    if cgroup is not None and cgroup[1] < system:
        return cgroup[1], f"cgroup limit {cgroup[0] / 2**30:.1f} GiB minus usage"
    return system, "system available memory"
