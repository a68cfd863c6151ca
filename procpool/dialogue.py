"""
``@interactive``: write a paused, question-asking dialogue as a plain generator.

::

    from procpool import interactive, returnValue

    @interactive
    def ask_name(caller):
        yield 2                                   # wait two seconds, never blocking
        name = yield "What is your name?"         # caller.msg(question), then the next line
        caller.msg(f"Hello, {name}!")
        return name                               # or returnValue(name)

    d = ask_name(character)                       # a Deferred that fires with the name

What a dialogue may yield:

- a number (``int`` or ``float``, zero or more): pause that many seconds. The
  pause goes through the clock of procpool's task handler
  (``procpool.tasks.get_handler().clock``), or the clock given with
  ``@interactive(clock=...)``, so tests drive time with
  ``twisted.internet.task.Clock``.
- a string: a question. It is sent with ``caller.msg(question)`` and the
  dialogue resumes with the caller's next line of input as the value of the
  ``yield`` expression.
- anything else is an error, raised inside the dialogue at that ``yield``
  (a ``TypeError``; a negative or non-finite number is a ``ValueError``).

The input protocol
------------------

A ``caller`` that can be asked questions offers two methods; the demo server,
an Evennia object or a test double can each provide them::

    caller.msg(text)                    # show text to the player
    caller.get_input(prompt, callback)  # route the player's NEXT line to callback

``get_input`` must not send ``prompt`` again (``@interactive`` has already
sent it with ``msg``); it gets it so that a server can show it again, e.g.
after the player asked for help. The server calls ``callback(line)`` once,
with the line as a string, instead of treating that line as a command. It
may instead call ``callback(exception)`` (an exception instance or a
``twisted.python.failure.Failure``), which is raised inside the dialogue at
the ``yield``: the demo server does that with ``ConnectionDone`` when the
player disconnects. A server should do so (or cancel the dialogue's Deferred):
a question that is never answered keeps its generator waiting forever.
``callback`` may be called from inside ``get_input`` (for answers that are
already waiting). Calls after the first are ignored.

``caller`` is the argument named ``caller``, given positionally or by
keyword (or through ``**kwargs``). Asking a question without one is a
``TypeError`` at that ``yield``; pausing needs no caller.

The end
-------

``return value`` or ``returnValue(value)`` ends the dialogue; the Deferred
returned by the decorated call fires with ``value`` (``None`` when it just
ends). An exception that escapes the dialogue fails that Deferred and is
logged once through ``twisted.logger``. Cancelling the Deferred closes the
generator (its ``finally`` blocks run), stops a pending pause and ignores a
late answer.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Generator
from typing import Any, NoReturn, TypeVar, overload

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool.errors import DialogueAbandoned
from procpool.results import AsyncResult

__all__ = ["interactive", "returnValue", "register_input"]

log = Logger()

F = TypeVar("F", bound=Callable[..., Any])


class _Return(BaseException):
    """Raised by :func:`returnValue`; a BaseException so ``except Exception`` lets it pass."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


def returnValue(value: Any = None) -> NoReturn:  # noqa: N802 - the historical Twisted/Evennia name
    """
    End an ``@interactive`` dialogue with ``value`` (a plain ``return value`` works too).

    Example::

        @interactive
        def pick(caller):
            colour = yield "Red or blue?"
            returnValue(colour.strip().lower())
    """
    raise _Return(value)


def _twisted_return_type() -> type[BaseException] | None:
    # Evennia code calls twisted.internet.defer.returnValue (deprecated since
    # Twisted 24.7); accept its exception so such dialogues still end cleanly.
    from twisted.internet import defer

    return getattr(defer, "_DefGen_Return", None)


# Functions that find a get_input for callers without one (procpool.evennia adds one).
_INPUT_PROVIDERS: list[Callable[[Any], Callable[[str, Callable[[Any], None]], None] | None]] = []


