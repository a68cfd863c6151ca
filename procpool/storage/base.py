"""
The storage interface behind persistent ``delay``: one small contract, two backends.

A backend is synchronous and used from one thread at a time (the task handler
runs it on a dedicated thread so the reactor never waits on the database)::

    >>> from procpool.storage import open_storage
    >>> store = open_storage("/tmp/tasks.sqlite3")
    >>> store.open()
    >>> store.apply(puts=[StoredTask(1, 10.0, b"...")], deletes=[], next_id=2)
    >>> store.load()
    ([StoredTask(task_id=1, due=10.0, payload=b'...')], 2)
    >>> store.close()

Rows are ``(id, due, payload)``: ``due`` is in the handler clock's seconds,
``payload`` is the pickled call. ``next_id`` is a high-water mark kept next to
the rows, so task ids are never handed out twice, not even after a restart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StoredTask", "Storage", "TABLE", "META"]

TABLE = "procpool_tasks"
META = "procpool_meta"


@dataclass(frozen=True)
class StoredTask:
    """One persistent task as stored: ``StoredTask(7, due=1700000000.0, payload=b"...")``."""

    task_id: int
    due: float
    payload: bytes


class Storage(ABC):
    """
    Where persistent tasks live. Example: ``SQLiteStorage("tasks.sqlite3")``.

    Every method may raise :class:`~procpool.errors.StorageError`
    (:class:`~procpool.errors.StorageUnavailable` when the database
    cannot be reached). After an error the backend drops its connection and
    reconnects on the next call, so it works again once the database is back.
    """

    #: a description of the database for messages, without any password
    name: str
    #: the local file listing tasks whose rows must go while the database refuses
    #: deletes (procpool/storage/done.py); ``None``: a backend without one
    done_path: str | None = None

    @abstractmethod
    def open(self) -> None:
        """Connect and create the tables if needed."""

    @abstractmethod
    def load(self) -> tuple[list[StoredTask], int]:
        """Every stored task in due order, and the id high-water mark (next free id)."""

    @abstractmethod
    def apply(self, puts: Sequence[StoredTask], deletes: Sequence[int], next_id: int) -> None:
        """In one transaction: store ``puts``, delete ``deletes``, raise the high-water mark."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; calling it twice is harmless."""
