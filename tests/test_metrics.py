"""The Prometheus endpoint (procpool/metrics.py): scraped over real HTTP from real workers."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest
from twisted.web import server

import procpool
from procpool import metrics
from tests import core_support as s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape:\n{text}")


class Scrape(s.PoolTestCase):
    """PROCPOOL_METRICS_PORT set: procpool.start() serves the metrics on loopback."""

    def setUp(self) -> defer.Deferred:
        self.port = _free_port()
        self.extra_settings = {"PROCPOOL_METRICS_PORT": self.port}
        return super().setUp()

    @defer.inlineCallbacks
    def test_a_scrape_counts_the_tasks_by_outcome_and_times_them(self):
        for n in range(5):
            self.assertEqual((yield procpool.run_async(s.add, n, 1)), n + 1)
        for _ in range(2):
            yield self.assertFailure(procpool.run_async(s.raise_keyerror), KeyError)
        text = yield threads.deferToThread(_fetch, self.port)
        self.assertEqual(_value(text, 'procpool_tasks_total{outcome="done"}'), 5)
        self.assertEqual(_value(text, 'procpool_tasks_total{outcome="failed"}'), 2)
        self.assertEqual(_value(text, 'procpool_tasks_total{outcome="timed_out"}'), 0)
        self.assertEqual(_value(text, "procpool_task_seconds_count"), 7)
        self.assertGreater(_value(text, "procpool_task_seconds_sum"), 0)
        self.assertEqual(_value(text, "procpool_queue_depth"), 0)
        workers = sum(_value(text, f'procpool_workers{{state="{state}"}}')
                      for state in ("busy", "idle", "starting"))
        self.assertEqual(workers, len(self.pool._workers))
        self.assertIn("procpool_queue_wait_seconds_count", text)
        self.assertIn("procpool_reactor_lag_seconds", text)
        # A second scrape does not count the same round trips twice.
        yield procpool.run_async(s.add, 1)
        text = yield threads.deferToThread(_fetch, self.port)
        self.assertEqual(_value(text, "procpool_task_seconds_count"), 8)

    @defer.inlineCallbacks
    def test_the_endpoint_listens_on_loopback_only_and_closes_at_stop(self):
        listening = metrics._running.listening
        self.assertEqual(listening.getHost().host, "127.0.0.1")
        self.assertIn(listening, reactor.getReaders())
        yield procpool.stop()
        with self.assertRaises(urllib.error.URLError):
            yield threads.deferToThread(_fetch, self.port)


class Off(s.PoolTestCase):
    """PROCPOOL_METRICS_PORT unset (the default): nothing listens."""

    @defer.inlineCallbacks
    def test_nothing_listens_when_the_setting_is_unset(self):
        self.assertIsNone(metrics._running)
        yield procpool.run_async(s.add, 1)
        sites = [r for r in reactor.getReaders() if isinstance(getattr(r, "factory", None),
                                                               server.Site)]
        self.assertEqual(sites, [])
        listening = yield metrics.start_metrics(pool=procpool.get_pool)
        self.assertIsNone(listening)
        self.assertIsNone(metrics._running)


class Lag(unittest.TestCase):
    """The reactor lag is measured by a LoopingCall on the injected clock."""

    @defer.inlineCallbacks
    def test_reactor_lag_is_how_late_the_tick_ran_on_the_injected_clock(self):
        clock = task.Clock()
        listening = yield metrics.start_metrics(_free_port(), pool=procpool.get_pool,
                                                clock=clock)
        self.addCleanup(metrics.stop_metrics)
        exporter = metrics._running
        clock.advance(1.0)
        self.assertEqual(exporter.lag._value.get(), 0.0)
        clock.advance(3.5)   # the one-second tick ran 2.5 s late
        self.assertAlmostEqual(exporter.lag._value.get(), 2.5)
        self.assertIsNotNone(listening)

    def test_a_non_loopback_interface_is_refused(self):
        d = metrics.start_metrics(_free_port(), "0.0.0.0", pool=procpool.get_pool)
        self.failureResultOf(d, ValueError)
        self.assertIsNone(metrics._running)
