"""
One contract, two backends: the same tests against the local process pool and
against a real local Ray cluster (``PROCPOOL_BACKEND = "ray"``).

Each contract class runs twice: as itself (the local pool) and mixed with
:class:`tests.ray_support.OnRay`. The run_async tests of
tests/test_run_async.py (source strings, callables, callbacks) run on Ray
here too, unchanged. The cluster is started once for this module, on
127.0.0.1 only, and ended by its own processes afterwards.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from twisted.internet import defer, reactor, task

import procpool
from procpool import PayloadTooLarge, ProcPoolTimeout, WorkerCrashed
from tests import core_support as s
from tests import ray_support
from tests import test_run_async as run_async_tests

MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def _ray_cluster_for_this_module():
    yield
    ray_support.stop_cluster()


class Contract(s.PoolTestCase):
    """What run_async promises on any backend."""

    backend = "local"
    extra_settings = {"PROCPOOL_MAX_PAYLOAD": MiB}

    def test_stats_report_the_backend(self):
        self.assertEqual(procpool.stats()["backend"], self.backend)

    @defer.inlineCallbacks
    def test_the_task_runs_in_another_process(self):
        self.assertNotEqual((yield procpool.run_async(s.pid)), os.getpid())

    @defer.inlineCallbacks
    def test_a_remote_exception_is_rebuilt_as_its_type_with_the_remote_traceback(self):
        with self.assertRaises(KeyError) as caught:
            yield procpool.run_async(s.raise_keyerror)
        self.assertIn("raise_keyerror", caught.exception.remote_traceback)

    @defer.inlineCallbacks
    def test_the_time_limit_kills_the_process_running_the_task(self):
        path = self.mktemp()
        started = time.monotonic()
        with self.assertRaises(ProcPoolTimeout) as caught:
            yield procpool.run_async(s.sleep_after_writing_pid, path, 60, proc_timeout=1)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("1 s", str(caught.exception))
        ran_in = s.pid_in(path)
        self.assertIsNotNone(ran_in)
        gone = yield s.wait_until(lambda: not s.alive(ran_in), 10)
        self.assertTrue(gone, f"process {ran_in} outlived its task's time limit")
        self.assertEqual(procpool.stats()["tasks_timed_out"], 1)

    @defer.inlineCallbacks
    def test_cancelling_the_deferred_kills_the_process_running_the_task(self):
        path = self.mktemp()
        d = procpool.run_async(s.sleep_after_writing_pid, path, 60)
        yield s.wait_until(lambda: s.pid_in(path) is not None, 30)
        ran_in = s.pid_in(path)
        self.assertIsNotNone(ran_in, "the task never started")
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d
        gone = yield s.wait_until(lambda: not s.alive(ran_in), 10)
        self.assertTrue(gone, f"process {ran_in} outlived the cancel")
        self.assertEqual(procpool.stats()["tasks_cancelled"], 1)

    @defer.inlineCallbacks
    def test_a_task_whose_worker_dies_fails_alone(self):
        others = [procpool.run_async(s.add, i, 1) for i in range(5)]
        with self.assertRaises(WorkerCrashed):
            yield procpool.run_async(s.exit_now, 3)
        self.assertEqual((yield defer.gatherResults(others)), [1, 2, 3, 4, 5])
        self.assertEqual((yield procpool.run_async(s.add, 2, 2)), 4)
        self.assertEqual(procpool.stats()["tasks_crashed"], 1)

    def test_an_argument_over_the_payload_cap_is_refused_at_once(self):
        with self.assertRaises(PayloadTooLarge) as caught:
            procpool.run_async(s.echo, b"x" * (2 * MiB))
        self.assertEqual(caught.exception.cap, MiB)

    @defer.inlineCallbacks
    def test_arguments_small_and_big_come_back_whole(self):
        # On Ray a payload of 64 KiB or more travels as an argument of its own.
        for size in (10, 64 * 1024 - 100, 64 * 1024, MiB // 2):
            data = os.urandom(size)
            self.assertEqual((yield procpool.run_async(s.echo, data)), data)
        with self.assertRaises(ValueError) as caught:
            yield procpool.run_async(s.raise_long_message, 200_000)
        self.assertEqual(len(str(caught.exception)), 200_000)

    @defer.inlineCallbacks
    def test_a_result_over_the_payload_cap_fails_with_payload_too_large(self):
        with self.assertRaises(PayloadTooLarge) as caught:
            yield procpool.run_async(s.sized, 2 * MiB)
        self.assertEqual(caught.exception.cap, MiB)
        self.assertEqual(len((yield procpool.run_async(s.sized, MiB // 2))), MiB // 2)

    @defer.inlineCallbacks
    def test_use_thread_stays_in_this_process(self):
        self.assertEqual((yield procpool.run_async(s.pid, use_thread=True)), os.getpid())

    @defer.inlineCallbacks
    def test_a_sandboxed_run_stays_on_this_machine_and_answers(self):
        yield procpool.run_async(s.add, 1, 1)  # the pool is running
        self.assertEqual((yield procpool.run_async("_return(6 * 7)", sandbox=True)), 42)
        self.assertEqual(procpool.stats()["tasks_done"], 1)  # not the pool's (nor Ray's) task


class ContractOnRay(ray_support.OnRay, Contract):
    """The contract, on a real local Ray cluster."""

    @defer.inlineCallbacks
    def test_the_operators_stats_name_the_cluster_and_count_its_cpus(self):
        from procpool.demo.commands import stats_lines
        yield procpool.run_async(s.add, 1, 1)
        figures = procpool.stats()
        self.assertEqual(figures["workers"], 2)  # the tests' cluster has 2 CPUs
        self.assertEqual(figures["tasks_done"], 1)
        lines = stats_lines(figures)
        self.assertEqual(lines[0], f"Pool figures (running, ray backend at "
                                   f"{ray_support.cluster().address}):")
        self.assertIn("done 1,", lines[3])

    @defer.inlineCallbacks
    def test_a_second_cluster_address_in_one_process_is_refused_with_a_setting_error(self):
        from procpool import SettingError, WorkerStartError
        yield procpool.stop()
        procpool.configure(PROCPOOL_RAY_ADDRESS="127.0.0.1:1")
        with self.assertRaises(SettingError) as caught:
            yield procpool.start()
        self.assertIn("one cluster per process", str(caught.exception))
        with self.assertRaises(WorkerStartError) as failed:
            yield procpool.run_async(s.add, 1, 1)
        self.assertIn("127.0.0.1:1", str(failed.exception))

    def test_at_progress_is_refused_at_once_on_ray(self):
        with self.assertRaises(TypeError) as caught:
            procpool.run_async(s.add, 1, at_progress=print)
        self.assertIn("Ray", str(caught.exception))

    def test_every_endpoint_of_the_cluster_and_this_driver_is_on_loopback(self):
        listening = ray_support.cluster().listening()
        self.assertTrue(listening, "found no listening socket of the cluster")
        outward = [(address, pid) for address, pid in listening
                   if not address.startswith(("127.", "[::ffff:127.", "[::1]"))]
        self.assertEqual(outward, [])

    @defer.inlineCallbacks
    def test_results_reach_the_reactor_with_little_lag_while_1000_tasks_are_in_flight(self):
        lags: list[float] = []
        last = [time.perf_counter()]

        def beat() -> None:
            now = time.perf_counter()
            lags.append(now - last[0] - 0.005)
            last[0] = now

        # Steady state first: earlier tests force-cancelled Ray workers, and Ray
        # starting their successors (a second of CPU each) is not procpool's lag.
        yield defer.gatherResults([procpool.run_async(s.sleep, 0.005) for _ in range(200)])
        pending = [procpool.run_async(s.sleep, 0.005) for _ in range(1000)]
        self.assertGreaterEqual(procpool.stats()["in_flight"], 900)
        heartbeat = task.LoopingCall(beat)
        last[0] = time.perf_counter()
        heartbeat.start(0.005, now=False)
        results = yield defer.gatherResults(pending)
        heartbeat.stop()
        self.assertEqual(len(results), 1000)
        lags.sort()
        p99 = lags[int(0.99 * (len(lags) - 1))]
        self.assertGreater(len(lags), 50)
        # The goal is 5 ms; on a 2-core machine shared with Ray's own processes the
        # p99 measured 3.2-22 ms from run to run (GIL hand-offs, Ray's CPU, gen-2
        # collections); a reactor that waited on Ray would lag by whole tasks' lengths.
        self.assertLess(p99, 0.025, f"reactor lag p99 {p99 * 1000:.1f} ms")

    def test_the_objects_alive_at_the_start_are_out_of_the_collectors_full_passes(self):
        # Ray's modules made a full collection hold the GIL 52-98 ms here.
        from procpool import _ray_link
        self.assertTrue(_ray_link._link.frozen)  # procpool froze it, nobody else
        self.assertGreater(gc.get_freeze_count(), 50_000)
        started = time.perf_counter()
        gc.collect()
        self.assertLess(time.perf_counter() - started, 0.025)

    @defer.inlineCallbacks
    def test_the_reactor_thread_never_calls_into_ray(self):
        import ray
        calls: list[str] = []
        real = ray.cancel

        def watched(*args, **kwargs):
            calls.append(threading.current_thread().name)
            return real(*args, **kwargs)

        ray.cancel = watched
        self.addCleanup(setattr, ray, "cancel", real)
        with self.assertRaises(ProcPoolTimeout):
            yield procpool.run_async(s.sleep, 30, proc_timeout=0.5)
        yield s.wait_until(lambda: calls, 5)
        self.assertEqual(calls, ["procpool-ray"])


    @defer.inlineCallbacks
    def test_a_lone_small_task_is_handed_to_ray_here_a_bursts_others_by_the_link(self):
        from procpool import _ray_link
        link, here = _ray_link._link, threading.current_thread().name  # the reactor's
        real, threads = link.remote, []

        class Watched:
            def remote(self, *args):
                threads.append(threading.current_thread().name)
                return real.remote(*args)

        link.remote = Watched()
        self.addCleanup(setattr, link, "remote", real)
        self.assertEqual((yield procpool.run_async(s.add, 1, 2)), 3)
        self.assertEqual(threads, [here])
        yield procpool.run_async(s.echo, b"x" * 100_000)  # put in Ray's object store: not here
        yield defer.gatherResults([procpool.run_async(s.add, i, 1) for i in range(50)])
        self.assertEqual(len(threads), 52)
        self.assertEqual(threads[1], "procpool-ray")
        self.assertLessEqual(threads[2:].count(here), 1, threads)  # the burst's first, at most

    @defer.inlineCallbacks
    def test_a_lone_task_is_not_held_behind_cancelled_ones_waiting_to_be_sent(self):
        from procpool import _ray_link
        yield procpool.run_async(s.add, 0, 0)  # started; nothing in flight
        _ray_link._link.call(time.sleep, 3)  # the link's thread is busy meanwhile
        burst = [procpool.run_async(s.add, i, 0) for i in range(5)]
        for d in burst:
            d.cancel()  # the first was sent from here; the others wait in the outbox
        for d in burst:
            with self.assertRaises(defer.CancelledError):
                yield d
        self.assertEqual(len(self.pool._outbox), 4)
        t = time.monotonic()
        self.assertEqual((yield procpool.run_async(s.add, 2, 3)), 5)
        self.assertLess(time.monotonic() - t, 1.5)  # sent from here, not after the 3 s

    @defer.inlineCallbacks
    def test_ends_that_come_fast_are_settled_together_and_no_timer_stays_after(self):
        settled: list[float] = []
        drains: list[float] = []
        drain = self.pool._drain

        def counted(*args):
            drains.append(time.perf_counter())
            return drain(*args)

        self.pool._drain = counted  # every turn: a wake from Ray's thread or a lingered one
        self.addCleanup(vars(self.pool).pop, "_drain", None)
        results = yield defer.gatherResults([
            procpool.run_async(s.add, i, 0).addCallback(
                lambda r: settled.append(time.perf_counter()) or r) for i in range(300)])
        self.assertEqual(results, list(range(300)))
        span = settled[-1] - settled[0]
        turns = [t for t in drains if settled[0] - 0.001 <= t <= settled[-1]]
        # One turn every 5 ms while ends come (a lingered turn that settled some lingers
        # again), not a lingered turn and a wake from Ray's thread after it.
        self.assertLess(len(turns), 1.2 * span / 0.005 + 3, (len(turns), span))
        # The reactor's turns that settled ends: they come about a millisecond apart
        # here, so without lingering the turns would be as close; with it, 5 ms apart.
        starts = [b for a, b in zip(settled, settled[1:], strict=False) if b - a > 0.0005]
        gaps = sorted(b - a for a, b in zip(starts, starts[1:], strict=False))
        self.assertGreater(len(gaps), 5)
        self.assertGreater(gaps[len(gaps) // 2], 0.004, gaps)
        idle = yield s.wait_until(lambda: self.pool._linger is None and not self.pool._draining, 1)
        self.assertTrue(idle, "the reactor still comes back for ends after the burst")
        for i in range(20):  # one at a time, quickly: each end is settled at once, not held
            self.assertEqual((yield procpool.run_async(s.add, i, 2)), i + 2)
            yield task.deferLater(reactor, 0, lambda: None)  # the turn that settled it is over
            self.assertIsNone(self.pool._linger)


class SourceStringsOnRay(ray_support.OnRay, run_async_tests.SourceStrings):
    """tests/test_run_async.py's source string tests, on Ray."""


