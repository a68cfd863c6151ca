"""
AsyncResult: the Deferred procpool hands out, which loses no failure and logs none twice.

A Deferred that fails with nobody listening is logged by Twisted as
"Unhandled error in Deferred" when it is garbage-collected, late and out of
context; one that fails and is quietly swallowed loses the error. procpool's
rule: a failure goes to the callbacks chained on the Deferred; if none are
chained when it arrives, it is logged once at once and held, and callbacks
chained later still receive it::

    d = AsyncResult().settle_failures("nightly backup")
    d.errback(ValueError("disk full"))     # logged now: "nightly backup failed"
    d.addErrback(print)                    # still receives the ValueError

If callbacks are chained but none handles it (``d.addCallback(print)``), it is
logged once too, as soon as the chain has run (one reactor turn later, so a
chain built in steps may still handle it), in place of Twisted's "Unhandled
error in Deferred" at garbage collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import DebugInfo
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["AsyncResult"]

log = Logger()

#: Twisted's callback() and errback() both pass through this method: an
#: AsyncResult with nothing chained yet settles a failure there (a Twisted
#: without it gets the errback settle_failures adds otherwise).
_AT_FIRE = callable(getattr(defer.Deferred, "_startRunCallbacks", None))


class AsyncResult(defer.Deferred):
    """
    The Deferred ``run_async``, ``limited_exec`` and ``@interactive`` return.

    Once :meth:`settle_failures` is called, a failure must neither be lost
    nor become "Unhandled error in Deferred": if callbacks are chained by the
    time it arrives, it goes to them; if not, it is logged once and held, and
    callbacks chained later still receive it (collecting Deferreds and
    chaining ``gatherResults`` afterwards is common). Only if none ever come
    is it dropped, already logged. A cancellation is held but never logged.
    """

    _sealed = False
    chained = False
    _held: Failure | None = None

    _logged: BaseException | None = None  # the failure's value, once logged
    _what: str | None = None  # as given to settle_failures, kept with a held failure
    _settle_at_fire = False  # settle_failures' step runs as it fires (no errback)

    def _chaining(self) -> None:
        if self._sealed:
            self.chained = True
            held, self._held = self._held, None
            if held is not None and self.called and self.result is None:
                self.result = held
                # The chain now ending in this failure must not be "unhandled" at GC.
                _report_unhandled(self, self._what)

    def addCallbacks(self, *args: Any, **kwargs: Any) -> defer.Deferred:  # noqa: N802
        self._chaining()
        return super().addCallbacks(*args, **kwargs)

    def addCallback(self, *args: Any, **kwargs: Any) -> defer.Deferred:  # noqa: N802
        self._chaining()
        return super().addCallback(*args, **kwargs)

    def addErrback(self, *args: Any, **kwargs: Any) -> defer.Deferred:  # noqa: N802
        self._chaining()
        return super().addErrback(*args, **kwargs)

    def addBoth(self, *args: Any, **kwargs: Any) -> defer.Deferred:  # noqa: N802
        self._chaining()
        return super().addBoth(*args, **kwargs)

    def settle_failures(self, what: str | None) -> AsyncResult:
        """
        From here on, a failure that no callback chained on by then is held
        for callbacks chained later, and logged once as ``what`` (pass None
        when you log it yourself). Call it before handing the Deferred out::

            d = AsyncResult().settle_failures("my job")
        """
        if _AT_FIRE and not self.called and not _chain_of(self):
            # Nothing comes before the step: it runs as the Deferred fires
            # (_startRunCallbacks), without an errback's four tuples per
            # call for the garbage collector to walk (docs/design.md, "Figures").
            self._settle_at_fire, self._what = True, what
            self._sealed = True
            return self
        self._settling = True
        try:
            self.addErrback(_settle, self, what)
        finally:
            self._settling = False
        self._sealed = True
        return self

    _settling = False

    def _startRunCallbacks(self, result: object) -> None:  # noqa: N802 - Twisted's name
        if self._settle_at_fire and not self.called and isinstance(result, Failure):
            self._settle_at_fire = False
            result = _settle(result, self, self._what)
        super()._startRunCallbacks(result)


def _chain_of(d: defer.Deferred) -> list[Any]:
    """The Deferred's callbacks (``_callbacks`` in newer Twisted, where ``callbacks`` warns)."""
    chain = getattr(d, "_callbacks", None)
    return d.callbacks if chain is None else chain


