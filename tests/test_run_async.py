"""run_async, line by line from the README's run_async section, against real worker processes."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import textwrap
import threading

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

import procpool
from procpool import RemoteError, SerializationError
from tests import core_support as s

SEED_SOURCE = """
from time import sleep
sleep(5) # sleep five secs
val = testvar + 5
_return(val)
_return(val + 5)
"""


class SourceStrings(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_return_call_gives_its_value(self):
        self.assertEqual((yield procpool.run_async("_return(1+2)")), 3)

    @defer.inlineCallbacks
    def test_seed_source_example_gives_both_values(self):
        result = yield procpool.run_async(SEED_SOURCE, testvar=3)
        self.assertEqual(result, [8, 13])

    @defer.inlineCallbacks
    def test_return_of_zero_is_zero_not_none(self):
        self.assertEqual((yield procpool.run_async("_return(0)")), 0)

    @defer.inlineCallbacks
    def test_no_return_call_gives_none(self):
        self.assertIsNone((yield procpool.run_async("x = 1\ny = x + 1")))

    @defer.inlineCallbacks
    def test_lone_expression_gives_its_value(self):
        self.assertEqual((yield procpool.run_async("6 * 7")), 42)

    @defer.inlineCallbacks
    def test_keyword_arguments_are_the_sources_globals(self):
        self.assertEqual((yield procpool.run_async("_return(a * b)", a=6, b=7)), 42)

    @defer.inlineCallbacks
    def test_source_runs_in_a_worker_process(self):
        worker_pid = yield procpool.run_async("import os\n_return(os.getpid())")
        self.assertNotEqual(worker_pid, os.getpid())
        if procpool.stats()["backend"] == "local":  # Ray's workers are not the pool's to list
            self.assertIn(worker_pid, self.pool.stats()["pids"])

    @defer.inlineCallbacks
    def test_source_string_runs_exactly_once_when_it_raises(self):
        path = self.mktemp()
        source = "with open(path, 'a') as f:\n    f.write('ran\\n')\nraise ValueError('after')"
        with self.assertRaises(ValueError):
            yield procpool.run_async(source, path=path)
        with open(path) as f:
            self.assertEqual(f.read(), "ran\n")

    @defer.inlineCallbacks
    def test_syntax_error_fails_with_its_line(self):
        with self.assertRaises(SyntaxError) as caught:
            yield procpool.run_async("x = 1\ny = (\n")
        self.assertEqual(caught.exception.lineno, 2)

    @defer.inlineCallbacks
    def test_values_returned_before_an_error_do_not_hide_it(self):
        with self.assertRaises(ZeroDivisionError):
            yield procpool.run_async("_return(1)\n1/0")


class Collector(s.PoolTestCase):
    """What the local pool's tasks in flight cost the garbage collector."""

    @defer.inlineCallbacks
    def test_a_task_in_flight_gives_the_garbage_collector_three_objects(self):
        # Its Deferred, that Deferred's list of callbacks and the pool's
        # record of it: with a failure-settling errback too (four tuples
        # more), a full collection during a burst of 20,000 took ~2x as long.
        yield procpool.run_async(s.add, 1, 2)
        gc.collect()
        before = len(gc.get_objects())
        waiting = [procpool.run_async(s.add, i, 1) for i in range(500)]
        tracked = len(gc.get_objects()) - before
        self.assertLessEqual(tracked, 3 * 500 + 50)
        self.assertEqual((yield defer.gatherResults(waiting)), [i + 1 for i in range(500)])


