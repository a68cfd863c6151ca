"""Regression tests for defects found in review of the pool (each failed before its fix)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from twisted.internet import defer, task

from procpool import PayloadTooLarge, PoolStopped, WorkerCrashed
from procpool.pool import ProcessPool
from tests import core_support as s

MiB = 1024 * 1024


class Review(s.PoolTestCase):
    def _pool(self, **kwargs):
        pool = ProcessPool(**kwargs)
        self.addCleanup(pool.stop, 2)
        return pool

    @defer.inlineCallbacks
    def test_an_exception_with_a_long_message_still_settles_the_task(self):
        with self.assertRaises(ValueError) as caught:
            yield self.pool.submit_call(s.raise_long_message, 3000)
        self.assertEqual(len(str(caught.exception).splitlines()[0]), 3000)

    @defer.inlineCallbacks
    def test_a_crash_is_reported_at_once_though_a_grandchild_holds_the_pipes(self):
        sleeper = yield self.pool.submit_call(s.start_sleeper, 30)
        self.addCleanup(lambda: s.alive(sleeper) and os.kill(sleeper, signal.SIGKILL))
        crashing = [w.transport for w in self.pool._workers]
        started = time.monotonic()
        with self.assertRaises(WorkerCrashed):
            yield self.pool.submit_call(s.exit_now, 3)
        self.assertLess(time.monotonic() - started, 5)
        # The dead worker's pipes close on the reactor's next turns, though the
        # grandchild still holds its stdout: none is left behind.
        def dead_and_closed() -> bool:
            dead = [t for t in crashing if t.pid is None]  # Twisted's mark of an exited child
            return bool(dead) and not any(t.pipes for t in dead)

        closed = yield s.wait_until(dead_and_closed, 5)
        self.assertTrue(closed, [(t.pid, t.pipes) for t in crashing])

    @defer.inlineCallbacks
    def test_stop_ends_though_a_grandchild_in_its_own_session_holds_the_pipes(self):
        pool = self._pool(min_workers=1, max_workers=1)
        yield pool.start()
        sleeper = yield pool.submit_call(s.start_sleeper, 30, True)
        self.addCleanup(lambda: s.alive(sleeper) and os.kill(sleeper, signal.SIGKILL))
        running = pool.submit_call(s.sleep, 30)
        started = time.monotonic()
        yield pool.stop(grace=0.5)
        self.assertLess(time.monotonic() - started, 5)
        with self.assertRaises(PoolStopped):
            yield running

    @defer.inlineCallbacks
    def test_the_pool_returns_to_its_minimum_after_start_failures(self):
        folder = self.mktemp()
        os.makedirs(folder)
        pool = self._pool(min_workers=2, max_workers=2, directory=folder)
        yield pool.start()
        os.rename(folder, folder + ".away")
        for pid in pool.stats()["pids"]:
            os.kill(pid, signal.SIGKILL)
        yield s.wait_until(lambda: pool.stats()["workers_failed_to_start"] >= 2, 10)
        os.rename(folder + ".away", folder)
        back = yield s.wait_until(lambda: pool.stats()["idle"] == 2, 20)
        self.assertTrue(back, pool.stats())
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_tasks_behind_a_crash_are_not_lost_when_at_err_stops_the_pool(self):
        pool = self._pool(min_workers=1, max_workers=1)
        yield pool.start()
        yield defer.gatherResults([pool.submit_call(s.add, i) for i in range(200)])
        before = [pool.submit_call(s.add, i) for i in range(3)]
        crash = pool.submit_call(s.exit_now, 5)

        def stop_the_pool(failure):
            pool.stop()
            return failure

        crash.addErrback(stop_the_pool)
        after = [pool.submit_call(s.add, i) for i in range(20)]
        with self.assertRaises(WorkerCrashed):
            yield crash
        # One worker answers in order: the three before the crash ran; the
        # twenty behind it never started, and the stop failed each of them.
        self.assertEqual([d.called for d in before + after], [True] * 23)
        self.assertEqual((yield defer.gatherResults(before)), [0, 1, 2])
        for d in after:
            with self.assertRaises(PoolStopped):
                yield d

    @defer.inlineCallbacks
    def test_workers_use_the_pools_payload_cap_not_the_settings(self):
        pool = self._pool(min_workers=1, max_workers=1, max_payload=MiB)
        yield pool.start()
        with self.assertRaises(PayloadTooLarge) as caught:
            yield pool.submit_call(s.sized, 8 * MiB)
        self.assertEqual(caught.exception.cap, MiB)
        self.assertEqual((yield pool.submit_call(s.add, 1, 1)), 2)

    @defer.inlineCallbacks
    def test_output_without_newlines_costs_the_host_little(self):
        started = time.monotonic()
        yield self.pool.submit_call(s.write_without_newlines, 24 * MiB)
        self.assertLess(time.monotonic() - started, 10)
        self.assertTrue(all(len(p) <= 16 * 1024 for w in self.pool._workers
                            for p in w._partial.values()))

    @defer.inlineCallbacks
    def test_recycling_backs_off_while_workers_cannot_start_then_resumes(self):
        folder = self.mktemp()
        os.makedirs(folder)
        clock = task.Clock()  # back-off pauses pass only when the test says so
        # Spawned workers: a forked one would start in the fork server's working
        # directory, which it holds open whatever its name.
        pool = self._pool(min_workers=1, max_workers=1, directory=folder, recycle=5,
                          clock=clock, fork_server=False)
        yield pool.start()
        os.rename(folder, folder + ".away")
        self.addCleanup(lambda: os.path.exists(folder + ".away")
                        and os.rename(folder + ".away", folder))

        def failures():
            return pool.stats()["workers_failed_to_start"]

        @defer.inlineCallbacks
        def run(n):
            results = []
            for i in range(n):
                results.append((yield pool.submit_call(s.add, i)))
            self.assertEqual(results, list(range(n)))

        # Each pause is 0.5, 1, 2 s: within one, no task tries another successor.
        for attempt, pause in ((1, 0.5), (2, 1.0), (3, 2.0)):
            yield run(10)
            self.assertTrue((yield s.wait_until(lambda n=attempt: failures() >= n, 10)))
            yield run(40)
            self.assertEqual(failures(), attempt, pool.stats())
            if attempt < 3:
                clock.advance(pause - 0.1)
                yield run(10)
                self.assertEqual(failures(), attempt, pool.stats())
                clock.advance(0.1)
        # Once workers can start again, recycling resumes after the pause.
        os.rename(folder + ".away", folder)
        first = pool.stats()["pids"]
        clock.advance(2.0)
        yield run(10)
        moved = yield s.wait_until(lambda: pool.stats()["pids"] != first, 10)
        self.assertTrue(moved, pool.stats())
        self.assertEqual(failures(), 3)
        self.flushLoggedErrors()

    def test_negative_and_nan_timeouts_on_submit_are_refused(self):
        for bad in (-1, float("nan")):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self.pool.submit_call(s.add, 1, timeout=bad)
        self.assertEqual(self.pool.stats()["queued"], 0)

    @defer.inlineCallbacks
    def test_submit_timeout_zero_means_no_limit(self):
        result = yield self.pool.submit_call(s.sleep, 0.3, timeout=0)
        self.assertEqual(result, 0.3)

    def test_a_partial_of_a_main_function_goes_through_dill(self):
        code = textwrap.dedent("""
            import functools, procpool
            from twisted.internet import reactor
            procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1)
            def triple(x, y):
                return x * y
            out = []
            def go():
                d = procpool.run_async(functools.partial(triple, 3), 7)
                d.addBoth(out.append)
                d.addBoth(lambda _: procpool.stop())
                d.addBoth(lambda _: reactor.stop())
            reactor.callWhenRunning(go)
            reactor.run()
            print(out)
        """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(done.stdout.strip(), "[21]", done.stderr[-2000:])
