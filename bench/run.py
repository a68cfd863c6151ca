"""
procpool side by side with its peers, run by hand (not by CI): ``make bench``.

Each system runs in a fresh interpreter, with 2 workers, warm:

- start: from creating the pool to the first result, each system's modules
  imported beforehand (a server imports them once, at boot);
- round trip: one no-op task at a time, p50 and p99 in microseconds;
- throughput: 20,000 no-op tasks submitted at once, tasks per second;
- echo: a 1 MiB bytes object there and back, MiB per second.

Then procpool's own goals: how late a 1 s ``proc_timeout`` fires, the
reactor's lag while every worker burns CPU, what recycling costs in
throughput (at the default of 10,000 tasks, and at ampoule's 500), the
reactor's worst gap while a 250 MiB result arrives, and what
the reactor watchdog costs: its own CPU, and the burst's throughput in off/on
pairs (``--watchdog-only`` runs that part alone).

Peers: plain ampoule (24.10, recycling off; its values are capped at 64 KiB,
so its echo sends 1 MiB as 16 calls), ``concurrent.futures.ProcessPoolExecutor``
(fork), pebble, ``multiprocessing.Pool`` (fork), billiard (Celery's fork of
it), loky (joblib's executor) and, for the round trip, Twisted's
``deferToThread`` (threads of this process: no crossing, no isolation). The
repetitions are interleaved, system after system, so that the machine's
drift hits each alike; ``--hold-core`` keeps one core busy with another
process meanwhile. The table gives each figure and its ratio to procpool's.

    python bench/run.py [--systems procpool,futures] [--repeat 3] [--hold-core]
    python bench/run.py --scaling [--systems ...] [--repeat 3] [--hold-core] [--plot FILE.png]
    python bench/run.py --watchdog-only [--watchdog-pairs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ROUND_TRIPS = 2000
BURST = 20_000
ECHOES = 60
MiB = 1024 * 1024
# Set by --scaling for each fresh interpreter: the pools' size, the echo's size,
# and which figures to take (start and the others always run their warm-up).
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
ECHO_BYTES = int(os.environ.get("BENCH_ECHO_BYTES", str(MiB)))
PARTS = set(os.environ.get("BENCH_PARTS", "rt,burst,echo").split(","))
SCALING_WORKERS = (1, 2, 4, 8)
SCALING_SIZES = (1024, 64 * 1024, MiB, 16 * MiB, 128 * MiB)


def _echoes() -> int:
    """How many echoes of ECHO_BYTES: about 60 MiB each way, at least 3, at most 2,000."""
    return max(3, min(2000, ECHOES * MiB // ECHO_BYTES))


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return (samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6)


def _in_reactor(run, out: dict) -> dict:
    """Run the Deferred-returning ``run`` under the reactor; errors land in ``out``."""
    from twisted.internet import reactor

    def go():
        d = run()
        d.addErrback(lambda f: out.setdefault("error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return out


def _twisted_bench(make_pool, call_noop, call_echo, stop) -> dict:
    from twisted.internet import defer

    out: dict = {}

    @defer.inlineCallbacks
    def run():
        t0 = time.perf_counter()
        pool = yield make_pool()
        yield call_noop(pool, 0)
        out["start_ms"] = (time.perf_counter() - t0) * 1000
        for i in range(200):
            yield call_noop(pool, i)
        if "rt" in PARTS:
            samples = []
            for i in range(ROUND_TRIPS):
                t = time.perf_counter()
                yield call_noop(pool, i)
                samples.append(time.perf_counter() - t)
            out["rt_p50_us"], out["rt_p99_us"] = _percentiles(samples)
        if "burst" in PARTS:
            t = time.perf_counter()
            yield defer.gatherResults([call_noop(pool, i) for i in range(BURST)])
            out["burst_per_s"] = BURST / (time.perf_counter() - t)
        if "echo" in PARTS:
            data = os.urandom(ECHO_BYTES)
            for _ in range(3):
                yield call_echo(pool, data)
            t = time.perf_counter()
            for _ in range(_echoes()):
                back = yield call_echo(pool, data)
            assert back == data
            out["echo_mib_s"] = _echoes() * ECHO_BYTES / MiB / (time.perf_counter() - t)
        yield stop(pool)

    return _in_reactor(run, out)


def bench_procpool() -> dict:
    """procpool's ProcessPool through run_async."""
    from tasks import echo, noop

    import procpool
    import procpool.api  # noqa: F401 - imported before the clock starts

    procpool.configure(PROCPOOL_MIN_NPROC=WORKERS, PROCPOOL_MAX_NPROC=WORKERS)

    def make_pool():
        return procpool.start()

    return _twisted_bench(make_pool, lambda _, i: procpool.run_async(noop, i),
                          lambda _, data: procpool.run_async(echo, data),
                          lambda _: procpool.stop())


