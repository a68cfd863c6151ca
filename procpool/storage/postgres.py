"""
PostgreSQL storage for persistent tasks, through psycopg 3.

    >>> store = PostgresStorage("postgresql://game@db.example/game")
    >>> store.open(); store.load()
    ([], 1)

The tables are created unqualified, so they land in the connection's
``search_path``; a DSN such as ``postgresql://u@h/db?options=-csearch_path%3Dgame``
keeps several servers (or test runs) apart in one database.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from procpool.storage.base import META, TABLE, Storage, StoredTask
from procpool.storage.errors import StorageError, StorageUnavailable

__all__ = ["PostgresStorage", "describe_dsn"]


def describe_dsn(dsn: str) -> str:
    """
    Name a PostgreSQL database for messages, never showing its password.

    >>> describe_dsn("postgresql://bob:secret@db:5433/game")
    "PostgreSQL database 'game' on db:5433 as bob"
    """
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL database (unparsable DSN)"
    host = parts.get("host") or "local socket"
    port = parts.get("port") or "5432"
    user = parts.get("user") or "the default user"
    return f"PostgreSQL database {parts.get('dbname') or '(default)'!r} on {host}:{port} as {user}"


def scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN's password, if any, blanked out."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return text
    return text.replace(str(password), "***") if password else text


class PostgresStorage(Storage):
    """Persistent tasks in PostgreSQL. Example: ``PostgresStorage("postgresql://u@h/db")``."""

    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.name = describe_dsn(dsn)
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout,
                                   application_name="procpool-tasks")
        except psycopg.Error as e:
            raise StorageUnavailable(self.name, scrub(str(e).strip(), self.dsn)) from e
        try:
            with conn.transaction():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                             "id BIGINT PRIMARY KEY, due DOUBLE PRECISION NOT NULL, "
                             "payload BYTEA NOT NULL)")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {META} ("
                             "key TEXT PRIMARY KEY, value BIGINT NOT NULL)")
        except psycopg.Error as e:
            conn.close()
            raise StorageUnavailable(self.name, scrub(str(e).strip(), self.dsn)) from e
        self._conn = conn
        return conn

    def _fail(self, e: psycopg.Error) -> StorageError:
        self.close()
        reason = scrub(str(e).strip(), self.dsn)
        if isinstance(e, psycopg.OperationalError):
            return StorageUnavailable(self.name, reason)
        return StorageError(f"{self.name}: {reason}")

    def open(self) -> None:
        self._connection()

    def load(self) -> tuple[list[StoredTask], int]:
        conn = self._connection()
        try:
            with conn.transaction():
                rows = conn.execute(f"SELECT id, due, payload FROM {TABLE} "
                                    "ORDER BY due, id").fetchall()
                mark = conn.execute(f"SELECT value FROM {META} "
                                    "WHERE key = 'next_id'").fetchone()
        except psycopg.Error as e:
            raise self._fail(e) from e
        tasks = [StoredTask(int(i), float(d), bytes(p)) for i, d, p in rows]
        return tasks, max([mark[0] if mark else 1] + [t.task_id + 1 for t in tasks])

    def apply(self, puts: Sequence[StoredTask], deletes: Sequence[int], next_id: int) -> None:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                if puts:
                    cur.executemany(
                        f"INSERT INTO {TABLE} (id, due, payload) VALUES (%s, %s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET due = excluded.due, "
                        "payload = excluded.payload",
                        [(t.task_id, t.due, t.payload) for t in puts])
                if deletes:
                    cur.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (list(deletes),))
                cur.execute(f"INSERT INTO {META} (key, value) VALUES ('next_id', %s) "
                            "ON CONFLICT (key) DO UPDATE "
                            f"SET value = GREATEST({META}.value, excluded.value)", (next_id,))
        except psycopg.Error as e:
            raise self._fail(e) from e

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
