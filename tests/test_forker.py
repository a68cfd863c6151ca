"""
The fork server (docs/design.md, "The fork server"): workers after the first
are forked by a process that has imported their modules, and behave as
spawned ones do: their own group and session, their tasks' descendants die
with them and with the host, atexit hooks run when they leave; a dead server
ends its workers' running tasks as crashes and the pool goes on. Real
processes and real signals throughout.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor, utils
from twisted.internet.task import Clock
from twisted.trial import unittest

import procpool
from procpool import PoolStopped, WorkerCrashed
from procpool._forker import (
    MAX_FAILED_STARTS,
    REPLY_TIMEOUT,
    ForkFailed,
    ForkServer,
    ServerState,
)
from procpool.pool import ProcessPool
from tests import core_support as s

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _server(pool: ProcessPool) -> ForkServer:
    return pool._starter.fork_server


def _server_ready(pool: ProcessPool, seconds: float = 15.0) -> defer.Deferred:
    return s.wait_until(lambda: _server(pool).ready, seconds)


@defer.inlineCallbacks
def _forked_worker(pool: ProcessPool) -> Any:
    """Make the pool's one worker a forked one (its first was spawned): crash the spawned one."""
    ready = yield _server_ready(pool)
    assert ready, "the fork server did not become ready"
    try:
        yield procpool.run_async(s.exit_now, 3)
    except WorkerCrashed:
        pass
    parent = yield procpool.run_async(os.getppid)
    return parent


class Forked(s.PoolTestCase):
    min_workers = 1
    max_workers = 1
    extra_settings = {"PROCPOOL_FORK_SERVER": True}

    @defer.inlineCallbacks
    def test_a_replacement_worker_is_forked_by_the_fork_server(self):
        first = yield procpool.run_async(os.getppid)
        self.assertEqual(first, os.getpid())  # the first worker does not wait for the server
        parent = yield _forked_worker(self.pool)
        self.assertEqual(parent, _server(self.pool).pid)
        self.assertNotEqual(parent, os.getpid())
        self.assertEqual(_server(self.pool).forked, 1)

    @defer.inlineCallbacks
    def test_a_forked_worker_leads_its_own_group_and_session(self):
        self.assertEqual((yield _forked_worker(self.pool)), _server(self.pool).pid)
        pid, group, session = yield procpool.run_async(s.identity)
        self.assertEqual((group, session), (pid, pid))
        self.assertNotEqual(os.getsid(_server(self.pool).pid), os.getsid(0))

    @defer.inlineCallbacks
    def test_killing_the_fork_server_crashes_only_the_task_its_worker_ran(self):
        yield _forked_worker(self.pool)
        running = procpool.run_async(s.sleep, 30)
        queued = procpool.run_async(s.add, 1, 1)  # waits behind it: never started
        yield s.wait_until(lambda: self.pool.stats()["busy"] == 1, 5)
        worker = self.pool.stats()["pids"][0]
        server = _server(self.pool).pid
        began = time.monotonic()
        os.kill(server, signal.SIGKILL)
        with self.assertRaises(WorkerCrashed) as caught:
            yield running
        self.assertLess(time.monotonic() - began, 5)
        self.assertIn(str(worker), str(caught.exception))
        gone = yield s.wait_until(lambda: not s.alive(worker), 5)
        self.assertTrue(gone, f"worker {worker} outlived its fork server")
        self.assertEqual((yield queued), 2)
        # The pool goes on: a spawned worker meanwhile, a new server later.
        self.assertEqual((yield procpool.run_async(s.add, 2, 3)), 5)
        ready = yield _server_ready(self.pool)
        self.assertTrue(ready)
        self.assertNotEqual(_server(self.pool).pid, server)

    @defer.inlineCallbacks
    def test_a_forked_worker_runs_its_atexit_hooks_when_it_leaves(self):
        self.assertEqual((yield _forked_worker(self.pool)), _server(self.pool).pid)
        path = self.mktemp()
        yield procpool.run_async(s.write_at_exit, path, "left")
        self.assertFalse(os.path.exists(path))
        yield procpool.stop()
        written = yield s.wait_until(lambda: os.path.exists(path), 5)
        self.assertTrue(written)
        with open(path) as f:
            self.assertEqual(f.read(), "left")

    @defer.inlineCallbacks
    def test_a_forked_worker_waits_for_its_non_daemon_threads_when_it_leaves(self):
        # As a normal exit does: run_worker's _exit would otherwise kill the thread.
        self.assertEqual((yield _forked_worker(self.pool)), _server(self.pool).pid)
        path = self.mktemp()
        yield procpool.run_async(s.write_from_a_thread, path, "done", 0.5)
        yield procpool.stop()
        written = yield s.wait_until(lambda: os.path.exists(path), 5)
        self.assertTrue(written, "the forked worker left without its thread's write")