def _settle(failure: Failure, d: AsyncResult, what: str | None) -> Failure | None:
    # Callbacks the caller added come after this one: the failure is theirs,
    # and if they leave it unhandled, it is logged once when their chain ends.
    if d.chained:
        _report_unhandled(d, what)
        return failure
    d._held, d._what = failure, what
    if what is None or failure.check(defer.CancelledError):
        d._logged = failure.value  # what=None: whoever settled it logs it
        return None
    if d._settling:
        # Failed before the caller even had the Deferred: give them one
        # reactor turn to chain on it before calling the failure unclaimed.
        from twisted.internet import reactor
        reactor.callLater(0, _log_if_unclaimed, d, failure, what)
    else:
        d._logged = failure.value
        log.failure("{what} failed", failure, what=what)
    return None


def _log_if_unclaimed(d: AsyncResult, failure: Failure, what: str) -> None:
    if d._held is failure:
        d._logged = failure.value
        log.failure("{what} failed", failure, what=what)


def _report_unhandled(d: AsyncResult, what: str | None) -> None:
    """From now on, ``d``'s chain ending in a failure is logged once (failures only)."""
    if not isinstance(d._debugInfo, _Unhandled):
        d._debugInfo = _Unhandled(what, d._logged, d._debugInfo)


class _Unhandled(DebugInfo):
    """
    Twisted's DebugInfo for an AsyncResult whose failure went to callbacks
    chained on it. Twisted sets ``failResult`` when the chain ends in a
    failure (and clears it when a later callback handles it), and logs it as
    "Unhandled error in Deferred" when the Deferred is garbage-collected:
    late, or never while someone holds it. Here it is logged one reactor turn
    after the chain ends in it, once, unless by then a callback handled it.
    """

    def __init__(self, what: str | None, logged: BaseException | None,
                 twisted_info: DebugInfo | None) -> None:
        self.what = what or "a callback chained on a procpool Deferred"
        self.logged = logged
        self.pending: Failure | None = None
        self.due = False
        if twisted_info is not None:  # Deferred.debug is on: keep its stacks
            self.creator, self.invoker = twisted_info.creator, twisted_info.invoker

    @property  # type: ignore[override]
    def failResult(self) -> Failure | None:  # noqa: N802 - Twisted's name
        return self.pending

    @failResult.setter
    def failResult(self, failure: Failure | None) -> None:  # noqa: N802
        self.pending = failure
        if failure is not None and not self.due and failure.value is not self.logged:
            from twisted.internet import reactor
            self.due = True
            reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Log the failure the chain still ends in, if it was not logged already."""
        self.due = False
        failure = self.pending
        if (failure is None or failure.value is self.logged
                or failure.check(defer.CancelledError)):
            return
        self.logged = failure.value
        log.failure("{what} failed", failure, what=self.what)

    def __del__(self) -> None:
        self.flush()  # the reactor never ran the check (it stopped first)


def _attach_callbacks(d: defer.Deferred, at_return: Callable[..., Any] | None,
                      at_return_kwargs: dict[str, Any] | None,
                      at_err: Callable[..., Any] | None,
                      at_err_kwargs: dict[str, Any] | None, what: str) -> AsyncResult:
    """
    Hang ``at_return``/``at_err`` on ``d`` and return the :class:`AsyncResult`
    the caller gets: the one rule run_async, limited_exec and the thread
    fallback share. ``d`` itself is used when it is a fresh AsyncResult.
    """
    if isinstance(d, AsyncResult) and not d._sealed and not d.called:
        out = d
    else:
        out = AsyncResult()
        d.chainDeferred(out)
    if at_return is not None:
        out.addCallback(lambda result: at_return(result, **(at_return_kwargs or {})))
    if at_err is not None:
        # One errback, as before: nothing more on the success path.
        out.addErrback(_call_at_err, at_err, at_err_kwargs or {}, out, what)
        out._sealed = True
        return out
    return out.settle_failures(f"run_async: {what}")


def _call_at_err(failure: Failure, at_err: Callable[..., Any], kwargs: dict[str, Any],
                 d: AsyncResult, what: str) -> Any:
    """at_err; what it raises (or hands back) is settled like any failure: logged once, at once."""
    try:
        result = at_err(failure, **kwargs)
    except BaseException:
        result = Failure()
    if isinstance(result, Failure):
        return _settle(result, d, f"run_async: {what}: at_err")
    return result


def _gather(waits: Iterable[defer.Deferred]) -> defer.Deferred[None]:
    """
    Fire with None once every Deferred has; fail with the first failure itself
    (not wrapped in ``FirstError``), after all have fired.
    """
    d = defer.gatherResults(list(waits), consumeErrors=True)
    return d.addCallbacks(lambda _: None, _first_error)


def _first_error(failure: Failure) -> Failure:
    failure.trap(defer.FirstError)
    return failure.value.subFailure


def _chain(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred that fires with ``d``'s result, leaving ``d`` untouched."""
    out: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)
        return result

    d.addBoth(relay)
    return out
