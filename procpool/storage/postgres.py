"""
PostgreSQL storage for persistent tasks, through psycopg 3.

    >>> store = PostgresStorage("postgresql://game@db.example/game")
    >>> store.open(); store.load()
    ([], 1)

The tables are created unqualified, so they land in the connection's
``search_path``; a DSN such as ``postgresql://u@h/db?options=-csearch_path%3Dgame``
keeps several servers (or test runs) apart in one database.

Deletes the server refuses (it is down) are listed in a done file, by default
``$XDG_STATE_HOME/procpool/tasks-<digest of the DSN>.done`` (``~/.local/state``
when the variable is unset; ``done_path`` chooses another).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from procpool.errors import StorageError, StorageUnavailable
from procpool.storage.base import META, TABLE, Storage, StoredTask
from procpool.storage.done import state_directory

__all__ = ["PostgresStorage", "describe_dsn"]

T = TypeVar("T")

_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:([^@/?#]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


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


def _passwords(dsn: str) -> set[str]:
    """Every spelling of the DSN's password that a message could quote."""
    found: set[str] = set()
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None     # unparsable: libpq's message may quote the raw text
    if password:
        found.add(str(password))
    for pattern in (_URL_PASSWORD, _KEYWORD_PASSWORD):
        match = pattern.search(dsn)
        if match and match.group(1):
            raw = match.group(1).strip("'")
            found.update({raw, unquote(raw)})
    return {p for p in found if p}


def scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN's password, if any, blanked out (even from an unparsable DSN)."""
    for password in sorted(_passwords(dsn), key=len, reverse=True):
        text = text.replace(password, "***")
    return text


class PostgresStorage(Storage):
    """Persistent tasks in PostgreSQL. Example: ``PostgresStorage("postgresql://u@h/db")``."""

    def __init__(self, dsn: str, connect_timeout: int = 5, done_path: str | None = None) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.name = describe_dsn(dsn)
        if done_path is None:
            digest = hashlib.sha256(scrub(dsn, dsn).encode()).hexdigest()[:12]
            done_path = os.path.join(state_directory(), f"tasks-{digest}.done")
        self.done_path = done_path
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        # Errors are raised outside the except blocks: psycopg's own exception,
        # which may quote an unparsable DSN, must not ride along as __context__.
        error: psycopg.Error | None = None
        try:
            conn = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout,
                                   application_name="procpool-tasks")
        except psycopg.Error as e:
            error = e
        if error is not None:
            raise StorageUnavailable(self.name, scrub(str(error).strip(), self.dsn))
        try:
            with conn.transaction():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                             "id BIGINT PRIMARY KEY, due DOUBLE PRECISION NOT NULL, "
                             "payload BYTEA NOT NULL)")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {META} ("
                             "key TEXT PRIMARY KEY, value BIGINT NOT NULL)")
        except psycopg.Error as e:
            error = e
        if error is not None:
            conn.close()
            raise StorageUnavailable(self.name, scrub(str(error).strip(), self.dsn))
        self._conn = conn
        return conn

    def _fail(self, e: psycopg.Error) -> StorageError:
        self.close()
        reason = scrub(str(e).strip(), self.dsn)
        if isinstance(e, psycopg.OperationalError):
            return StorageUnavailable(self.name, reason)
        return StorageError(f"{self.name}: {reason}")

    def _run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """
        ``work(connection)`` in one transaction. A connection that went stale
        while idle (the server restarted, an idle timeout) is replaced and the
        work tried once more: it is idempotent, and the failed try rolled back.
        """
        reused = self._conn is not None and not self._conn.closed
        conn = self._connection()
        error: psycopg.Error | None = None
        try:
            return work(conn)
        except psycopg.Error as e:
            error = e
            reused = reused and isinstance(e, psycopg.OperationalError)
        self.close()
        if reused:
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.Error as e:
                error = e
        raise self._fail(error)

    def open(self) -> None:
        self._connection()

    def load(self) -> tuple[list[StoredTask], int]:
        def work(conn: psycopg.Connection) -> tuple[list, object]:
            with conn.transaction():
                rows = conn.execute(f"SELECT id, due, payload FROM {TABLE} "
                                    "ORDER BY due, id").fetchall()
                mark = conn.execute(f"SELECT value FROM {META} "
                                    "WHERE key = 'next_id'").fetchone()
            return rows, mark

        rows, mark = self._run(work)
        tasks = [StoredTask(int(i), float(d), bytes(p)) for i, d, p in rows]
        return tasks, max([mark[0] if mark else 1] + [t.task_id + 1 for t in tasks])

    def apply(self, puts: Sequence[StoredTask], deletes: Sequence[int], next_id: int) -> None:
        def work(conn: psycopg.Connection) -> None:
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

        self._run(work)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
