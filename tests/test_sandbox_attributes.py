"""
The language layer refuses the attributes of exceptions that carry objects
(docs/sandbox.md): each one, in a real confined child, refused with a
readable error; the harmless ones (``args``, ``name``) still read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from procpool.errors import SandboxError
from sandbox.host import SandboxPool

# An exception of each kind player code can catch, bound to ``e``.
CAUGHT = {  # (``except ... as`` unbinds its name at the end of the block: keep it in e)
    "AttributeError": "try:\n    math.nope\nexcept AttributeError as x:\n    e = x\n",
    "AttributeError on an int": "try:\n    (1).nope\nexcept AttributeError as x:\n    e = x\n",
    "NameError": "try:\n    nope\nexcept NameError as x:\n    e = x\n",
    "StopIteration": ("try:\n    raise StopIteration([1, 2])\n"
                      "except StopIteration as x:\n    e = x\n"),
    "KeyError": "try:\n    {}['k']\nexcept KeyError as x:\n    e = x\n",
    "ZeroDivisionError": "try:\n    1 / 0\nexcept ZeroDivisionError as x:\n    e = x\n",
    "chained": ("try:\n    try:\n        1 / 0\n    except Exception:\n"
                "        raise ValueError('outer')\nexcept ValueError as x:\n    e = x\n"),
}

# (which exception, the expression read after it): each must be refused.
REFUSED_AT_RUN_TIME = [
    ("AttributeError", "e.obj"),                       # the object whose attribute was missing
    ("AttributeError on an int", "e.obj"),
    ("StopIteration", "e.value"),                      # the value it carries
    ("ZeroDivisionError", "e.exceptions"),             # BaseExceptionGroup's members
    ("ZeroDivisionError", "e.message"),                # BaseExceptionGroup's message
    ("ZeroDivisionError", "e.with_traceback"),
    ("ZeroDivisionError", "e.add_note"),
    ("KeyError", "e.value"),
    ("NameError", "e.obj"),
    ("ZeroDivisionError", "e.code"),                   # SystemExit's
    ("ZeroDivisionError", "e.object"),                 # UnicodeError's
    ("ZeroDivisionError", "e.filename"),               # OSError's, SyntaxError's
]

# Refused before the code runs (RestrictedPython's compile-time policy): kept
# here so a change of policy or library cannot quietly let one through.
REFUSED_AT_COMPILE_TIME = [
    ("ZeroDivisionError", "e.__traceback__"),
    ("ZeroDivisionError", "e.__traceback__.tb_frame"),
    ("ZeroDivisionError", "e.__traceback__.tb_next"),
    ("chained", "e.__context__"),
    ("chained", "e.__cause__"),
    ("chained", "e.__context__.__traceback__.tb_frame.f_globals"),
    ("chained", "e.__suppress_context__"),
    ("ZeroDivisionError", "e.__notes__"),
    ("ZeroDivisionError", "e.__dict__"),
    ("ZeroDivisionError", "e.tb_frame"),
    ("ZeroDivisionError", "e.tb_next"),
    ("ZeroDivisionError", "e.f_back"),
    ("ZeroDivisionError", "e.f_globals"),
    ("ZeroDivisionError", "e.f_locals"),
    ("ZeroDivisionError", "e.gi_frame"),
]

ALLOWED = [
    ("AttributeError", "e.name", "nope"),
    ("NameError", "e.name", "nope"),
    ("KeyError", "e.args", ["k"]),
    ("StopIteration", "str(e)", "[1, 2]"),
    ("ZeroDivisionError", "repr(e)", "ZeroDivisionError('division by zero')"),
    ("chained", "e.args[0]", "outer"),
]


class ExceptionAttributes(TestCase):
    def setUp(self) -> None:
        self.pool = SandboxPool(warm=2, max_runs=8, per_caller=8)
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def run_after(self, caught: str, expression: str) -> defer.Deferred[Any]:
        return self.pool.run(CAUGHT[caught] + f"_return({expression})", timeout=10)

    @defer.inlineCallbacks
    def outcomes(self, cases: list[tuple[str, str]]) -> Any:
        results = yield defer.DeferredList(
            [self.run_after(caught, expression) for caught, expression in cases],
            consumeErrors=True)
        return [(case, ok, value if ok else value.value)
                for case, (ok, value) in zip(cases, results, strict=True)]

    @defer.inlineCallbacks
    def test_exception_attributes_that_carry_objects_are_refused_with_a_readable_error(self):
        leaks = []
        for (caught, expression), ok, value in (yield self.outcomes(REFUSED_AT_RUN_TIME)):
            name = expression.split("e.")[-1].split("(")[0].split("[")[0].split(" ")[0]
            refused = (not ok and isinstance(value, SandboxError)
                       and value.type_name == "AttributeError"
                       and f'"{name}" of an exception cannot be read in the sandbox'
                       in value.message)
            if not refused:
                leaks.append((caught, expression, value if ok else repr(value)))
        self.assertEqual(leaks, [])

    @defer.inlineCallbacks
    def test_exception_dunders_and_frame_attributes_are_refused_before_running(self):
        leaks = []
        for (caught, expression), ok, value in (yield self.outcomes(REFUSED_AT_COMPILE_TIME)):
            if ok or not isinstance(value, SandboxError) or value.type_name != "SyntaxError":
                leaks.append((caught, expression, value if ok else repr(value)))
        self.assertEqual(leaks, [])

    @defer.inlineCallbacks
    def test_an_exceptions_args_and_name_still_read(self):
        cases = [(caught, expression) for caught, expression, _ in ALLOWED]
        got = [(case, value) for case, ok, value in (yield self.outcomes(cases))]
        self.assertEqual(got, [((c, x), v) for c, x, v in ALLOWED])

    @defer.inlineCallbacks
    def test_the_refusal_names_what_may_be_read(self):
        err = yield self.run_after("AttributeError", "e.obj").addCallbacks(
            lambda r: self.fail(f"read {r!r}"), lambda f: f.value)
        self.assertEqual(err.message, '"obj" of an exception cannot be read in the sandbox '
                                      "(only its args and name)")
