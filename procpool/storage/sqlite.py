"""
SQLite storage for persistent tasks: a local file, nothing to install.

    >>> store = SQLiteStorage("procpool.sqlite3")
    >>> store.open(); store.load()
    ([], 1)

The file is opened in WAL mode so a SIGKILLed host loses nothing that was
committed. One host process should own one file: SQLite lets only one writer
in at a time (see docs/persistence.md). Deletes the file refuses (locked,
read-only) are listed in ``<path>-done`` until it takes them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from procpool.errors import StorageError, StorageUnavailable
from procpool.storage.base import META, TABLE, Storage, StoredTask

__all__ = ["SQLiteStorage"]


class SQLiteStorage(Storage):
    """Persistent tasks in a SQLite file. Example: ``SQLiteStorage("/var/lib/game/tasks.db")``."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 5.0,
                 done_path: str | None = None) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.name = f"SQLite file {self.path!r}"
        self.done_path = done_path if done_path is not None else self.path + "-done"
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageUnavailable(self.name, str(e)) from e
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                         "id INTEGER PRIMARY KEY, due REAL NOT NULL, payload BLOB NOT NULL)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {META} ("
                         "key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        except sqlite3.Error as e:
            conn.close()
            raise StorageUnavailable(self.name, str(e)) from e
        self._conn = conn
        return conn

    def _fail(self, e: sqlite3.Error) -> StorageError:
        self.close()
        return StorageError(f"{self.name}: {e}")

    def open(self) -> None:
        self._connection()

    def load(self) -> tuple[list[StoredTask], int]:
        conn = self._connection()
        try:
            rows = conn.execute(f"SELECT id, due, payload FROM {TABLE} ORDER BY due, id").fetchall()
            mark = conn.execute(f"SELECT value FROM {META} WHERE key = 'next_id'").fetchone()
        except sqlite3.Error as e:
            raise self._fail(e) from e
        tasks = [StoredTask(int(i), float(d), bytes(p)) for i, d, p in rows]
        return tasks, max([mark[0] if mark else 1] + [t.task_id + 1 for t in tasks])

    def apply(self, puts: Sequence[StoredTask], deletes: Sequence[int], next_id: int) -> None:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(f"INSERT OR REPLACE INTO {TABLE} (id, due, payload) "
                                 "VALUES (?, ?, ?)",
                                 [(t.task_id, t.due, t.payload) for t in puts])
                conn.executemany(f"DELETE FROM {TABLE} WHERE id = ?", [(i,) for i in deletes])
                conn.execute(f"INSERT INTO {META} (key, value) VALUES ('next_id', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                             (next_id,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._fail(e) from e

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
