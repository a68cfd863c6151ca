"""
Storage for persistent tasks, chosen by the ``PROCPOOL_DATABASE`` setting.

A ``postgresql://`` (or ``postgres://``) DSN selects PostgreSQL; anything else
is the path of a SQLite file::

    >>> from procpool.storage import open_storage
    >>> open_storage("tasks.sqlite3").name
    "SQLite file 'tasks.sqlite3'"
    >>> open_storage("postgresql://bob:pw@db/game").name
    "PostgreSQL database 'game' on db:5432 as bob"
"""

from __future__ import annotations

from procpool.errors import StorageError, StorageUnavailable, TaskNotStored
from procpool.storage.base import Storage, StoredTask

__all__ = ["open_storage", "is_postgres", "Storage", "StoredTask", "StorageError",
           "StorageUnavailable", "TaskNotStored"]


def is_postgres(database: str) -> bool:
    """True when ``database`` is a PostgreSQL DSN: ``is_postgres("postgresql://h/db")``."""
    return database.startswith(("postgresql://", "postgres://"))


def open_storage(database: str) -> Storage:
    """The backend for ``database`` (not yet connected): ``open_storage("tasks.sqlite3")``."""
    if is_postgres(database):
        from procpool.storage.postgres import PostgresStorage
        return PostgresStorage(database)
    from procpool.storage.sqlite import SQLiteStorage
    return SQLiteStorage(database)