class Callables(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_lambda_runs_in_a_worker_process(self):
        result = yield procpool.run_async(lambda: __import__("os").getpid())
        self.assertNotEqual(result, os.getpid())

    @defer.inlineCallbacks
    def test_closure_runs_in_a_worker_process(self):
        factor = 7

        def times(x):
            return x * factor, os.getpid()

        value, worker = yield procpool.run_async(times, 6)
        self.assertEqual(value, 42)
        self.assertNotEqual(worker, os.getpid())

    @defer.inlineCallbacks
    def test_args_and_kwargs_reach_the_callable(self):
        self.assertEqual((yield procpool.run_async(s.add, 40, b=2)), 42)

    @defer.inlineCallbacks
    def test_reserved_keywords_never_reach_the_callable(self):
        got = []
        result = yield procpool.run_async(
            s.record_kwargs, 1, x=2, at_return=lambda r, **kw: got.append((r, kw)) or r,
            at_return_kwargs={"tag": "t"}, at_err=lambda f: f, at_err_kwargs={},
            use_thread=False, proc_timeout=30)
        self.assertEqual(result, ((1,), {"x": 2}))
        self.assertEqual(got, [(((1,), {"x": 2}), {"tag": "t"})])

    def test_unserialisable_callable_is_refused_synchronously(self):
        generator = (i for i in range(3))
        with self.assertRaises(SerializationError) as caught:
            procpool.run_async(s.echo, generator)
        self.assertIn("could not be serialised", str(caught.exception))
        self.assertIn("generator", str(caught.exception))

    def test_something_neither_callable_nor_string_is_refused(self):
        with self.assertRaises(TypeError) as caught:
            procpool.run_async(42)
        self.assertIn("int", str(caught.exception))

    def test_bad_proc_timeouts_are_refused_synchronously(self):
        for bad in (-1, math.nan, "5", [1], True):
            with self.assertRaises(ValueError, msg=repr(bad)) as caught:
                procpool.run_async(s.add, 1, proc_timeout=bad)
            self.assertIn("proc_timeout", str(caught.exception))

    def test_bad_callbacks_are_refused_synchronously(self):
        with self.assertRaises(TypeError):
            procpool.run_async(s.add, 1, at_return=5)
        with self.assertRaises(TypeError):
            procpool.run_async(s.add, 1, at_return_kwargs=[1])


class Callbacks(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_at_return_gets_result_and_kwargs_in_the_reactor_thread(self):
        seen = []

        def at_return(result, who):
            seen.append((result, who, threading.current_thread() is threading.main_thread()))

        yield procpool.run_async(s.add, 1, 2, at_return=at_return, at_return_kwargs={"who": "x"})
        self.assertEqual(seen, [(3, "x", True)])

    @defer.inlineCallbacks
    def test_at_err_gets_a_failure_with_the_remote_type_message_and_traceback(self):
        seen = []
        yield procpool.run_async(s.raise_keyerror, at_err=seen.append)
        (failure,) = seen
        self.assertIsInstance(failure, Failure)
        self.assertIsInstance(failure.value, KeyError)
        self.assertEqual(failure.value.args, ("missing",))
        self.assertIn("raise_keyerror", failure.value.remote_traceback)
        self.assertIn("core_support.py", failure.value.remote_traceback)

    @defer.inlineCallbacks
    def test_at_err_kwargs_are_passed(self):
        seen = []
        yield procpool.run_async("1/0", at_err=lambda f, tag: seen.append((f.type, tag)),
                                 at_err_kwargs={"tag": "t"})
        self.assertEqual(seen, [(ZeroDivisionError, "t")])

    @defer.inlineCallbacks
    def test_an_exception_that_cannot_be_rebuilt_arrives_as_remote_error(self):
        seen = []
        yield procpool.run_async(s.raise_unpicklable, at_err=seen.append)
        error = seen[0].value
        self.assertIsInstance(error, RemoteError)
        self.assertEqual(error.type_name, "tests.core_support.Unpicklable")
        self.assertEqual(error.message, "left/right")
        self.assertIn("raise_unpicklable", error.remote_traceback)

    @defer.inlineCallbacks
    def test_an_error_in_at_return_reaches_at_err(self):
        seen = []

        def at_return(result):
            raise RuntimeError(f"bad {result}")

        yield procpool.run_async(s.add, 1, at_return=at_return, at_err=seen.append)
        self.assertEqual(str(seen[0].value), "bad 1")

    @defer.inlineCallbacks
    def test_failure_without_at_err_is_logged_once_and_never_unhandled(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        procpool.run_async("raise ValueError('logged once')")
        yield s.wait_until(lambda: self.pool.stats()["tasks_failed"] == 1, 10)
        gc.collect()
        logged = self.flushLoggedErrors(ValueError)
        self.assertEqual([str(f.value).splitlines()[0] for f in logged], ["logged once"])
        self.assertFalse([e for e in events if "Unhandled error" in str(e.get("log_format"))])

    @defer.inlineCallbacks
    def test_a_chained_errback_receives_the_failure(self):
        with self.assertRaises(ValueError):
            yield procpool.run_async("raise ValueError('mine')")

    @defer.inlineCallbacks
    def test_results_arrive_in_order_of_completion(self):
        order = []
        slow = procpool.run_async(s.sleep, 0.6, at_return=order.append)
        fast = procpool.run_async(s.sleep, 0.05, at_return=order.append)
        yield defer.gatherResults([slow, fast])
        self.assertEqual(order, [0.05, 0.6])


class ThreadFallback(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_use_thread_runs_in_the_host_process(self):
        self.assertEqual((yield procpool.run_async(s.pid, use_thread=True)), os.getpid())

    @defer.inlineCallbacks
    def test_use_thread_source_strings_follow_the_same_rules(self):
        self.assertEqual((yield procpool.run_async(
            "val = testvar + 5\n_return(val)\n_return(val + 5)", testvar=3,
            use_thread=True)), [8, 13])
        self.assertEqual((yield procpool.run_async("6 * 7", use_thread=True)), 42)
        self.assertIsNone((yield procpool.run_async("x = 1", use_thread=True)))

    @defer.inlineCallbacks
    def test_disabled_pool_runs_everything_in_threads(self):
        procpool.configure(PROCPOOL_ENABLED=False)
        self.assertEqual((yield procpool.run_async(s.pid)), os.getpid())
        self.assertEqual((yield procpool.run_async("_return(1+2)")), 3)

    @defer.inlineCallbacks
    def test_thread_errors_reach_at_err(self):
        seen = []
        yield procpool.run_async("1/0", use_thread=True, at_err=seen.append)
        self.assertIs(seen[0].type, ZeroDivisionError)

    @defer.inlineCallbacks
    def test_thread_timeout_fails_the_deferred_and_says_no_worker_was_killed(self):
        with self.assertRaises(procpool.ProcPoolTimeout) as caught:
            yield procpool.run_async(s.sleep, 1.0, use_thread=True, proc_timeout=0.2)
        self.assertNotIn("worker", str(caught.exception))
        self.assertIn("thread", str(caught.exception))
        self.assertEqual(caught.exception.limit, 0.2)

    def test_use_thread_and_sandbox_take_booleans_only(self):
        for name, value in (("use_thread", "no"), ("use_thread", 1), ("sandbox", "yes")):
            with self.assertRaises(TypeError, msg=name) as caught:
                procpool.run_async("1", **{name: value})
            self.assertIn(name, str(caught.exception))


class MainExceptions(unittest.TestCase):
    def test_an_exception_class_from_the_hosts_main_comes_back_as_itself(self):
        code = textwrap.dedent("""
            import procpool
            from twisted.internet import reactor
            procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1)
            class OutOfMana(Exception):
                pass
            def cast(spell):
                raise OutOfMana(spell, 3)
            out = []
            def go():
                d = procpool.run_async(cast, "fireball")
                d.addErrback(lambda f: out.append((f.check(OutOfMana) is OutOfMana,
                                                   f.value.args,
                                                   "in cast" in f.value.remote_traceback)))
                d.addBoth(lambda _: procpool.stop())
                d.addBoth(lambda _: reactor.stop())
            reactor.callWhenRunning(go)
            reactor.run()
            print(out)
        """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(done.stdout.strip(), "[(True, ('fireball', 3), True)]",
                         done.stderr[-2000:])


class FromAnotherThread(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_a_call_from_another_thread_is_handed_to_the_reactor_thread(self):
        from twisted.internet import reactor, threads
        seen = []
        done = defer.Deferred()

        def at_return(result):
            seen.append((result, threading.current_thread() is threading.main_thread()))
            done.callback(None)

        def in_a_thread():
            procpool.run_async(s.add, 1, 2, at_return=at_return)
            return threading.current_thread() is threading.main_thread()

        on_main = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), in_a_thread)
        self.assertFalse(on_main)
        yield done
        self.assertEqual(seen, [(3, True)])

    @defer.inlineCallbacks
    def test_bad_input_from_another_thread_raises_in_that_thread(self):
        from twisted.internet import reactor, threads

        def in_a_thread():
            try:
                procpool.run_async(42)
            except TypeError as exc:
                return str(exc)
            return None

        text = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), in_a_thread)
        self.assertIn("callable or a string", text)


class LateChaining(s.PoolTestCase):
    @defer.inlineCallbacks
    def test_a_failure_reaches_callbacks_chained_after_it_happened(self):
        d = procpool.run_async("raise ValueError('late')")
        yield s.wait_until(lambda: self.pool.stats()["tasks_failed"] == 1, 10)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        with self.assertRaises(ValueError):
            yield d

    @defer.inlineCallbacks
    def test_gather_results_chained_late_sees_the_failure(self):
        ds = [procpool.run_async(s.add, 1), procpool.run_async("1/0")]
        yield s.wait_until(lambda: self.pool.stats()["tasks_failed"] == 1, 10)
        self.flushLoggedErrors(ZeroDivisionError)
        with self.assertRaises(defer.FirstError):
            yield defer.gatherResults(ds, consumeErrors=True)