def bench_ampoule() -> dict:
    """Plain ampoule 24.10 with recycling off."""
    from ampoule import pool as apool
    from ampoule.main import ProcessStarter
    from ampoule_child import BenchChild, Echo, Noop
    from twisted.internet import defer

    def make_pool():
        starter = ProcessStarter(env={"PYTHONPATH": HERE}, packages=())
        pool = apool.ProcessPool(BenchChild, min=WORKERS, max=WORKERS, recycleAfter=0,
                                 starter=starter)
        return pool.start().addCallback(lambda _: pool)

    def echo(pool, data):
        size = 60 * 1024
        calls = [pool.doWork(Echo, data=data[i:i + size]) for i in range(0, len(data), size)]
        return defer.gatherResults(calls).addCallback(
            lambda parts: b"".join(p["data"] for p in parts))

    return _twisted_bench(make_pool, lambda pool, i: pool.doWork(Noop, x=i), echo,
                          lambda pool: pool.stop())


def _futures_bench(make, submit) -> dict:
    from tasks import echo, noop

    out: dict = {}
    t0 = time.perf_counter()
    pool = make()
    submit(pool, noop, 0).result()
    out["start_ms"] = (time.perf_counter() - t0) * 1000
    for i in range(200):
        submit(pool, noop, i).result()
    if "rt" in PARTS:
        samples = []
        for i in range(ROUND_TRIPS):
            t = time.perf_counter()
            submit(pool, noop, i).result()
            samples.append(time.perf_counter() - t)
        out["rt_p50_us"], out["rt_p99_us"] = _percentiles(samples)
    if "burst" in PARTS:
        t = time.perf_counter()
        futures = [submit(pool, noop, i) for i in range(BURST)]
        for f in futures:
            f.result()
        out["burst_per_s"] = BURST / (time.perf_counter() - t)
    if "echo" in PARTS:
        data = os.urandom(ECHO_BYTES)
        for _ in range(3):
            submit(pool, echo, data).result()
        t = time.perf_counter()
        for _ in range(_echoes()):
            back = submit(pool, echo, data).result()
        assert back == data
        out["echo_mib_s"] = _echoes() * ECHO_BYTES / MiB / (time.perf_counter() - t)
    pool.shutdown() if hasattr(pool, "shutdown") else (pool.close(), pool.join())
    return out


def bench_futures() -> dict:
    """concurrent.futures.ProcessPoolExecutor (fork)."""
    from concurrent.futures import ProcessPoolExecutor
    return _futures_bench(lambda: ProcessPoolExecutor(max_workers=WORKERS),
                          lambda pool, fn, arg: pool.submit(fn, arg))


def bench_pebble() -> dict:
    """pebble.ProcessPool."""
    import pebble
    return _futures_bench(lambda: pebble.ProcessPool(max_workers=WORKERS),
                          lambda pool, fn, arg: pool.schedule(fn, args=(arg,)))


class _Waited:
    """An ``AsyncResult`` (multiprocessing, billiard) read like a Future."""

    __slots__ = ("pending",)

    def __init__(self, pending) -> None:
        self.pending = pending

    def result(self):
        return self.pending.get()


def bench_multiprocessing() -> dict:
    """multiprocessing.Pool (fork), apply_async."""
    import multiprocessing
    import multiprocessing.pool  # noqa: F401 - imported before the clock starts
    return _futures_bench(lambda: multiprocessing.get_context("fork").Pool(WORKERS),
                          lambda pool, fn, arg: _Waited(pool.apply_async(fn, (arg,))))


def bench_billiard() -> dict:
    """billiard.Pool (Celery's fork of multiprocessing), apply_async."""
    import billiard
    import billiard.pool  # noqa: F401 - imported before the clock starts
    return _futures_bench(lambda: billiard.Pool(WORKERS),
                          lambda pool, fn, arg: _Waited(pool.apply_async(fn, (arg,))))


