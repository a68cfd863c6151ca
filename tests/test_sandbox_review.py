"""
Sandbox review: attacks the acceptance list does not cover, and a host facing
a child that is hostile from its first instruction.

``TestReplyParsing`` checks the host's reply parser alone. ``TestPlayerAttacks``
runs real confined children (dropped to nobody when the tests run as root).
``TestHostileChild`` replaces the child's interpreter with scripts that never
confine themselves and break the protocol on purpose: the host must answer
that request with an error, end the child and stay healthy, never unpickle.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from procpool.errors import ProcPoolTimeout, SandboxError, SandboxUnavailable
from sandbox import _process
from sandbox.child import MAX_CONTAINERS
from sandbox.host import SandboxPool
from sandbox.replies import parse_reply as _parse_reply

_ROOT = os.geteuid() == 0


class _PoolCase(TestCase):
    """Pools stopped after each test, and helpers to wait on them."""

    def setUp(self) -> None:
        self.pools: list[SandboxPool] = []
        self.addCleanup(lambda: defer.gatherResults([p.stop() for p in self.pools]))

    def make_pool(self, **kwargs: Any) -> SandboxPool:
        if _ROOT:
            kwargs.setdefault("user", "nobody")
            kwargs.setdefault("group", "nogroup")
        kwargs.setdefault("warm", 1)
        pool = SandboxPool(**kwargs)
        pool.start()
        self.pools.append(pool)
        return pool

    def error_of(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        def unexpected(result: Any) -> None:
            self.fail(f"expected a failure, got {result!r}")
        return d.addCallbacks(unexpected, lambda f: f.value)

    @defer.inlineCallbacks
    def wait_for(self, check: Any, within: float) -> Any:
        end = time.monotonic() + within
        while not check() and time.monotonic() < end:
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertTrue(check(), f"not within {within} s")

    def wait_idle(self, pool: SandboxPool, within: float) -> defer.Deferred[Any]:
        return self.wait_for(lambda: pool.stats()["running"] == 0, within)


class TestReplyParsing(TestCase):
    """The host accepts strict JSON text only."""

    def test_nan_and_infinities_are_refused(self) -> None:
        for constant in (b"NaN", b"Infinity", b"-Infinity", b"[1, NaN]"):
            with self.assertRaises(SandboxError) as caught:
                _parse_reply(b'{"ok": true, "result": ' + constant + b"}")
            self.assertEqual(caught.exception.type_name, "SandboxProtocolError")

    def test_unpaired_surrogates_are_refused_anywhere(self) -> None:
        for reply in (b'{"ok": true, "result": "\\ud800"}',
                      b'{"ok": true, "result": {"\\uDC00": 1}}',
                      b'{"ok": false, "type": "X", "message": "\\udfff"}'):
            with self.assertRaises(SandboxError) as caught:
                _parse_reply(reply)
            self.assertEqual(caught.exception.type_name, "SandboxProtocolError")

    def test_paired_surrogates_and_utf8_are_text(self) -> None:
        self.assertEqual(_parse_reply(b'{"ok": true, "result": "\\ud83d\\ude00"}'), "\U0001F600")
        self.assertEqual(_parse_reply('{"ok": true, "result": "\u00e9\U0001F600"}'.encode()),
                         "\u00e9\U0001F600")
        self.assertEqual(_parse_reply(b'{"ok": true, "result": "a\\\\ud800"}'), "a\\ud800")

    def test_too_many_lists_and_dicts_are_refused_before_parsing(self) -> None:
        line = b'{"ok": true, "result": [' + b"[]," * MAX_CONTAINERS + b"{}]}"
        with self.assertRaises(SandboxError) as caught:
            _parse_reply(line)
        self.assertIn("lists and dicts", caught.exception.message)
        self.assertEqual(len(_parse_reply(line.replace(b"[],", b"1,"))), MAX_CONTAINERS + 1)
        # Brackets inside strings are text, not containers.
        text = "[{" * MAX_CONTAINERS + '\\"[{'
        self.assertEqual(_parse_reply(json.dumps({"ok": True, "result": [text]}).encode()),
                         [text])

    def test_nesting_is_limited(self) -> None:
        nested: Any = 1
        for _ in range(98):
            nested = [nested]
        self.assertEqual(_parse_reply(json.dumps({"ok": True, "result": nested}).encode()),
                         nested)
        with self.assertRaises(SandboxError):
            _parse_reply(json.dumps({"ok": True, "result": [nested]}).encode())

    def test_huge_integers_are_refused(self) -> None:
        with self.assertRaises(SandboxError):
            _parse_reply(b'{"ok": true, "result": 1' + b"0" * 5000 + b"}")


_RETURN_CASES: list[tuple[str, Any]] = [
    ("x = 1", None),
    ("6 * 7", 42),
    ("_return(0)", 0),
    ("_return([1])", [1]),
    ("_return(None)\n_return(None)", [None, None]),
    ("_return(8)\n_return(13)", [8, 13]),
    ("_return(1)\n2", 1),
]


class TestReturnRule(TestCase):
    """A source string hands back the same thing in a worker and in the sandbox."""

    def test_workers_and_the_language_layer_agree(self) -> None:
        from sandbox.policy import run_source as in_sandbox
        from workers.source import run_source as in_worker

        for source, expected in _RETURN_CASES:
            self.assertEqual(in_worker(source, {}), expected, source)
            self.assertEqual(in_sandbox(source, {}, restricted=True), expected, source)


class TestPlayerAttacks(_PoolCase):
    """Attacks through player code, with the language layer on and off."""

    @defer.inlineCallbacks
    def test_uncatchable_errors_cannot_flood_the_host(self) -> Any:
        received = _count_stderr(self)
        pool = self.make_pool()
        # Each collected generator whose finally fails would print a traceback on stderr.
        source = ("def g():\n    try:\n        yield 1\n    finally:\n        1/0\n"
                  "for i in range(20000):\n    for x in g():\n        break\n_return('done')")
        self.assertEqual((yield pool.run(source, timeout=20)), "done")
        self.assertEqual(received, [0])

    @defer.inlineCallbacks
    def test_stderr_is_read_up_to_its_cap_only(self) -> Any:
        received = _count_stderr(self)
        pool = self.make_pool(restricted=False)
        err = yield self.error_of(pool.run("import os\nwhile True:\n    os.write(2, b'x' * 65536)",
                                           timeout=10))
        self.assertEqual(err.type_name, "BrokenPipeError")  # the host stopped reading
        self.assertLessEqual(received[0], _process._STDERR_CAP + 65536)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_results_are_strict_json_text(self) -> Any:
        pool = self.make_pool(max_runs=4)
        self.assertEqual((yield pool.run("_return('\\u00e9\\U0001F600')")), "\u00e9\U0001F600")
        for source in ("_return(float('nan'))", "_return([float('inf')])", "_return('\\ud800')",
                       "_return({'\\udc00': 1})"):
            err = yield self.error_of(pool.run(source))
            self.assertEqual(err.type_name, "TypeError", source)
            self.assertIn("not JSON-able", err.message)
        err = yield self.error_of(pool.run("raise ValueError('bad \\ud800 text')"))
        self.assertEqual((err.type_name, err.message), ("ValueError", "bad ? text"))

    @defer.inlineCallbacks
    def test_results_with_too_many_lists_are_refused_in_the_child(self) -> Any:
        pool = self.make_pool()
        err = yield self.error_of(pool.run(f"_return([[] for i in range({MAX_CONTAINERS})])"))
        self.assertEqual(err.type_name, "OutputTooLarge")
        self.assertIn("lists and dicts", err.message)
        result = yield pool.run(f"_return([[i] for i in range({MAX_CONTAINERS - 10})])")
        self.assertEqual(len(result), MAX_CONTAINERS - 10)

    @defer.inlineCallbacks
    def test_forged_replies_that_are_not_strict_json_are_refused(self) -> Any:
        pool = self.make_pool(restricted=False, max_runs=4)
        for reply in (b'{"ok": true, "result": NaN}', b'{"ok": true, "result": "\\ud800"}',
                      b'{"ok": false, "type": "X", "message": "\\udfff"}',
                      b'{"ok": true, "result": [' + b"[]," * 20000 + b"[]]}"):
            err = yield self.error_of(pool.run(
                f"import os\nos.write(1, {reply!r} + b'\\n')\nos.close(1)\nos._exit(0)"))
            self.assertEqual(err.type_name, "SandboxProtocolError", reply)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_missing_attribute_is_an_error_not_none(self) -> Any:
        pool = self.make_pool()
        err = yield self.error_of(pool.run("_return(math.tau2)"))
        self.assertEqual(err.type_name, "AttributeError")
        err = yield self.error_of(pool.run("_return(random.Random)"))
        self.assertEqual(err.type_name, "AttributeError")

    @defer.inlineCallbacks
    def test_answered_when_stdout_closes_and_what_follows_is_killed(self) -> Any:
        # Its deadline never comes (nobody advances the pool's clock) and its CPU
        # limit is a minute away: only the kill on answering can end it in time.
        pool = self.make_pool(restricted=False, clock=task.Clock(), cpu=60)
        result = yield pool.run("import os\nos.write(1, b'{\"ok\": true, \"result\": 7}\\n')\n"
                                "os.close(1)\nwhile True:\n    pass", timeout=10)
        self.assertEqual(result, 7)
        yield self.wait_idle(pool, within=10)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_second_line_after_the_first_is_never_taken_early(self) -> Any:
        pool = self.make_pool(restricted=False)
        err = yield self.error_of(pool.run(
            "import os\nos.write(1, b'{\"ok\": true, \"result\": 1}\\n{\"ok\"')\n"
            "os.close(1)\nwhile True:\n    pass", timeout=1))
        self.assertIsInstance(err, (ProcPoolTimeout, SandboxError))
        if isinstance(err, SandboxError):
            self.assertIn(err.type_name, ("SandboxProtocolError", "SandboxCrashed"))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_spare_children_are_topped_up_after_the_run(self) -> Any:
        pool = self.make_pool(warm=2)
        yield self.wait_for(lambda: len(pool.idle_pids()) == 2, within=10)
        d = pool.run("_return(1)")
        self.assertEqual(pool.stats()["starting"], 0)  # a spare is still idle: no start yet
        self.assertEqual((yield d), 1)
        yield self.wait_for(lambda: len(pool.idle_pids()) == 2, within=10)
        first, second = pool.run("_return(2)"), pool.run("_return(3)")
        self.assertEqual(pool.stats()["starting"], 2)  # no spare left: started at once
        self.assertEqual((yield defer.gatherResults([first, second])), [2, 3])

    @defer.inlineCallbacks
    def test_a_child_that_stays_root_holds_no_capability(self) -> Any:
        if not _ROOT:
            self.skipTest("only a root host can have a root child")
        pool = self.make_pool(user="root", group="root")
        yield self.wait_for(lambda: pool.idle_pids(), within=10)
        with open(f"/proc/{pool.idle_pids()[0]}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            self.assertEqual(int(status[field], 16), 0, field)
        self.assertEqual(int(status["Uid"].split()[0]), 0)


def _count_stderr(case: TestCase) -> list[int]:
    """Bytes the host receives on children's stderr while the test runs."""
    received = [0]
    original = _process.Child.childDataReceived

    def counting(child: Any, fd: int, data: bytes) -> None:
        if fd == 2:
            received[0] += len(data)
        original(child, fd, data)

    _process.Child.childDataReceived = counting  # type: ignore[method-assign]
    case.addCleanup(setattr, _process.Child, "childDataReceived", original)
    return received