class StuckServer(s.PoolTestCase):
    min_workers = 1
    max_workers = 1
    extra_settings = {"PROCPOOL_FORK_SERVER": True, "PROCPOOL_START_TIMEOUT": 5}

    @defer.inlineCallbacks
    def test_stop_does_not_wait_for_ever_on_a_server_that_reports_nothing(self):
        yield _forked_worker(self.pool)
        running = procpool.run_async(s.sleep, 30)
        yield s.wait_until(lambda: self.pool.stats()["busy"] == 1, 5)
        server = _server(self.pool).pid
        os.kill(server, signal.SIGSTOP)  # stuck: it reports nothing more
        self.addCleanup(lambda: s.alive(server) and os.kill(server, signal.SIGKILL))
        began = time.monotonic()
        stopped = procpool.stop(grace=0)  # kills the worker; only the server can report it
        with self.assertRaises(PoolStopped):
            yield running
        # Past the start timeout the server is killed, which ends its workers' records.
        yield stopped
        self.assertLess(time.monotonic() - began, 15)
        self.assertFalse(s.alive(server))


class Recycled(unittest.TestCase):
    @defer.inlineCallbacks
    def test_recycled_workers_are_forked_and_stop_leaves_no_process_or_descriptor(self):
        # The reactor makes its SIGCHLD waker (a pipe) at its first child process.
        yield utils.getProcessValue(sys.executable, ["-c", ""])
        fds_before = len(os.listdir("/proc/self/fd"))
        pool = ProcessPool(min_workers=2, max_workers=2, recycle=50, fork_server=True)
        self.addCleanup(pool.stop)
        yield pool.start()
        yield _server_ready(pool)
        parents = yield defer.gatherResults([pool.submit_call(os.getppid) for _ in range(400)])
        server = _server(pool).pid
        self.assertIn(server, parents)
        figures = pool.stats()
        self.assertGreaterEqual(figures["workers_recycled"], 4)
        # Every worker after the first two was forked (the server was ready).
        self.assertEqual(_server(pool).forked, figures["workers_started"] - 2)
        # The server reaps what it forked: no zombie under it or under the host.

        def zombies() -> list[int]:
            under = s.children_of(server) + s.children_of(os.getpid())
            return [p for p, state in under if state == "Z"]

        self.assertTrue((yield s.wait_until(lambda: not zombies(), 5)), zombies())
        forked = [p for p, _ in s.children_of(server)]
        self.assertTrue(forked)
        yield pool.stop()
        self.assertFalse(s.alive(server))
        self.assertEqual([p for p in forked if s.alive(p)], [])
        self.assertEqual(s.children_of(os.getpid()), [])
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), fds_before)


class Off(s.PoolTestCase):
    min_workers = 1
    max_workers = 1
    extra_settings = {"PROCPOOL_FORK_SERVER": False}

    @defer.inlineCallbacks
    def test_with_the_fork_server_off_every_worker_is_the_hosts_child(self):
        self.assertIsNone(self.pool._starter.fork_server)
        try:
            yield procpool.run_async(s.exit_now, 3)
        except WorkerCrashed:
            pass
        self.assertEqual((yield procpool.run_async(os.getppid)), os.getpid())
        self.assertEqual(len(s.children_of(os.getpid())), 1)


def _launcher(code: str, ended: list[defer.Deferred]) -> Any:
    """A launch running ``python -c code`` as the server; each end fires one of ``ended``."""
    def launch(protocol: Any, control_fd: int) -> Any:
        done: defer.Deferred = defer.Deferred()
        ended.append(done)
        original = protocol.processEnded
        protocol.processEnded = lambda reason: (original(reason), done.callback(None))
        return reactor.spawnProcess(protocol, sys.executable, [sys.executable, "-c", code],
                                    env=os.environ.copy(),
                                    childFDs={0: "w", 1: "r", 2: "r", 3: control_fd})

    return launch


