"""
A database outage while persistent delays fire: every task runs exactly once.

The real tests run a host process with 100 persistent delays, take the
database away for about 3 s while they fire (a private PostgreSQL cluster
stopped and started again, or a SQLite file locked by the test), then restart
the host cleanly and count the runs. The PostgreSQL cluster is this module's
own (made with initdb in a temporary directory, on a free loopback port), so
stopping it disturbs nobody. The fast tests drive the same paths with a
Clock and a locked SQLite file, and read what the log says.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from procpool._task_writer import RETRY_SECONDS
from procpool.storage.sqlite import SQLiteStorage
from procpool.tasks import TaskHandler
from tests import delay_support as support
from tests.delay_support import CALLS, record
from tests.scripts_delay.outage_host import COUNT, FIRST, SPREAD

ROOT = Path(__file__).resolve().parent.parent


# -- a private PostgreSQL cluster -------------------------------------------

class PrivateCluster:
    """A throwaway PostgreSQL cluster owned by the ``postgres`` OS user."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("no initdb under /usr/lib/postgresql/*/bin")
        self.bin = os.path.dirname(found[-1])
        self.dir = tempfile.mkdtemp(prefix="procpool-outage-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.dir, "postgres")
        self._as_postgres("initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                          "--no-sync")
        self.start()

    def _as_postgres(self, tool: str, *args: str) -> None:
        command = [os.path.join(self.bin, tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        """Start the server and wait until it answers."""
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=20")
        self._as_postgres("pg_ctl", "-D", self.data, "-o", options,
                          "-l", os.path.join(self.dir, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (connections are cut) and wait until it is down."""
        self._as_postgres("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass            # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    try:
        made = PrivateCluster()
    except (OSError, RuntimeError, LookupError, subprocess.SubprocessError) as e:
        reason = f"could not make a private PostgreSQL cluster: {e}"
        if support.require_postgres():
            pytest.fail(f"{reason} (and PROCPOOL_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    yield made
    made.remove()


@pytest.fixture
def pg_database(cluster):
    """A fresh database in the private cluster: its DSN."""
    name = f"outage_{uuid.uuid4().hex[:10]}"
    support.admin(cluster.dsn, f"CREATE DATABASE {name}")
    yield cluster.dsn.rsplit("/", 1)[0] + f"/{name}"
    support.admin(cluster.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the host process --------------------------------------------------------

class Host:
    """One run of tests/scripts_delay/outage_host.py, its log in a file."""

    def __init__(self, mode: str, database: str, record_file: Path, workdir: Path) -> None:
        self.log_path = workdir / f"{mode}-{time.monotonic_ns()}.log"
        env = dict(os.environ, XDG_STATE_HOME=str(workdir), PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.scripts_delay.outage_host", mode, database,
                 str(record_file)], cwd=workdir, stdout=subprocess.PIPE, stderr=log,
                text=True, env=env)

    def line(self, prefix: str) -> str:
        text = self.proc.stdout.readline().strip()
        assert text.startswith(prefix), \
            f"host said {text!r}, expected {prefix}...; its log:\n{self.log()}"
        return text

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _runs(record_file: Path) -> list[int]:
    if not record_file.exists():
        return []
    return [int(line.split()[0]) for line in record_file.read_text().splitlines()]


def _wait_for_runs(record_file: Path, count: int, deadline: float) -> None:
    while len(_runs(record_file)) < count and time.time() < deadline:
        time.sleep(0.05)
    assert len(_runs(record_file)) >= count, f"only {len(_runs(record_file))} tasks ran"


def _outage_then_clean_restart(database, take_away, give_back, tmp_path, during_stop=False):
    """
    Schedule COUNT tasks, take the database away just before the first is due
    for about 3 s (or, with ``during_stop``, until after the host has stopped),
    restart the host cleanly; the two hosts' logs.
    """
    record_file = tmp_path / "record.txt"
    first = Host("schedule", database, record_file, tmp_path)
    try:
        scheduled = float(first.line("READY").split()[1])
        time.sleep(max(0.0, scheduled + FIRST - 0.3 - time.time()))
        assert time.time() < scheduled + FIRST, "host too slow to test the outage"
        take_away()
        away = time.time()
        if not during_stop:
            time.sleep(max(0.0, away + 3.0 - time.time()))
            give_back()
        _wait_for_runs(record_file, COUNT, scheduled + FIRST + SPREAD + 30)
        if not during_stop:
            # One retry period and some slack: the rows go while the host runs.
            time.sleep(RETRY_SECONDS + 1.5)
        assert first.stop() == 0, first.log()
    finally:
        first.kill()
    if during_stop:
        give_back()
    second = Host("resume", database, record_file, tmp_path)
    try:
        loaded = int(second.line("LOADED").split()[1])
        second.line("DONE")
        assert second.proc.wait(timeout=60) == 0
    finally:
        second.kill()
    runs = _runs(record_file)
    twice = sorted({n for n in runs if runs.count(n) > 1})
    assert not twice, (f"{len(twice)} of {COUNT} tasks ran twice ({loaded} loaded again): "
                       f"{twice}\nfirst host:\n{first.log()[-3000:]}\n"
                       f"second host:\n{second.log()[-3000:]}")
    assert sorted(runs) == list(range(COUNT)), "some task never ran"
    return first.log(), second.log()


@pytest.mark.slow
@pytest.mark.postgres
def test_each_delay_runs_exactly_once_when_postgres_stops_for_3_seconds_while_they_fire(
        cluster, pg_database, tmp_path):
    first, second = _outage_then_clean_restart(pg_database, cluster.stop, cluster.start,
                                               tmp_path)
    assert "could not delete 1 row(s)" in first, first
    assert "were deleted" in first and "after" in first, first
    assert "already ran" not in second, second
    assert not list(tmp_path.rglob("*.done")), "a done file outlived the outage"
    assert support.admin(pg_database, "SELECT id FROM procpool_tasks") == []


@pytest.mark.slow
@pytest.mark.postgres
def test_each_delay_runs_exactly_once_when_postgres_is_still_down_at_the_clean_stop(
        cluster, pg_database, tmp_path):
    first, second = _outage_then_clean_restart(pg_database, cluster.stop, cluster.start,
                                               tmp_path, during_stop=True)
    assert "unreachable at stop" in first and "not run again" in first, first
    assert "already ran" in second and "not run again" in second, second
    assert support.admin(pg_database, "SELECT id FROM procpool_tasks") == []
    assert list(tmp_path.rglob("*.log")), "no host ran"
    assert not list(tmp_path.rglob("*.done")), "the done file was not removed once used"


class _Lock:
    """An exclusive write lock on a SQLite file, held by the test."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def take(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def give_back(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


@pytest.mark.slow
@pytest.mark.parametrize("during_stop", [False, True], ids=["3 s", "across the stop"])
def test_each_delay_runs_exactly_once_when_the_sqlite_file_is_locked(during_stop, tmp_path):
    path = str(tmp_path / "tasks.sqlite3")
    lock = _Lock(path)
    try:
        first, second = _outage_then_clean_restart(path, lock.take, lock.give_back, tmp_path,
                                                   during_stop=during_stop)
    finally:
        lock.give_back()
    assert ("already ran" in second) == during_stop, second
    assert not os.path.exists(path + "-done")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM procpool_tasks").fetchone()[0] == 0
    finally:
        conn.close()


# -- the same paths, on a Clock: what the log says ----------------------------

class OutageLogTests(TestCase):
    def setUp(self):
        CALLS.clear()
        tmp = tempfile.TemporaryDirectory(prefix="procpool-outage-")
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        self.path = os.path.join(self.dir, "tasks.sqlite3")
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.lock = _Lock(self.path)
        self.addCleanup(self.lock.give_back)

    def handler(self, **storage_options):
        handler = TaskHandler(clock=Clock(),
                              storage=SQLiteStorage(self.path, busy_timeout=0.1,
                                                    **storage_options))
        self.addCleanup(handler.stop)
        return handler

    def stored_ids(self):
        conn = sqlite3.connect(self.path)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM procpool_tasks")}
        finally:
            conn.close()

    def said(self, level: str) -> list[str]:
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events
                if e.get("log_level") is not None and e["log_level"].name == level]

    @inlineCallbacks
    def test_a_delete_that_fails_again_and_again_is_retried_until_the_row_is_gone(self):
        handler = self.handler()
        yield handler.start()
        task = handler.add(5, record, "ran", persistent=True)
        yield handler.flush()
        self.lock.take()
        handler.clock.advance(5)                      # runs; its delete meets the lock
        yield handler.flush()
        for _ in range(3):                            # three retries meet it too
            handler.clock.advance(RETRY_SECONDS)
            yield handler.flush()
        self.lock.give_back()
        handler.clock.advance(RETRY_SECONDS)
        yield handler.flush()
        self.assertNotIn(task.get_id(), self.stored_ids())
        self.assertEqual(CALLS, [(("ran",), {})])
        warned = self.said("warn")
        self.assertEqual(len([w for w in warned if "could not delete" in w]), 1, warned)
        self.assertIn(f"(tasks {task.get_id()})", [w for w in warned if "could not" in w][0])
        self.assertTrue([i for i in self.said("info") if "were deleted" in i], self.said("info"))

    @inlineCallbacks
    def test_stop_during_an_outage_names_the_tasks_and_the_next_start_does_not_run_them(self):
        handler = self.handler()
        yield handler.start()
        ran = handler.add(5, record, "ran", persistent=True)
        waiting = handler.add(50, record, "waiting", persistent=True)
        yield handler.flush()
        self.lock.take()
        handler.clock.advance(5)
        yield handler.flush()
        yield handler.stop()
        errors = [e for e in self.said("error") if "unreachable at stop" in e]
        self.assertEqual(len(errors), 1, self.said("error"))
        self.assertIn(f"(tasks {ran.get_id()})", errors[0])
        self.assertIn(self.path + "-done", errors[0])
        self.assertIn("not run again", errors[0])
        self.lock.give_back()

        again = self.handler()
        again.clock.advance(100)                      # both are overdue at the next start
        yield again.start()
        again.clock.advance(0)
        yield again.flush()
        self.assertEqual([c[0] for c in CALLS], [("ran",), ("waiting",)])
        warned = [w for w in self.said("warn") if "already ran" in w]
        self.assertEqual(len(warned), 1, self.said("warn"))
        self.assertIn(f"tasks {ran.get_id()} ", warned[0])
        self.assertNotIn(str(waiting.get_id()), warned[0].split("tasks ")[1].split(" ")[0])
        self.assertEqual(self.stored_ids(), set())
        self.assertFalse(os.path.exists(self.path + "-done"))

    @inlineCallbacks
    def test_a_done_file_that_cannot_be_written_is_said_and_this_process_still_skips_them(self):
        blocker = os.path.join(self.dir, "a-file")
        open(blocker, "w").close()
        nowhere = os.path.join(blocker, "tasks.done")     # its "directory" is a file
        handler = self.handler(done_path=nowhere)
        yield handler.start()
        ran = handler.add(5, record, "ran", persistent=True)
        yield handler.flush()
        self.lock.take()
        handler.clock.advance(5)
        yield handler.flush()
        yield handler.stop()
        errors = [e for e in self.said("error") if "unreachable at stop" in e]
        self.assertEqual(len(errors), 1, self.said("error"))
        self.assertIn(f"(tasks {ran.get_id()})", errors[0])
        self.assertIn("will run again after a restart of the host", errors[0])
        self.lock.give_back()
        yield handler.start()                          # the same process starts again
        handler.clock.advance(10)
        yield handler.flush()
        self.assertEqual(CALLS, [(("ran",), {})])
        self.assertEqual(self.stored_ids(), set())

    @inlineCallbacks
    def test_a_task_reported_not_stored_never_runs_even_if_its_row_was_written_late(self):
        from procpool.errors import TaskNotStored
        handler = self.handler()
        yield handler.start()
        self.lock.take()
        task = handler.add(5, record, "unstored", persistent=True)
        d = task.get_deferred()
        yield handler.flush()
        yield self.assertFailure(d, TaskNotStored)
        # The row arrives after all (as a commit whose answer was lost would leave it).
        self.lock.conn.execute("INSERT INTO procpool_tasks VALUES (?, 5, ?)",
                               (task.get_id(), b"late"))
        self.lock.conn.execute("COMMIT")
        self.lock.conn.close()
        self.lock.conn = None
        handler.clock.advance(RETRY_SECONDS)
        yield handler.flush()
        self.assertEqual(self.stored_ids(), set())
        handler.clock.advance(10)
        self.assertEqual(CALLS, [])