def bench_loky() -> dict:
    """loky's reusable executor (joblib's process pool)."""
    import loky
    return _futures_bench(lambda: loky.get_reusable_executor(max_workers=WORKERS),
                          lambda pool, fn, arg: pool.submit(fn, arg))


def bench_threads() -> dict:
    """Twisted's deferToThread (2 threads, in this process: no crossing, no isolation)."""
    from tasks import echo, noop
    from twisted.internet import defer, reactor, threads

    def make_pool():
        reactor.suggestThreadPoolSize(WORKERS)
        return defer.succeed(None)

    return _twisted_bench(make_pool, lambda _, i: threads.deferToThread(noop, i),
                          lambda _, data: threads.deferToThread(echo, data),
                          lambda _: defer.succeed(None))


def bench_procpool_extras() -> dict:
    """procpool's own goals: timeout precision, recycling cost, reactor lag under CPU load."""
    from tasks import burn, noop, sleep
    from twisted.internet import defer, reactor, task

    import procpool
    from procpool.pool import ProcessPool

    out: dict = {}

    @defer.inlineCallbacks
    def run():
        procpool.configure(PROCPOOL_MIN_NPROC=2, PROCPOOL_MAX_NPROC=2)
        yield procpool.start()
        kills = []
        for _ in range(5):
            t = time.perf_counter()
            try:
                yield procpool.run_async(sleep, 10, proc_timeout=1)
            except procpool.ProcPoolTimeout:
                kills.append(time.perf_counter() - t)
            yield task.deferLater(reactor, 0.3, lambda: None)
        out["timeout_1s_fired_at_s"] = max(kills)
        lags, last = [], [time.perf_counter()]

        def tick():
            now = time.perf_counter()
            lags.append(now - last[0] - 0.005)
            last[0] = now

        ticker = task.LoopingCall(tick)
        ticker.start(0.005, now=False)
        yield defer.gatherResults([procpool.run_async(burn, 2.0) for _ in range(2)])
        ticker.stop()
        lags.sort()
        out["lag_p99_ms_while_burning"] = lags[int(len(lags) * 0.99)] * 1000
        yield procpool.stop()
        for recycle in (0, 10_000, 500):
            pool = ProcessPool(min_workers=2, max_workers=2, recycle=recycle)
            yield pool.start()
            yield defer.gatherResults([pool.submit_call(noop, i) for i in range(2000)])
            t = time.perf_counter()
            yield defer.gatherResults([pool.submit_call(noop, i) for i in range(BURST)])
            out[f"burst_recycle_{recycle}"] = BURST / (time.perf_counter() - t)
            yield pool.stop()
        yield _big_result_stall(out)
        base = out["burst_recycle_0"]
        out["recycling_cost_pct"] = 100 * (1 - out["burst_recycle_10000"] / base)
        out["recycling_500_cost_pct"] = 100 * (1 - out["burst_recycle_500"] / base)

    return _in_reactor(run, out)


BIG_RESULT = 250 * MiB


def _big_result_stall(out: dict):
    """The reactor's worst gap (a 1 ms ticker) while a 250 MiB result arrives, worst of 3."""
    from tasks import make_bytes
    from twisted.internet import defer, reactor, task

    from procpool.pool import ProcessPool

    @defer.inlineCallbacks
    def run():
        pool = ProcessPool(min_workers=1, max_workers=1)
        yield pool.start()
        yield pool.submit_call(make_bytes, MiB)
        worst = 0.0
        for _ in range(3):
            yield task.deferLater(reactor, 0.2, lambda: None)
            gaps, last = [0.0], [time.perf_counter()]

            def tick(gaps=gaps, last=last):
                now = time.perf_counter()
                gaps.append(now - last[0])
                last[0] = now

            ticker = task.LoopingCall(tick)
            ticker.start(0.001)
            result = yield pool.submit_call(make_bytes, BIG_RESULT)
            ticker.stop()
            assert len(result) == BIG_RESULT
            del result
            worst = max(worst, max(gaps))
        out["big_result_gap_ms"] = worst * 1000
        yield pool.stop()

    return run()


WATCHDOG_PAIRS = 10