def register_input(provider: Callable[[Any], Any]) -> None:
    """
    Teach ``@interactive`` to ask callers that have no ``get_input`` method:
    ``provider(caller)`` returns a ``get_input(prompt, callback)`` for that
    caller, or None if it does not know it (``procpool.evennia`` registers
    one for Evennia's objects and accounts)::

        register_input(lambda caller: getattr(caller, "ask", None))
    """
    if provider not in _INPUT_PROVIDERS:
        _INPUT_PROVIDERS.append(provider)


def _provided_input(caller: Any) -> Any:
    for provider in _INPUT_PROVIDERS:
        found = provider(caller)
        if found is not None:
            return found
    return None


def _default_clock() -> IReactorTime:
    from procpool.tasks import get_handler

    return get_handler().clock


_MISSING = object()


def _find_caller(signature: inspect.Signature, args: tuple, kwargs: dict) -> Any:
    """The value of the argument named ``caller`` in this call, or _MISSING."""
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return _MISSING  # the call itself will raise the proper TypeError
    if "caller" in bound.arguments:
        return bound.arguments["caller"]
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return bound.arguments.get(name, {}).get("caller", _MISSING)
    return _MISSING


class _Dialogue:
    """Drives one generator: pauses on the clock, questions through the caller."""

    def __init__(self, gen: Generator[Any, Any, Any], name: str, caller: Any,
                 clock: IReactorTime | None) -> None:
        self.gen = gen
        self.name = name
        self.caller = caller
        self.clock = clock
        # A failure is logged here (_fail) and held for callbacks chained
        # later, so it is neither lost nor reported twice.
        self.deferred: Deferred[Any] = AsyncResult(canceller=self._cancel).settle_failures(None)
        self._pause: IDelayedCall | None = None
        self._ticket = 0  # which question a callback answers; stale answers are ignored
        self._running = False
        self._queued: tuple[Any, BaseException | None] | None = None
        self._done = False

    # --- driving the generator -------------------------------------------------

    def start(self) -> Deferred[Any]:
        self._resume(None, None)
        return self.deferred

    def _resume(self, value: Any, error: BaseException | None) -> None:
        if self._done:
            return
        if self._running:
            # an answer given from inside get_input: the loop below picks it up
            self._queued = (value, error)
            return
        self._running = True
        try:
            self._loop(value, error)
        finally:
            self._running = False

    def _loop(self, value: Any, error: BaseException | None) -> None:
        twisted_return = _twisted_return_type()
        while True:
            try:
                if error is not None:
                    yielded = self.gen.throw(error)
                else:
                    yielded = self.gen.send(value)
            except StopIteration as stop:
                self._finish(stop.value)
                return
            except _Return as ret:
                self._finish(ret.value)
                return
            except BaseException as exc:
                if twisted_return is not None and isinstance(exc, twisted_return):
                    self._finish(exc.value)
                    return
                if not isinstance(exc, Exception):
                    raise
                self._fail(Failure())
                return
            value, error = None, None
            try:
                if self._wait_for(yielded):
                    return
            except Exception as exc:
                error = exc  # raised inside the dialogue, at its yield
                continue
            if self._queued is None:
                return
            value, error = self._queued
            self._queued = None

    def _wait_for(self, yielded: Any) -> bool:
        """
        Arrange to resume after ``yielded``. True when the loop must stop and
        wait; False when the answer is already queued in ``self._queued``.
        """
        if isinstance(yielded, (int, float)) and not isinstance(yielded, bool):
            if not math.isfinite(yielded) or yielded < 0:
                raise ValueError(
                    f"@interactive {self.name}: a pause must be a finite number of seconds "
                    f"of at least 0, got {yielded!r}")
            clock = self.clock if self.clock is not None else _default_clock()
            self._pause = clock.callLater(yielded, self._paused_enough)
            return True
        if isinstance(yielded, str):
            self._ask(yielded)
            return self._queued is None
        raise TypeError(
            f"@interactive {self.name} yielded {yielded!r} ({type(yielded).__name__}); "
            "yield a number of seconds to pause or a string to ask the caller a question")

    def _paused_enough(self) -> None:
        self._pause = None
        self._resume(None, None)

    def _ask(self, question: str) -> None:
        caller = self.caller
        if caller is _MISSING or caller is None:
            raise TypeError(
                f"@interactive {self.name} asked {question!r} but has no caller to ask: "
                "a function that asks questions must take an argument named 'caller' "
                "and be given one")
        get_input = getattr(caller, "get_input", None)
        if not callable(get_input):
            get_input = _provided_input(caller)
        msg = getattr(caller, "msg", None)
        if not callable(get_input) or not callable(msg):
            raise TypeError(
                f"@interactive {self.name} asked {question!r} but its caller {caller!r} "
                "does not offer msg(text) and get_input(prompt, callback) "
                "(see procpool.dialogue)")
        self._ticket += 1
        ticket = self._ticket

        def answer(line: Any) -> None:
            if ticket != self._ticket:
                return
            self._ticket += 1  # one answer per question
            if isinstance(line, Failure):
                self._resume(None, line.value)
            elif isinstance(line, BaseException):
                self._resume(None, line)
            else:
                self._resume(line, None)

        msg(question)
        get_input(question, answer)

    # --- endings ------------------------------------------------------------

    def _finish(self, value: Any) -> None:
        self._done = True
        self.deferred.callback(value)

    def _fail(self, failure: Failure) -> None:
        self._done = True
        if failure.check(DialogueAbandoned):
            # The player left and the dialogue did not catch it: it just ends.
            log.info("@interactive {name} ended: {why}", name=self.name, why=failure.value)
            self.deferred.callback(None)
            return
        log.failure("@interactive {name} failed", failure=failure, name=self.name)
        self.deferred.errback(failure)

    def _cancel(self, _deferred: Deferred[Any]) -> None:
        # Deferred.cancel errbacks with CancelledError once this returns.
        self._done = True
        self._ticket += 1
        if self._pause is not None and self._pause.active():
            self._pause.cancel()
        self._pause = None
        try:
            self.gen.close()
        except Exception:
            log.failure("@interactive {name} raised while being cancelled", name=self.name)


