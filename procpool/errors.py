"""
Every error procpool reports, in one place, one class for each thing that can go wrong.

All derive from :class:`ProcPoolError`, so ``except ProcPoolError`` catches
every failure procpool itself reports (the exceptions of your own code come
back as their own type, or as :class:`RemoteError`)::

    >>> from procpool.errors import ProcPoolTimeout
    >>> str(ProcPoolTimeout(1.5))
    'task exceeded its time limit of 1.5 s and its worker was killed'

The families:

- the pool: :class:`ProcPoolTimeout`, :class:`WorkerCrashed`,
  :class:`WorkerStartError`, :class:`PoolStopped`, :class:`PayloadTooLarge`,
  :class:`MemoryLimitExceeded`, :class:`PoolBusy`, :class:`WorkerProtocolError`,
  :class:`SerializationError`, :class:`RemoteError`;
- settings: :class:`SettingError`;
- delays, dialogues and their storage: :class:`InvalidTask`,
  :class:`HandlerNotStarted`, :class:`DialogueAbandoned`,
  :class:`StorageError`, :class:`StorageUnavailable`, :class:`TaskNotStored`;
- the sandbox: :class:`SandboxError`, :class:`SandboxUnavailable`,
  :class:`SandboxBusy`.

This module imports nothing but the standard library: anything may import it.
"""

from __future__ import annotations

import signal

__all__ = [
    "ProcPoolError",
    "ProcPoolTimeout",
    "WorkerCrashed",
    "WorkerStartError",
    "PoolStopped",
    "PayloadTooLarge",
    "MemoryLimitExceeded",
    "PoolBusy",
    "WorkerProtocolError",
    "RemoteError",
    "SerializationError",
    "SettingError",
    "InvalidTask",
    "HandlerNotStarted",
    "DialogueAbandoned",
    "StorageError",
    "StorageUnavailable",
    "TaskNotStored",
    "SandboxError",
    "SandboxUnavailable",
    "SandboxBusy",
]


class ProcPoolError(Exception):
    """Base class of every error procpool reports about itself."""


# -- the pool -----------------------------------------------------------------

class ProcPoolTimeout(ProcPoolError):
    """
    A run took longer than its ``proc_timeout``; its worker's process group was killed.

    ``limit`` is the limit in seconds. A run in a thread (``use_thread=True``)
    cannot be killed: its Deferred fails at the limit and the thread's late
    result is dropped.
    """

    def __init__(self, limit: float, killed: str = "its worker was killed") -> None:
        super().__init__(f"task exceeded its time limit of {limit:g} s and {killed}")
        self.limit = limit


class WorkerCrashed(ProcPoolError):
    """The worker running a task died before answering (exit, signal, segfault)."""

    def __init__(self, pid: int | None, exitcode: int | None = None,
                 signum: int | None = None, *, how: str | None = None) -> None:
        if how is not None:
            pass  # said by the caller (the Ray backend: Ray's own words)
        elif signum is not None:
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            how = f"was killed by {name} ({signum})"
        elif exitcode is not None:
            how = f"exited with code {exitcode}"
        else:
            how = "closed its connection"
        super().__init__(f"worker {pid} {how} while running the task" if pid is not None
                         else f"the worker {how}")
        self.pid = pid
        self.exitcode = exitcode
        self.signum = signum


class WorkerProtocolError(WorkerCrashed):
    """
    The worker's answers could not be read any more (their framing was lost:
    a task wrote to the worker's answer pipe, say), so it was killed while
    running the task. ``reason`` says what was wrong; also a
    :class:`WorkerCrashed`, with ``signum`` SIGKILL.
    """

    def __init__(self, pid: int | None, reason: str) -> None:
        ProcPoolError.__init__(self, f"worker {pid}'s answers lost their framing ({reason}); it "
                                     "was killed while running the task")
        self.pid = pid
        self.exitcode = None
        self.signum = int(signal.SIGKILL)
        self.reason = reason


class WorkerStartError(ProcPoolError):
    """A worker process could not be started or did not answer in time."""


class PoolStopped(ProcPoolError):
    """The pool was stopped before (or while) the task could run."""

    def __init__(self, message: str = "the process pool is stopped") -> None:
        super().__init__(message)


class PoolBusy(ProcPoolError):
    """
    The pool's queue is at one of its bounds, so the task was refused at once.

    ``bound`` names the setting (``PROCPOOL_MAX_QUEUE`` or
    ``PROCPOOL_MAX_QUEUED_BYTES``), ``limit`` is its value and ``current``
    what the task would have made it (tasks or bytes waiting)::

        >>> PoolBusy("PROCPOOL_MAX_QUEUE", 100000, 100000, "tasks").bound
        'PROCPOOL_MAX_QUEUE'
    """

    def __init__(self, bound: str, limit: int, current: int, unit: str) -> None:
        super().__init__(f"the pool's queue is full: {current:,} {unit} waiting, over {bound} "
                         f"({limit:,}); try again later")
        self.bound = bound
        self.limit = limit
        self.current = current


