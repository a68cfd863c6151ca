"""
``run_async`` and the process-wide pool's lifecycle (``start``, ``stop``, ``stats``).

``run_async`` is the first stage of the drawing at the top of
procpool/pool.py: it takes the reserved keyword arguments out, refuses bad
input synchronously, serialises the work and hands it to one of three
places: the process pool (the default), the reactor's thread pool
(``use_thread``) or the sandbox (``sandbox=True``). Whichever runs it, the
caller gets the same :class:`~procpool.results.AsyncResult`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.python import threadable
from twisted.python.failure import Failure

from procpool import _codec, _services, settings, tasks
from procpool.errors import PoolStopped, ProcPoolTimeout, SettingError
from procpool.pool import ProcessPool
from procpool.results import AsyncResult, _attach_callbacks, _gather
from workers.source import run_source

__all__ = ["run_async", "start", "stop", "stats", "get_pool"]

_pool: Any = None  # a ProcessPool, or a RayPool (PROCPOOL_BACKEND="ray")
_stopped = False  # procpool.stop() was called, and procpool.start() not since


def get_pool() -> Any:
    """
    The process-wide pool (created, not started, on first use): a
    :class:`ProcessPool`, or with ``PROCPOOL_BACKEND = "ray"`` a
    :class:`procpool._ray.RayPool` with the same interface. Asking for it
    after :func:`stop` gives a fresh pool, and ``run_async`` works again::

        procpool.get_pool().stats()["workers"]
    """
    global _pool, _stopped
    if _pool is None or _pool.state in ("stopping", "stopped"):
        if settings.get("PROCPOOL_BACKEND") == "ray":
            from procpool._ray import RayPool  # imports no Ray until it starts
            _pool = RayPool()
        else:
            _pool = ProcessPool()
        _stopped = False
    return _pool


class _Options(NamedTuple):
    """The reserved keyword arguments of one ``run_async`` call, checked."""

    at_return: Callable[..., Any] | None
    at_return_kwargs: dict[str, Any]
    at_err: Callable[..., Any] | None
    at_err_kwargs: dict[str, Any]
    use_thread: bool
    proc_timeout: Any          # as given (None: not given); checked where it is used
    sandbox: bool
    at_progress: Callable[[Any], Any] | None


_RESERVED = frozenset(_Options._fields) | {"at_return_kwargs", "at_err_kwargs"}
_NO_OPTIONS = _Options(None, {}, None, {}, False, None, False, None)


def _take_options(kwargs: dict[str, Any]) -> _Options:
    """Remove the reserved keyword arguments from ``kwargs``; refuse bad ones."""
    if not kwargs or _RESERVED.isdisjoint(kwargs):
        return _NO_OPTIONS  # the common call: nothing reserved (saves about 1 us)
    return _Options(
        at_return=_optional_callable("at_return", kwargs.pop("at_return", None)),
        at_return_kwargs=_optional_dict("at_return_kwargs", kwargs.pop("at_return_kwargs", None)),
        at_err=_optional_callable("at_err", kwargs.pop("at_err", None)),
        at_err_kwargs=_optional_dict("at_err_kwargs", kwargs.pop("at_err_kwargs", None)),
        use_thread=_flag("use_thread", kwargs.pop("use_thread", False)),
        proc_timeout=kwargs.pop("proc_timeout", None),
        sandbox=_flag("sandbox", kwargs.pop("sandbox", False)),
        at_progress=_optional_callable("at_progress", kwargs.pop("at_progress", None)),
    )


def _flag(name: str, value: Any) -> bool:
    # A string such as "no" is true to bool(): refuse anything but a bool.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _optional_callable(name: str, value: Any) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return value


def _optional_dict(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict of keyword arguments, got {type(value).__name__}")
    return value


def _describe(to_execute: Any, args: tuple[Any, ...]) -> str:
    """What the work is called in errors and logs; refuses what cannot run."""
    if isinstance(to_execute, str):
        if args:
            raise TypeError("a source string takes keyword arguments only (its globals), "
                            f"not {len(args)} positional argument(s)")
        return "source string"
    if callable(to_execute):
        return getattr(to_execute, "__qualname__", None) or repr(to_execute)
    raise TypeError(f"run_async needs a callable or a string of Python source, not "
                    f"{type(to_execute).__name__} ({repr(to_execute)[:60]})")


def run_async(to_execute: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> AsyncResult:
    """
    Run a callable or a string of Python source in a worker process.

    Returns an :class:`~procpool.results.AsyncResult` (a Deferred) that
    fires, in the reactor thread, with the result. Reserved keyword
    arguments (never passed on): ``at_return(result, **at_return_kwargs)``,
    ``at_err(failure, **at_err_kwargs)``, ``at_progress(value)`` (each
    value the task reports before it ends: a source string's ``_return``, a
    callable's ``workers.progress(value)``), ``use_thread`` (run in the
    reactor's thread pool instead), ``proc_timeout`` (seconds; kill the
    worker's process group past it) and ``sandbox`` (run an untrusted
    source string in the sandbox; there ``caller`` names the player whose
    quota it counts against). Other keyword arguments go to the callable,
    or become a source string's globals; a source hands values back with
    ``_return(value)``::

        run_async("_return(testvar + 5)", at_return=print, testvar=3)   # prints 8

    With no ``at_err``, a failure is logged once, unless you chained an
    errback of your own on the returned Deferred, which then receives it.
    Called from another thread, the input is checked there and the work is
    handed to the reactor thread (see the README).
    """
    options = _take_options(kwargs)
    what = _describe(to_execute, args)
    if threadable.ioThread is not None and not threadable.isInIOThread():
        return _from_another_thread(to_execute, args, kwargs, options, what)
    d = _dispatch(to_execute, args, kwargs, options, what)
    return _attach_callbacks(d, options.at_return, options.at_return_kwargs,
                             options.at_err, options.at_err_kwargs, what)


def _dispatch(to_execute: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
              options: _Options, what: str) -> defer.Deferred:
    """Send the work where it runs; the reactor thread only."""
    if options.sandbox:
        if options.at_progress is not None:
            raise TypeError("at_progress is not available with sandbox=True (a sandboxed run "
                            "answers once)")
        return _in_sandbox(to_execute, kwargs, options.proc_timeout)
    if options.use_thread or not settings.cached("PROCPOOL_ENABLED"):
        return _in_thread(to_execute, args, kwargs, _timeout(options.proc_timeout),
                          options.at_progress)
    if _stopped:
        return defer.fail(PoolStopped("procpool.stop() was called; call procpool.start() to "
                                      "run more work"))
    return _in_pool(to_execute, args, kwargs, _timeout(options.proc_timeout), what,
                    options.at_progress)


def _from_another_thread(to_execute: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                         options: _Options, what: str) -> AsyncResult:
    """
    Called outside the reactor thread: hand the work over with
    ``callFromThread``. The callbacks run in the reactor thread as always; the
    returned Deferred belongs to the reactor thread too, so chain on it only
    from there (or use at_return/at_err, or ``blockingCallFromThread``).
    """
    from twisted.internet import reactor
    out = _attach_callbacks(AsyncResult(), options.at_return, options.at_return_kwargs,
                            options.at_err, options.at_err_kwargs, what)

    def send() -> None:
        try:
            d = _dispatch(to_execute, args, kwargs, options, what)
        except Exception:
            out.errback(Failure())
        else:
            d.chainDeferred(out)

    reactor.callFromThread(send)
    return out


def _timeout(given: Any) -> float | None:
    if given is None:
        return settings.cached("PROCPOOL_TIMEOUT")
    return settings.check_timeout(given)


def _in_pool(to_execute: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
             timeout: float | None, what: str, on_progress: Any = None) -> defer.Deferred:
    if isinstance(to_execute, str):
        kind, payload = b"s", _codec.dumps((to_execute, kwargs),
                                           "the source string's keyword arguments")
    else:
        kind, payload = b"c", _codec.dumps((to_execute, args, kwargs), f"{what} or its arguments")
    pool = get_pool()
    if "caller" in kwargs and settings.cached("PROCPOOL_PER_CALLER"):
        return _in_share(pool, kwargs["caller"], kind, payload, timeout, on_progress)
    # The pool fires the caller's AsyncResult itself: one Deferred per call;
    # cancelling it cancels the task (ProcessPool._cancel).
    return pool._submit(kind, payload, timeout, AsyncResult(pool.canceller), on_progress)


_shares: Any = None  # procpool/_shares.py's Shares, made on the first call with a caller


def _in_share(pool: ProcessPool, caller: Any, kind: bytes, payload: bytes,
              timeout: float | None, on_progress: Any) -> defer.Deferred:
    """A task counted against ``caller``'s share of the pool (PROCPOOL_PER_CALLER)."""
    global _shares
    from procpool._shares import Shares
    limit = settings.cached("PROCPOOL_PER_CALLER")
    if _shares is None:
        _shares = Shares(limit)
    shares, shares.limit = _shares, limit

    def cancel(out: defer.Deferred) -> None:
        if not shares.cancel(out) and getattr(out, "inner", None) is not None:
            out.inner.cancel()  # in the pool: the pool's own cancel (kills if running)

    def send() -> defer.Deferred:
        inner = pool._submit(kind, payload, timeout, defer.Deferred(pool.canceller), on_progress)
        out.inner = inner
        return inner

    out = AsyncResult(cancel)
    return shares.submit(caller, send, out)