def bench_watchdog(pairs: int = WATCHDOG_PAIRS) -> dict:
    """
    The reactor watchdog's cost (``PROCPOOL_WATCHDOG=0.25``), two ways.

    Directly: CPU seconds of the watchdog's thread (``time.thread_time()`` in
    it) and of the reactor-side heartbeat (each tick of its ``LoopingCall``,
    rescheduling included, timed), over the bursts' wall time, as % of one
    core. And in throughput: ``pairs`` pairs of the 20k no-op burst with the
    watchdog off and on, the order inside a pair alternated against drift;
    the cost is the median of the pairs' (1 - on/off), with its quartiles.
    """
    from tasks import noop
    from twisted.internet import defer, reactor
    from twisted.internet.task import LoopingCall

    from procpool.pool import ProcessPool
    from procpool.watchdog import Watchdog

    class TimedLoop(LoopingCall):
        reactor_s = 0.0
        ticks = 0

        def __call__(self) -> None:
            t = time.thread_time()
            super().__call__()
            TimedLoop.reactor_s += time.thread_time() - t
            TimedLoop.ticks += 1

    class TimedWatchdog(Watchdog):
        thread_s = 0.0

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._loop = TimedLoop(self._heartbeat)
            self._loop.clock = self.reactor

        def _watch(self) -> None:
            try:
                super()._watch()
            finally:
                TimedWatchdog.thread_s += time.thread_time()

    out: dict = {}

    @defer.inlineCallbacks
    def run():
        pool = ProcessPool(min_workers=2, max_workers=2, recycle=0)
        yield pool.start()
        yield defer.gatherResults([pool.submit_call(noop, i) for i in range(2000)])
        rates: dict[bool, list[float]] = {False: [], True: []}
        on_wall = 0.0
        for pair in range(pairs):
            for on in ((False, True) if pair % 2 == 0 else (True, False)):
                dog = TimedWatchdog(0.25, reactor)
                if on:
                    dog.start()
                    thread = dog._thread
                t = time.perf_counter()
                yield defer.gatherResults([pool.submit_call(noop, i) for i in range(BURST)])
                wall = time.perf_counter() - t
                rates[on].append(BURST / wall)
                if on:
                    on_wall += wall
                    dog.stop()
                    thread.join()
        yield pool.stop()
        costs = sorted(100 * (1 - on / off)
                       for on, off in zip(rates[True], rates[False], strict=True))
        quartiles = statistics.quantiles(costs, n=4)
        out.update(
            pairs=pairs, burst_off_per_s=statistics.median(rates[False]),
            burst_on_per_s=statistics.median(rates[True]),
            burst_off_range=[min(rates[False]), max(rates[False])],
            burst_on_range=[min(rates[True]), max(rates[True])],
            throughput_cost_pct=statistics.median(costs),
            throughput_cost_iqr_pct=[quartiles[0], quartiles[2]],
            throughput_cost_range_pct=[costs[0], costs[-1]],
            on_wall_s=on_wall, thread_cpu_s=TimedWatchdog.thread_s,
            heartbeat_cpu_s=TimedLoop.reactor_s, heartbeats=TimedLoop.ticks,
            thread_cpu_pct=100 * TimedWatchdog.thread_s / on_wall,
            heartbeat_cpu_pct=100 * TimedLoop.reactor_s / on_wall,
            cpu_cost_pct=100 * (TimedWatchdog.thread_s + TimedLoop.reactor_s) / on_wall)

    return _in_reactor(run, out)


def _print_watchdog(dog: dict) -> None:
    lo, hi = dog["throughput_cost_iqr_pct"]
    print(f"\nthe reactor watchdog (PROCPOOL_WATCHDOG=0.25) on the 20k no-op burst, "
          f"{dog['pairs']} off/on pairs: its own CPU {dog['cpu_cost_pct']:.3f}% of one core "
          f"(thread {dog['thread_cpu_s'] * 1000:.1f} ms + reactor heartbeat "
          f"{dog['heartbeat_cpu_s'] * 1000:.1f} ms in {dog['heartbeats']} ticks, over "
          f"{dog['on_wall_s']:.1f} s with it on); throughput off "
          f"{dog['burst_off_per_s']:,.0f}/s ({dog['burst_off_range'][0]:,.0f}-"
          f"{dog['burst_off_range'][1]:,.0f}), on {dog['burst_on_per_s']:,.0f}/s "
          f"({dog['burst_on_range'][0]:,.0f}-{dog['burst_on_range'][1]:,.0f}); cost per pair "
          f"median {dog['throughput_cost_pct']:+.1f}% (quartiles {lo:+.1f}% to {hi:+.1f}%, "
          f"range {dog['throughput_cost_range_pct'][0]:+.1f}% to "
          f"{dog['throughput_cost_range_pct'][1]:+.1f}%)")


