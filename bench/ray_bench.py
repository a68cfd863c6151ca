"""
The Ray backend beside the local pool and plain Ray, run by hand (not by CI).

Starts one local Ray cluster on 127.0.0.1 (2 CPUs; ended by its own
processes afterwards), then runs each system in a fresh interpreter, the
repetitions interleaved, and prints medians:

- ``procpool``: the local process pool (2 workers) through ``run_async``;
- ``procpool-ray``: ``run_async`` with ``PROCPOOL_BACKEND = "ray"`` on the cluster;
- ``ray``: plain Ray, ``ray.get(f.remote(x))`` (``max_retries=0``, ``num_cpus=1``, as
  procpool's backend asks).

Figures: start (connect or start, to the first result), round trip p50/p99
in microseconds, 20,000 no-ops per second, a 1 MiB echo in MiB per second.

Ray's own figures on a 2-core machine drift by 30% and more between fresh
runs, more than the overhead to be measured; so the overhead is measured
paired as well (``pair``): in one process, one Ray connection, the backend's
``run_async`` and three ways of plain Ray alternate, block by block, each
contender's place in the order turning from block to block (12 blocks of
round trips, 6 of 10,000-task bursts and of 1 MiB echoes): ``ray.get``,
Ray's asyncio (``await ref``) and bare completion callbacks
(``ObjectRef._on_completed``), the last two being the ways to learn of a
result without blocking a thread on it. The goal is the backend's overhead
over plain Ray under 10% on round trip and throughput::

    python bench/ray_bench.py [--repeat 3] [--systems procpool,procpool-ray,ray,pair]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)

ROUND_TRIPS = 1000
BURST = 20_000
ECHOES = 30
MiB = 1024 * 1024
COLUMNS = [("start_ms", "start ms"), ("rt_p50_us", "p50 us"), ("rt_p99_us", "p99 us"),
           ("burst_per_s", "20k tasks/s"), ("echo_mib_s", "1 MiB echo MiB/s")]


def bench_procpool_ray(address: str) -> dict:
    """run_async on the Ray backend."""
    from run import _twisted_bench
    from tasks import echo, noop

    import procpool

    procpool.configure(PROCPOOL_BACKEND="ray", PROCPOOL_RAY_ADDRESS=address)
    return _twisted_bench(lambda: procpool.start(), lambda _, i: procpool.run_async(noop, i),
                          lambda _, data: procpool.run_async(echo, data),
                          lambda _: procpool.stop())


def bench_plain_ray(address: str) -> dict:
    """Plain Ray: ray.get(f.remote(x)), one at a time, then all at once."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on loopback
    import ray
    from run import _percentiles
    from tasks import echo, noop

    out: dict = {}
    t0 = time.perf_counter()
    ray.init(address=address, include_dashboard=False)
    remote_noop = ray.remote(max_retries=0, num_cpus=1)(noop)
    remote_echo = ray.remote(max_retries=0, num_cpus=1)(echo)
    ray.get(remote_noop.remote(0))
    out["start_ms"] = (time.perf_counter() - t0) * 1000
    for i in range(200):
        ray.get(remote_noop.remote(i))
    samples = []
    for i in range(ROUND_TRIPS):
        t = time.perf_counter()
        ray.get(remote_noop.remote(i))
        samples.append(time.perf_counter() - t)
    out["rt_p50_us"], out["rt_p99_us"] = _percentiles(samples)
    t = time.perf_counter()
    ray.get([remote_noop.remote(i) for i in range(BURST)])
    out["burst_per_s"] = BURST / (time.perf_counter() - t)
    data = os.urandom(MiB)
    for _ in range(3):
        ray.get(remote_echo.remote(data))
    t = time.perf_counter()
    for _ in range(ECHOES):
        back = ray.get(remote_echo.remote(data))
    assert back == data
    out["echo_mib_s"] = ECHOES / (time.perf_counter() - t)
    ray.shutdown()
    return out


