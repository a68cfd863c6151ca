"""
Errors of the task storage, all :class:`procpool.errors.ProcPoolError`::

    >>> from procpool.storage.errors import StorageUnavailable
    >>> str(StorageUnavailable("SQLite file 'x.sqlite3'", "unable to open database file"))
    "cannot use the task database (SQLite file 'x.sqlite3'): unable to open database file"
"""

from __future__ import annotations

from procpool.errors import ProcPoolError

__all__ = ["StorageError", "StorageUnavailable", "TaskNotStored"]


class StorageError(ProcPoolError):
    """Something went wrong in the database that holds persistent tasks."""


class StorageUnavailable(StorageError):
    """The task database cannot be opened or reached; the message names it (never a password)."""

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
