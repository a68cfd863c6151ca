"""
Shared helpers for the delay, storage, restart and worker-database tests.

The same behaviour tests run against SQLite (a file in a temporary directory)
and PostgreSQL (a fresh schema per test in the server named by
``PROCPOOL_TEST_DSN``). Without that variable, or when the server does not
answer, the PostgreSQL tests skip with the reason, unless
``PROCPOOL_REQUIRE_POSTGRES=1`` asks for a failure instead.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SkipTest

CALLS: list[tuple[Any, ...]] = []


def record(*args: Any, **kwargs: Any) -> str:
    """A module-level (so storable) callback: notes its call and answers."""
    CALLS.append((args, kwargs))
    return f"called with {args} {kwargs}"


def explode(*args: Any) -> None:
    """A storable callback that raises."""
    CALLS.append((args, {}))
    raise ZeroDivisionError("the callback broke")


class Bell:
    """A picklable object whose bound method is a persistent callback."""

    def __init__(self, name: str) -> None:
        self.name = name

    def ring(self, times: int) -> str:
        CALLS.append(((self.name, times), {}))
        return f"{self.name} rang {times}"


def require_postgres() -> bool:
    return os.environ.get("PROCPOOL_REQUIRE_POSTGRES", "") == "1"


def postgres_dsn() -> str:
    """The test server's DSN, or SkipTest (a failure under PROCPOOL_REQUIRE_POSTGRES=1)."""
    dsn = os.environ.get("PROCPOOL_TEST_DSN", "")
    reason = None
    if not dsn:
        reason = "PROCPOOL_TEST_DSN is not set"
    else:
        import psycopg
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
        except psycopg.Error as e:
            reason = f"PostgreSQL at PROCPOOL_TEST_DSN does not answer: {e}"
    if reason is None:
        return dsn
    if require_postgres():
        raise AssertionError(f"{reason} (and PROCPOOL_REQUIRE_POSTGRES=1)")
    raise SkipTest(reason)


def with_options(dsn: str, schema: str) -> str:
    """``dsn`` with the search_path set to ``schema`` (URL form)."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={quote(f'-csearch_path={schema}')}"


def admin(dsn: str, *statements: str, params: Any = None) -> list[Any]:
    """Run statements in autocommit on the test server; rows of the last one."""
    import psycopg
    rows: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            cur = conn.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
    return rows


class SQLiteBackend:
    """A SQLite file in a fresh temporary directory."""

    label = "sqlite"

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="procpool-delay-")
        self.database = os.path.join(self._dir.name, "tasks.sqlite3")

    def stored_ids(self) -> set[int]:
        """
        The ids stored now. A missing file or table fails the test: an empty
        answer there would let every "this row is gone" check pass unchecked.
        """
        if not os.path.exists(self.database):
            raise AssertionError(f"the task database {self.database} was never created")
        # Read-only, so that asking never makes the file or the table.
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM procpool_tasks")}
        except sqlite3.OperationalError as e:
            raise AssertionError(f"no task table in {self.database}: {e}") from e
        finally:
            conn.close()

    def cleanup(self) -> None:
        self._dir.cleanup()


class PostgresBackend:
    """A fresh schema in the test server; the DSN points its search_path there."""

    label = "postgres"

    def __init__(self) -> None:
        self.admin_dsn = postgres_dsn()
        self.schema = f"procpool_t_{uuid.uuid4().hex[:12]}"
        admin(self.admin_dsn, f"CREATE SCHEMA {self.schema}")
        self.database = with_options(self.admin_dsn, self.schema)

    def stored_ids(self) -> set[int]:
        """The ids stored now; a missing table fails the test (see SQLiteBackend)."""
        import psycopg
        try:
            rows = admin(self.admin_dsn, f"SELECT id FROM {self.schema}.procpool_tasks")
        except psycopg.errors.UndefinedTable as e:
            raise AssertionError(f"no task table in schema {self.schema}: {e}") from e
        return {r[0] for r in rows}

    def cleanup(self) -> None:
        admin(self.admin_dsn, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


BACKENDS = {"sqlite": SQLiteBackend, "postgres": PostgresBackend}
