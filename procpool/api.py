"""
``run_async`` and the process-wide pool's lifecycle (``start``, ``stop``, ``stats``).

See procpool/pool.py for the drawing of the path one call takes.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from procpool import settings
from procpool.errors import PoolStopped, ProcPoolTimeout
from procpool.pool import ProcessPool, dumps
from procpool.results import AsyncResult
from workers.source import run_source

__all__ = ["run_async", "start", "stop", "stats", "get_pool", "attach_callbacks", "AsyncResult"]


RESERVED = ("at_return", "at_return_kwargs", "at_err", "at_err_kwargs", "use_thread",
            "proc_timeout", "sandbox")

_pool: ProcessPool | None = None
_stopped = False  # procpool.stop() was called, and procpool.start() not since


def get_pool() -> ProcessPool:
    """
    The process-wide pool (created, not started, on first use). Asking for it
    after :func:`stop` gives a fresh pool, and ``run_async`` works again.
    """
    global _pool, _stopped
    if _pool is None or _pool.state in ("stopping", "stopped"):
        _pool = ProcessPool()
        _stopped = False
    return _pool


def _timeout(value: Any) -> float | None:
    if value is None:
        value = settings.cached("PROCPOOL_TIMEOUT")
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"proc_timeout must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"proc_timeout must be zero or more seconds, got {value!r}")
    if value == 0 or math.isinf(value):
        return None  # no limit (ampoule killed at once on 0, pool.md defect 3)
    return float(value)


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


def run_async(to_execute: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> defer.Deferred:
    """
    Run a callable or a string of Python source in a worker process.

    Returns a Deferred that fires, in the reactor thread, with the result.
    Reserved keyword arguments (never passed on): ``at_return(result,
    **at_return_kwargs)``, ``at_err(failure, **at_err_kwargs)``,
    ``use_thread`` (run in the reactor's thread pool instead),
    ``proc_timeout`` (seconds; kill the worker's process group past it) and
    ``sandbox`` (run an untrusted source string in the sandbox; there
    ``caller`` names the player whose quota it counts against). Other
    keyword arguments go to the callable, or become a source string's
    globals; a source hands values back with ``_return(value)``::

        run_async("_return(testvar + 5)", at_return=print, testvar=3)   # prints 8

    With no ``at_err``, a failure is logged once, unless you chained an
    errback of your own on the returned Deferred, which then receives it.
    """
    at_return = _optional_callable("at_return", kwargs.pop("at_return", None))
    at_return_kwargs = _optional_dict("at_return_kwargs", kwargs.pop("at_return_kwargs", None))
    at_err = _optional_callable("at_err", kwargs.pop("at_err", None))
    at_err_kwargs = _optional_dict("at_err_kwargs", kwargs.pop("at_err_kwargs", None))
    use_thread = bool(kwargs.pop("use_thread", False))
    timeout = _timeout(kwargs.pop("proc_timeout", None))
    sandboxed = bool(kwargs.pop("sandbox", False))

    if isinstance(to_execute, str):
        if args:
            raise TypeError("a source string takes keyword arguments only (its globals), "
                            f"not {len(args)} positional argument(s)")
        what = "source string"
    elif callable(to_execute):
        what = getattr(to_execute, "__qualname__", None) or repr(to_execute)
    else:
        text = repr(to_execute)
        raise TypeError(f"run_async needs a callable or a string of Python source, not "
                        f"{type(to_execute).__name__} ({text[:60]})")

    if _stopped and not use_thread and settings.cached("PROCPOOL_ENABLED"):
        return attach_callbacks(
            defer.fail(PoolStopped("procpool.stop() was called; call procpool.start() to "
                                   "run more work")),
            at_return, at_return_kwargs, at_err, at_err_kwargs, what)
    if sandboxed:
        if not isinstance(to_execute, str):
            raise TypeError("sandbox=True runs source strings only")
        from sandbox.host import run_sandboxed
        # `caller` (a character, never JSON) names whose quota the run counts against.
        caller = kwargs.pop("caller", None)
        d = run_sandboxed(to_execute, kwargs, timeout=timeout, caller=caller)
    elif use_thread or not settings.cached("PROCPOOL_ENABLED"):
        d = _in_thread(to_execute, args, kwargs, timeout)
    else:
        pool = get_pool()
        if isinstance(to_execute, str):
            payload = dumps((to_execute, kwargs), "the source string's keyword arguments")
            kind = b"s"
        else:
            payload = dumps((to_execute, args, kwargs), f"{what} or its arguments")
            kind = b"c"
        # The pool fires the caller's Deferred itself: one Deferred per call.
        d = pool.submit(kind, payload, timeout, AsyncResult())

    return attach_callbacks(d, at_return, at_return_kwargs, at_err, at_err_kwargs, what)


def attach_callbacks(d: defer.Deferred, at_return: Callable[..., Any] | None,
                     at_return_kwargs: dict[str, Any] | None, at_err: Callable[..., Any] | None,
                     at_err_kwargs: dict[str, Any] | None, what: str) -> AsyncResult:
    """
    Hang ``at_return``/``at_err`` on ``d`` the way run_async does, and return
    the :class:`AsyncResult` the caller gets (shared with ``limited_exec``).
    """
    if isinstance(d, AsyncResult) and not d._sealed and not d.called:
        out = d
    else:
        out = AsyncResult()
        d.chainDeferred(out)
    if at_return is not None:
        out.addCallback(lambda result: at_return(result, **(at_return_kwargs or {})))
    if at_err is not None:
        out.addErrback(lambda failure: at_err(failure, **(at_err_kwargs or {})))
        out._sealed = True
        return out
    return out.settle_failures(f"run_async: {what}")


def _in_thread(to_execute: Any, args: tuple, kwargs: dict, timeout: float | None
               ) -> defer.Deferred:
    from twisted.internet import reactor, threads
    if isinstance(to_execute, str):
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                      run_source, to_execute, kwargs)
    else:
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                      to_execute, *args, **kwargs)
    if timeout is not None:
        # A thread cannot be killed: the Deferred fails at the limit and the
        # thread's late result is dropped.
        d.addTimeout(timeout, reactor,
                     onTimeoutCancel=lambda result, t: Failure(ProcPoolTimeout(t)))
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
    waits = []
    if settings.get("PROCPOOL_ENABLED"):
        waits.append(get_pool().start())
    if importlib.util.find_spec("procpool.tasks") is not None:
        from procpool import tasks
        waits.append(tasks.get_handler().start())
    d = defer.gatherResults(waits, consumeErrors=True)
    return d.addCallbacks(lambda _: None, _first_error)


def stop() -> defer.Deferred:
    """
    Stop the pool (queued tasks fail with PoolStopped), the sandbox's
    children and the task handler's storage. Registered to run at reactor
    shutdown when the pool starts; fires when every process has ended.
    Until :func:`start` is called again, ``run_async`` fails its Deferred
    with PoolStopped (threads excepted).
    """
    global _stopped
    _stopped = True
    waits = []
    if _pool is not None:
        waits.append(_pool.stop())
    host = sys.modules.get("sandbox.host")
    if host is not None and hasattr(host, "stop"):
        waits.append(defer.maybeDeferred(host.stop))
    tasks = sys.modules.get("procpool.tasks")
    if tasks is not None:
        waits.append(defer.maybeDeferred(tasks.get_handler().stop))
    d = defer.gatherResults(waits, consumeErrors=True)
    return d.addCallbacks(lambda _: None, _first_error)


def _first_error(failure: Failure) -> Failure:
    failure.trap(defer.FirstError)
    return failure.value.subFailure


def stats() -> dict[str, Any]:
    """
    The pool's figures, for a status command or a metrics exporter::

        >>> sorted(procpool.stats())[:3]
        ['busy', 'idle', 'in_flight']
    """
    if _pool is None:
        return {"state": "not started", "workers": 0, "busy": 0, "idle": 0, "starting": 0,
                "queued": 0, "in_flight": 0, "pids": [], "tasks_done": 0, "tasks_failed": 0,
                "tasks_timed_out": 0, "tasks_crashed": 0, "workers_started": 0,
                "workers_crashed": 0, "workers_recycled": 0, "workers_failed_to_start": 0,
                "latency_p50_ms": None, "latency_p99_ms": None}
    return _pool.stats()
