"""
The pool's reliability promises, on real worker processes: a garbled answer
stream, quick tasks behind a slow one, cancelling, tasks sent to a worker
that died before reading them, the queue's bounds, and recycling's bounds.
"""

from __future__ import annotations

import collections
import os
import signal
import time

from twisted.internet import defer, reactor, task

import procpool
from procpool import PoolBusy, WorkerProtocolError
from procpool.pool import ProcessPool
from tests import core_support as s

# -- tasks a worker runs (this module is importable by the workers) ----------

def write_to_answer_pipe(inode: int, garbage: bytes, pause: float = 0.0) -> str:
    """Write ``garbage`` to the worker's own answer pipe (the pipe ``inode``), then return."""
    time.sleep(pause)
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.fstat(int(name)).st_ino == inode:
                os.write(int(name), garbage)
                return "written"
        except OSError:
            continue
    raise LookupError("no answer pipe found")


def _answer_pipe(pool: ProcessPool) -> int:
    """The inode of the (only) worker's answer pipe, as the host holds it."""
    (worker,) = pool._workers
    return os.fstat(worker.transport.pipes[4].fd).st_ino


def append_line(path: str, line: str, pause: float = 0.0) -> int:
    """Sleep ``pause`` seconds, then append ``line`` to ``path`` (a visible side effect)."""
    time.sleep(pause)
    with open(path, "a") as f:
        f.write(line + "\n")
    return os.getpid()


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


def _turn(seconds: float = 0.02) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class _OwnPool(s.PoolTestCase):
    """A test that makes pools of its own (the process-wide one stays at 1 worker)."""

    def make(self, **kwargs) -> ProcessPool:
        pool = ProcessPool(**kwargs)
        self.addCleanup(pool.stop, 2)
        return pool

    @defer.inlineCallbacks
    def warm(self, pool: ProcessPool, n: int = 400):
        """Short tasks on every worker, so each counts as quick (tasks may be sent ahead)."""
        yield defer.gatherResults([pool.submit_call(s.add, i) for i in range(n)])


# -- 2: an answer stream that loses its framing ---------------------------------

class Framing(_OwnPool):
    timeout = 40
    GARBAGE = (b"garbage" * 10, b"\x00\x00", b"\x00\x03abc\xff\xff")

    @defer.inlineCallbacks
    def _garbled(self, garbage: bytes, pause: float):
        pool = self.make(min_workers=1, max_workers=1)
        yield pool.start()
        yield self.warm(pool)
        first = pool.stats()["pids"]
        bad = pool.submit_call(write_to_answer_pipe, _answer_pipe(pool), garbage, pause)
        if pause:
            yield _turn()  # the worker has read the task: the next ones are sent behind it
        path = self.mktemp()
        behind = [pool.submit_call(append_line, path, str(i)) for i in range(15)]
        started = time.monotonic()
        with self.assertRaises(WorkerProtocolError) as caught:
            yield bad
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("framing", str(caught.exception))
        # No task behind it ran twice; each either answered (on the new
        # worker if it had not started) or had run, or was running, on the
        # old one when its framing was lost.
        results = yield defer.DeferredList(behind, consumeErrors=True)
        lines = _lines(path)
        self.assertEqual(len(lines), len(set(lines)), lines)
        for i, (ok, result) in enumerate(results):
            if ok:
                self.assertIn(str(i), lines)
            else:
                result.trap(WorkerProtocolError)
        back = yield s.wait_until(lambda: pool.stats()["idle"] == 1
                                  and pool.stats()["workers"] == 1, 10)
        self.assertTrue(back, pool.stats())
        self.assertNotEqual(pool.stats()["pids"], first)
        self.assertEqual((yield pool.submit_call(s.add, 2, 2)), 4)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_garbage_on_the_answer_pipe_kills_the_worker_and_fails_only_its_task(self):
        for garbage in self.GARBAGE:
            yield self._garbled(garbage, 0.0)

    @defer.inlineCallbacks
    def test_tasks_sent_behind_a_garbling_task_run_on_another_worker(self):
        for garbage in self.GARBAGE:
            yield self._garbled(garbage, 0.1)


# -- 3: quick tasks behind a slow one --------------------------------------------

