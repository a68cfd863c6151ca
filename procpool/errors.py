"""
The errors procpool raises, one class for each thing that can go wrong.

All derive from :class:`ProcPoolError`, so ``except ProcPoolError`` catches
every failure that procpool itself reports (the exceptions of your own code
come back as their own type, or as :class:`RemoteError`)::

    >>> from procpool.errors import ProcPoolTimeout
    >>> str(ProcPoolTimeout(1.5))
    'task exceeded its time limit of 1.5 s and its worker was killed'
"""

from __future__ import annotations

import signal

from procpool.settings import SettingError

__all__ = [
    "ProcPoolError",
    "ProcPoolTimeout",
    "WorkerCrashed",
    "WorkerStartError",
    "PoolStopped",
    "PayloadTooLarge",
    "RemoteError",
    "SerializationError",
    "SettingError",
]


class ProcPoolError(Exception):
    """Base class of every error procpool reports about itself."""


class ProcPoolTimeout(ProcPoolError):
    """A run took longer than its ``proc_timeout``; its worker's process group was killed."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"task exceeded its time limit of {limit:g} s and its worker was killed")
        self.limit = limit


class WorkerCrashed(ProcPoolError):
    """The worker running a task died before answering (exit, signal, segfault)."""

    def __init__(self, pid: int | None, exitcode: int | None = None,
                 signum: int | None = None) -> None:
        if signum is not None:
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            how = f"was killed by {name} ({signum})"
        elif exitcode is not None:
            how = f"exited with code {exitcode}"
        else:
            how = "closed its connection"
        super().__init__(f"worker {pid} {how} while running the task")
        self.pid = pid
        self.exitcode = exitcode
        self.signum = signum


class WorkerStartError(ProcPoolError):
    """A worker process could not be started or did not answer in time."""


class PoolStopped(ProcPoolError):
    """The pool was stopped before (or while) the task could run."""

    def __init__(self, message: str = "the process pool is stopped") -> None:
        super().__init__(message)


class PayloadTooLarge(ProcPoolError):
    """An argument or result is larger than ``PROCPOOL_MAX_PAYLOAD``."""

    def __init__(self, what: str, size: int, cap: int) -> None:
        super().__init__(f"{what} is {size:,} bytes, over the payload cap of {cap:,} bytes "
                         "(PROCPOOL_MAX_PAYLOAD)")
        self.what = what
        self.size = size
        self.cap = cap


class SerializationError(ProcPoolError, ValueError):
    """Something handed to procpool cannot be serialised to cross into a worker."""


class RemoteError(ProcPoolError):
    """
    An exception raised in a worker whose type could not be rebuilt here.

    ``type_name`` is the remote exception's qualified type name, ``message``
    its text and ``remote_traceback`` the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text
