"""
Database trouble: unreachable at start, lost mid-run, back again.

PostgreSQL trouble is made on a database these tests create and drop
themselves (never the shared server itself): its connections are terminated,
it is dropped, then created again.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid

import pytest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from procpool._task_writer import RETRY_SECONDS
from procpool.errors import StorageUnavailable, TaskNotStored
from procpool.storage.sqlite import SQLiteStorage
from procpool.tasks import TaskHandler
from tests import delay_support as support
from tests.delay_support import CALLS, record


class TroubleMixin:
    def make_handler(self, storage):
        handler = TaskHandler(clock=Clock(), storage=storage)
        self.addCleanup(handler.stop)
        return handler

    @inlineCallbacks
    def assert_add_fails_loudly(self, handler):
        task = handler.add(5, record, "lost", persistent=True)
        d = task.get_deferred()
        yield handler.flush()
        self.assertFalse(task.exists(), "an unstored persistent task pretends to be scheduled")
        error = yield self.assertFailure(d, TaskNotStored)
        self.assertEqual(error.task_id, task.get_id())
        handler.clock.advance(10)
        self.assertNotIn((("lost",), {}), CALLS)

    @inlineCallbacks
    def assert_add_works(self, handler, stored_ids):
        task = handler.add(5, record, "kept", persistent=True)
        yield handler.flush()
        self.assertTrue(task.active())
        self.assertIn(task.get_id(), stored_ids())
        return task


class SQLiteTroubleTests(TroubleMixin, TestCase):
    def setUp(self):
        CALLS.clear()
        tmp = tempfile.TemporaryDirectory(prefix="procpool-trouble-")
        self.addCleanup(tmp.cleanup)
        self.path = os.path.join(tmp.name, "tasks.sqlite3")

    @inlineCallbacks
    def test_unreachable_file_at_start_fails_naming_the_file(self):
        path = os.path.join(self.path, "no", "such", "dir.sqlite3")
        handler = self.make_handler(path)
        error = yield self.assertFailure(handler.start(), StorageUnavailable)
        self.assertIn(path, str(error))
        # Still fine for non-persistent work, and start() may be tried again.
        handler.add(1, record)
        handler.clock.advance(1)
        self.assertEqual(len(CALLS), 1)

    @inlineCallbacks
    def test_locked_database_fails_the_add_then_works_once_released(self):
        handler = self.make_handler(SQLiteStorage(self.path, busy_timeout=0.2))
        yield handler.start()

        def stored_ids():
            conn = sqlite3.connect(self.path)
            try:
                return {r[0] for r in conn.execute("SELECT id FROM procpool_tasks")}
            finally:
                conn.close()

        yield self.assert_add_works(handler, stored_ids)
        locker = sqlite3.connect(self.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            yield self.assert_add_fails_loudly(handler)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        yield self.assert_add_works(handler, stored_ids)


    @inlineCallbacks
    def test_failed_delete_is_retried_on_the_handlers_clock(self):
        handler = self.make_handler(SQLiteStorage(self.path, busy_timeout=0.2))
        yield handler.start()
        task = handler.add(5, record, "ran", persistent=True)
        yield handler.flush()
        locker = sqlite3.connect(self.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            handler.clock.advance(5)          # runs; its delete meets the lock
            yield handler.flush()
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        self.assertEqual(CALLS, [(("ran",), {})])
        self.assertIn(task.get_id(), self.stored_ids())
        self.flushLoggedErrors()
        handler.clock.advance(RETRY_SECONDS)  # the retry, with no other write to carry it
        yield handler.flush()
        self.assertNotIn(task.get_id(), self.stored_ids())

    @inlineCallbacks
    def test_unstored_task_nobody_watches_is_logged_exactly_once(self):
        import gc

        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        handler = self.make_handler(SQLiteStorage(self.path, busy_timeout=0.2))
        yield handler.start()
        locker = sqlite3.connect(self.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            task = handler.add(5, record, "unwatched", persistent=True)
            yield handler.flush()
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        self.assertFalse(task.exists())
        del task
        gc.collect()       # an "Unhandled error in Deferred" would be logged here
        loud = [e for e in events if e.get("log_level") is not None
                and e["log_level"].name in ("error", "critical")]
        self.assertEqual(len(loud), 1, loud)
        self.assertIsInstance(loud[0]["error"], TaskNotStored)
        self.assertEqual(self.flushLoggedErrors(), [])

    def stored_ids(self):
        conn = sqlite3.connect(self.path)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM procpool_tasks")}
        finally:
            conn.close()


class PostgresTroubleTests(TroubleMixin, TestCase):
    pytestmark = [pytest.mark.postgres]

    def setUp(self):
        CALLS.clear()
        self.admin_dsn = support.postgres_dsn()
        self.dbname = f"procpool_trouble_{uuid.uuid4().hex[:10]}"
        support.admin(self.admin_dsn, f"CREATE DATABASE {self.dbname}")
        self.addCleanup(support.admin, self.admin_dsn,
                        f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
        base = self.admin_dsn.split("?")[0].rsplit("/", 1)[0]
        self.dsn = f"{base}/{self.dbname}"

    def stored_ids(self):
        return {r[0] for r in support.admin(self.dsn, "SELECT id FROM procpool_tasks")}

    def terminate(self):
        support.admin(self.admin_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", params=(self.dbname,))

    @inlineCallbacks
    def test_unreachable_server_at_start_names_database_but_not_password(self):
        handler = self.make_handler("postgresql://gamer:sekrit-pw@127.0.0.1:1/gamedb")
        error = yield self.assertFailure(handler.start(), StorageUnavailable)
        self.assertIn("'gamedb' on 127.0.0.1:1 as gamer", str(error))
        self.assertNotIn("sekrit-pw", str(error))

    @inlineCallbacks
    def test_missing_database_at_start_fails_naming_it(self):
        handler = self.make_handler(self.dsn + "_missing")
        error = yield self.assertFailure(handler.start(), StorageUnavailable)
        self.assertIn(self.dbname + "_missing", str(error))

    @inlineCallbacks
    def test_password_of_an_unparsable_dsn_is_never_shown_nor_chained(self):
        import traceback
        handler = self.make_handler("postgresql://gamer:sekrit%zz-pw@127.0.0.1:5432/gamedb")
        error = yield self.assertFailure(handler.start(), StorageUnavailable)
        self.assertIn("percent-encoded", str(error))        # libpq's reason is kept
        shown = "".join(traceback.format_exception(error)) + repr(error)
        self.assertNotIn("sekrit", shown)

    @inlineCallbacks
    def test_terminated_connection_is_replaced_without_losing_an_add(self):
        handler = self.make_handler(self.dsn)
        yield handler.start()
        kept = yield self.assert_add_works(handler, self.stored_ids)
        self.terminate()
        # The idle connection went stale: the write reconnects and goes through.
        again = yield self.assert_add_works(handler, self.stored_ids)
        self.terminate()
        handler.clock.advance(5)
        self.assertFalse(kept.exists() or again.exists())
        self.assertEqual([c[0] for c in CALLS], [("kept",), ("kept",)])
        yield handler.flush()
        self.assertEqual(self.stored_ids(), set())

    @inlineCallbacks
    def test_dropped_database_fails_adds_until_it_is_created_again(self):
        handler = self.make_handler(self.dsn)
        yield handler.start()
        yield self.assert_add_works(handler, self.stored_ids)
        support.admin(self.admin_dsn, f"DROP DATABASE {self.dbname} WITH (FORCE)")
        yield self.assert_add_fails_loudly(handler)
        yield self.assert_add_fails_loudly(handler)
        support.admin(self.admin_dsn, f"CREATE DATABASE {self.dbname}")
        yield self.assert_add_works(handler, self.stored_ids)

    @inlineCallbacks
    def test_finished_task_row_is_deleted_once_the_database_is_back(self):
        handler = self.make_handler(self.dsn)
        yield handler.start()
        task = yield self.assert_add_works(handler, self.stored_ids)
        support.admin(self.admin_dsn, f"DROP DATABASE {self.dbname} WITH (FORCE)")
        handler.clock.advance(5)       # runs; its delete meets no database
        yield handler.flush()
        self.assertEqual(len(CALLS), 1)
        support.admin(self.admin_dsn, f"CREATE DATABASE {self.dbname}")
        support.admin(self.dsn, "CREATE TABLE procpool_tasks (id BIGINT PRIMARY KEY, "
                      "due DOUBLE PRECISION NOT NULL, payload BYTEA NOT NULL)",
                      f"INSERT INTO procpool_tasks VALUES ({task.get_id()}, 5, '')")
        yield self.assert_add_works(handler, self.stored_ids)   # the retried delete rides along
        self.assertNotIn(task.get_id(), self.stored_ids())