class NoWaitingBehind(_OwnPool):
    @defer.inlineCallbacks
    def _finish_times(self, pool: ProcessPool, tasks: list) -> list[float]:
        started = time.monotonic()
        done: list[float] = []
        for d in tasks:
            d.addCallback(lambda r: done.append(time.monotonic() - started) or r)
        yield defer.gatherResults(tasks)
        return done

    @defer.inlineCallbacks
    def test_quick_tasks_never_wait_behind_a_slow_one_while_workers_are_idle(self):
        pool = self.make(min_workers=4, max_workers=4)
        yield pool.start()
        for before in range(4):  # the slow task lands on each worker in turn
            yield self.warm(pool)
            quick = [pool.submit_call(s.add, i) for i in range(before)]
            slow = pool.submit_call(s.sleep, 1.0)
            quick += [pool.submit_call(s.add, i) for i in range(20)]
            times = yield self._finish_times(pool, quick)
            self.assertLess(max(times), 0.5, sorted(times))
            yield slow

    @defer.inlineCallbacks
    def test_tasks_wait_for_a_worker_that_can_be_started_not_behind_a_slow_one(self):
        pool = self.make(min_workers=1, max_workers=2, idle=0)
        yield pool.start()
        yield self.warm(pool)
        slow = pool.submit_call(s.sleep, 1.5)
        quick = [pool.submit_call(s.add, i) for i in range(10)]
        times = yield self._finish_times(pool, quick)
        self.assertLess(max(times), 1.0, sorted(times))
        yield slow

    @defer.inlineCallbacks
    def test_tasks_not_yet_started_move_off_a_worker_that_turned_out_slow(self):
        path = self.mktemp()
        pool = self.make(min_workers=2, max_workers=2)
        yield pool.start()
        yield self.warm(pool)
        slow = pool.submit_call(s.sleep, 1.5)
        yield _turn(0.05)  # its worker is running it
        other = pool.submit_call(s.sleep, 0.2)
        quick = [pool.submit_call(append_line, path, str(i)) for i in range(10)]
        times = yield self._finish_times(pool, quick)
        self.assertLess(max(times), 1.0, sorted(times))
        yield defer.gatherResults([slow, other])
        self.assertEqual(sorted(_lines(path), key=int), [str(i) for i in range(10)])


# -- 4: cancelling ---------------------------------------------------------------

class Cancelling(_OwnPool):
    @defer.inlineCallbacks
    def test_cancelling_a_running_task_kills_its_worker_and_frees_the_slot(self):
        path = self.mktemp()
        pool = self.make(min_workers=1, max_workers=1)
        yield pool.start()
        running = pool.submit_call(append_line, path, "ran", 1.5)
        yield s.wait_until(lambda: pool.stats()["busy"] == 1, 5)
        victim = pool.stats()["pids"][0]
        running.cancel()
        with self.assertRaises(defer.CancelledError):
            yield running
        started = time.monotonic()
        self.assertEqual((yield pool.submit_call(s.add, 1, 1)), 2)
        self.assertLess(time.monotonic() - started, 1.0)
        gone = yield s.wait_until(lambda: not s.alive(victim), 5)
        self.assertTrue(gone)
        yield _turn(2.0)
        self.assertEqual(_lines(path), [])
        self.assertEqual(pool.stats()["tasks_cancelled"], 1)

    @defer.inlineCallbacks
    def test_cancelling_a_queued_task_removes_it(self):
        path = self.mktemp()
        pool = self.make(min_workers=1, max_workers=1)
        yield pool.start()
        busy = pool.submit_call(s.sleep, 0.5, timeout=5)   # nothing is sent behind it
        queued = pool.submit_call(append_line, path, "ran")
        self.assertEqual(pool.stats()["queued"], 1)
        queued.cancel()
        with self.assertRaises(defer.CancelledError):
            yield queued
        self.assertEqual(pool.stats()["queued"], 0)
        yield busy
        self.assertEqual((yield pool.submit_call(s.add, 1, 1)), 2)
        self.assertEqual(_lines(path), [])

    @defer.inlineCallbacks
    def test_run_async_results_cancel_the_same_way(self):
        path = self.mktemp()
        d = procpool.run_async(append_line, path, "ran", 1.5)
        yield s.wait_until(lambda: self.pool.stats()["busy"] == 1, 5)
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d
        started = time.monotonic()
        self.assertEqual((yield procpool.run_async(s.add, 2, 3)), 5)
        self.assertLess(time.monotonic() - started, 1.0)
        yield _turn(2.0)
        self.assertEqual(_lines(path), [])


# -- 5: tasks sent to a worker that died before reading them ---------------------

