"""
How failures are reported: what the README's run_async section promises about
at_err, logging and tracebacks, against real worker processes.
"""

from __future__ import annotations

import gc
import inspect
import traceback
from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import procpool
from procpool import RemoteError
from sandbox import host
from tests import core_support as s


def _line_of(function: Any, text: str) -> int:
    """The line number of the first line of ``function`` that contains ``text``."""
    lines, first = inspect.getsourcelines(function)
    return first + next(n for n, line in enumerate(lines) if text in line)


RAISE_KEYERROR = f'core_support.py", line {_line_of(s.raise_keyerror, "raise KeyError")}, ' \
                 "in raise_keyerror"


class _Logged(s.PoolTestCase):
    """A PoolTestCase that records every log event."""

    def setUp(self) -> defer.Deferred:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return super().setUp()

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]

    def unhandled(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "Unhandled error" in str(e.get("log_format"))]

    @defer.inlineCallbacks
    def wait_logged(self, count: int = 1, within: float = 10.0) -> Any:
        yield s.wait_until(lambda: len(self.failures()) >= count, within)
        # A second, late report (at garbage collection, say) would show up here.
        gc.collect()
        yield s.wait_until(lambda: False, 0.2)
        gc.collect()


class AtErrThatRaises(_Logged):
    """An at_err that raises is logged once, at once, even while the caller holds the Deferred."""

    @defer.inlineCallbacks
    def test_an_at_err_that_raises_is_logged_once_at_once_while_the_deferred_is_held(self):
        def at_err(failure: Failure) -> None:
            raise RuntimeError(f"at_err broke on {failure.type.__name__}")

        self.held = procpool.run_async(s.raise_keyerror, at_err=at_err)
        yield self.wait_logged()
        [event] = self.failures()
        self.assertIsInstance(event["log_failure"].value, RuntimeError)
        self.assertEqual(str(event["log_failure"].value), "at_err broke on KeyError")
        self.assertIn("at_err", event["log_failure"].getTraceback())
        self.assertEqual(event["what"], "run_async: raise_keyerror: at_err")
        self.assertEqual(self.unhandled(), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_an_at_err_that_raises_is_logged_once_when_the_deferred_is_dropped(self):
        procpool.run_async("1/0", at_err=lambda f: f.value.no_such_attribute)
        yield self.wait_logged()
        [event] = self.failures()
        self.assertIsInstance(event["log_failure"].value, AttributeError)
        self.assertEqual(self.unhandled(), [])
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    @defer.inlineCallbacks
    def test_an_at_err_that_raises_after_at_return_raised_is_logged_once(self):
        def at_return(result: Any) -> None:
            raise ValueError(f"at_return broke on {result}")

        def at_err(failure: Failure) -> None:
            raise RuntimeError("at_err broke too")

        self.held = procpool.run_async(s.add, 1, at_return=at_return, at_err=at_err)
        yield self.wait_logged()
        [event] = self.failures()
        self.assertIsInstance(event["log_failure"].value, RuntimeError)
        self.assertEqual(self.unhandled(), [])
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_an_at_err_that_raises_still_reaches_an_errback_chained_on_the_deferred(self):
        def at_err(failure: Failure) -> None:
            raise RuntimeError("at_err broke")

        seen: list[Failure] = []
        d = procpool.run_async(s.raise_keyerror, at_err=at_err)
        d.addErrback(seen.append)
        yield s.wait_until(lambda: seen, 10)
        self.assertIsInstance(seen[0].value, RuntimeError)
        gc.collect()
        self.assertEqual(self.failures(), [])   # handled by the errback: nothing logged
        self.assertEqual(self.unhandled(), [])

    @defer.inlineCallbacks
    def test_an_at_err_that_handles_the_failure_logs_nothing(self):
        seen: list[Failure] = []
        self.held = procpool.run_async(s.raise_keyerror, at_err=seen.append)
        yield s.wait_until(lambda: seen, 10)
        yield s.wait_until(lambda: False, 0.2)
        gc.collect()
        self.assertEqual(self.failures(), [])
        self.assertEqual(self.unhandled(), [])


class WorkerTracebacks(_Logged):
    """Logged failures, and every Failure, carry the worker's frames."""

    @defer.inlineCallbacks
    def test_a_logged_failure_shows_the_workers_file_line_and_function(self):
        procpool.run_async(s.raise_keyerror)
        yield self.wait_logged()
        [event] = self.failures()
        text = event["log_failure"].getTraceback()
        self.assertIn(RAISE_KEYERROR, text)
        self.assertIn('raise KeyError("missing")', text)   # the source line, read here
        self.assertNotIn("failure with no frames", text)
        self.assertEqual(self.unhandled(), [])
        self.flushLoggedErrors(KeyError)

    @defer.inlineCallbacks
    def test_the_failure_at_err_gets_shows_the_workers_frames(self):
        seen: list[Failure] = []
        yield procpool.run_async(s.raise_keyerror, at_err=seen.append)
        self.assertIn(RAISE_KEYERROR, seen[0].getTraceback())
        self.assertEqual(seen[0].frames[-1][:3],
                         ("raise_keyerror", s.__file__, _line_of(s.raise_keyerror,
                                                                 "raise KeyError")))

    @defer.inlineCallbacks
    def test_an_exception_raised_in_inline_callbacks_shows_the_workers_frames(self):
        try:
            yield procpool.run_async(s.raise_keyerror)
        except KeyError as e:
            frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(e.__traceback__)]
        self.assertIn((s.__file__, _line_of(s.raise_keyerror, "raise KeyError"), "raise_keyerror"),
                      frames)
        # The host's own frame comes first, where the exception was raised here.
        self.assertIn("test_an_exception_raised_in_inline_callbacks_shows_the_workers_frames",
                      [name for _, _, name in frames[:3]])

    @defer.inlineCallbacks
    def test_a_remote_error_shows_the_workers_frames(self):
        seen: list[Failure] = []
        yield procpool.run_async(s.raise_unpicklable, at_err=seen.append)
        self.assertIsInstance(seen[0].value, RemoteError)
        self.assertEqual(seen[0].frames[-1][0], "raise_unpicklable")
        self.assertIn("in raise_unpicklable\n", seen[0].getTraceback())

    @defer.inlineCallbacks
    def test_a_source_strings_failure_shows_its_line(self):
        seen: list[Failure] = []
        yield procpool.run_async("x = 1\ny = x / 0", at_err=seen.append)
        self.assertIn('File "<source>", line 2, in <module>', seen[0].getTraceback())

    @defer.inlineCallbacks
    def test_a_chained_exception_shows_the_frames_of_the_one_raised_last(self):
        seen: list[Failure] = []
        source = "try:\n    {}['a']\nexcept KeyError:\n    raise ValueError('b')"
        yield procpool.run_async(source, at_err=seen.append)
        self.assertIsInstance(seen[0].value, ValueError)
        self.assertEqual(seen[0].frames[-1][:3], ("<module>", "<source>", 4))
        self.assertEqual([f for f in seen[0].frames if f[1] == "<source>"][:1],
                         [seen[0].frames[-1]])