def _reporting_in_thread(to_execute: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                         on_progress: Any) -> Any:
    """Run in a pool thread; each progress value is handed to the reactor thread in order."""
    from twisted.internet import reactor

    from workers.reporting import reporting

    def send(value: Any) -> None:
        reactor.callFromThread(on_progress, value)

    with reporting(send):
        if isinstance(to_execute, str):
            return run_source(to_execute, kwargs, on_return=send)
        return to_execute(*args, **kwargs)


def _in_sandbox(source: Any, kwargs: dict[str, Any], timeout: Any) -> defer.Deferred:
    if not isinstance(source, str):
        raise TypeError("sandbox=True runs source strings only")
    if _stopped and settings.cached("PROCPOOL_ENABLED"):
        return defer.fail(PoolStopped("procpool.stop() was called; call procpool.start() to "
                                      "run more work"))
    from sandbox.host import run_sandboxed
    # `caller` (a character, never JSON) names whose quota the run counts against.
    caller = kwargs.pop("caller", None)
    return run_sandboxed(source, kwargs, timeout=timeout, caller=caller)


def _in_thread(to_execute: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               timeout: float | None, on_progress: Any = None) -> defer.Deferred:
    from twisted.internet import reactor, threads
    if on_progress is not None:
        to_execute, args, kwargs = _reporting_in_thread, (to_execute, args, kwargs,
                                                          on_progress), {}
    if isinstance(to_execute, str):
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                      run_source, to_execute, kwargs)
    else:
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                      to_execute, *args, **kwargs)
    if timeout is not None:
        # A thread cannot be killed: the Deferred fails at the limit and the
        # thread's late result is dropped.
        d.addTimeout(timeout, reactor, onTimeoutCancel=lambda result, t: Failure(
            ProcPoolTimeout(t, killed="its thread, which cannot be killed, was abandoned")))
    return d