class DeadBeforeReading(_OwnPool):
    @defer.inlineCallbacks
    def test_tasks_sent_to_a_worker_killed_while_idle_run_on_another(self):
        pool = self.make(min_workers=2, max_workers=2)
        yield pool.start()
        for round_ in range(4):
            yield self.warm(pool, 100)
            yield s.wait_until(lambda: pool.stats()["idle"] == 2, 10)
            victim = pool.stats()["pids"][round_ % 2]
            # Stopped, it reads nothing more; then SIGKILL, all in one reactor
            # turn: the tasks sent to it never reached it.
            os.kill(victim, signal.SIGSTOP)
            deadline = time.monotonic() + 5
            while _state(victim) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)
            calls = [pool.submit_call(s.add, i, 1) for i in range(40)]
            os.kill(victim, signal.SIGKILL)
            results = yield defer.DeferredList(calls, consumeErrors=True)
            failed = [f.value for ok, f in results if not ok]
            self.assertEqual(failed, [], f"round {round_}")
            self.assertEqual([r for _, r in results], [i + 1 for i in range(40)])
            back = yield s.wait_until(lambda: pool.stats()["idle"] == 2, 10)
            self.assertTrue(back, pool.stats())
        self.assertEqual(pool.stats()["tasks_crashed"], 0)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# -- 7: the queue's bounds -------------------------------------------------------

class QueueBounds(s.PoolTestCase):
    extra_settings = {"PROCPOOL_MAX_QUEUE": 10, "PROCPOOL_MAX_QUEUED_BYTES": 1024 * 1024}

    def tearDown(self):
        procpool.settings.reset()

    @defer.inlineCallbacks
    def test_past_max_queue_run_async_fails_at_once_with_pool_busy(self):
        busy = procpool.run_async(s.sleep, 0.5, proc_timeout=5)   # nothing is sent behind it
        calls = [procpool.run_async(s.add, i) for i in range(15)]
        refused = [d for d in calls if d.called]
        self.assertEqual(len(refused), 5)
        for d in refused:
            with self.assertRaises(PoolBusy) as caught:
                yield d
            self.assertIn("PROCPOOL_MAX_QUEUE", str(caught.exception))
            self.assertEqual(caught.exception.bound, "PROCPOOL_MAX_QUEUE")
        self.assertEqual(procpool.stats()["tasks_rejected"], 5)
        yield busy
        self.assertEqual((yield defer.gatherResults(calls[:10])), list(range(10)))

    @defer.inlineCallbacks
    def test_past_max_queued_bytes_run_async_fails_at_once_with_pool_busy(self):
        busy = procpool.run_async(s.sleep, 0.5, proc_timeout=5)
        big = b"x" * (400 * 1024)
        first, second = procpool.run_async(len, big), procpool.run_async(len, big)
        third = procpool.run_async(len, big)
        self.assertTrue(third.called)
        with self.assertRaises(PoolBusy) as caught:
            yield third
        self.assertIn("PROCPOOL_MAX_QUEUED_BYTES", str(caught.exception))
        self.assertEqual(procpool.stats()["tasks_rejected"], 1)
        yield busy
        self.assertEqual((yield defer.gatherResults([first, second])), [len(big)] * 2)

    def test_the_queue_is_bounded_by_default(self):
        procpool.settings.reset()
        self.assertGreater(procpool.settings.get("PROCPOOL_MAX_QUEUE"), 20_000)
        self.assertGreater(procpool.settings.get("PROCPOOL_MAX_QUEUED_BYTES"),
                           procpool.settings.get("PROCPOOL_MAX_PAYLOAD"))


# -- 9: recycling's bounds -------------------------------------------------------

class RecyclingBounds(_OwnPool):
    @defer.inlineCallbacks
    def test_a_worker_takes_no_task_past_its_count_and_processes_stay_within_max_plus_one(self):
        pool = self.make(min_workers=2, max_workers=4, recycle=50)
        yield pool.start()
        most = [0]
        # The process-wide pool's worker and fork server are not this pool's.
        def server_of(p: ProcessPool) -> int | None:
            return p._starter.fork_server.pid if p._starter.fork_server is not None else None

        def sample():
            # This pool's workers: the host's children and its fork server's
            # (the process-wide pool's server may start meanwhile).
            others = {*self.pool.stats()["pids"], server_of(self.pool)}
            server = server_of(pool)
            under = s.children_of(os.getpid()) + (s.children_of(server) if server else [])
            alive = [p for p, state in under
                     if state != "Z" and p not in others and p != server]
            most[0] = max(most[0], len(alive), len(pool._workers))

        sampler = task.LoopingCall(sample)
        sampler.start(0.005)
        ran: collections.Counter = collections.Counter()
        try:
            for _ in range(10):
                ran.update((yield defer.gatherResults([pool.submit_call(s.pid)
                                                       for _ in range(200)])))
        finally:
            sampler.stop()
        self.assertLessEqual(max(ran.values()), 50, ran.most_common(3))
        self.assertLessEqual(most[0], 5)
        self.assertGreaterEqual(pool.stats()["workers_recycled"], 2000 // 50 - 4)