class CallablesOnRay(ray_support.OnRay, run_async_tests.Callables):
    """tests/test_run_async.py's callable tests, on Ray."""


class CallbacksOnRay(ray_support.OnRay, run_async_tests.Callbacks):
    """tests/test_run_async.py's callback tests, on Ray."""


def test_ray_is_not_imported_unless_chosen():
    script = textwrap.dedent("""
        import sys
        from twisted.internet import reactor
        import procpool
        def go():
            d = procpool.run_async(pow, 2, 5)
            d.addCallback(lambda r: print(r, "ray" in sys.modules))
            d.addBoth(lambda _: procpool.stop()).addBoth(lambda _: reactor.stop())
        reactor.callWhenRunning(go)
        reactor.run()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["32", "False"], out.stderr[-2000:]


def test_an_unreachable_cluster_fails_the_start_and_the_tasks_with_the_address():
    # In a process of its own: Ray keeps trying the address in the link's thread
    # after procpool has given up, and a process has one Ray connection.
    if ray_support.ray_command() is None:
        pytest.skip("Ray is not installed")
    port = ray_support._free_ports(1)[0]
    script = textwrap.dedent(f"""
        import time
        from twisted.internet import reactor
        import procpool
        procpool.configure(PROCPOOL_BACKEND="ray", PROCPOOL_RAY_ADDRESS="127.0.0.1:{port}",
                           PROCPOOL_START_TIMEOUT=3)
        began = time.monotonic()
        def said(failure, who):
            print(who, type(failure.value).__name__, round(time.monotonic() - began, 1),
                  "127.0.0.1:{port}" in str(failure.value))
        def later():
            procpool.run_async(pow, 2, 6).addErrback(said, "later")
            reactor.stop()
        def go():
            started = procpool.start()
            started.addErrback(said, "start")
            task = procpool.run_async(pow, 2, 5)
            task.addErrback(said, "task")
            task.addBoth(lambda _: reactor.callLater(0, later))
        reactor.callWhenRunning(go)
        reactor.run()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **ray_support.LOOPBACK_ENV})
    lines = [line.split() for line in out.stdout.splitlines()]
    # The start and the waiting task fail at the start timeout; a later task at once.
    assert [line[:2] for line in lines] == [["start", "WorkerStartError"],
                                            ["task", "WorkerStartError"],
                                            ["later", "WorkerStartError"]], out.stderr[-3000:]
    assert all(2.5 <= float(line[2]) < 6 and line[3] == "True" for line in lines), lines


