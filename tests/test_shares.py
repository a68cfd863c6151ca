"""Fair shares: one caller's many tasks do not hold up another's (procpool/_shares.py)."""

from __future__ import annotations

import time

from twisted.internet import defer

import procpool
from procpool import api
from tests import core_support as s


def sleep_for(seconds: float, caller: str) -> str:
    """A task that takes ``seconds`` and says whose it was."""
    time.sleep(seconds)
    return caller


class FairShares(s.PoolTestCase):
    min_workers = 4
    max_workers = 4

    def setUp(self):
        api._shares = None
        return super().setUp()

    @defer.inlineCallbacks
    def test_one_task_of_b_is_not_held_up_by_200_of_a(self):
        # Every worker imports this module first, so the timing below is the queue's alone.
        yield defer.gatherResults([procpool.run_async(sleep_for, 0.1, "warm")
                                   for _ in range(4)])
        a_tasks = [procpool.run_async(sleep_for, 0.05, caller="A") for _ in range(200)]
        began = time.monotonic()
        b = yield procpool.run_async(sleep_for, 0.05, caller="B")
        waited = time.monotonic() - began
        self.assertEqual(b, "B")
        self.assertLess(waited, 0.2, f"B waited {waited:.3f} s behind A's 200 tasks")
        done = yield defer.gatherResults(a_tasks)
        self.assertEqual(done, ["A"] * 200)  # all of A's ran, in its own time

    @defer.inlineCallbacks
    def test_a_caller_has_at_most_its_share_in_the_pool(self):
        tasks = [procpool.run_async(sleep_for, 0.2, caller="A") for _ in range(6)]
        yield s.wait_until(lambda: self.pool.stats()["busy"] >= 1)
        self.assertEqual(api._shares.running["A"], 2)
        self.assertEqual(api._shares.figures(), {"limit": 2, "callers": 1, "callers_waiting": 1,
                                                 "waiting_for_share": 4})
        self.assertEqual({k: procpool.stats()[k] for k in (
            "per_caller_limit", "callers_in_pool", "callers_waiting", "tasks_waiting_for_share")},
            {"per_caller_limit": 2, "callers_in_pool": 1, "callers_waiting": 1,
             "tasks_waiting_for_share": 4})
        self.assertLessEqual(self.pool.stats()["in_flight"], 2)
        yield defer.gatherResults(tasks)
        self.assertEqual(api._shares.figures(), {"limit": 2, "callers": 0, "callers_waiting": 0,
                                                 "waiting_for_share": 0})

    @defer.inlineCallbacks
    def test_figures_count_callers_in_the_pool_and_callers_waiting_apart(self):
        a = [procpool.run_async(sleep_for, 0.3, caller="A") for _ in range(5)]
        b = [procpool.run_async(sleep_for, 0.3, caller="B") for _ in range(3)]
        c = [procpool.run_async(sleep_for, 0.3, caller="C")]
        figures = api._shares.figures()
        self.assertEqual((figures["callers"], figures["callers_waiting"],
                          figures["waiting_for_share"]), (3, 2, 3 + 1))
        yield defer.gatherResults(a + b + c)
        self.assertEqual(procpool.stats()["callers_waiting"], 0)

    @defer.inlineCallbacks
    def test_a_task_waiting_for_its_share_can_be_cancelled_and_never_runs(self):
        first = [procpool.run_async(sleep_for, 0.2, caller="A") for _ in range(2)]
        waiting = procpool.run_async(sleep_for, 0.2, caller="A")
        waiting.addErrback(lambda f: f.trap(defer.CancelledError) and "cancelled")
        waiting.cancel()
        self.assertEqual((yield waiting), "cancelled")
        yield defer.gatherResults(first)
        self.assertEqual(api._shares.figures(), {"limit": 2, "callers": 0, "callers_waiting": 0,
                                                 "waiting_for_share": 0})

    @defer.inlineCallbacks
    def test_caller_is_still_passed_on_and_failures_free_the_share(self):
        bad = procpool.run_async(s.raise_keyerror, caller="A")
        with self.assertRaises(TypeError):  # raise_keyerror takes no caller: passed on
            yield bad
        self.flushLoggedErrors()
        self.assertEqual(api._shares.figures()["callers"], 0)

    @defer.inlineCallbacks
    def test_without_a_limit_callers_are_not_counted(self):
        procpool.configure(PROCPOOL_PER_CALLER=0)
        api._shares = None
        result = yield procpool.run_async(sleep_for, 0, caller="A")
        self.assertEqual(result, "A")
        self.assertIsNone(api._shares)
