"""
A Prometheus endpoint for the pool, on loopback, served in the reactor.

Off unless ``PROCPOOL_METRICS_PORT`` is set (``procpool.start()`` then calls
:func:`start_metrics`); needs the ``metrics`` extra (``prometheus_client``).
A scrape renders a private ``CollectorRegistry`` with ``generate_latest`` in
the reactor thread: no thread per scrape. The names, and what each one
measures, are in docs/operations.md::

    procpool.configure(PROCPOOL_METRICS_PORT=9464)
    procpool.start()      # GET http://127.0.0.1:9464/metrics

The hot path pays nothing: counters and gauges are read from the pool's
figures at scrape time; task seconds come from the round trips the pool
already keeps (its latency window), taken once a second and at each scrape.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import resource, server

from procpool import _services, settings
from procpool.pool import ProcessPool

__all__ = ["start_metrics", "stop_metrics"]

log = Logger()

_TICK = 1.0  # seconds between reactor-lag measurements (and latency draining)
_OUTCOMES = (("done", "tasks_done"), ("failed", "tasks_failed"),
             ("timed_out", "tasks_timed_out"), ("crashed", "tasks_crashed"),
             ("cancelled", "tasks_cancelled"), ("rejected", "tasks_rejected"))
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0)
_running: _Exporter | None = None


class _Exporter:
    """The registry, the once-a-second tick and the pool it reports."""

    def __init__(self, pool: Callable[[], ProcessPool], clock: Any) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram
        self.pool, self.clock = pool, clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.task_seconds = Histogram(
            "procpool_task_seconds", "Seconds from submit to answer of each answered task.",
            buckets=_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram(
            "procpool_queue_wait_seconds", "Seconds tasks waited for a worker (sampled once a "
            "second from the tasks running then; see docs/operations.md).",
            buckets=_BUCKETS, registry=self.registry)
        self.lag = Gauge("procpool_reactor_lag_seconds",
                         "How late the reactor ran the last one-second tick.",
                         registry=self.registry)
        self.registry.register(_Figures(self))
        self._seen: tuple[int, int] = (0, 0)   # (id of the pool, tasks answered) drained so far
        self._wait_mark = time.perf_counter()
        self._last = clock.seconds()
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = clock

    def tick(self) -> None:
        """Measure the reactor's lag on the clock; take the new round trips."""
        now = self.clock.seconds()
        self.lag.set(max(0.0, now - self._last - _TICK))
        self._last = now
        self.drain()

    def drain(self) -> None:
        """Observe the round trips answered since the last drain, and the new queue waits."""
        pool = self.pool()
        answered = pool.counters["tasks_done"] + pool.counters["tasks_failed"]
        seen_pool, seen = self._seen
        new = answered - seen if seen_pool == id(pool) else answered
        self._seen = (id(pool), answered)
        window = pool._latencies
        for seconds in islice(reversed(window), min(max(new, 0), len(window))):
            self.task_seconds.observe(seconds)
        mark, self._wait_mark = self._wait_mark, time.perf_counter()
        for worker in pool._workers:
            for running in worker.inflight:
                if running.sent > mark:
                    self.queue_wait.observe(max(0.0, running.sent - running.submitted))


class _Figures:
    """A collector read at scrape time: task outcomes, workers by state, queue depth."""

    def __init__(self, exporter: _Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        """The pool's figures as Prometheus metric families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        figures = self.exporter.pool().stats()
        tasks = CounterMetricFamily("procpool_tasks", "Tasks ended, by outcome.",
                                    labels=["outcome"])
        for outcome, key in _OUTCOMES:
            tasks.add_metric([outcome], figures[key])
        yield tasks
        workers = GaugeMetricFamily("procpool_workers", "Worker processes, by state.",
                                    labels=["state"])
        for state in ("busy", "idle", "starting"):
            workers.add_metric([state], figures[state])
        yield workers
        yield GaugeMetricFamily("procpool_queue_depth", "Tasks waiting for a worker.",
                                value=figures["queued"])


class _Page(resource.Resource):
    """``/metrics`` (and every other path): the registry in the text format."""

    isLeaf = True

    def __init__(self, exporter: _Exporter) -> None:
        super().__init__()
        self.exporter = exporter

    def render_GET(self, request: Any) -> bytes:
        """Render in the reactor thread; small enough not to need a thread."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        self.exporter.drain()
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.exporter.registry)


def start_metrics(port: int | None = None, interface: str = "127.0.0.1", *,
                  pool: Callable[[], ProcessPool] | None = None, reactor: Any = None,
                  clock: Any = None) -> defer.Deferred:
    """
    Serve the metrics on ``interface:port`` (a loopback address only). ``port``
    defaults to ``PROCPOOL_METRICS_PORT``; None or 0 there means off and the
    Deferred fires with None. Otherwise it fires with the listening port
    (``.getHost().port`` is the one bound; ``procpool.stop()`` closes it).
    ``pool`` gives the pool to report (``procpool.start()`` passes
    ``procpool.get_pool``)::

        procpool.metrics.start_metrics(9464, pool=procpool.get_pool)
    """
    global _running
    if port is None:
        port = settings.get("PROCPOOL_METRICS_PORT")
    if not port:
        return defer.succeed(None)
    if not ipaddress.ip_address(interface).is_loopback:
        return defer.fail(ValueError(f"the metrics are served on loopback only, not {interface}"))
    if reactor is None:
        from twisted.internet import reactor
    if pool is None:
        return defer.fail(TypeError("start_metrics needs pool= (procpool.start() passes "
                                    "procpool.get_pool)"))
    stop_metrics()
    exporter = _Exporter(pool, clock if clock is not None else reactor)
    try:
        exporter.listening = reactor.listenTCP(port, server.Site(_Page(exporter)),
                                               interface=interface)
    except Exception as exc:
        return defer.fail(exc)
    exporter.loop.start(_TICK, now=False)
    _running = exporter
    _services.register_stop("metrics", stop_metrics)
    log.info("procpool metrics on http://{interface}:{port}/metrics", interface=interface,
             port=exporter.listening.getHost().port)
    return defer.succeed(exporter.listening)


def stop_metrics() -> defer.Deferred:
    """Close the metrics port and stop its tick; fires when the port is closed."""
    global _running
    exporter, _running = _running, None
    if exporter is None:
        return defer.succeed(None)
    if exporter.loop.running:
        exporter.loop.stop()
    return defer.maybeDeferred(exporter.listening.stopListening)