def start() -> defer.Deferred:
    """
    Start the worker pool and load persistent tasks; fires when workers answer.

    Optional: ``run_async`` starts the pool on first use. Call it at server
    start-up to pay the start-up cost early and to see start-up errors::

        procpool.start().addCallback(lambda _: print("pool ready"))
    """
    global _stopped
    _stopped = False
    _start_watchdog()
    waits = []
    if settings.get("PROCPOOL_ENABLED"):
        # First: the workers start while the task handler opens its storage.
        waits.append(get_pool().start())
    waits.append(tasks.get_handler().start())
    if settings.get("PROCPOOL_METRICS_PORT"):  # its import (twisted.web) costs ~40 ms
        from procpool.metrics import start_metrics
        waits.append(start_metrics(pool=get_pool))
    return _gather(waits)


def _start_watchdog() -> None:
    threshold = settings.get("PROCPOOL_WATCHDOG")
    if threshold is not None:
        from procpool import watchdog
        watchdog.start_watchdog(threshold)


def stop(grace: float | None = None) -> defer.Deferred:
    """
    Stop the pool (queued tasks fail with PoolStopped), the sandbox's
    children and the task handler's storage. Running tasks get ``grace``
    seconds (default ``PROCPOOL_STOP_GRACE``; 0 kills at once) to finish,
    then their workers' process groups are killed and their Deferreds fail
    with PoolStopped. Registered to run at reactor shutdown when the pool
    starts; fires when every process has ended. Until :func:`start` is
    called again, ``run_async`` fails its Deferred with PoolStopped
    (threads excepted)::

        procpool.stop(grace=1).addCallback(lambda _: print("every worker has ended"))
    """
    global _stopped
    if grace is None:
        grace = settings.get("PROCPOOL_STOP_GRACE")
    elif isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
        raise SettingError(f"stop()'s grace must be zero or more seconds, got {grace!r}")
    _stopped = True
    if "procpool.watchdog" in sys.modules:
        sys.modules["procpool.watchdog"].stop_watchdog()
    waits = [] if _pool is None else [_pool.stop(grace)]
    waits += _services.stop_registered()
    waits.append(defer.maybeDeferred(tasks.get_handler().stop))
    return _gather(waits)


def stats() -> dict[str, Any]:
    """
    The pool's figures, for a status command or a metrics exporter::

        >>> procpool.stats()["tasks_done"], procpool.stats()["watchdog_threshold"]
        (0, None)

    Besides the pool's own (``ProcessPool.stats()``): the fair shares
    (``per_caller_limit``, ``callers_in_pool``, ``callers_waiting``,
    ``tasks_waiting_for_share``), the watchdog (``watchdog_threshold``, None
    when off, ``watchdog_stalls``, ``watchdog_last_stall_s``,
    ``watchdog_last_stall_in``) and ``metrics_url`` (None unless served);
    docs/operations.md explains each.
    """
    figures = ProcessPool.figures_before_start() if _pool is None else _pool.stats()
    shares = _shares.figures() if _shares is not None else {
        "callers": 0, "callers_waiting": 0, "waiting_for_share": 0}
    figures.update(per_caller_limit=settings.get("PROCPOOL_PER_CALLER"),
                   callers_in_pool=shares["callers"], callers_waiting=shares["callers_waiting"],
                   tasks_waiting_for_share=shares["waiting_for_share"])
    from procpool import watchdog
    figures.update(watchdog.figures())
    metrics = sys.modules.get("procpool.metrics")
    exporter = getattr(metrics, "_running", None)
    figures["metrics_url"] = None
    if exporter is not None:
        host = exporter.listening.getHost()
        figures["metrics_url"] = f"http://{host.host}:{host.port}/metrics"
    return figures
