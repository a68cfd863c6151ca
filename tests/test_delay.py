"""
Every expectation of Evennia's own task-handler tests, plus the places where
procpool deliberately differs (both described in docs/persistence.md, "Where
this differs from Evennia"), against a fake clock and a real database: each
test runs once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import math
import threading

import pytest
from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from procpool import tasks
from procpool.storage import StoredTask, open_storage
from procpool.tasks import HandlerNotStarted, InvalidTask, TaskHandler
from tests import delay_support as support
from tests.delay_support import CALLS, Bell, explode, record

BOTH = (True, False)


class DelayBehaviour:
    """The behaviour tests; subclasses pick the backend."""

    backend_class: type = support.SQLiteBackend

    @inlineCallbacks
    def setUp(self):
        CALLS.clear()
        self.backend = self.backend_class()
        self.addCleanup(self.backend.cleanup)
        self.clock = Clock()
        self.handler = yield self.started_handler()

    @inlineCallbacks
    def started_handler(self, stale_timeout=60.0):
        handler = TaskHandler(clock=self.clock, storage=self.backend.database,
                              stale_timeout=stale_timeout)
        self.addCleanup(handler.stop)
        yield handler.start()
        return handler

    @inlineCallbacks
    def stored(self, handler=None):
        yield (handler or self.handler).flush()
        return self.backend.stored_ids()

    # -- Evennia's rows -------------------------------------------------

    @inlineCallbacks
    def test_call_early_runs_callback_and_keeps_task_active(self):
        for persistent in BOTH:
            CALLS.clear()
            task = self.handler.add(5, record, "early", persistent=persistent)
            self.assertEqual(task.call(), "called with ('early',) {}")
            self.assertEqual(CALLS, [(("early",), {})])
            self.assertTrue(task.exists())
            self.assertTrue(task.active())
            if persistent:
                self.assertIn(task.get_id(), (yield self.stored()))

    @inlineCallbacks
    def test_do_task_runs_callback_and_forgets_task(self):
        for persistent in BOTH:
            CALLS.clear()
            task = self.handler.add(5, record, "now", persistent=persistent)
            self.assertEqual(task.do_task(), "called with ('now',) {}")
            self.assertEqual(len(CALLS), 1)
            self.assertFalse(task.exists())
            self.clock.advance(10)
            self.assertEqual(len(CALLS), 1)
            self.assertNotIn(task.get_id(), (yield self.stored()))

    @inlineCallbacks
    def test_deferred_call_runs_after_delay_and_forgets_task(self):
        for persistent in BOTH:
            for seconds in (5, 0.1):
                CALLS.clear()
                task = self.handler.add(seconds, record, seconds, persistent=persistent)
                yield self.handler.flush()
                self.assertTrue(task.active())
                self.clock.advance(seconds * 0.99)
                self.assertEqual(CALLS, [])
                self.clock.advance(seconds * 0.02)
                self.assertEqual(CALLS, [((seconds,), {})])
                self.assertFalse(task.exists())
                self.assertNotIn(task.get_id(), (yield self.stored()))

    def test_active_turns_false_once_the_delay_passed(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            self.assertTrue(task.active())
            self.clock.advance(5)
            self.assertFalse(task.active())

    def test_called_turns_true_once_the_delay_passed(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            self.assertFalse(task.called)
            self.clock.advance(5)
            self.assertTrue(task.called)

    @inlineCallbacks
    def test_cancelled_task_never_runs_but_still_exists(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            self.assertTrue(task.cancel())
            self.assertFalse(task.active())
            self.assertTrue(task.exists())
            self.clock.advance(10)
            self.assertEqual(CALLS, [])
            # Evennia keeps it stored and runs it after a restart; we do not.
            self.assertNotIn(task.get_id(), (yield self.stored()))

    @inlineCallbacks
    def test_removed_task_never_runs_and_is_gone(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            self.assertTrue(task.remove())
            self.assertFalse(task.active())
            self.assertFalse(task.exists())
            self.clock.advance(10)
            self.assertEqual(CALLS, [])
            self.assertNotIn(task.get_id(), (yield self.stored()))

    def test_remove_after_cancel_both_answer_true(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            self.assertTrue(task.cancel())
            self.assertTrue(task.remove())
            self.assertFalse(task.exists())

    def test_paused_task_runs_only_when_unpaused(self):
        for persistent in BOTH:
            CALLS.clear()
            task = self.handler.add(5, record, persistent=persistent)
            task.pause()
            self.assertTrue(task.paused)
            self.clock.advance(6)
            self.assertEqual(CALLS, [])
            task.unpause()
            self.assertFalse(task.paused)
            self.assertEqual(CALLS, [((), {})])
            self.assertFalse(task.exists())

    @inlineCallbacks
    def test_stale_cancelled_task_removed_by_next_delay(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            task.cancel()
            self.clock.advance(5 + 60 - 1)
            self.handler.add(5, record)
            self.assertTrue(task.exists(), "removed before due time + stale timeout")
            self.clock.advance(2)
            self.handler.add(5, record)
            self.assertFalse(task.exists())
            self.assertNotIn(task.get_id(), (yield self.stored()))

    @inlineCallbacks
    def test_stale_cancelled_task_removed_by_clean_stale_tasks(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            task.cancel()
            self.clock.advance(64)
            self.assertEqual(self.handler.clean_stale_tasks(), 0)
            self.assertTrue(task.exists())
            self.clock.advance(2)
            self.assertEqual(self.handler.clean_stale_tasks(), 1)
            self.assertFalse(task.exists())
            self.assertNotIn(task.get_id(), (yield self.stored()))

    @inlineCallbacks
    def test_stale_timeout_zero_only_cleans_on_request(self):
        handler = yield self.started_handler(stale_timeout=0)
        for persistent in BOTH:
            task = handler.add(5, record, persistent=persistent)
            task.cancel()
            self.clock.advance(1000)
            handler.add(5, record)
            self.assertTrue(task.exists())
            handler.clean_stale_tasks()
            self.assertFalse(task.exists())

    @inlineCallbacks
    def test_server_restart_reloads_persistent_delay(self):
        task = self.handler.add(5, record, "survivor", persistent=True)
        self.handler.add(5, record, "forgotten")
        yield self.handler.stop()
        self.clock.advance(3)
        self.assertEqual(CALLS, [], "a stopped handler ran a task")
        handler = yield self.started_handler()
        self.assertTrue(handler.get(task.get_id()).active())
        self.clock.advance(1.9)
        self.assertEqual(CALLS, [])
        self.clock.advance(0.2)
        self.assertEqual(CALLS, [(("survivor",), {})])
        self.assertEqual((yield self.stored(handler)), set())

    @inlineCallbacks
    def test_old_handle_never_acts_on_a_newer_task(self):
        old = self.handler.add(1, record, "old", persistent=True)
        self.clock.advance(1)
        new = self.handler.add(5, record, "new", persistent=True)
        self.assertNotEqual(old.get_id(), new.get_id())
        self.assertFalse(old.exists())
        self.assertFalse(old.active())
        self.assertFalse(old.cancel())
        self.assertFalse(old.remove())
        self.assertIsNone(old.call())
        self.assertIsNone(old.do_task())
        self.assertIsNone(old.get_deferred())
        self.assertTrue(new.active())
        self.assertEqual(CALLS, [(("old",), {})])
        # Not even across a restart does an id come back.
        new.remove()
        seen = {old.get_id(), new.get_id()}
        yield self.handler.stop()
        handler = yield self.started_handler()
        later = handler.add(5, record, persistent=True)
        self.assertGreater(later.get_id(), max(seen))

    def test_valid_handle_call_returns_value_once(self):
        for persistent in BOTH:
            CALLS.clear()
            task = self.handler.add(5, record, 7, persistent=persistent)
            self.assertEqual(task.call(), "called with (7,) {}")
            self.assertEqual(len(CALLS), 1)

    def test_handle_after_remove_answers_false(self):
        for persistent in BOTH:
            task = self.handler.add(5, record, persistent=persistent)
            task.remove()
            self.assertFalse(task.exists())
            self.assertFalse(task.active())
            self.assertFalse(task.cancel())

    # -- other facts users rely on ----------------------------------------

    def test_delay_zero_runs_on_a_later_turn(self):
        for persistent in BOTH:
            CALLS.clear()
            self.handler.add(0, record, persistent=persistent)
            self.assertEqual(CALLS, [])
            self.clock.advance(0)
            self.assertEqual(len(CALLS), 1)

    def test_extra_arguments_and_keywords_reach_the_callback(self):
        for persistent in BOTH:
            CALLS.clear()
            self.handler.add(5, record, "x", 2, persistent=persistent, colour="red")
            self.clock.advance(5)
            self.assertEqual(CALLS, [(("x", 2), {"colour": "red"})])

    @inlineCallbacks
    def test_get_deferred_fires_with_the_callbacks_value(self):
        task = self.handler.add(5, record, "v", persistent=True)
        d = task.get_deferred()
        self.clock.advance(5)
        self.assertEqual((yield d), "called with ('v',) {}")

    @inlineCallbacks
    def test_bound_method_of_picklable_object_survives_restart(self):
        self.handler.add(5, Bell("dinner").ring, 3, persistent=True)
        yield self.handler.stop()
        handler = yield self.started_handler()
        self.assertEqual(len(handler.tasks), 1)
        self.clock.advance(5)
        self.assertEqual(CALLS, [(("dinner", 3), {})])

    @inlineCallbacks
    def test_stored_task_whose_method_is_gone_is_kept_with_a_log_line(self):
        yield self.handler.stop()
        import pickle
        payload = pickle.dumps((("method", Bell("x"), "no_such_method"), (), {}))
        storage = open_storage(self.backend.database)
        storage.open()
        storage.apply([StoredTask(500, 3.0, payload)], [], 501)
        storage.close()
        handler = yield self.started_handler()
        self.assertEqual(handler.tasks, {})
        self.assertIn(500, handler.unloadable)  # kept for `procpool tasks` to show and remove
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertEqual((yield self.stored(handler)), {500})

    @inlineCallbacks
    def test_callback_that_raises_is_logged_removed_and_never_rerun(self):
        task = self.handler.add(5, explode, persistent=True)
        self.clock.advance(5)
        errors = self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(len(errors), 1)
        self.assertIn("the callback broke", errors[0].getTraceback())
        self.assertFalse(task.exists())
        self.assertEqual((yield self.stored()), set())
        yield self.handler.stop()
        yield self.started_handler()
        self.clock.advance(100)
        self.assertEqual(len(CALLS), 1)

    @inlineCallbacks
    def test_row_removed_only_after_callbacks_deferred_fired(self):
        pending = defer.Deferred()
        self.handler.add(5, _returns_deferred, persistent=True)
        _DEFERREDS.append(pending)
        self.clock.advance(5)
        self.assertEqual(len(CALLS), 1)
        self.assertEqual(len((yield self.stored())), 1, "row deleted before the callback ended")
        pending.callback("done")
        self.assertEqual((yield self.stored()), set())

    @inlineCallbacks
    def test_overdue_tasks_fire_at_once_in_due_order(self):
        for seconds in (30, 10, 20):
            self.handler.add(seconds, record, seconds, persistent=True)
        self.handler.add(100, record, 100, persistent=True)
        yield self.handler.stop()
        self.clock.advance(50)
        yield self.started_handler()
        self.assertEqual(CALLS, [], "an overdue task ran synchronously inside start()")
        self.clock.advance(0)
        self.assertEqual([c[0][0] for c in CALLS], [10, 20, 30])
        self.clock.advance(49.9)
        self.assertEqual(len(CALLS), 3)
        self.clock.advance(0.2)
        self.assertEqual([c[0][0] for c in CALLS], [10, 20, 30, 100])

    @inlineCallbacks
    def test_a_slow_load_never_runs_a_later_task_before_an_overdue_one(self):
        # Tasks due 0.01 s apart, then a restart whose clock moves 0.01 s every
        # time the handler reads it, as a slow load on a busy machine would.
        for n in range(10):
            self.handler.add(10 + n * 0.01, record, n, persistent=True)
        yield self.handler.stop()
        ticking = _TickingClock(step=0.01)
        ticking.advance(10.045)
        self.clock = ticking
        yield self.started_handler()
        ticking.step = 0.0
        ticking.advance(1)
        self.assertEqual([c[0][0] for c in CALLS], list(range(10)))

    @inlineCallbacks
    def test_paused_task_past_due_is_not_stale_and_runs_when_unpaused(self):
        for persistent in BOTH:
            CALLS.clear()
            task = self.handler.add(5, record, "held", persistent=persistent)
            task.pause()
            self.clock.advance(5 + 60 + 10)
            self.handler.add(5, record, "next").remove()     # add cleans stale tasks
            self.assertEqual(self.handler.clean_stale_tasks(), 0)
            self.assertTrue(task.exists(), "a paused task was dropped as stale")
            if persistent:
                self.assertIn(task.get_id(), (yield self.stored()))
            task.unpause()
            self.assertEqual(CALLS, [(("held",), {})])
            self.assertFalse(task.exists())

    @inlineCallbacks
    def test_cancelled_paused_task_still_goes_stale(self):
        task = self.handler.add(5, record, persistent=True)
        task.pause()
        self.assertTrue(task.cancel())
        self.clock.advance(5 + 60 + 1)
        self.assertEqual(self.handler.clean_stale_tasks(), 1)
        self.assertFalse(task.exists())
        task.unpause()
        self.assertEqual(CALLS, [])
        self.assertNotIn(task.get_id(), (yield self.stored()))

    @inlineCallbacks
    def test_start_twice_loads_stored_tasks_once(self):
        self.handler.add(5, record, "once", persistent=True)
        yield self.handler.stop()
        handler = TaskHandler(clock=self.clock, storage=self.backend.database)
        self.addCleanup(handler.stop)
        yield defer.gatherResults([handler.start(), handler.start()])
        yield handler.start()
        self.assertEqual(len(handler.tasks), 1)
        self.clock.advance(5)
        self.assertEqual(CALLS, [(("once",), {})])

    @inlineCallbacks
    def test_start_after_stop_without_waiting_sees_every_write(self):
        tasks_ = [self.handler.add(5, record, n, persistent=True) for n in range(50)]
        self.handler.stop()                     # not waited for: its writes are in flight
        yield self.handler.start()
        self.assertEqual(sorted(self.handler.tasks), sorted(t.get_id() for t in tasks_))
        self.clock.advance(5)
        self.assertEqual(sorted(c[0][0] for c in CALLS), list(range(50)))

    @inlineCallbacks
    def test_start_stop_start_waiters_each_hear_their_own_load(self):
        yield self.handler.stop()
        first = self.handler.start()
        self.handler.stop()
        second = self.handler.start()
        yield second
        task = self.handler.add(5, record, persistent=True)   # loaded: no HandlerNotStarted
        self.assertIn(task.get_id(), (yield self.stored()))
        yield self.assertFailure(first, HandlerNotStarted)

    def test_handles_list_known_tasks_with_their_details(self):
        first = self.handler.add(5, record, "a", persistent=True, colour="red")
        self.handler.add(7, explode, "b")
        self.clock.advance(1)
        listed = self.handler.handles(record)
        self.assertEqual([t.get_id() for t in listed], [first.get_id()])
        [mine] = listed
        self.assertEqual((mine.callback, mine.args, mine.kwargs, mine.due, mine.persistent),
                         (record, ("a",), {"colour": "red"}, 5.0, True))
        self.assertEqual(len(self.handler.handles()), 2)
        mine.cancel()
        self.assertFalse(first.active())

    # -- refused input ----------------------------------------------------

    @inlineCallbacks
    def test_bad_input_is_refused_and_handler_keeps_working(self):
        def nested():
            pass

        cases = [
            (lambda: self.handler.add(5, lambda: 1, persistent=True), "lambda"),
            (lambda: self.handler.add(5, nested, persistent=True), "nested function"),
            (lambda: self.handler.add(5, record, threading.Lock(), persistent=True),
             "argument 1"),
            (lambda: self.handler.add(5, record, key=threading.Lock(), persistent=True),
             "keyword argument key="),
            (lambda: self.handler.add(-1, record), "negative"),
            (lambda: self.handler.add(math.nan, record), "finite"),
            (lambda: self.handler.add("5", record), "number of seconds"),
            (lambda: self.handler.add(True, record), "number of seconds"),
            (lambda: self.handler.add(5, "not callable"), "callable"),
        ]
        for attempt, words in cases:
            with self.assertRaises(ValueError) as caught:
                attempt()
            self.assertIsInstance(caught.exception, InvalidTask)
            self.assertIn(words, str(caught.exception))
        self.assertEqual(self.handler.tasks, {})
        task = self.handler.add(5, record, "fine", persistent=True)
        self.assertEqual((yield self.stored()), {task.get_id()})
        self.clock.advance(5)
        self.assertEqual(CALLS, [(("fine",), {})])

    def test_non_persistent_delay_takes_lambdas_and_unpicklable_arguments(self):
        lock = threading.Lock()
        self.handler.add(1, lambda lk: CALLS.append(lk), lock)
        self.clock.advance(1)
        self.assertEqual(CALLS, [lock])


_DEFERREDS: list[defer.Deferred] = []


def _returns_deferred():
    CALLS.append(((), {}))
    return _DEFERREDS.pop()


class SQLiteDelayTests(DelayBehaviour, TestCase):
    backend_class = support.SQLiteBackend


class PostgresDelayTests(DelayBehaviour, TestCase):
    pytestmark = [pytest.mark.postgres]
    backend_class = support.PostgresBackend


class HandlerWithoutStorageTests(TestCase):
    """Non-persistent delays need no start() and never touch the database."""

    def setUp(self):
        CALLS.clear()

    def test_non_persistent_delay_works_without_start_or_database(self):
        handler = TaskHandler(clock=Clock(), storage="/nonexistent/dir/tasks.sqlite3")
        handler.add(2, record, "x")
        handler.clock.advance(2)
        self.assertEqual(CALLS, [(("x",), {})])
        self.assertIsNone(handler.storage)

    def test_persistent_delay_before_start_is_refused(self):
        handler = TaskHandler(clock=Clock(), storage="unused.sqlite3")
        with self.assertRaises(HandlerNotStarted) as caught:
            handler.add(2, record, persistent=True)
        self.assertIn("start", str(caught.exception))
        self.assertEqual(handler.tasks, {})

    @inlineCallbacks
    def test_module_delay_uses_the_installed_handler_and_real_reactor(self):
        from twisted.internet import reactor
        handler = TaskHandler()
        tasks.set_handler(handler)
        self.addCleanup(tasks.set_handler, None)
        self.assertIs(tasks.get_handler(), handler)
        self.assertIs(handler.clock, reactor)
        task = tasks.delay(0, record, "soon", persistent=False)
        self.assertEqual(CALLS, [], "delay(0) ran synchronously")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(CALLS, [(("soon",), {})])
        self.assertFalse(task.exists())

    def test_get_handler_makes_one_handler_from_settings(self):
        tasks.set_handler(None)
        self.addCleanup(tasks.set_handler, None)
        first = tasks.get_handler()
        self.assertIs(tasks.get_handler(), first)
        self.assertEqual(first.stale_timeout, 60.0)


class _TickingClock(Clock):
    """A Clock whose time moves on by ``step`` each time it is read."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def seconds(self) -> float:
        self.rightNow += self.step
        return self.rightNow
