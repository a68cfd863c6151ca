"""
workers.db: code in a worker reaches PostgreSQL through one connection per
worker process, made from PROCPOOL_DATABASE, reused across tasks and closed
when the worker exits.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest
from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

import procpool
from procpool import settings, tasks
from procpool.settings import SettingError
from tests import delay_support as support


def insert_rows(table: str, task: int, count: int) -> tuple[int, int, float, float]:
    """Runs in a worker: insert ``count`` rows, one statement each."""
    from workers.db import connection
    conn = connection()
    started = time.time()
    for n in range(count):
        conn.execute(f"INSERT INTO {table} (task, n, pid) VALUES (%s, %s, %s)",
                     (task, n, os.getpid()))
    return os.getpid(), conn.info.backend_pid, started, time.time()


def connection_of_this_worker() -> tuple[int, int]:
    from workers.db import connection
    return os.getpid(), connection().info.backend_pid


def sqlite_refused() -> str:
    from workers.db import connection
    try:
        connection()
    except SettingError as e:
        return str(e)
    return "no error"


class WorkerDatabaseTests(TestCase):
    pytestmark = [pytest.mark.postgres]
    timeout = 120

    def setUp(self):
        self.backend = support.PostgresBackend()
        self.addCleanup(self.backend.cleanup)
        self.table = f"{self.backend.schema}.scores"
        support.admin(self.backend.admin_dsn, f"CREATE TABLE {self.table} "
                      "(task INT NOT NULL, n INT NOT NULL, pid INT NOT NULL)")
        self.addCleanup(settings.reset)
        self.addCleanup(tasks.set_handler, None)
        procpool.configure(PROCPOOL_DATABASE=self.backend.database, PROCPOOL_MIN_NPROC=2,
                           PROCPOOL_MAX_NPROC=2)

    def worker_backends(self):
        return {r[0] for r in support.admin(
            self.backend.admin_dsn, "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = 'procpool-worker'")}

    @inlineCallbacks
    def test_four_tasks_on_two_workers_insert_all_2000_rows(self):
        yield procpool.start()
        try:
            results = yield defer.gatherResults(
                [procpool.run_async(insert_rows, self.table, t, 500) for t in range(4)],
                consumeErrors=True)
            again = yield defer.gatherResults(
                [procpool.run_async(connection_of_this_worker) for _ in range(4)],
                consumeErrors=True)
        finally:
            yield procpool.stop()
        rows = support.admin(self.backend.admin_dsn,
                             f"SELECT task, count(*), count(DISTINCT n) FROM {self.table} "
                             "GROUP BY task ORDER BY task")
        self.assertEqual(rows, [(t, 500, 500) for t in range(4)])
        by_worker = {}
        for pid, backend_pid, _, _ in results:
            by_worker.setdefault(pid, set()).add(backend_pid)
        self.assertEqual(len(by_worker), 2, "the four tasks did not share two workers")
        for pid, backends in by_worker.items():
            self.assertEqual(len(backends), 1, f"worker {pid} opened more than one connection")
        for pid, backend_pid in again:
            self.assertEqual({backend_pid}, by_worker[pid], "a later task got a new connection")
        # The workers exited normally, and their connections closed with them.
        opened = set().union(*by_worker.values())
        deadline = time.time() + 10
        while opened & self.worker_backends() and time.time() < deadline:
            yield support_sleep(0.1)
        self.assertEqual(opened & self.worker_backends(), set())


class WorkerDatabaseSettingTests(TestCase):
    timeout = 120

    def setUp(self):
        self.addCleanup(settings.reset)
        self.addCleanup(tasks.set_handler, None)
        procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1)

    @inlineCallbacks
    def test_sqlite_setting_is_refused_with_a_reason(self):
        scratch = tempfile.TemporaryDirectory(prefix="procpool-workerdb-")
        self.addCleanup(scratch.cleanup)
        procpool.configure(PROCPOOL_DATABASE=os.path.join(scratch.name, "tasks.sqlite3"))
        yield procpool.start()
        try:
            message = yield procpool.run_async(sqlite_refused)
        finally:
            yield procpool.stop()
        self.assertIn("postgresql://", message)


def connect_error() -> str:
    """Runs in a worker: the message and traceback of a failed connection."""
    import traceback

    from workers.db import connection
    try:
        connection()
    except Exception as e:
        return "".join(traceback.format_exception(e))
    return "no error"


class WorkerDatabasePasswordTests(TestCase):
    timeout = 120

    def setUp(self):
        self.addCleanup(settings.reset)
        self.addCleanup(tasks.set_handler, None)
        procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1)

    @inlineCallbacks
    def test_connection_error_never_shows_the_password(self):
        procpool.configure(PROCPOOL_DATABASE="postgresql://gamer:sekrit%zz@127.0.0.1:1/game")
        yield procpool.get_pool().start()
        try:
            shown = yield procpool.run_async(connect_error)
        finally:
            yield procpool.stop()
        self.assertIn("OperationalError", shown)
        self.assertIn("percent-encoded", shown)
        self.assertNotIn("sekrit", shown)


def support_sleep(seconds: float):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)