SYSTEMS = {"procpool": bench_procpool, "ampoule": bench_ampoule,
           "futures": bench_futures, "pebble": bench_pebble,
           "multiprocessing": bench_multiprocessing, "billiard": bench_billiard,
           "loky": bench_loky, "threads": bench_threads}
COLUMNS = [("start_ms", "start ms", False), ("rt_p50_us", "rt p50 us", False),
           ("rt_p99_us", "rt p99 us", False), ("burst_per_s", "20k tasks/s", True),
           ("echo_mib_s", "1MiB echo MiB/s", True)]


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // 1024} KiB"


def _scaling(names: list[str], repeat: int, hold_core: bool, plot: str | None = None) -> None:
    """
    How cost grows: with the pools' size, and with the payload's (medians,
    interleaved); with ``plot``, drawn into that PNG too (bench/plot.py).
    """
    holder = _hold_a_core() if hold_core else None
    runs: dict[tuple[str, str, int], list[dict]] = {}
    cases = [("workers", n, f"with {n} workers",
              {"BENCH_WORKERS": str(n), "BENCH_PARTS": "rt,burst"}) for n in SCALING_WORKERS]
    cases += [("echo", n, f"echo of {_size(n)}",
               {"BENCH_ECHO_BYTES": str(n), "BENCH_PARTS": "echo"}) for n in SCALING_SIZES]
    try:
        for i in range(repeat):
            for kind, n, what, env in cases:
                for name in names:
                    print(f"bench: {name} {what}, run {i + 1}/{repeat} ...", file=sys.stderr,
                          flush=True)
                    runs.setdefault((name, kind, n), []).append(_one(name, env=env))
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()

    def value(name: str, kind: str, n: int, key: str) -> float | None:
        good = [r[key] for r in runs[(name, kind, n)] if key in r]
        return statistics.median(good) if good else None

    def median(name: str, kind: str, n: int, key: str) -> str:
        got = value(name, kind, n, key)
        return f"{got:,.0f}" if got is not None else "failed"

    held = "; one core held by a busy process" if hold_core else ""
    print(f"How cost grows, medians of {repeat} interleaved fresh runs{held}\n")
    print("round trip p50 us / 20k no-ops per second, by workers:")
    print(f"{'system':<16}" + "".join(f"{w:>10} w" + " " * 10 for w in SCALING_WORKERS))
    for name in names:
        print(f"{name:<16}" + "".join(
            f"{median(name, 'workers', w, 'rt_p50_us'):>9} / "
            f"{median(name, 'workers', w, 'burst_per_s'):<9}" for w in SCALING_WORKERS))
    print("\necho MiB/s, by payload (2 workers):")
    print(f"{'system':<16}" + "".join(f"{_size(n):>12}" for n in SCALING_SIZES))
    for name in names:
        print(f"{name:<16}" + "".join(f"{median(name, 'echo', n, 'echo_mib_s'):>12}"
                                       for n in SCALING_SIZES))
    if plot:
        import plot as drawing
        figures = {
            "workers": {name: {str(w): {key: value(name, "workers", w, key)
                                        for key in ("rt_p50_us", "burst_per_s")}
                               for w in SCALING_WORKERS} for name in names},
            "echo": {name: {str(n): value(name, "echo", n, "echo_mib_s")
                            for n in SCALING_SIZES} for name in names},
        }
        drawing.draw(figures, plot, f"{os.cpu_count()} cores, medians of {repeat} "
                                    f"interleaved fresh runs{held}")
        print(f"\nbench: drew {plot} (figures in {drawing.figures_path(plot)})")


