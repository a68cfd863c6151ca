"""
What docs/sandbox.md promises (the sandbox's acceptance list), with real confined children.

Every behaviour runs twice: with the child dropped to ``nobody`` (the
built-in root -> nobody drop; skipped when the tests do not run as root)
and as the host's own user (root stays root, confined; an ordinary user
stays that user).
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from procpool import settings
from procpool.errors import (
    PoolStopped,
    ProcPoolTimeout,
    SandboxBusy,
    SandboxError,
    SandboxUnavailable,
    SerializationError,
)
from sandbox.host import SandboxPool
from tests.sandbox_support import BREACHES, ESCAPES

_REFUSED_BY_OS = ("PermissionError", "OSError")
_NOT_AN_ATTACK = ("SyntaxError", "NameError", "ImportError", "ModuleNotFoundError",
                  "AttributeError")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class _Behaviour:
    """The acceptance list; mixed into one TestCase per user the child runs as."""

    USER = "root"
    GROUP = "root"
    EXPECTED_UID: int | None = None

    def setUp(self) -> Any:
        self.pools: list[SandboxPool] = []
        self.pool = self.make_pool(warm=2)
        self.addCleanup(self.stop_pools)

    def make_pool(self, **kwargs: Any) -> SandboxPool:
        kwargs.setdefault("user", self.USER)
        kwargs.setdefault("group", self.GROUP)
        kwargs.setdefault("warm", 1)
        kwargs.setdefault("max_runs", 8)
        kwargs.setdefault("per_caller", 4)
        pool = SandboxPool(**kwargs)
        pool.start()
        self.pools.append(pool)
        return pool

    def open_pool(self, **kwargs: Any) -> SandboxPool:
        """A pool with the language layer switched off: only the OS layer stands."""
        return self.make_pool(restricted=False, **kwargs)

    def stop_pools(self) -> defer.Deferred[Any]:
        return defer.gatherResults([p.stop() for p in self.pools])

    def error_of(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        def unexpected(result: Any) -> None:
            self.fail(f"expected a failure, got {result!r}")
        return d.addCallbacks(unexpected, lambda f: f.value)

    @defer.inlineCallbacks
    def wait_for(self, check: Any, within: float) -> Any:
        """Poll ``check`` in real time until it holds or ``within`` seconds have passed."""
        end = time.monotonic() + within
        while not check() and time.monotonic() < end:
            yield task.deferLater(reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def wait_idle(self, pool: SandboxPool, within: float = 10.0) -> Any:
        """Wait until no child runs (each ended and was reaped); fail after ``within``."""
        yield self.wait_for(lambda: not pool.stats()["running"], within)
        self.assertEqual(pool.stats()["running"], 0)

    @defer.inlineCallbacks
    def wait_warm(self, pool: SandboxPool, count: int = 1) -> Any:
        end = time.monotonic() + 10
        while len(pool.idle_pids()) < count and time.monotonic() < end:
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertGreaterEqual(len(pool.idle_pids()), count)

    # --- results and errors ------------------------------------------------------
    @defer.inlineCallbacks
    def test_return_gives_value(self) -> Any:
        self.assertEqual((yield self.pool.run("_return(1+2)")), 3)

    @defer.inlineCallbacks
    def test_return_rules_match_ordinary_source_strings(self) -> Any:
        self.assertIsNone((yield self.pool.run("x = 1")))
        self.assertEqual((yield self.pool.run("_return(8)\n_return(13)")), [8, 13])
        self.assertEqual((yield self.pool.run("a * b", {"a": 6, "b": 7})), 42)
        self.assertEqual((yield self.pool.run("_return(5)")), 5)

    @defer.inlineCallbacks
    def test_game_script_builtins_and_augmented_assignment(self) -> Any:
        source = ("total = 0\nfor i, v in enumerate(sorted(rolls)):\n    total += v * i\n"
                  "_return([total, max(rolls), min(rolls), sum(rolls), list(zip([1], [2])),"
                  " isinstance(rolls, list), round(math.sqrt(16)), 1 <= random.randint(1, 6) <= 6,"
                  " dict(a=1), sorted(set(tuple(rolls)))])")
        result = yield self.pool.run(source, {"rolls": [3, 1, 2]})
        self.assertEqual(result, [8, 3, 1, 6, [[1, 2]], True, 4, True, {"a": 1}, [1, 2, 3]])

    @defer.inlineCallbacks
    def test_raise_gives_error_with_message_and_pool_stays_healthy(self) -> Any:
        err = yield self.error_of(self.pool.run("raise ValueError('x')"))
        self.assertIsInstance(err, SandboxError)
        self.assertEqual((err.type_name, err.message, str(err)),
                         ("ValueError", "x", "ValueError: x"))
        self.assertNotIn("sandbox/", err.remote_traceback)
        self.assertEqual((yield self.pool.run("_return('still here')")), "still here")

    @defer.inlineCallbacks
    def test_syntax_error_names_the_line(self) -> Any:
        err = yield self.error_of(self.pool.run("x = 1\ny = (\n"))
        self.assertEqual(err.type_name, "SyntaxError")
        self.assertIn("line 2", err.message)

    # --- the language layer ------------------------------------------------------
    @defer.inlineCallbacks
    def test_classic_escapes_are_refused_by_the_language_layer(self) -> Any:
        self.assertGreaterEqual(len(ESCAPES), 40)
        results = yield defer.DeferredList(
            [self.pool.run(p, timeout=10) for p in ESCAPES], consumeErrors=True)
        leaks = []
        for payload, (ok, value) in zip(ESCAPES, results, strict=True):
            err = None if ok else value.value
            if not isinstance(err, SandboxError) or err.type_name in _REFUSED_BY_OS:
                leaks.append((payload, value if ok else repr(err)))
        self.assertEqual(leaks, [])

    # --- the OS layer alone ------------------------------------------------------
    @defer.inlineCallbacks
    def test_assume_breach_attacks_are_denied_by_the_os_layer(self) -> Any:
        self.assertGreaterEqual(len(BREACHES), 30)
        pool = self.open_pool(warm=2)
        results = yield defer.DeferredList(
            [pool.run(p, {"parent": os.getpid()}, timeout=10) for p in BREACHES],
            consumeErrors=True)
        leaks = []
        for payload, (ok, value) in zip(BREACHES, results, strict=True):
            err = None if ok else value.value
            if not isinstance(err, SandboxError) or err.type_name in _NOT_AN_ATTACK:
                leaks.append((payload, value if ok else repr(err)))
        self.assertEqual(leaks, [])
        self.flushLoggedErrors()
        self.assertFalse(os.path.exists("/tmp/procpool-sandbox-breach"))
        self.assertFalse(os.path.exists("/tmp/procpool-sandbox-breach-dir"))

    @defer.inlineCallbacks
    def test_child_imported_neither_twisted_nor_procpool(self) -> Any:
        pool = self.open_pool()
        names = yield pool.run("import sys\n_return(sorted(sys.modules))")
        self.assertIn("RestrictedPython", names)
        self.assertEqual([n for n in names if n.split(".")[0] in ("twisted", "procpool")], [])

    @defer.inlineCallbacks
    def test_child_runs_as_the_sandbox_user(self) -> Any:
        yield self.wait_warm(self.pool)
        pid = self.pool.idle_pids()[0]
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        expected = self.EXPECTED_UID if self.EXPECTED_UID is not None else os.geteuid()
        self.assertEqual(int(status["Uid"].split()[0]), expected)

    @defer.inlineCallbacks
    def test_proc_status_shows_no_new_privs_and_seccomp_filter(self) -> Any:
        yield self.wait_warm(self.pool)
        pid = self.pool.idle_pids()[0]
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        self.assertEqual(status["NoNewPrivs"].strip(), "1")
        self.assertEqual(status["Seccomp"].strip(), "2")

    # --- time --------------------------------------------------------------------
    # The deadline runs on a Clock the test advances, so the timing logic is
    # exact however loaded the machine; only the end of the real process is
    # waited for in real time, with a bound far above what it takes.
    @defer.inlineCallbacks
    def _killed_at_deadline(self, source: str, restricted: bool = True) -> Any:
        clock = task.Clock()
        # A CPU limit a minute away: the kill at the deadline is what must end it.
        pool = self.make_pool(clock=clock, cpu=60, restricted=restricted)
        yield self.wait_warm(pool)  # confined and waiting: the run starts at once
        d = pool.run(source, timeout=1)
        yield task.deferLater(reactor, 0.3, lambda: None)
        clock.advance(0.5)
        self.assertFalse(d.called, "the run ended by itself before its deadline")
        clock.advance(0.5)
        err = yield self.error_of(d)
        self.assertIsInstance(err, ProcPoolTimeout)
        self.assertEqual(err.limit, 1)
        yield self.wait_idle(pool)

    def test_busy_loop_is_killed_at_the_deadline(self) -> Any:
        return self._killed_at_deadline("while True: pass")

    def test_blocked_child_is_killed_at_the_deadline(self) -> Any:
        # A second acquire blocks in futex: no CPU used, so only the wall clock ends it.
        return self._killed_at_deadline(
            "import threading\nl = threading.Lock()\nl.acquire()\nl.acquire()",
            restricted=False)

    def test_reading_stdin_forever_is_killed_at_the_deadline(self) -> Any:
        return self._killed_at_deadline("import os\nwhile True:\n    os.read(0, 1)",
                                        restricted=False)

    @defer.inlineCallbacks
    def test_sleep_ends_by_the_deadline(self) -> Any:
        clock = task.Clock()
        d = self.open_pool(clock=clock).run("import time\ntime.sleep(10**6)", timeout=1)
        yield self.wait_for(lambda: d.called, within=5)  # nanosleep is denied: it fails at once
        clock.advance(1)  # were it allowed, the deadline would end the sleep
        err = yield self.error_of(d)
        self.assertIsInstance(err, (SandboxError, ProcPoolTimeout))

    # --- memory, processes, secrets --------------------------------------------------
    @defer.inlineCallbacks
    def test_memory_bombs_end_in_memory_error_or_a_kill(self) -> Any:
        gc.collect()
        before = _rss_kib()
        for bomb in ("_return(len('a' * 10**10))", "_return(2 ** (2 ** 40))",
                     "a = [1]\n[a.append(x) for x in a]", "a = [0] * 10**9"):
            err = yield self.error_of(self.pool.run(bomb, timeout=10))
            self.assertIsInstance(err, (SandboxError, ProcPoolTimeout), bomb)
            if isinstance(err, SandboxError):
                self.assertIn(err.type_name, ("MemoryError", "OverflowError", "SandboxCrashed"),
                              bomb)
        self.assertLess(_rss_kib() - before, 50 * 1024)

    @defer.inlineCallbacks
    def test_fork_bomb_creates_no_process(self) -> Any:
        pool = self.open_pool()
        err = yield self.error_of(pool.run(
            "import os\nn = 0\nwhile True:\n    os.fork()\n    n += 1"))
        self.assertEqual(err.type_name, "PermissionError")

    @defer.inlineCallbacks
    def test_parent_secrets_are_out_of_reach(self) -> Any:
        os.environ["PROCPOOL_TEST_SECRET"] = "hunter2"
        self.addCleanup(os.environ.pop, "PROCPOOL_TEST_SECRET", None)
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)
        os.write(fd, b"hunter2")
        os.set_inheritable(fd, True)
        pool = self.open_pool()
        environ = yield pool.run("import os\n_return(dict(os.environ))")
        self.assertEqual(environ, {})
        err = yield self.error_of(pool.run("import os\n_return(os.pread(fd, 7, 0).decode())",
                                           {"fd": fd}))
        self.assertIn(err.type_name, ("OSError", "PermissionError"))
        err = yield self.error_of(pool.run("_return(open(path).read())", {"path": path}))
        self.assertIn(err.type_name, ("PermissionError", "OSError"))

    @defer.inlineCallbacks
    def test_each_request_gets_a_fresh_process(self) -> Any:
        pool = self.open_pool(warm=2)
        yield pool.run("import os, json\nos.environ['LEFT'] = '1'\njson.left = 1")
        left = yield pool.run(
            "import os, json\n_return([os.environ.get('LEFT'), hasattr(json, 'left')])")
        self.assertEqual(left, [None, False])

    # --- what comes back ---------------------------------------------------------------
    @defer.inlineCallbacks
    def _fails_alone(self, pool: SandboxPool, source: str, *type_names: str) -> Any:
        err = yield self.error_of(pool.run(source, timeout=10))
        self.assertIsInstance(err, SandboxError)
        self.assertIn(err.type_name, type_names, str(err))
        self.assertEqual((yield pool.run("_return(1)")), 1)

    def test_huge_result_is_an_error_for_that_request(self) -> Any:
        return self._fails_alone(self.pool, "_return('x' * 10**8)",
                                 "OutputTooLarge", "MemoryError")

    def test_output_flood_is_cut_off(self) -> Any:
        return self._fails_alone(self.open_pool(),
                                 "import os\nwhile True:\n    os.write(1, b'x' * 65536)",
                                 "OutputTooLarge")

    def test_million_deep_nested_result_is_an_error(self) -> Any:
        return self._fails_alone(self.pool, "a = []\nfor i in range(10**6):\n    a = [a]\n"
                                            "_return(a)", "RecursionError")

    def test_deeply_nested_forged_reply_is_refused(self) -> Any:
        return self._fails_alone(self.open_pool(),
                                 "import os\nos.write(1, b'{\"ok\": true, \"result\": ' + "
                                 "b'[' * 5000 + b']' * 5000 + b'}\\n')\nos._exit(0)",
                                 "SandboxProtocolError")

    def test_bytes_that_are_not_json_are_refused(self) -> Any:
        return self._fails_alone(self.open_pool(),
                                 "import os\nos.write(1, b'\\xff\\xfe{not json\\n')\nos._exit(0)",
                                 "SandboxProtocolError")

    def test_forged_reply_line_is_refused(self) -> Any:
        return self._fails_alone(self.open_pool(),
                                 "import os\nos.write(1, b'{\"ok\": true, \"result\": 1}\\n')\n"
                                 "_return(2)", "SandboxProtocolError")

    def test_child_killed_mid_write_is_an_error(self) -> Any:
        return self._fails_alone(self.open_pool(),
                                 "import os, ctypes\nos.write(1, b'{\"ok\": tr')\n"
                                 "ctypes.string_at(0)", "SandboxCrashed")

    # --- load ------------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_fifty_concurrent_requests_while_the_reactor_keeps_answering(self) -> Any:
        lags: list[float] = []
        last = [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            lags.append(now - last[0] - 0.01)
            last[0] = now

        ticker = task.LoopingCall(tick)
        ticker.start(0.01)
        try:
            runs = [self.pool.run("_return(sum(range(n)))", {"n": i}, caller=f"player{i}",
                                  timeout=20) for i in range(50)]
            results = yield defer.DeferredList(runs, consumeErrors=True)
        finally:
            ticker.stop()
        for i, (ok, value) in enumerate(results):
            if ok:
                self.assertEqual(value, sum(range(i)))
            else:
                self.assertIsInstance(value.value, ProcPoolTimeout)
        self.assertGreater(sum(ok for ok, _ in results), 40)
        self.assertLess(max(lags), 0.5)

    @defer.inlineCallbacks
    def test_one_caller_cannot_fill_the_pool(self) -> Any:
        pool = self.make_pool(per_caller=2)
        first = [pool.run("while True: pass", caller="mallory", timeout=1) for _ in range(2)]
        err = yield self.error_of(pool.run("_return(1)", caller="mallory"))
        self.assertIsInstance(err, SandboxBusy)
        self.assertEqual((yield pool.run("_return(2)", caller="alice")), 2)
        yield defer.DeferredList(first, consumeErrors=True)
        self.assertEqual((yield pool.run("_return(3)", caller="mallory")), 3)

    @defer.inlineCallbacks
    def test_requests_queue_beyond_the_global_limit(self) -> Any:
        pool = self.make_pool(max_runs=2, warm=0)
        runs = [pool.run("_return(n)", {"n": i}) for i in range(6)]
        self.assertEqual(pool.stats()["queued"], 4)
        self.assertEqual((yield defer.gatherResults(runs)), list(range(6)))

    @defer.inlineCallbacks
    def test_stop_fails_running_and_queued_requests_and_leaves_no_process(self) -> Any:
        pool = self.make_pool(max_runs=1)
        running = pool.run("while True: pass", timeout=30)
        queued = pool.run("_return(1)")
        yield pool.stop()
        self.assertIsInstance((yield self.error_of(running)), PoolStopped)
        self.assertIsInstance((yield self.error_of(queued)), PoolStopped)
        self.assertEqual(pool.stats()["children"], 0)
        self.assertIsInstance((yield self.error_of(pool.run("_return(1)"))), PoolStopped)


class TestSandboxAsNobody(_Behaviour, TestCase):
    """The child drops from root to nobody/nogroup by itself before reading anything."""

    USER = "nobody"
    GROUP = "nogroup"
    EXPECTED_UID = 65534

    def setUp(self) -> Any:
        if os.geteuid() != 0:
            self.skipTest("dropping to nobody needs root; the host-user run covers this user")
        return super().setUp()


class TestSandboxAsHostUser(_Behaviour, TestCase):
    """The child keeps the host's uid (root stays root, confined all the same)."""


