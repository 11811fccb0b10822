"""One-line explanations of the operating-system errors a run meets on its output folder.

A full disk, a read-only or immutable folder, an output path under a regular file or under
``/dev/null``: Python reports these as ``[Errno 28] No space left on device: '…/tmp-x'``, which
names a temporary file and not what to do. :func:`describe_os_error` turns such an error into the
sentence the summary and the first stderr line show (``disk full (N bytes free at PATH)``,
``cannot write PATH: read-only``), and :class:`StorageError` carries it (exit code 2: the run
cannot succeed until the user frees space or picks another folder, so a scheduler must not
retry it). :func:`check_output_dir` creates the output folder up front so that an unusable one
is refused before any pair runs, with that sentence.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from exo2micro.errors import ResourceError
from exo2micro.io.atomic import TMP_MARK

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS}
_DENIED = {errno.EACCES, errno.EPERM}
_NOT_A_FOLDER = {errno.ENOTDIR, errno.EEXIST}


class StorageError(ResourceError, OSError):
    """An output path cannot be written (disk full, read-only, not a folder); exit code 2.

    ``str()`` is the one-line explanation; ``errno`` is the original error's.
    """

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = err

    def __str__(self) -> str:
        return self.message


def _existing_ancestor(path: Path) -> Path:
    """The deepest existing ancestor of ``path`` (itself if it exists)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free to an unprivileged writer on the filesystem holding ``path`` (None if unknown)."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(path).absolute())).free
    except OSError:
        return None


def describe_os_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One sentence saying why ``path`` (default: the error's file name) cannot be written."""
    where = Path(path if path is not None else (exc.filename or "."))
    if where.name.startswith(".") and TMP_MARK in where.name:  # an atomic write's temp name
        where = where.parent
    code = errno.ENOSPC if exc.errno is None and _SHORT_WRITE.match(str(exc)) else exc.errno
    if code in _FULL:
        free = free_bytes(where)
        shown = f"{free} bytes" if free is not None else "unknown bytes"
        return f"disk full ({shown} free at {_existing_ancestor(where.absolute())})"
    if code in _READ_ONLY:
        return f"cannot write {where}: read-only"
    if code in _DENIED:
        return f"cannot write {where}: read-only (permission denied, or the folder is immutable)"
    if code in _NOT_A_FOLDER:
        blocker = next((p for p in (where, *where.parents)
                        if os.path.lexists(p) and not p.is_dir()), None)
        if blocker is not None:
            return f"cannot write {where}: {blocker} is not a folder"
    return f"cannot write {where}: {exc.strerror or exc}"


def storage_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> StorageError:
    """:class:`StorageError` explaining ``exc`` (see :func:`describe_os_error`)."""
    return StorageError(describe_os_error(exc, path), exc.errno)


#: numpy's ``tofile`` (used by tifffile) reports a short write without an errno.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def is_storage_error(exc: BaseException) -> bool:
    """True for the OS errors :func:`describe_os_error` explains (full, read-only, not a
    folder), including a short write reported without an errno (a full disk)."""
    if not isinstance(exc, OSError) or isinstance(exc, StorageError):
        return False
    return exc.errno in (_FULL | _READ_ONLY | _DENIED | _NOT_A_FOLDER) or (
        exc.errno is None and bool(_SHORT_WRITE.match(str(exc))))


def check_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Create ``output_dir`` (and parents) and return it; raise :class:`StorageError` when it is
    not a folder or cannot be created (a read-only, immutable or full filesystem is reported
    when the lock file is written, :mod:`exo2micro.batch.lock`)."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, out) from None
    if not out.is_dir():
        raise StorageError(f"cannot write {out}: it is not a folder", errno.ENOTDIR)
    return out