# --- hostile children -------------------------------------------------------------

_PROLOGUE = """\
import json, os, sys, time
os.setsid()
config = json.loads(next(a for a in sys.argv if a.startswith("{")))
def w(data, fd=1):
    while data:
        data = data[os.write(fd, data):]
READY = b'{"ready": true, "pid": %d, "layers": {}}\\n' % os.getpid()
def request():
    chunks = []
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
"""

_HOSTILE = {
    "garbage_header": "w(b'\\x80\\xfe garbage\\n')\ntime.sleep(30)",
    "not_ready_then_sleep": "w(b'{\"ready\": false, \"error\": \"nope\"}\\n')\ntime.sleep(30)",
    "header_without_end": "w(b'{' * (100 << 10))\ntime.sleep(30)",
    "flood": "w(READY)\nwhile True:\n    w(b'x' * 65536)",
    "exact_cap": ("w(READY)\nrequest()\ncap = config['max_output'] + (64 << 10)\n"
                  "head = b'{\"ok\": true, \"result\": \"'\n"
                  "w(head + b'x' * (cap - len(READY) - len(head) - 3 + EXTRA) + b'\"}\\n')\n"
                  "os.close(1)\nos._exit(0)"),
    "reply_then_sleep": ("w(READY)\nrequest()\nw(b'{\"ok\": true, \"result\": 1}\\n')\n"
                         "time.sleep(30)"),
    "reply_close_then_sleep": ("w(READY)\nrequest()\nw(b'{\"ok\": true, \"result\": 1}\\n')\n"
                               "os.close(1)\ntime.sleep(30)"),
    "close_without_reply": "w(READY)\nrequest()\nos.close(1)\nos._exit(0)",
    "pickle": ("import pickle\nclass Boom:\n    def __reduce__(self):\n"
               "        return (os.mkdir, (SENTINEL,))\n"
               "w(READY)\nrequest()\nw(pickle.dumps(Boom(), 0).replace(b'\\n', b' ') + b'\\n')\n"
               "os.close(1)\nos._exit(0)"),
    "grandchild_holds_pipes": ("w(READY)\nrequest()\npid = os.fork()\nif pid == 0:\n"
                               "    os.setsid()\n    time.sleep(20)\n    os._exit(0)\n"
                               "w(str(pid).encode(), 2)\nos._exit(0)"),
}