class TestSandboxHostChecks(TestCase):
    """What the host refuses or reports without the acceptance matrix."""

    def setUp(self) -> None:
        self.pools: list[SandboxPool] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(lambda: defer.gatherResults([p.stop() for p in self.pools]))

    def make_pool(self, **kwargs: Any) -> SandboxPool:
        kwargs.setdefault("warm", 0)
        pool = SandboxPool(**kwargs)
        self.pools.append(pool)
        return pool

    def test_context_that_is_not_json_able_is_refused_at_call_time(self) -> None:
        pool = self.make_pool()
        with self.assertRaises(SerializationError) as caught:
            pool.run("_return(f)", {"f": object()})
        self.assertIn("'f'", str(caught.exception))
        with self.assertRaises(SerializationError):
            pool.run("_return(1)", {"_getattr_": 1})
        with self.assertRaises(TypeError):
            pool.run(b"_return(1)")
        for bad in (-1, float("nan"), True, "1"):
            with self.assertRaises(ValueError):
                pool.run("_return(1)", timeout=bad)
        for no_limit in (0, float("inf")):
            with self.assertRaises(ValueError) as caught:
                pool.run("_return(1)", timeout=no_limit)
            self.assertIn("always has a time limit", str(caught.exception))
        self.assertEqual(pool.stats()["children"], 0)

    @defer.inlineCallbacks
    def test_without_a_timeout_the_sandbox_default_applies(self) -> Any:
        settings.configure(PROCPOOL_SANDBOX_TIMEOUT=7)
        self.addCleanup(settings.reset)
        clock = task.Clock()
        d = self.make_pool(clock=clock).run("while True: pass")
        clock.advance(6.5)
        self.assertFalse(d.called)
        clock.advance(0.5)
        with self.assertRaises(ProcPoolTimeout) as caught:
            yield d
        self.assertEqual(caught.exception.limit, 7)

    @defer.inlineCallbacks
    def test_without_seccomp_runs_are_refused(self) -> Any:
        pool = self.make_pool(_seccomp=False)
        try:
            yield pool.run("_return(1)")
        except SandboxUnavailable as e:
            self.assertIn("seccomp", str(e))
        else:
            self.fail("ran without confinement")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_degraded_mode_runs_and_warns_on_every_run(self) -> Any:
        pool = self.make_pool(_seccomp=False, degraded=True)
        self.assertEqual((yield pool.run("_return(1)")), 1)
        self.assertEqual((yield pool.run("_return(2)")), 2)
        warnings = [e for e in self.events if "PROCPOOL_SANDBOX_DEGRADED" in
                    e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)

    @defer.inlineCallbacks
    def test_language_layer_switch_off_warns(self) -> Any:
        pool = self.make_pool(restricted=False)
        self.assertEqual((yield pool.run("import os\n_return(os.sep)")), "/")
        self.assertTrue(any("PROCPOOL_SANDBOX_RESTRICTED" in e.get("log_format", "")
                            for e in self.events))

    @defer.inlineCallbacks
    def test_cpu_limit_kills_with_sigxcpu(self) -> Any:
        pool = self.make_pool(cpu=1)
        try:
            yield pool.run("while True: pass", timeout=20)
        except SandboxError as e:
            self.assertIn("SIGXCPU", str(e))
        else:
            self.fail("busy loop finished")

