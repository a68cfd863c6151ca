"""
Storage for persistent tasks, chosen by the ``PROCPOOL_DATABASE`` setting.

A ``postgresql://`` (or ``postgres://``) DSN or a libpq ``key=value`` string
selects PostgreSQL; a path or ``sqlite:///path`` a SQLite file; anything else
raises :class:`~procpool.errors.SettingError` (procpool/storage/spec.py)::

    >>> from procpool.storage import open_storage
    >>> open_storage("tasks.sqlite3").name
    "SQLite file 'tasks.sqlite3'"
    >>> open_storage("postgresql://bob:pw@db/game").name
    "PostgreSQL database 'game' on db:5432 as bob"
"""

from __future__ import annotations

from procpool.errors import SettingError, StorageError, StorageUnavailable, TaskNotStored
from procpool.storage.base import Storage, StoredTask
from procpool.storage.spec import parse_database

__all__ = ["open_storage", "is_postgres", "Storage", "StoredTask", "StorageError",
           "StorageUnavailable", "TaskNotStored", "parse_database"]


def is_postgres(database: str) -> bool:
    """True when ``database`` names PostgreSQL: ``is_postgres("postgresql://h/db")``."""
    try:
        return parse_database(database)[0] == "postgresql"
    except SettingError:
        return False


def open_storage(database: str) -> Storage:
    """
    The backend for ``database`` (not yet connected): ``open_storage("tasks.sqlite3")``.

    A value that names no database raises :class:`SettingError` naming
    ``PROCPOOL_DATABASE`` and the accepted forms.
    """
    kind, where = parse_database(database)
    if kind == "postgresql":
        from procpool.storage.postgres import PostgresStorage
        return PostgresStorage(where)
    from procpool.storage.sqlite import SQLiteStorage
    return SQLiteStorage(where)