class TestHostileChild(_PoolCase):
    """A child that is not the sandbox's: every request ends in an error, the host carries on."""

    def setUp(self) -> None:
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="procpool-hostile-")
        self.addCleanup(os.rmdir, self.dir)
        self.sentinel = os.path.join(self.dir, "unpickled")

    def hostile_pool(self, behaviour: str, extra: int = 0, **kwargs: Any) -> SandboxPool:
        path = os.path.join(self.dir, behaviour)
        with open(path, "w") as f:
            f.write(f"#!{sys.executable}\n{_PROLOGUE}SENTINEL = {self.sentinel!r}\n"
                    f"EXTRA = {extra}\n{_HOSTILE[behaviour]}\n")
        os.chmod(path, 0o700)
        self.addCleanup(os.unlink, path)
        kwargs.setdefault("warm", 0)
        kwargs.setdefault("max_output", 1024)
        return self.make_pool(python=path, user="root", group="root", **kwargs)

    @defer.inlineCallbacks
    def _fails(self, behaviour: str, kind: type, type_name: str | None = None,
               extra: int = 0) -> Any:
        """
        The request fails with ``kind`` without its deadline: nobody advances the
        pool's clock, so the deadline never comes. Left alone, the hostile child
        sleeps 30 s or floods for ever; the host must end it well before that.
        """
        pool = self.hostile_pool(behaviour, extra, clock=task.Clock())
        d = pool.run("_return(1)", timeout=1)
        yield self.wait_for(lambda: d.called, within=10)
        err = yield self.error_of(d)
        self.assertIsInstance(err, kind)
        if type_name is not None:
            self.assertEqual(err.type_name, type_name)
        yield self.wait_idle(pool, within=10)
        self.assertEqual(pool.stats()["children"], 0)
        self.flushLoggedErrors()

    def test_garbage_ready_line(self) -> Any:
        return self._fails("garbage_header", SandboxUnavailable)

    def test_not_ready_child_is_not_left_running(self) -> Any:
        return self._fails("not_ready_then_sleep", SandboxUnavailable)

    def test_ready_line_without_end(self) -> Any:
        return self._fails("header_without_end", SandboxUnavailable)

    def test_output_flood(self) -> Any:
        return self._fails("flood", SandboxError, "OutputTooLarge")

    def test_one_byte_over_the_cap(self) -> Any:
        return self._fails("exact_cap", SandboxError, "OutputTooLarge", extra=1)

    @defer.inlineCallbacks
    def test_exactly_the_cap_is_accepted(self) -> Any:
        pool = self.hostile_pool("exact_cap")
        result = yield pool.run("_return(1)")
        self.assertEqual(set(result), {"x"})

    @defer.inlineCallbacks
    def test_reply_without_end_of_file_waits_for_the_deadline(self) -> Any:
        clock = task.Clock()
        pool = self.hostile_pool("reply_then_sleep", clock=clock)
        d = pool.run("_return(1)", timeout=1)
        (child,) = pool._running
        yield self.wait_for(lambda: child._stdout.endswith(b"\n"), within=10)
        clock.advance(0.5)
        self.assertFalse(d.called)  # a whole reply line, but stdout still open: not taken
        clock.advance(0.5)
        err = yield self.error_of(d)
        self.assertIsInstance(err, ProcPoolTimeout)
        self.assertEqual(err.limit, 1)
        yield self.wait_idle(pool, within=10)  # it would sleep 30 s
        self.assertEqual(pool.stats()["children"], 0)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_reply_then_closed_stdout_is_answered_and_the_child_killed(self) -> Any:
        pool = self.hostile_pool("reply_close_then_sleep", clock=task.Clock())
        self.assertEqual((yield pool.run("_return(1)", timeout=10)), 1)
        yield self.wait_idle(pool, within=10)  # it would sleep 30 s

    def test_closed_stdout_without_reply(self) -> Any:
        return self._fails("close_without_reply", SandboxError, "SandboxProtocolError")

    @defer.inlineCallbacks
    def test_a_pickle_is_never_unpickled(self) -> Any:
        yield self._fails("pickle", SandboxError, "SandboxProtocolError")
        self.assertFalse(os.path.exists(self.sentinel))

    @defer.inlineCallbacks
    def test_a_grandchild_holding_the_pipes_does_not_keep_the_run(self) -> Any:
        clock = task.Clock()
        pool = self.hostile_pool("grandchild_holds_pipes", clock=clock)
        grandchildren: list[int] = []
        original = _process.Child.childDataReceived

        def note_pid(child: Any, fd: int, data: bytes) -> None:
            if fd == 2 and data.strip().isdigit():
                grandchildren.append(int(data))
                self.addCleanup(_kill_quietly, int(data))
            original(child, fd, data)

        _process.Child.childDataReceived = note_pid  # type: ignore[method-assign]
        self.addCleanup(setattr, _process.Child, "childDataReceived", original)
        d = pool.run("_return(1)", timeout=1)
        (child,) = pool._running
        # The child exits by itself; the grandchild left its process group and
        # holds its pipes, so the run is not over.
        yield self.wait_for(lambda: grandchildren and child._exited, within=10)
        self.assertFalse(d.called)
        clock.advance(1)
        self.assertIsInstance((yield self.error_of(d)), ProcPoolTimeout)
        # Killing its (empty) process group ends nothing: it keeps its place
        # through the grace period, then its pipes are closed and the place is free.
        clock.advance(_process._KILL_GRACE - 0.5)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(pool.stats()["running"], 1)
        clock.advance(0.5)
        yield self.wait_idle(pool, within=10)
        self.assertEqual(len(grandchildren), 1)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class TestPrecompiledModules(_PoolCase):
    """Children run the host's compiled sandbox modules, or their own for another build."""

    @defer.inlineCallbacks
    def test_children_use_the_host_compiled_modules(self) -> Any:
        pool = self.make_pool(restricted=False)
        source = ("import sys\n_return([sys.modules[n].__spec__ is None for n in "
                  "('sandbox.child', 'sandbox.confine', 'workers.source', 'sandbox.policy')])")
        self.assertEqual((yield pool.run(source)), [True, True, True, True])
        # The shared _return rule came with them; nothing else of workers did.
        source = ("import sys\n_return([sys.modules['workers'].__path__, "
                  "sorted(n for n in sys.modules if n.startswith('workers'))])")
        self.assertEqual((yield pool.run(source)), [[], ["workers", "workers.source"]])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_another_interpreter_build_compiles_its_own(self) -> Any:
        pool = SandboxPool(restricted=False, warm=0,
                           **({"user": "nobody", "group": "nogroup"} if _ROOT else {}))
        self.pools.append(pool)
        pool.config["build"] = [0, "another-build"]
        pool._args[pool._args.index(next(a for a in pool._args if a.startswith("{")))] = \
            json.dumps(pool.config)
        source = ("import sys\n_return([sys.modules[n].__spec__ is None "
                  "for n in ('sandbox.policy', 'workers.source')])")
        self.assertEqual((yield pool.run(source)), [False, False])
        # Imported from the files, it still takes in neither Twisted nor procpool.
        names = yield pool.run("import sys\n_return(sorted(sys.modules))")
        self.assertEqual([n for n in names if n.split(".")[0] in ("twisted", "procpool")], [])
        self.flushLoggedErrors()
