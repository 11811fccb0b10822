"""Exception classes and the exit codes of the command-line tools (README, "Exit codes of the
tools").

Library code raises these; :func:`exo2micro.cli.common.run_tool` turns them into exit codes so
that Nextflow can decide what to retry:

======  ===============================================================  ==========
code    meaning                                                          retried?
======  ===============================================================  ==========
0       success                                                          —
2       usage error: bad option, bad parameter name/value                no
65      bad input data: corrupt/unsupported image, bad raw-dir layout    no
137     out of memory: ``MemoryError``, allocation failure, dead worker  yes, more memory
1       unexpected internal error (a traceback follows)                  no
======  ===============================================================  ==========
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 65
EXIT_OOM = 137

#: Exit codes of a task killed from outside: out of memory, time limit or a signal (130-145:
#: 128 + signals 2 to 17, SIGINT, SIGKILL = :data:`EXIT_OOM`, SIGTERM among them; 104 and 175 as
#: some schedulers and clouds report a killed job). Under Nextflow (conf/base.config, through
#: the generated conf/constants.config, :mod:`exo2micro.nfconstants`) the batch tasks retry only
#: these, and a pair task still killed with one on its last attempt is ignored, not fatal.
RETRY_EXIT_CODES: tuple[int, ...] = (104, *range(130, 146), 175)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "unexpected internal error (with traceback)",
    EXIT_USAGE: "usage error (bad option or parameter)",
    EXIT_DATA: "bad input data (corrupt/unsupported image, bad layout); not retried",
    EXIT_OOM: "out of memory; retried with more memory under Nextflow",
}


class Exo2microError(Exception):
    """Base class of every error exo2micro raises on purpose."""

    exit_code: int = EXIT_INTERNAL


class InputDataError(Exo2microError):
    """An input file or folder cannot be used: corrupt, truncated, unsupported, empty, bad layout.

    The message names the offending file and says what is wrong with it in one line.
    """

    exit_code = EXIT_DATA


class LayoutError(InputDataError):
    """The raw directory or samplesheet does not have the expected layout."""


class ParameterError(Exo2microError, ValueError):
    """A parameter name or value is invalid (unknown name, wrong type, out of range)."""

    exit_code = EXIT_USAGE


class ResourceError(Exo2microError):
    """The pre-flight check refused a run: estimated memory or disk exceeds what is available."""

    exit_code = EXIT_USAGE


class InsufficientMemoryError(Exo2microError, MemoryError):
    """Work that cannot be split needs more memory than is available (e.g. a raw image stored
    as one compressed strip); exit 137, so a scheduler retries it with more memory."""

    exit_code = EXIT_OOM


class LockError(Exo2microError):
    """Another run holds the lock on the output folder."""

    exit_code = EXIT_USAGE


def exit_code_for(exc: BaseException) -> int:
    """Return the documented exit code for an exception raised by a tool."""
    if isinstance(exc, Exo2microError):
        return exc.exit_code
    if isinstance(exc, MemoryError):
        return EXIT_OOM
    # OpenCV reports allocation failures as cv2.error with this text.
    if "Insufficient memory" in str(exc) or "Failed to allocate" in str(exc):
        return EXIT_OOM
    return EXIT_INTERNAL
