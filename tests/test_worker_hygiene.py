"""
A worker leaves nothing behind and cannot be poisoned by one task: what its
tasks started dies with it (or with the host), a task past PROCPOOL_MAX_MEMORY
fails with MemoryLimitExceeded and its worker is replaced, and a task that
closes descriptors 0-2 or takes 3 and 4 does not break the tasks after it.
Real worker processes and real signals (docs/design.md, a worker's life).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher

import procpool
from procpool import MemoryLimitExceeded, SettingError, WorkerCrashed, settings
from tests import core_support as s

MiB = 1024 * 1024
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _kill_if_alive(pid: int) -> None:
    if s.alive(pid):
        os.kill(pid, signal.SIGKILL)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not s.alive(pid):
            return True
        time.sleep(0.05)
    return not s.alive(pid)


# -- 6: nothing a worker started outlives it ------------------------------------

HOST_SCRIPT = """
import procpool
from twisted.internet import reactor
from tests import core_support
procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1)
def go():
    procpool.start().addCallback(
        lambda _: procpool.run_async(core_support.{task}, {path!r}).addErrback(lambda f: None))
reactor.callWhenRunning(go)
reactor.run()
"""


def _read_pid(path: str, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    return None


@pytest.mark.parametrize("task", ["start_grandchild", "fork_grandchild"],
                         ids=["sleep started", "child forked"])
def test_what_a_running_task_started_dies_when_the_host_is_sigkilled(task, tmp_path):
    path = str(tmp_path / "grandchild.pid")
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT.format(task=task, path=path)],
                            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        grandchild = _read_pid(path, 30)
        assert grandchild is not None, host.stderr.read1(4000) if host.poll() is not None else ""
    finally:
        host.kill()
        host.wait(10)
    try:
        assert _gone_within(grandchild, 10), f"grandchild {grandchild} outlived the killed host"
    finally:
        _kill_if_alive(grandchild)


class Descendants(s.PoolTestCase):
    """Item 6: a worker that ends takes what its tasks started with it."""

    min_workers = 1
    max_workers = 1

    @defer.inlineCallbacks
    def test_what_a_finished_task_started_dies_when_the_pool_stops(self):
        sleeper = yield procpool.run_async(s.start_sleeper, 60)
        self.addCleanup(_kill_if_alive, sleeper)
        forked = yield procpool.run_async(s.fork_sleeper, 60)
        self.addCleanup(_kill_if_alive, forked)
        self.assertTrue(s.alive(sleeper) and s.alive(forked))
        yield procpool.stop()
        gone = yield s.wait_until(lambda: not s.alive(sleeper) and not s.alive(forked), 10)
        self.assertTrue(gone, f"sleep {sleeper} or forked child {forked} outlived stop()")

    @defer.inlineCallbacks
    def test_what_a_task_started_dies_when_its_worker_crashes(self):
        sleeper = yield procpool.run_async(s.start_sleeper, 60)
        self.addCleanup(_kill_if_alive, sleeper)
        with self.assertRaises(WorkerCrashed):
            yield procpool.run_async(s.exit_now, 3)
        gone = yield s.wait_until(lambda: not s.alive(sleeper), 10)
        self.assertTrue(gone, f"sleep {sleeper} outlived its crashed worker")
        self.assertEqual((yield procpool.run_async(s.add, 1, 2)), 3)


# -- 8: PROCPOOL_MAX_MEMORY ------------------------------------------------------

class MemoryLimit(s.PoolTestCase):
    """Item 8: a task past the limit fails with MemoryLimitExceeded; its worker is replaced."""

    min_workers = 1
    max_workers = 1
    extra_settings = {"PROCPOOL_MAX_MEMORY": 300 * MiB}

    @defer.inlineCallbacks
    def test_a_task_over_the_memory_limit_fails_naming_it_and_the_next_runs_on_a_fresh_worker(
            self):
        before = yield procpool.run_async(s.pid)
        with self.assertRaises(MemoryLimitExceeded) as caught:
            yield procpool.run_async(s.allocate, 1024 * MiB)
        error = caught.exception
        self.assertEqual(error.limit, 300 * MiB)
        self.assertIn("300 MiB", str(error))
        self.assertIn("PROCPOOL_MAX_MEMORY", str(error))
        self.assertIsInstance(error, MemoryError)
        self.assertIn("allocate", error.remote_traceback)
        after = yield procpool.run_async(s.pid)
        self.assertNotEqual(after, before)
        gone = yield s.wait_until(lambda: not s.alive(before), 10)
        self.assertTrue(gone, f"worker {before} lives on after passing its memory limit")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_memory_taken_a_little_at_a_time_is_stopped_at_the_limit_too(self):
        with self.assertRaises(MemoryLimitExceeded):
            yield procpool.run_async(s.allocate_gradually, 1024 * MiB)
        # A source string: this module's helpers import traceback into the worker.
        with self.assertRaises(MemoryLimitExceeded) as caught:
            yield procpool.run_async("def grow_forever():\n    kept = []\n    while True:\n"
                                     "        kept.append(bytearray(64 * 1024))\ngrow_forever()")
        # All the memory is still taken when the traceback is written: it names the task.
        self.assertIn("grow_forever", caught.exception.remote_traceback)
        self.assertEqual((yield procpool.run_async(s.allocate, 50 * MiB)), 50 * MiB)

    @defer.inlineCallbacks
    def test_tasks_queued_behind_a_task_over_the_limit_still_run(self):
        hog = procpool.run_async(s.allocate, 1024 * MiB)
        behind = [procpool.run_async(s.add, i, 1) for i in range(5)]
        with self.assertRaises(MemoryLimitExceeded):
            yield hog
        self.assertEqual((yield defer.gatherResults(behind)), [1, 2, 3, 4, 5])

    @defer.inlineCallbacks
    def test_a_worker_runs_under_the_memory_limit_it_was_given(self):
        self.assertEqual((yield procpool.run_async(s.data_limit)), (300 * MiB, 300 * MiB))


class NoMemoryLimit(s.PoolTestCase):
    min_workers = 1
    max_workers = 1
    extra_settings = {"PROCPOOL_MAX_MEMORY": None}

    @defer.inlineCallbacks
    def test_no_memory_limit_leaves_the_worker_unlimited_and_memory_error_is_plain(self):
        import resource
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        self.assertEqual(tuple((yield procpool.run_async(s.data_limit))), unlimited)
        with self.assertRaises(MemoryError) as caught:
            yield procpool.run_async(s.allocate, 1 << 60)
        self.assertNotIsInstance(caught.exception, MemoryLimitExceeded)


def test_the_memory_limit_defaults_to_half_the_machines_memory():
    half = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    assert settings.get("PROCPOOL_MAX_MEMORY") == half


@pytest.mark.parametrize("given, value", [("300M", 300 * MiB), ("2GiB", 2048 * MiB),
                                          (str(400 * MiB), 400 * MiB), ("none", None),
                                          ("0", None), (0, None), (None, None)])
def test_the_memory_limit_takes_bytes_units_or_none(given, value):
    procpool.configure(PROCPOOL_MAX_MEMORY=given)
    assert settings.get("PROCPOOL_MAX_MEMORY") == value


@pytest.mark.parametrize("bad", [-1, "lots", 1.5, True, 10 * MiB])
def test_a_memory_limit_that_a_worker_could_not_start_under_is_refused(bad):
    with pytest.raises(SettingError, match="PROCPOOL_MAX_MEMORY"):
        procpool.configure(PROCPOOL_MAX_MEMORY=bad)


def test_memory_limit_exceeded_pickles_as_itself():
    import pickle
    again = pickle.loads(pickle.dumps(MemoryLimitExceeded(300 * MiB)))
    assert (type(again), again.limit, str(again)) == (
        MemoryLimitExceeded, 300 * MiB, str(MemoryLimitExceeded(300 * MiB)))


# -- 10: descriptors 0-4 ---------------------------------------------------------

class StandardDescriptors(s.PoolTestCase):
    """Item 10: a task that closes 0/1/2 or takes 3/4 does not poison its worker."""

    min_workers = 1
    max_workers = 1

    def _logged(self) -> list[str]:
        lines: list[str] = []

        def observe(event: dict) -> None:
            line = event.get("line")
            if isinstance(line, str):
                lines.append(line)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines

    @defer.inlineCallbacks
    def test_print_works_after_a_task_closed_fds_0_1_2_and_still_reaches_the_log(self):
        lines = self._logged()
        yield procpool.run_async(s.close_standard_fds)
        self.assertTrue((yield procpool.run_async(s.print_line, "still-heard-after-close")))
        heard = yield s.wait_until(lambda: lines.count("still-heard-after-close") == 2, 10)
        self.assertTrue(heard, lines[-10:])
        self.assertTrue((yield procpool.run_async(s.print_line, "and-again")))

    @defer.inlineCallbacks
    def test_a_task_that_puts_its_own_pipe_on_fds_3_and_4_does_not_hang_the_worker(self):
        self.assertTrue((yield procpool.run_async(s.put_a_pipe_on_fds_3_and_4, proc_timeout=5)))
        self.assertEqual((yield procpool.run_async(s.add, 1, 2, proc_timeout=5)), 3)