def _hold_a_core() -> subprocess.Popen:
    """Another process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _one(name: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", name, *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])


def main() -> None:
    """Run every system ``--repeat`` times in fresh interpreters and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scaling", action="store_true",
                        help=f"instead of the table: round trip and throughput with "
                             f"{', '.join(map(str, SCALING_WORKERS))} workers, and echoes of "
                             f"1 KiB to 128 MiB (2 workers)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="with --scaling (implied): draw its figures into FILE.png "
                             "(needs matplotlib: the plot extra)")
    parser.add_argument("--hold-core", action="store_true",
                        help="keep one core busy with another process while the systems run "
                             "(how a game's machine often is)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip procpool's timeout, recycling, reactor-lag and watchdog "
                             "figures")
    parser.add_argument("--watchdog-only", action="store_true",
                        help="only the reactor watchdog's cost (no systems, no other extras)")
    parser.add_argument("--watchdog-pairs", type=int, default=WATCHDOG_PAIRS,
                        help=f"off/on pairs of the 20k burst for the watchdog's cost "
                             f"(default {WATCHDOG_PAIRS})")
    args = parser.parse_args()
    if args.one:
        if args.one == "watchdog":
            print(json.dumps(bench_watchdog(args.watchdog_pairs)))
            return
        runner = bench_procpool_extras if args.one == "extras" else SYSTEMS[args.one]
        print(json.dumps(runner()))
        return
    if args.watchdog_only:
        print("bench: procpool watchdog ...", file=sys.stderr, flush=True)
        dog = _one("watchdog", "--watchdog-pairs", str(args.watchdog_pairs))
        if "error" in dog:
            print(f"watchdog failed:\n{dog['error']}", file=sys.stderr)
            return
        _print_watchdog(dog)
        return
    names = [n for n in args.systems.split(",") if n]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    if args.plot:
        import importlib.util  # fail now, not after the runs, without matplotlib
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib: pip install 'procpool[plot]'")
    if args.scaling or args.plot:
        _scaling(names, args.repeat, args.hold_core, args.plot)
        return
    holder = _hold_a_core() if args.hold_core else None
    try:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for i in range(args.repeat):  # interleaved: drift of the machine hits every system
            for name in names:
                print(f"bench: {name} run {i + 1}/{args.repeat} ...", file=sys.stderr,
                      flush=True)
                runs[name].append(_one(name))
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    results: dict[str, dict] = {}
    for name, got in runs.items():
        good = [r for r in got if "error" not in r]
        if not good:
            print(f"{name}: failed\n{got[0]['error']}", file=sys.stderr)
            continue
        results[name] = {k: statistics.median(r[k] for r in good) for k, _, _ in COLUMNS}
    base = results.get("procpool")
    held = "; one core held by a busy process" if args.hold_core else ""
    print(f"2 workers, warm, medians of {args.repeat} interleaved fresh runs{held}; "
          f"(x) = ratio to procpool\n")
    print(f"{'system':<16}" + "".join(f"{title:>22}" for _, title, _ in COLUMNS))
    for name, row in results.items():
        cells = []
        for key, _, _ in COLUMNS:
            value = row[key]
            ratio = f" ({value / base[key]:.2f}x)" if base and base[key] else ""
            cells.append(f"{value:>13,.0f}{ratio:>9}")
        print(f"{name:<16}" + "".join(cells))
    if not args.no_extras:
        print("bench: procpool extras ...", file=sys.stderr, flush=True)
        extras = _one("extras")
        if "error" in extras:
            print(f"extras failed:\n{extras['error']}", file=sys.stderr)
            return
        print(f"\nprocpool alone: a 1 s proc_timeout fired after "
              f"{extras['timeout_1s_fired_at_s']:.3f} s (worst of 5); reactor lag p99 "
              f"{extras['lag_p99_ms_while_burning']:.1f} ms while both workers burn CPU; "
              f"20k no-ops {extras['burst_recycle_0']:,.0f}/s without recycling, "
              f"{extras['burst_recycle_10000']:,.0f}/s recycling every 10,000 tasks (the "
              f"default; cost {extras['recycling_cost_pct']:.0f}%), "
              f"{extras['burst_recycle_500']:,.0f}/s every 500 (ampoule's default; cost "
              f"{extras['recycling_500_cost_pct']:.0f}%: a Python start per 500 tiny tasks); "
              f"the reactor's worst gap (1 ms ticker) while a 250 MiB result arrives "
              f"{extras['big_result_gap_ms']:.1f} ms (worst of 3)")
        print("bench: procpool watchdog ...", file=sys.stderr, flush=True)
        dog = _one("watchdog", "--watchdog-pairs", str(args.watchdog_pairs))
        if "error" in dog:
            print(f"watchdog failed:\n{dog['error']}", file=sys.stderr)
            return
        _print_watchdog(dog)


if __name__ == "__main__":
    main()