def bench_pair(address: str) -> dict:
    """
    The backend and three ways of plain Ray in one process, alternating block
    by block: ``ray.get`` (which blocks the reactor's thread while it waits,
    as a game cannot), Ray's asyncio (``await ref``, ``asyncio.gather``, on an
    event loop run in this thread for each block: Ray's own way to learn of
    results without blocking) and bare completion callbacks
    (``ObjectRef._on_completed``, under Ray's asyncio and procpool's backend
    alike; the caller waits on a ``threading.Event``): the floor of any
    driver told of each result as it comes.
    """
    import asyncio

    from run import _in_reactor, _percentiles
    from tasks import echo, noop
    from twisted.internet import defer

    import procpool

    procpool.configure(PROCPOOL_BACKEND="ray", PROCPOOL_RAY_ADDRESS=address)
    out: dict = {}
    loop = asyncio.new_event_loop()

    @defer.inlineCallbacks
    def run():
        yield procpool.start()
        import ray  # connected by the backend's thread; plain calls share the connection
        remote_noop = ray.remote(max_retries=0, num_cpus=1)(noop)
        remote_echo = ray.remote(max_retries=0, num_cpus=1)(echo)

        async def awaited(remote, args):
            samples = []
            for arg in args:
                t = time.perf_counter()
                back = await remote.remote(arg)
                samples.append(time.perf_counter() - t)
            return samples, back

        async def gathered():
            await asyncio.gather(*[remote_noop.remote(i) for i in range(BURST // 2)])

        def told(refs):
            """Wait, on a threading.Event, for every ref's completion callback: the last value."""
            done, left, last = threading.Event(), [len(refs)], [None]

            def arrived(value):
                last[0] = value
                left[0] -= 1  # one at a time: Ray's thread runs the callbacks
                if not left[0]:
                    done.set()

            for ref in refs:
                ref._on_completed(arrived)
            done.wait()
            return last[0]

        def in_turn(remote, args, who):
            """One block of one-at-a-time calls by ``who``: (each call's seconds, last result)."""
            if who == "aio":
                return loop.run_until_complete(awaited(remote, args))
            samples = []
            for arg in args:
                t = time.perf_counter()
                back = (ray.get(remote.remote(arg)) if who == "plain"
                        else told([remote.remote(arg)]))
                samples.append(time.perf_counter() - t)
            return samples, back

        rts: dict[str, list[float]] = {who: [] for who in WHO}
        for i in range(200):
            yield procpool.run_async(noop, i)
            ray.get(remote_noop.remote(i))
        in_turn(remote_noop, range(200), "aio")
        for block in range(12):
            for who in _rotated(block):
                if who == "ours":
                    for i in range(ROUND_TRIPS // 12):
                        t = time.perf_counter()
                        yield procpool.run_async(noop, i)
                        rts["ours"].append(time.perf_counter() - t)
                else:
                    rts[who] += in_turn(remote_noop, range(ROUND_TRIPS // 12), who)[0]
        bursts = dict.fromkeys(WHO, 0.0)
        echoes = dict.fromkeys(WHO, 0.0)
        data = os.urandom(MiB)
        for block in range(6):
            for who in _rotated(block):
                t = time.perf_counter()
                if who == "ours":
                    yield defer.gatherResults([procpool.run_async(noop, i)
                                               for i in range(BURST // 2)])
                elif who == "aio":
                    loop.run_until_complete(gathered())
                elif who == "told":
                    told([remote_noop.remote(i) for i in range(BURST // 2)])
                else:
                    ray.get([remote_noop.remote(i) for i in range(BURST // 2)])
                bursts[who] += time.perf_counter() - t
            for who in _rotated(block):
                t = time.perf_counter()
                if who == "ours":
                    for _ in range(ECHOES // 6):
                        back = yield procpool.run_async(echo, data)
                else:
                    back = in_turn(remote_echo, [data] * (ECHOES // 6), who)[1]
                assert back == data
                echoes[who] += time.perf_counter() - t
        for who, prefix in zip(WHO, ("", "ray_", "aio_", "told_"), strict=True):
            out[prefix + "rt_p50_us"], out[prefix + "rt_p99_us"] = _percentiles(rts[who])
            out[prefix + "burst_per_s"] = 6 * (BURST // 2) / bursts[who]
            out[prefix + "echo_mib_s"] = 6 * (ECHOES // 6) / echoes[who]
        yield procpool.stop()

    try:
        return _in_reactor(run, out)
    finally:
        loop.close()


WHO = ("ours", "plain", "aio", "told")  # the backend, ray.get, Ray's asyncio, bare callbacks


def _rotated(block: int) -> tuple[str, ...]:
    """The contenders' order in ``block``: each goes first, second and last in turn."""
    k = block % len(WHO)
    order = WHO[k:] + WHO[:k]
    return order if block % 2 == 0 else order[::-1]


def bench_local() -> dict:
    """The local pool, for comparison on the same machine."""
    from run import bench_procpool
    return bench_procpool()


SYSTEMS = {"procpool": lambda address: bench_local(), "procpool-ray": bench_procpool_ray,
           "ray": bench_plain_ray, "pair": bench_pair}
PAIRED = [("rt_p50_us", "round trip p50 us", -1), ("rt_p99_us", "round trip p99 us", -1),
          ("burst_per_s", "tasks/s, 10k bursts", 1), ("echo_mib_s", "1 MiB echo MiB/s", 1)]


def _one(name: str, address: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", name, "--address", address],
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(lines[-1])


def main() -> None:
    """Start the cluster, run the systems interleaved, print the table, end the cluster."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(SYSTEMS[args.one](args.address)))
        return
    from tests.ray_support import Cluster
    print("bench: starting a local Ray cluster on 127.0.0.1 ...", file=sys.stderr, flush=True)
    cluster = Cluster()
    try:
        names = [n for n in args.systems.split(",") if n]
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for i in range(args.repeat):
            for name in names:
                print(f"bench: {name} run {i + 1}/{args.repeat} ...", file=sys.stderr,
                      flush=True)
                runs[name].append(_one(name, cluster.address))
    finally:
        cluster.stop()
    results = {}
    for name, got in runs.items():
        good = [r for r in got if "error" not in r]
        if not good:
            print(f"{name}: failed\n{got[0]['error']}", file=sys.stderr)
            continue
        results[name] = {k: statistics.median(r[k] for r in good) for k in good[0]}
    pair = results.pop("pair", None)
    base = results.get("ray")
    print(f"\n2 CPUs, warm, medians of {args.repeat} interleaved fresh runs; "
          f"(x) = ratio to plain Ray\n")
    print(f"{'system':<14}" + "".join(f"{title:>22}" for _, title in COLUMNS))
    for name, row in results.items():
        if "start_ms" not in row:
            continue
        cells = []
        for key, _ in COLUMNS:
            ratio = f" ({row[key] / base[key]:.2f}x)" if base and base[key] else ""
            cells.append(f"{row[key]:>13,.0f}{ratio:>9}")
        print(f"{name:<14}" + "".join(cells))
    backend, plain = results.get("procpool-ray"), results.get("ray")
    if backend and plain:
        rt = 100 * (backend["rt_p50_us"] / plain["rt_p50_us"] - 1)
        tp = 100 * (1 - backend["burst_per_s"] / plain["burst_per_s"])
        print(f"\nthe backend's overhead over plain Ray, fresh runs: round trip p50 {rt:+.1f}%, "
              f"throughput {tp:+.1f}%")
    if pair:
        print(f"\npaired (one process, alternating blocks; medians of {args.repeat}); "
              f"procpool-ray's overhead over each of plain Ray's ways:\n")
        heads = [("ray_", "ray.get"), ("aio_", "Ray asyncio"), ("told_", "callbacks")]
        print(f"{'figure':<20}{'procpool-ray':>13}"
              + "".join(f"{name:>13}{'overhead':>9}" for _, name in heads))
        for key, title, sense in PAIRED:
            ours = pair[key]
            cells = ""
            for prefix, _ in heads:
                base = pair[prefix + key]
                overhead = 100 * (ours / base - 1) if sense < 0 else 100 * (1 - ours / base)
                cells += f"{base:>13,.0f}{overhead:>+8.1f}%"
            print(f"{title:<20}{ours:>13,.0f}{cells}")
        print("(overhead: extra time per round trip; throughput lost; goal under 10%)")

if __name__ == "__main__":
    main()
