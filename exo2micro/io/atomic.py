"""Atomic file writes: a reader never sees a half-written file under its final name.

Every output of exo2micro is first written to a temporary name in the *same* folder (so the
final :func:`os.replace` is a rename on one filesystem, atomic on POSIX), flushed and fsynced,
then renamed. A process killed at any instant (SIGKILL, the OOM killer) leaves at worst a
``.<name>.tmp-<pid>-<n>`` file, which no reader or resume check ever accepts and which
:func:`remove_stale_temps` clears.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
_counter = itertools.count()


def temp_path_for(path: Path) -> Path:
    """Return a unique temporary sibling of ``path`` (hidden, marked ``.tmp-<pid>-<n>``)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{next(_counter)}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, on error delete it.

    Use for writers that want a file name (tifffile, astropy)::

        with atomic_path(out) as tmp:
            tifffile.imwrite(tmp, data)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Serialise numpy scalars/arrays and paths, which ``json`` does not know."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left in ``folder`` (recursively) by killed writers; return them."""
    removed = []
    for p in Path(folder).rglob(f".*{TMP_MARK}*"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
