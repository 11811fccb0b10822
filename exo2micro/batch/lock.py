"""The output-folder lock: one exo2micro run writes an output folder at a time.

``<output_dir>/.exo2micro.lock`` is held with :func:`fcntl.flock` on an open file for as long as
a run (``run_batch``, ``SampleDye.run``, ``exo2micro run``) writes the folder; the file names the
holder (pid, host, start time, command) so a refused run can say who has it.

Why flock: the kernel drops the lock when the holding process exits for any reason, SIGKILL
and the OOM killer included, so a lock file left behind by a dead run never blocks the next one
(no pid-liveness guessing, no timeouts). Pool workers and task subprocesses never take the lock:
the parent holds it for them.

Release unlinks the file while still holding the lock. A competitor that opened the old file
just before the unlink would then lock an orphaned inode, so :meth:`OutputLock.acquire`
re-checks after locking that the file it locked is still the one at the path and retries if not.

On filesystems without flock support (some network mounts) the lock falls back to the recorded
pid: a holder on the same host that is still alive blocks; anything else is taken over with a
warning.

The lock file is never followed or replaced when it is not a plain file: it is created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (or, when a finished run left it, opened with ``O_NOFOLLOW``
after checking it is a regular file), so a planted symbolic link cannot make a run overwrite
the file it points to, and a directory or link at the lock path is refused with a message. A
lock file this process created or took over is removed on every exit path, including a failure
to write the holder line (a full disk); only a SIGKILL can leave one, and the next run takes
it over.

Within one process the lock is re-entrant (a per-path count), so library code may nest runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from exo2micro.errors import LockError

log = logging.getLogger("exo2micro")

LOCK_NAME = ".exo2micro.lock"

_held: dict[str, tuple[int, int]] = {}  # real path -> (fd, re-entry count), this process
_held_guard = threading.Lock()
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(output_dir: str | os.PathLike[str]) -> Path:
    """Path of the lock file of ``output_dir``."""
    return Path(output_dir) / LOCK_NAME


def read_holder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The holder information recorded in a lock file ({} when absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another exo2micro run"
    return (f"another exo2micro run (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Exclusive lock on an output folder; use as a context manager.

    ``acquire`` raises :class:`~exo2micro.errors.LockError` (exit code 2) naming the holder
    when another process holds it.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.path = lock_path(output_dir)
        self._key = ""

    def acquire(self) -> OutputLock:
        from exo2micro.io.oserrors import check_output_dir

        check_output_dir(self.output_dir)
        self._key = os.path.realpath(self.path)
        with _held_guard:
            if self._key in _held:
                fd, count = _held[self._key]
                _held[self._key] = (fd, count + 1)
                return self
            fd = self._lock_file()
            _held[self._key] = (fd, 1)
        return self

    def _open(self) -> int | None:
        """Open the lock file without ever following a link: create it exclusively, or open
        the regular file a finished (or killed) run left; None when it vanished meanwhile."""
        from exo2micro.io.oserrors import storage_error

        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        except OSError as exc:
            raise storage_error(exc, self.output_dir) from None
        try:
            mode = os.lstat(self.path).st_mode
            if not stat.S_ISREG(mode):
                raise self._not_a_file(mode)
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link between lstat and open
                raise self._not_a_file(stat.S_IFLNK) from None
            raise storage_error(exc, self.output_dir) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._not_a_file(mode)
        return fd

    def _not_a_file(self, mode: int) -> LockError:
        what = ("a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
                else "not a regular file")
        return LockError(f"lock path {self.path} is {what}; exo2micro never follows or "
                         f"replaces it: remove it (no exo2micro run creates it this way) and "
                         f"run again")

    def _lock_file(self) -> int:
        while True:
            fd = self._open()
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refusal() from None
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    self._discard(fd)
                    raise
                self._check_pid_fallback()
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)  # locked a file that a releasing run just unlinked: try again
                continue
            try:
                self._write_holder(fd)
            except OSError as exc:
                from exo2micro.io.oserrors import storage_error

                self._discard(fd)  # never leave an empty lock file behind
                raise storage_error(exc, self.output_dir) from None
            return fd

    def _discard(self, fd: int) -> None:
        """Remove the lock file this process holds (or created) and close it."""
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                self.path.unlink()
        os.close(fd)

    def _refusal(self) -> LockError:
        return LockError(
            f"output folder '{self.output_dir}' is in use by {_describe(read_holder(self.path))}; "
            f"wait for it to finish or choose another output folder (the lock {self.path} is "
            f"released automatically when that process exits)")

    def _check_pid_fallback(self) -> None:
        holder = read_holder(self.path)
        pid = holder.get("pid")
        if (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                and pid != os.getpid() and _pid_alive(pid)):
            raise self._refusal()
        if holder:
            log.warning("file locking is not supported at %s; taking over the lock recorded "
                        "for %s", self.path, _describe(holder))

    @staticmethod
    def _write_holder(fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv) or sys.executable}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        with _held_guard:
            entry = _held.get(self._key)
            if entry is None:
                return
            fd, count = entry
            if count > 1:
                _held[self._key] = (fd, count - 1)
                return
            del _held[self._key]
            self._discard(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