@overload
def interactive(func: F) -> F: ...
@overload
def interactive(*, clock: IReactorTime | None = None) -> Callable[[F], F]: ...


def interactive(func: Callable[..., Any] | None = None, *,
                clock: IReactorTime | None = None) -> Any:
    """
    Make a generator function a dialogue that pauses (``yield 5``) and asks
    (``answer = yield "Question?"``) without blocking; calling it returns a
    Deferred that fires with its return value.

    Example::

        @interactive
        def countdown(caller):
            for n in (3, 2, 1):
                caller.msg(str(n))
                yield 1
            ok = yield "Launch?"
            return ok.lower().startswith("y")

        countdown(caller=character).addCallback(print)

    ``@interactive(clock=c)`` takes the pauses from ``c`` instead of the task
    handler's clock. The protocol a ``caller`` offers is in this module's
    docstring.
    """
    if func is None:
        return lambda f: interactive(f, clock=clock)
    if inspect.isasyncgenfunction(func) or inspect.iscoroutinefunction(func):
        raise TypeError(f"@interactive needs a generator function, not async {func.__name__}")
    signature = inspect.signature(func)
    name = getattr(func, "__qualname__", repr(func))

    @functools.wraps(func)
    def start(*args: Any, **kwargs: Any) -> Deferred[Any]:
        caller = _find_caller(signature, args, kwargs)
        if inspect.isgeneratorfunction(func):
            gen = func(*args, **kwargs)  # a bad call raises here, like any call
        else:
            gen = _once(func, args, kwargs)  # a function that never yields
        return _Dialogue(gen, name, caller, clock).start()

    return start


def _once(func: Callable[..., Any], args: tuple, kwargs: dict) -> Generator[Any, Any, Any]:
    return func(*args, **kwargs)
    yield  # makes this a generator: the call above runs at the first send