def test_a_game_reaches_the_cluster_through_ray_client():
    # PROCPOOL_RAY_ADDRESS="ray://host:port": in a process of its own (one Ray
    # connection a process). A builtin and a source string: nothing of the tests'
    # own modules needs to be importable on the cluster. With PROCPOOL_RAY_GC_FREEZE
    # false, the garbage collector is left as it was. The first task waits
    # for the client server's own process and a Ray worker to start: on a
    # loaded 2-core machine, 30 s (the default start timeout) was not always
    # enough (2 runs in 7).
    address = ray_support.cluster().client_address
    script = textwrap.dedent(f"""
        import os
        from twisted.internet import defer, reactor
        import procpool
        procpool.configure(PROCPOOL_BACKEND="ray", PROCPOOL_RAY_ADDRESS="{address}",
                           PROCPOOL_RAY_GC_FREEZE=False, PROCPOOL_START_TIMEOUT=120)
        @defer.inlineCallbacks
        def go():
            import gc
            print("power", (yield procpool.run_async(pow, 2, 5)))
            print("frozen", gc.get_freeze_count())
            print("source", (yield procpool.run_async("_return(x * 2)", x=21)))
            print("other", (yield procpool.run_async(os.getpid)) != os.getpid())
            try:
                yield procpool.run_async("import time; time.sleep(30)", proc_timeout=1)
            except procpool.ProcPoolTimeout:
                print("timeout", "ProcPoolTimeout")
            print("backend", procpool.stats()["backend"], procpool.stats()["address"])
            yield procpool.stop()
        reactor.callWhenRunning(lambda: go().addErrback(lambda f: print(f.getTraceback()))
                                .addBoth(lambda _: reactor.stop()))
        reactor.run()
    """)
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=180, env={**os.environ, **ray_support.LOOPBACK_ENV})
        # Ray's own proxy at times fails to start the client's server process (it
        # died at once, seen with pids near the machine's pid_max; plain
        # ray.init("ray://...") failed the same way): one more try, then fail.
        if "Starting Ray client server failed" not in out.stdout + out.stderr:
            break
    said = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert said.get("power") == "32", out.stdout[-2000:] + out.stderr[-3000:]
    assert said.get("source") == "42"
    assert said.get("frozen") == "0"
    assert said.get("other") == "True"
    assert said.get("timeout") == "ProcPoolTimeout"
    assert said.get("backend") == f"ray {address}"