class FailingServer(unittest.TestCase):
    """A server that dies before it is ready is started again, then given up on."""

    @defer.inlineCallbacks
    def test_a_server_that_never_starts_is_given_up_after_a_few_tries(self):
        clock = Clock()
        ended: list[defer.Deferred] = []

        # A real process that dies at once, as a broken interpreter would.
        server = ForkServer(reactor, clock, _launcher("raise SystemExit(3)", ended))
        server.start()
        for attempt in range(MAX_FAILED_STARTS):
            yield ended[-1]
            if attempt < MAX_FAILED_STARTS - 1:
                self.assertIs(server.state, ServerState.GONE)
                clock.advance(60)  # the pause before the next try
        self.assertIs(server.state, ServerState.STOPPED)
        self.assertEqual(len(ended), MAX_FAILED_STARTS)
        self.assertFalse(server.ready)
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_server_that_dies_before_its_launch_returns_leaves_one_retry_and_nothing_else(self):
        clock = Clock()
        launched: list[Any] = []

        def launch(protocol, control_fd):
            process = reactor.spawnProcess(protocol, sys.executable,
                                           [sys.executable, "-c", "raise SystemExit(3)"],
                                           env=os.environ.copy(),
                                           childFDs={0: "w", 1: "r", 2: "r"})
            launched.append(process)
            # Reap it now, as Twisted does when the child has died by the time
            # spawnProcess registers it: the server is lost inside its launch.
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            process.reapProcess()
            return process

        server = ForkServer(reactor, clock, launch)
        server.start()
        self.assertIs(server.state, ServerState.GONE)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the retry, not the start deadline
        self.assertEqual(server.fileno(), -1)
        yield server.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(launched), 1)

    @defer.inlineCallbacks
    def test_stop_fires_when_the_last_launch_failed(self):
        clock = Clock()

        def launch(protocol, control_fd):
            raise OSError("no more processes")

        server = ForkServer(reactor, clock, launch)
        server.start()
        self.assertIs(server.state, ServerState.GONE)
        stopped = server.stop()
        clock.advance(60)
        self.assertTrue(stopped.called)
        self.assertEqual(clock.getDelayedCalls(), [])
        yield stopped

    @defer.inlineCallbacks
    def test_a_message_outside_the_protocol_is_logged_and_the_server_still_serves(self):
        clock = Clock()
        ended: list[defer.Deferred] = []
        code = ("import os, time; os.write(3, b'exit nonsense'); os.write(3, b'ready'); "
                "time.sleep(60)")
        server = ForkServer(reactor, clock, _launcher(code, ended))
        server.start()
        self.assertTrue((yield s.wait_until(lambda: server.ready, 10)))
        logged = self.flushLoggedErrors()  # nothing raised out of the reader
        self.assertEqual(logged, [])
        stopped = server.stop()
        clock.advance(5)  # this stand-in does not exit at EOF: killed after 5 s
        yield stopped

    @defer.inlineCallbacks
    def test_a_server_that_does_not_answer_a_fork_is_passed_over_then_killed(self):
        clock = Clock()
        ended: list[defer.Deferred] = []

        # A real server that says it is ready and then answers nothing.
        code = "import os, time; os.write(3, b'ready'); time.sleep(60)"
        server = ForkServer(reactor, clock, _launcher(code, ended), start_timeout=10)
        server.start()
        self.assertTrue((yield s.wait_until(lambda: server.ready, 10)))
        pair = socket.socketpair()
        self.addCleanup(pair[0].close)
        self.addCleanup(pair[1].close)
        fds_before = len(os.listdir("/proc/self/fd"))
        began = time.monotonic()
        with self.assertRaises(ForkFailed):
            server.fork(protocol.ProcessProtocol(),
                        {0: "w", 1: "r", 2: "r", 3: "w", 4: "r", 5: pair[1].fileno()}, True)
        self.assertGreaterEqual(time.monotonic() - began, REPLY_TIMEOUT * 0.9)  # it waited
        self.assertLess(time.monotonic() - began, 2 * REPLY_TIMEOUT + 0.5)
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds_before)  # the pipes closed
        self.assertIs(server.state, ServerState.BEHIND)
        self.assertFalse(server.ready)
        clock.advance(10)  # silent past the start timeout: killed
        yield ended[-1]
        self.assertIs(server.state, ServerState.GONE)
        yield server.stop()


HOST_SCRIPT = """
import procpool
from twisted.internet import reactor, task
from procpool import api
from tests import core_support
procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1)

def forked_then_run(_):
    server = api.get_pool()._starter.fork_server
    if not server.ready:
        return task.deferLater(reactor, 0.05, forked_then_run, None)
    d = procpool.run_async(core_support.exit_now, 3)
    d.addErrback(lambda f: None)
    d.addCallback(lambda _: procpool.run_async(core_support.start_grandchild, {path!r}))
    return d.addErrback(lambda f: None)

reactor.callWhenRunning(lambda: procpool.start().addCallback(forked_then_run))
reactor.run()
"""


def test_what_a_forked_workers_task_started_dies_when_the_host_is_sigkilled(tmp_path):
    path = str(tmp_path / "grandchild.pid")
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT.format(path=path)],
                            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    grandchild = None
    try:
        grandchild = s.pid_in_within(path, 30)
        assert grandchild is not None, host.stderr.read1(4000) if host.poll() is not None else ""
        worker = s.parent_of(grandchild)
        server = s.parent_of(worker)
        assert s.parent_of(server) == host.pid, "the task did not run in a forked worker"
    finally:
        host.kill()
        host.wait(10)
    try:
        for pid in (server, worker, grandchild):
            assert s.gone_within(pid, 10), f"{pid} outlived the killed host"
    finally:
        if grandchild is not None and s.alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
