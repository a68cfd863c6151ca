"""
What starting and recycling workers cost, with the fork server and without
(PROCPOOL_FORK_SERVER), run by hand (not by CI).

Each run is a fresh interpreter that takes, for each recycling count (none,
10,000 and 500 tasks), a pool of 2 workers: 2,000 no-ops to warm it, then a
burst of 20,000 no-ops. The two modes alternate run by run and the table
gives medians:

- burst throughput at each count, and the cost against no recycling;
- the cost of one recycle in burst time (ms), from the 500 runs: (burst
  time at 500 - burst time without) / recycles; and what that implies at
  10,000 (the default), where a single run's cost is lost in the noise;
- start to first result of the first pool of each run.

    python bench/recycle_bench.py [--repeat 5]
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

BURST = 20_000
COUNTS = (0, 10_000, 500)
MODES = {"fork server": "1", "spawned": "0"}


def one_run() -> dict:
    """One fresh interpreter's figures (printed as JSON by ``--one``)."""
    from tasks import noop
    from twisted.internet import defer, reactor

    from procpool.pool import ProcessPool

    out: dict = {}

    @defer.inlineCallbacks
    def run():
        try:
            for count in COUNTS:
                began = time.perf_counter()
                pool = ProcessPool(min_workers=2, max_workers=2, recycle=count)
                yield pool.start()
                yield pool.submit_call(noop, 0)
                out.setdefault("start_ms", (time.perf_counter() - began) * 1000)
                yield defer.gatherResults([pool.submit_call(noop, i) for i in range(2000)])
                before = pool.counters["workers_recycled"]
                began = time.perf_counter()
                yield defer.gatherResults([pool.submit_call(noop, i) for i in range(BURST)])
                out[f"seconds_{count}"] = time.perf_counter() - began
                out[f"recycles_{count}"] = pool.counters["workers_recycled"] - before
                yield pool.stop()
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    return out


def _one(mode: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PROCPOOL_FORK_SERVER": MODES[mode]})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"bench: a {mode} run failed:\n{(proc.stderr or proc.stdout)[-2000:]}")
    return json.loads(lines[-1])


def _summary(runs: list[dict]) -> dict:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    base = med("seconds_0")
    per_recycle = statistics.median(
        (r["seconds_500"] - r["seconds_0"]) / r["recycles_500"] for r in runs if r["recycles_500"])
    # How many tasks a recycle takes at 500 (a successor takes over from four
    # fifths of the count), scaled to 10,000.
    tasks_per_recycle = statistics.median(BURST / r["recycles_500"] for r in runs
                                          if r["recycles_500"]) * 10_000 / 500
    return {
        "start_ms": med("start_ms"),
        **{f"rate_{c}": BURST / med(f"seconds_{c}") for c in COUNTS},
        **{f"cost_{c}_pct": 100 * (1 - base / med(f"seconds_{c}")) for c in COUNTS if c},
        "per_recycle_ms": per_recycle * 1000,
        "implied_10000_pct": 100 * per_recycle / (tasks_per_recycle * base / BURST),
    }


def main() -> None:
    """Alternate the two modes ``--repeat`` times in fresh interpreters; print medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run()))
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for i in range(args.repeat):
        for mode in MODES:
            print(f"bench: {mode} run {i + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
            runs[mode].append(_one(mode))
    print(f"2 workers, 20k no-op bursts, medians of {args.repeat} alternated fresh runs\n")
    print(f"{'workers':<13}{'start ms':>10}{'no recycling':>14}{'every 10,000':>20}"
          f"{'every 500':>20}{'one recycle':>13}{'implied at 10,000':>19}")
    for mode, got in runs.items():
        s = _summary(got)
        print(f"{mode:<13}{s['start_ms']:>10.0f}{s['rate_0']:>12,.0f}/s"
              f"{s['rate_10000']:>11,.0f}/s ({s['cost_10000_pct']:+.1f}%)"
              f"{s['rate_500']:>11,.0f}/s ({s['cost_500_pct']:+.0f}%)"
              f"{s['per_recycle_ms']:>10.1f} ms{s['implied_10000_pct']:>18.1f}%")


if __name__ == "__main__":
    main()