class QuickStartPattern(_Logged):
    """``d = run_async("1/0"); d.addCallback(print)`` never gives "Unhandled error in Deferred"."""

    @defer.inlineCallbacks
    def test_a_callback_without_errback_has_the_failure_logged_once_with_the_workers_frames(self):
        got: list[Any] = []
        d = procpool.run_async("1/0")
        d.addCallback(got.append)
        yield self.wait_logged()
        del d
        gc.collect()
        self.assertEqual(got, [])
        [event] = self.failures()
        self.assertEqual(event["what"], "run_async: source string")
        self.assertIn('File "<source>", line 1, in <module>', event["log_failure"].getTraceback())
        self.assertEqual(self.unhandled(), [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @defer.inlineCallbacks
    def test_a_failure_already_logged_then_chained_without_errback_is_not_logged_again(self):
        d = procpool.run_async(s.raise_keyerror)
        yield self.wait_logged()                 # nobody chained: logged at once, held
        got: list[Any] = []
        d.addCallback(got.append)                # chained later, still no errback
        del d
        gc.collect()
        yield s.wait_until(lambda: False, 0.2)
        self.assertEqual((got, len(self.failures()), self.unhandled()), ([], 1, []))
        self.flushLoggedErrors(KeyError)

    @defer.inlineCallbacks
    def test_callback_then_errback_chained_in_one_turn_log_nothing(self):
        seen: list[Failure] = []
        procpool.stop()
        d = procpool.run_async(s.add, 1)         # fails at once with PoolStopped
        d.addCallback(lambda r: r + 1)
        d.addErrback(seen.append)
        yield s.wait_until(lambda: False, 0.2)
        gc.collect()
        self.assertIsInstance(seen[0].value, procpool.PoolStopped)
        self.assertEqual((self.failures(), self.unhandled()), ([], []))


class SandboxTracebacks(TestCase):
    """A sandboxed run's logged failure shows the player's line."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(host.stop)

    @defer.inlineCallbacks
    def test_a_logged_sandbox_failure_shows_the_players_line(self):
        host.limited_exec("x = 1\nraise KeyError('gone')")
        yield s.wait_until(lambda: [e for e in self.events if "log_failure" in e], 20)
        [event] = [e for e in self.events if "log_failure" in e]
        self.assertIn('File "<player>", line 2, in <module>',
                      event["log_failure"].getTraceback())
        self.flushLoggedErrors(procpool.SandboxError)