class PayloadTooLarge(ProcPoolError):
    """An argument or result is larger than ``PROCPOOL_MAX_PAYLOAD``."""

    def __init__(self, what: str, size: int, cap: int) -> None:
        verb = "are" if what.endswith("arguments") else "is"
        super().__init__(f"{what} {verb} {size:,} bytes, over the payload cap of {cap:,} bytes "
                         "(PROCPOOL_MAX_PAYLOAD)")
        self.what = what
        self.size = size
        self.cap = cap


class MemoryLimitExceeded(ProcPoolError, MemoryError):
    """
    A task went past its worker's memory limit (``PROCPOOL_MAX_MEMORY``,
    ``limit`` bytes); that worker was replaced. Also a ``MemoryError``::

        >>> "memory limit of 300 MiB" in str(MemoryLimitExceeded(300 * 1024 * 1024))
        True
    """

    def __init__(self, limit: int) -> None:
        size = f"{limit // (1 << 20):,} MiB" if limit % (1 << 20) == 0 else f"{limit:,} bytes"
        super().__init__(f"the task went past its worker's memory limit of {size} "
                         "(PROCPOOL_MAX_MEMORY); the worker was replaced")
        self.limit = limit

    def __reduce__(self) -> tuple:
        return (type(self), (self.limit,))


class SerializationError(ProcPoolError, ValueError):
    """Something handed to procpool cannot be serialised to cross into a worker."""


class RemoteError(ProcPoolError):
    """
    An exception raised in a worker whose type could not be rebuilt here.

    ``type_name`` is the remote exception's qualified type name, ``message``
    its text and ``remote_traceback`` the formatted traceback from the worker
    (exceptions that are rebuilt as their own type carry it too)::

        >>> str(RemoteError("mygame.Oops", "no"))
        'mygame.Oops: no'
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


# -- settings -----------------------------------------------------------------

class SettingError(ProcPoolError, ValueError):
    """A setting was given a value it cannot take; the message names the setting."""


# -- delays and their storage -------------------------------------------------

class InvalidTask(ProcPoolError, ValueError):
    """``delay()`` was given something it refuses; the message says what and why."""


class HandlerNotStarted(ProcPoolError, RuntimeError):
    """A persistent delay was asked of a task handler whose storage is not loaded yet."""


class DialogueAbandoned(ProcPoolError):
    """
    The player left an ``@interactive`` dialogue with a question open (typed
    ``quit`` or disconnected); raised inside the dialogue at that ``yield``.
    """


class StorageError(ProcPoolError):
    """Something went wrong in the database that holds persistent tasks."""


class StorageUnavailable(StorageError):
    """
    The task database cannot be opened or reached; the message names it (never a password).

        >>> str(StorageUnavailable("SQLite file 'x.sqlite3'", "unable to open database file"))
        "cannot use the task database (SQLite file 'x.sqlite3'): unable to open database file"
    """

    def __init__(self, database: str, reason: str) -> None:
        super().__init__(f"cannot use the task database ({database}): {reason}")
        self.database = database
        self.reason = reason


class TaskNotStored(StorageError):
    """A persistent task could not be written, so it was cancelled instead of running unsaved."""

    def __init__(self, task_id: int, database: str, reason: str) -> None:
        super().__init__(f"persistent task {task_id} could not be stored in {database} and was "
                         f"cancelled: {reason}")
        self.task_id = task_id
        self.database = database
        self.reason = reason


# -- the sandbox --------------------------------------------------------------

class SandboxError(ProcPoolError):
    """
    Player code failed, or its confined child misbehaved.

    ``type_name`` is the error's type name as seen in the child (for example
    ``"ValueError"``, ``"SyntaxError"``, or ``"SandboxCrashed"`` for a child
    that died), ``message`` its text and ``remote_traceback`` the child's
    traceback text, if any (the same name :class:`RemoteError` uses). Its
    text stays short, fit to show a player::

        >>> str(SandboxError("ValueError", "x"))
        'ValueError: x'
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class SandboxUnavailable(ProcPoolError):
    """
    Sandboxed runs are refused: confinement could not be set up here.

    Set ``PROCPOOL_SANDBOX_DEGRADED`` to run without it (warns on every run).
    Example: ``SandboxUnavailable("seccomp: libseccomp not found")``.
    """


class SandboxBusy(SandboxUnavailable):
    """
    The caller already has its quota of sandboxed runs in progress.

    Refused at once rather than queued, so one player cannot build up a
    backlog; ``PROCPOOL_SANDBOX_PER_CALLER`` sets the quota. Example:
    ``SandboxBusy("caller already has 2 sandboxed runs in progress")``.
    """
