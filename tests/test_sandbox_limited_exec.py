"""limited_exec and the shared sandbox pool: callbacks, logging, stop."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

import procpool
from procpool.errors import SandboxError
from sandbox import host
from sandbox.host import SandboxPool, limited_exec


class TestLimitedExec(TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(host.stop)

    def test_public_names_are_exported_lazily(self) -> None:
        self.assertIs(procpool.limited_exec, limited_exec)
        self.assertIs(procpool.SandboxError, SandboxError)
        self.assertTrue(issubclass(procpool.SandboxUnavailable, procpool.ProcPoolError))

    @defer.inlineCallbacks
    def test_at_return_gets_the_result_and_context_becomes_globals(self) -> Any:
        got: list[Any] = []
        yield limited_exec("_return(sum(rolls) + bonus)", at_return=got.append,
                           rolls=[3, 4], bonus=1)
        self.assertEqual(got, [8])

    @defer.inlineCallbacks
    def test_at_err_gets_the_failure(self) -> Any:
        got: list[Any] = []
        yield limited_exec("raise ValueError('bad move')", at_err=got.append)
        self.assertIsInstance(got[0].value, SandboxError)
        self.assertEqual(str(got[0].value), "ValueError: bad move")

    @defer.inlineCallbacks
    def test_error_in_at_return_reaches_at_err(self) -> Any:
        got: list[Any] = []
        yield limited_exec("_return(1)", at_return=lambda r: 1 / 0, at_err=got.append)
        self.assertIsInstance(got[0].value, ZeroDivisionError)

    @defer.inlineCallbacks
    def test_failure_without_at_err_is_logged_once(self) -> Any:
        limited_exec("raise KeyError('gone')")
        for _ in range(100):
            if [e for e in self.events if "log_failure" in e]:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        logged = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(logged), 1)
        self.assertIsInstance(logged[0]["log_failure"].value, SandboxError)
        self.flushLoggedErrors(SandboxError)

    @defer.inlineCallbacks
    def test_a_chained_errback_receives_the_failure(self) -> Any:
        with self.assertRaises(SandboxError):
            yield limited_exec("raise KeyError('mine')")
        self.assertEqual([e for e in self.events if "log_failure" in e], [])

    @defer.inlineCallbacks
    def test_run_async_sandbox_counts_the_caller_quota(self) -> Any:
        procpool.configure(PROCPOOL_SANDBOX_PER_CALLER=1)
        self.addCleanup(procpool.settings.reset)
        yield host.stop()  # the quota is read when the shared pool starts: a fresh one
        # The quota is taken when the call is made, so the second call below
        # comes while the first is in progress.
        first = procpool.run_async("_return(n * 2)", sandbox=True, caller="ann", n=21)
        with self.assertRaises(procpool.SandboxBusy):
            yield procpool.run_async("_return(1)", sandbox=True, caller="ann")
        other = yield procpool.run_async("_return(2)", sandbox=True, caller="bob")
        self.assertEqual(other, 2)
        self.assertEqual((yield first), 42)
        # Her run ended: her quota is free again.
        self.assertEqual((yield procpool.run_async("_return(3)", sandbox=True, caller="ann")), 3)

    def test_a_sandboxed_run_refuses_no_limit_and_names_the_default(self) -> Any:
        for call in (lambda: procpool.run_async("_return(1)", sandbox=True, proc_timeout=0),
                     lambda: limited_exec("_return(1)", timeout=0),
                     lambda: limited_exec("_return(1)", timeout=float("inf"))):
            with self.assertRaises(procpool.SettingError) as caught:
                call()
            self.assertIn("always has a time limit", str(caught.exception))
            self.assertIn("PROCPOOL_SANDBOX_TIMEOUT", str(caught.exception))
        with self.assertRaises(procpool.SettingError):
            limited_exec("_return(1)", timeout=-1)

    @defer.inlineCallbacks
    def test_a_sandboxed_run_not_given_a_limit_takes_the_sandbox_default(self) -> Any:
        procpool.configure(PROCPOOL_SANDBOX_TIMEOUT=0.5, PROCPOOL_TIMEOUT=30)
        self.addCleanup(procpool.settings.reset)
        yield host.stop()
        with self.assertRaises(procpool.ProcPoolTimeout) as caught:
            yield limited_exec("while True: pass")
        self.assertEqual(caught.exception.limit, 0.5)

    @defer.inlineCallbacks
    def test_stop_kills_the_warm_children(self) -> Any:
        yield limited_exec("_return(1)")
        pool = host.get_pool()
        self.assertGreater(pool.stats()["children"], 0)
        yield host.stop()
        self.assertEqual(pool.stats()["children"], 0)
        self.assertIsNot(host.get_pool(), pool)


class TestOtherInterpreter(TestCase):
    """PROCPOOL_SANDBOX_PYTHON: the system interpreter runs the same child."""

    @defer.inlineCallbacks
    def test_system_python_runs_the_child(self) -> Any:
        if not os.access("/usr/bin/python3", os.X_OK):
            self.skipTest("no /usr/bin/python3 on this machine")
        pool = SandboxPool(python="/usr/bin/python3", warm=0, restricted=False)
        self.addCleanup(pool.stop)
        version = yield pool.run("import sys\n_return(sys.executable)")
        self.assertEqual(version, "/usr/bin/python3")
