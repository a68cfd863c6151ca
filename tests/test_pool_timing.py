"""
The pool's timers, driven by a Clock: start deadlines, back-off, idle reaping.

Real worker processes; only time is faked, so each test says exactly when a
timer must fire and when it must not, whatever the machine's load.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from procpool import WorkerStartError
from procpool.pool import ProcessPool
from tests import core_support as s


def _turn() -> defer.Deferred:
    """One real reactor turn."""
    return task.deferLater(reactor, 0.01, lambda: None)


class _ClockedPool(unittest.TestCase):
    def pool(self, **kwargs):
        self.clock = task.Clock()
        pool = ProcessPool(clock=self.clock, **kwargs)

        def stop():
            d = pool.stop(grace=1)
            self.clock.advance(1)  # the grace is timed by the Clock too
            return d

        self.addCleanup(stop)
        return pool

    def hang_at_start_up(self):
        """Make the next workers hang before they answer (a real, slow start-up)."""
        folder = s.PoolTestCase.mktemp(self)
        os.makedirs(folder)
        with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
            f.write("import time\ntime.sleep(120)\n")
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = folder + (os.pathsep + old if old else "")
        self.addCleanup(self._restore, old)

    @staticmethod
    def _restore(old):
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class StartDeadline(_ClockedPool):
    @defer.inlineCallbacks
    def test_a_worker_silent_past_its_start_timeout_is_killed_and_retried_after_backoff(self):
        self.hang_at_start_up()
        pool = self.pool(min_workers=1, max_workers=1, start_timeout=5)
        started = pool.start()
        first = pool.stats()["pids"]
        self.clock.advance(4.9)
        self.assertFalse(started.called)
        self.assertTrue(all(s.alive(p) for p in first))
        self.clock.advance(0.2)
        error = yield self.assertFailure(started, WorkerStartError)
        self.assertIn("no answer within 5 s", str(error))
        self.assertTrue((yield s.wait_until(lambda: not any(s.alive(p) for p in first), 10)))
        yield _turn()  # let the pool finish settling that death before time moves
        # The retry waits 0.5 s after the first failure, then 1 s after the second.
        self.assertEqual(pool.stats()["workers_started"], 1)
        self.clock.advance(0.4)
        self.assertEqual(pool.stats()["workers_started"], 1)
        self.clock.advance(0.1)
        self.assertEqual(pool.stats()["workers_started"], 2)
        self.clock.advance(5)
        yield s.wait_until(lambda: pool.stats()["workers_failed_to_start"] == 2, 10)
        yield _turn()
        self.assertEqual(pool.stats()["workers_failed_to_start"], 2)
        self.clock.advance(0.9)
        self.assertEqual(pool.stats()["workers_started"], 2)
        self.clock.advance(0.1)
        self.assertEqual(pool.stats()["workers_started"], 3)
        self.flushLoggedErrors()


class IdleReaping(_ClockedPool):
    @defer.inlineCallbacks
    def test_workers_above_the_minimum_stop_after_their_idle_time_and_not_before(self):
        pool = self.pool(min_workers=1, max_workers=3, idle=10)
        yield pool.start()
        # Three tasks at once: the pool grows to three workers.
        yield defer.gatherResults([pool.submit_call(s.sleep, 0.3) for _ in range(3)])
        self.assertEqual(pool.stats()["workers"], 3)
        self.clock.advance(5)    # first look (every idle/2 s): idle for 5 s, kept
        self.clock.advance(4.9)
        self.assertEqual(pool.stats()["idle"], 3)
        self.clock.advance(5)    # second look: idle for 10 s or more
        shrank = yield s.wait_until(lambda: pool.stats()["workers"] == 1, 10)
        self.assertTrue(shrank, pool.stats())
        self.assertEqual(pool.stats()["workers_crashed"], 0)
        self.clock.advance(60)   # never below the minimum
        self.assertEqual(pool.stats()["workers"], 1)
        self.assertEqual((yield pool.submit_call(s.add, 2, 3)), 5)
