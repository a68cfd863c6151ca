"""
Sandbox figures, run by hand: ``.venv/bin/python bench/sandbox_bench.py``.

Prints the round trip p50/p99 of one sandboxed run with warm children, the
sustained runs per second with 2 runs at a time per core, and the reactor's
lag p99 while 50 sandboxed requests run at once.
"""

from __future__ import annotations

import os
import statistics
import time

from twisted.internet import defer, reactor, task

from sandbox.host import SandboxPool


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


@defer.inlineCallbacks
def main() -> defer.Deferred[None]:
    cores = os.cpu_count() or 1
    pool = SandboxPool(warm=4, max_runs=2 * cores)
    pool.start()
    yield task.deferLater(reactor, 1.0, lambda: None)

    # Round trip, one at a time, with a warm child waiting each time.
    trips = []
    for _ in range(200):
        start = time.perf_counter()
        yield pool.run("_return(1 + 2)")
        trips.append((time.perf_counter() - start) * 1000)
        yield task.deferLater(reactor, 0.03, lambda: None)  # let the spare start
    print(f"round trip (warm): p50 {statistics.median(trips):.1f} ms, "
          f"p99 {_pct(trips, 0.99):.1f} ms")

    # Sustained throughput.
    n = 400
    start = time.perf_counter()
    yield defer.gatherResults([pool.run("_return(sum(range(100)))") for _ in range(n)])
    elapsed = time.perf_counter() - start
    print(f"sustained: {n / elapsed:.0f} runs/s on {cores} cores ({n} runs, {elapsed:.1f} s)")

    # Reactor lag while 50 requests are in flight.
    lags: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        lags.append((now - last[0] - 0.005) * 1000)
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.start(0.005)
    yield defer.DeferredList([pool.run("_return(sum(range(10000)))", caller=i)
                              for i in range(50)], consumeErrors=True)
    ticker.stop()
    print(f"reactor lag with 50 concurrent: p99 {_pct(lags, 0.99):.1f} ms, "
          f"max {max(lags):.1f} ms")
    yield pool.stop()


if __name__ == "__main__":
    def run() -> None:
        main().addErrback(lambda f: f.printTraceback()).addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(run)
    reactor.run()
