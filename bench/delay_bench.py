"""
Persistent ``delay`` on each backend: adds per second, and reactor lag while adding.

Run by hand::

    .venv/bin/python bench/delay_bench.py                   # SQLite only
    PROCPOOL_TEST_DSN=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/delay_bench.py                # and PostgreSQL

For each backend it adds N persistent delays (default 1,000, an hour away)
in bursts of ten per reactor turn, as a busy server would, and measures:

* burst: adds per second until every row is committed (writes are batched);
* one by one: adds per second when each add waits for its own commit;
* reactor lag: a 5 ms LoopingCall samples how late the reactor runs it while
  the burst is added and stored; p50 / p99 / max in milliseconds.

PostgreSQL runs in a scratch schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402

from procpool.tasks import TaskHandler  # noqa: E402


def later(*args: object) -> None:
    """The stored callback (never runs during the bench)."""


class LagProbe:
    """How late a 5 ms LoopingCall runs: the reactor's responsiveness."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._last = 0.0
        self._loop = LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            self.samples.append(max(0.0, now - self._last - self.interval) * 1000)
        self._last = now

    def start(self) -> None:
        self._loop.start(self.interval)

    def stop(self) -> dict[str, float]:
        self._loop.stop()
        ordered = sorted(self.samples) or [0.0]
        return {"p50": statistics.median(ordered),
                "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                "max": ordered[-1]}


@defer.inlineCallbacks
def bench(name: str, database: str, count: int):
    handler = TaskHandler(storage=database)
    yield handler.start()
    try:
        probe = LagProbe()
        probe.start()
        yield deferLater(reactor, 0.1, lambda: None)
        began = time.perf_counter()
        for start in range(0, count, 10):
            for n in range(start, min(start + 10, count)):
                handler.add(3600, later, n, "payload", persistent=True)
            yield deferLater(reactor, 0, lambda: None)
        yield handler.flush()
        burst = time.perf_counter() - began
        lag = probe.stop()
        for task in list(handler.tasks.values()):
            handler.get(task.task_id).remove()
        yield handler.flush()

        one = min(200, count)
        began = time.perf_counter()
        for n in range(one):
            handler.add(3600, later, n, persistent=True)
            yield handler.flush()
        single = time.perf_counter() - began
        for task in list(handler.tasks.values()):
            handler.get(task.task_id).remove()
        yield handler.flush()
    finally:
        yield handler.stop()
    print(f"{name:10s} burst: {count / burst:8.0f} adds/s ({count} in {burst * 1000:.0f} ms)  "
          f"one by one: {one / single:6.0f} adds/s  "
          f"reactor lag p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, max {lag['max']:.2f} ms")


@defer.inlineCallbacks
def main(args: argparse.Namespace):
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield bench("sqlite", os.path.join(tmp, "bench.sqlite3"), args.count)
        dsn = args.dsn or os.environ.get("PROCPOOL_TEST_DSN")
        if dsn:
            import psycopg
            schema = f"procpool_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            try:
                sep = "&" if "?" in dsn else "?"
                yield bench("postgresql", f"{dsn}{sep}options="
                            f"{quote(f'-csearch_path={schema}')}", args.count)
            finally:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
        else:
            print("postgresql: skipped (set PROCPOOL_TEST_DSN or --dsn)")
    finally:
        reactor.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: PROCPOOL_TEST_DSN)")
    reactor.callWhenRunning(main, parser.parse_args())
    reactor.run()
