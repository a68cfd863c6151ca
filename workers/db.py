"""
A PostgreSQL connection for code that runs in a worker process.

    >>> from workers.db import connection
    >>> def add_scores(rows):
    ...     conn = connection()
    ...     with conn.transaction():
    ...         conn.cursor().executemany("INSERT INTO scores VALUES (%s, %s)", rows)
    ...     return len(rows)
    >>> d = procpool.run_async(add_scores, [("ann", 3), ("bob", 5)])

The connection is made from the ``PROCPOOL_DATABASE`` setting (the host
exports the settings given to ``procpool.configure()`` into the worker's
environment), on first use: one per worker process, reused by every task that
worker runs, closed when the worker exits (``atexit``; workers exit through
``sys.exit``). It is in autocommit mode, so no task can leave a transaction
open for the next one: group statements with ``with conn.transaction():``.

SQLite is not offered here: several workers writing one SQLite file take turns
behind a single write lock (see docs/persistence.md); use PostgreSQL.

This module imports no Twisted.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from procpool import settings
from procpool.errors import SettingError

__all__ = ["connection", "close"]

_conn: Any = None
_pid: int | None = None


def connection() -> Any:
    """
    This worker's ``psycopg.Connection`` to ``PROCPOOL_DATABASE``: ``connection().execute(...)``.

    Raises :class:`procpool.errors.SettingError` when the setting is not a
    ``postgresql://`` DSN, and ``psycopg.OperationalError`` when the server
    cannot be reached (its message never shows the password). A broken
    connection (the server restarted) is replaced on the next call.
    """
    global _conn, _pid
    if _conn is not None and not _conn.closed and not _conn.broken and _pid == os.getpid():
        return _conn
    dsn = settings.get("PROCPOOL_DATABASE")
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise SettingError(
            "PROCPOOL_DATABASE must be a postgresql:// DSN for workers.db.connection() "
            "(it names a SQLite file, which workers should not write concurrently)")
    import psycopg

    from procpool.storage.postgres import describe_dsn, scrub
    if _conn is not None and _pid == os.getpid():
        close()
    error: psycopg.Error | None = None
    try:
        _conn = psycopg.connect(dsn, autocommit=True, application_name="procpool-worker")
    except psycopg.Error as e:
        error = e
    if error is not None:
        # Raised outside the except block, so psycopg's own message (libpq may
        # quote part of a malformed DSN) is not chained to the host's log.
        raise psycopg.OperationalError(
            f"{describe_dsn(dsn)}: {scrub(str(error).strip(), dsn)}")
    _pid = os.getpid()
    return _conn


def close() -> None:
    """Close this worker's connection, if open (runs by itself at exit): ``close()``."""
    global _conn
    conn, _conn = _conn, None
    if conn is not None and _pid == os.getpid():
        try:
            conn.close()
        except Exception:
            pass


atexit.register(close)
