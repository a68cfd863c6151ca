"""Progress as it comes: at_progress hears each reported value before at_return (README)."""

from __future__ import annotations

import time

from twisted.internet import defer

import procpool
from tests import core_support as s


class Progress(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_three_values_a_second_apart_each_arrive_within_100ms_of_being_sent(self):
        heard: list[tuple[int, float]] = []
        events: list[str] = []

        def at_progress(value):
            index, sent = value
            heard.append((index, time.time() - sent))
            events.append(f"progress {index}")

        yield procpool.run_async(s.report, 3, 1.0, at_progress=at_progress,
                                 at_return=lambda r: events.append(f"return {r}"))
        self.assertEqual([i for i, _ in heard], [0, 1, 2])
        self.assertLess(max(delay for _, delay in heard), 0.1, heard)
        self.assertEqual(events, ["progress 0", "progress 1", "progress 2", "return done"])

    @defer.inlineCallbacks
    def test_each_return_of_a_source_string_is_progress_and_the_result_is_unchanged(self):
        heard: list = []
        result = yield procpool.run_async("for i in range(3):\n    _return(i * n)\n",
                                          n=10, at_progress=heard.append)
        self.assertEqual(heard, [0, 10, 20])
        self.assertEqual(result, [0, 10, 20])

    @defer.inlineCallbacks
    def test_without_at_progress_reporting_does_nothing_and_the_task_runs(self):
        result = yield procpool.run_async(s.report, 2, 0.0)
        self.assertEqual(result, "done")

    @defer.inlineCallbacks
    def test_progress_comes_in_order_from_a_thread_too(self):
        heard: list = []
        result = yield procpool.run_async(s.report, 3, 0.05, use_thread=True,
                                          at_progress=lambda v: heard.append(v[0]))
        self.assertEqual((result, heard), ("done", [0, 1, 2]))

    @defer.inlineCallbacks
    def test_an_at_progress_that_raises_is_logged_and_the_task_still_answers(self):
        def broken(value):
            raise KeyError("oops")

        result = yield procpool.run_async(s.report, 2, 0.0, at_progress=broken)
        self.assertEqual(result, "done")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 2)

    def test_at_progress_must_be_callable_and_is_refused_with_the_sandbox(self):
        with self.assertRaises(TypeError):
            procpool.run_async("_return(1)", at_progress="print")
        with self.assertRaises(TypeError) as caught:
            procpool.run_async("_return(1)", sandbox=True, at_progress=print)
        self.assertIn("at_progress", str(caught.exception))
