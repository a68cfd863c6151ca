"""The reactor watchdog: a stall is logged once, naming the blocking call (docs/operations.md)."""

from __future__ import annotations

import inspect
import time

import pytest
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

import procpool
from procpool import watchdog


def slow_callback() -> None:
    """Game code that blocks the reactor thread for a second."""
    time.sleep(1.0)


SLEEP_LINE = inspect.getsourcelines(slow_callback)[1] + 2


class Stalls(unittest.TestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def _stall_lines(self) -> list[dict]:
        return [e for e in self.events if "reactor blocked" in str(e.get("log_format", ""))]

    @defer.inlineCallbacks
    def test_a_sleep_in_a_reactor_callback_is_reported_with_its_function_and_line(self):
        dog = watchdog.Watchdog(0.25, reactor)
        dog.start()
        self.addCleanup(dog.stop)
        yield task.deferLater(reactor, 0.3, slow_callback)
        yield task.deferLater(reactor, 0.5, lambda: None)  # the reactor turns again
        lines = self._stall_lines()
        self.assertEqual(len(lines), 1, "one stall, one log line")
        event = lines[0]
        self.assertGreaterEqual(event["seconds"], 0.9)
        self.assertLess(event["seconds"], 2.0)
        self.assertIn("slow_callback", event["where"])
        self.assertIn(f"test_watchdog.py:{SLEEP_LINE}", event["where"])
        self.assertNotIn("twisted", event["where"])

    @defer.inlineCallbacks
    def test_a_reactor_that_keeps_turning_logs_nothing(self):
        dog = watchdog.Watchdog(0.25, reactor)
        dog.start()
        self.addCleanup(dog.stop)
        for _ in range(10):
            yield task.deferLater(reactor, 0.05, time.sleep, 0.05)
        self.assertEqual(self._stall_lines(), [])
        self.assertEqual(dog.stalls, 0)

    @defer.inlineCallbacks
    def test_procpool_start_starts_it_when_the_setting_asks_and_stop_stops_it(self):
        procpool.configure(PROCPOOL_WATCHDOG=0.25, PROCPOOL_ENABLED=False)
        yield procpool.start()
        try:
            self.assertIsNotNone(watchdog._running)
            yield task.deferLater(reactor, 0.1, slow_callback)
            yield task.deferLater(reactor, 0.5, lambda: None)
            self.assertEqual(len(self._stall_lines()), 1)
        finally:
            yield procpool.stop()
        self.assertIsNone(watchdog._running)


def test_the_watchdog_is_off_by_default():
    assert procpool.settings.get("PROCPOOL_WATCHDOG") is None


@pytest.mark.parametrize("bad", [-1, "soon", True])
def test_a_bad_threshold_names_the_setting(bad):
    with pytest.raises(procpool.SettingError, match="PROCPOOL_WATCHDOG"):
        procpool.configure(PROCPOOL_WATCHDOG=bad)
    with pytest.raises(procpool.SettingError, match="PROCPOOL_WATCHDOG"):
        watchdog.Watchdog(bad if bad != "soon" else 0, reactor)


class Figures(unittest.TestCase):
    def tearDown(self) -> None:
        watchdog.stop_watchdog()

    @defer.inlineCallbacks
    def test_figures_give_the_threshold_the_stalls_and_where_the_last_was(self):
        dog = watchdog.Watchdog(0.25, reactor)
        self.assertEqual(dog.figures(), {"watchdog_threshold": 0.25, "watchdog_stalls": 0,
                                         "watchdog_last_stall_s": None,
                                         "watchdog_last_stall_in": None})
        dog.start()
        self.addCleanup(dog.stop)
        yield task.deferLater(reactor, 0.3, slow_callback)
        yield task.deferLater(reactor, 0.5, lambda: None)
        figures = dog.figures()
        self.assertEqual(figures["watchdog_stalls"], 1)
        self.assertGreaterEqual(figures["watchdog_last_stall_s"], 0.9)
        self.assertIn(f"slow_callback ({__file__}:{SLEEP_LINE})", figures["watchdog_last_stall_in"])

    def test_the_process_figures_say_off_until_it_starts_and_show_it_in_stats(self):
        self.assertIsNone(watchdog.figures()["watchdog_threshold"])
        self.assertIsNone(procpool.stats()["watchdog_threshold"])
        watchdog.start_watchdog(0.5, reactor)
        self.assertEqual(watchdog.figures()["watchdog_threshold"], 0.5)
        self.assertEqual(procpool.stats()["watchdog_threshold"], 0.5)
        self.assertEqual(procpool.stats()["watchdog_stalls"], 0)


class WakeUps(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_thread_wakes_less_than_twice_a_threshold_while_the_reactor_turns(self):
        # Each wake-up takes the GIL from the reactor: it sleeps until the beat is a
        # threshold old (about 5 wakes a second at 0.25 s), not every quarter threshold (16).
        import threading

        wakes: list[float] = []

        class Counting(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                wakes.append(time.monotonic())
                return super().wait(timeout)

        dog = watchdog.Watchdog(0.25, reactor)
        dog._stop = Counting()
        dog.start()
        self.addCleanup(dog.stop)
        yield task.deferLater(reactor, 2.0, lambda: None)
        self.assertGreaterEqual(len(wakes), 4, "it still watches")
        self.assertLessEqual(len(wakes), 2.0 / (0.75 * 0.25) + 2, f"{len(wakes)} wake-ups in 2 s")
        self.assertEqual(dog.stalls, 0)
