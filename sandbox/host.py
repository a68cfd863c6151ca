"""
Host side of the sandbox: run player source in confined one-shot children.

    >>> from procpool import limited_exec
    >>> d = limited_exec("_return(a + b)", a=1, b=2)      # fires with 3

A request's path (the reactor thread throughout; nothing here blocks)::

    limited_exec / run_sandboxed
      -> checks: source is a str, context is JSON-able (refused at once)
      -> per-caller quota (SandboxBusy at once) -> global limit (FIFO queue)
      -> an idle warm child (confined, blocked on its first read), else a cold one
      -> request JSON written to its stdin, stdin closed; wall-clock deadline armed
      -> ready line + one reply line read back (size-capped), child exits
      -> JSON parsed (never unpickled), depth-checked -> Deferred fires
      -> a replacement warm child is started

Settings are read when the pool is created (``get_pool()`` on first use);
the timeout is read per call. ``stop()`` kills every child; the next call
creates a fresh pool with the settings then in force.
"""

from __future__ import annotations

import binascii
import importlib.util
import json
import marshal
import os
import sys
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool import settings
from procpool._services import register_stop
from procpool.errors import PoolStopped, SandboxBusy, SandboxUnavailable, SettingError
from procpool.results import _attach_callbacks
from sandbox._process import Child, Request
from sandbox.child import BOOTSTRAP, PRECOMPILED
from sandbox.replies import MAX_REQUEST, encode_request

__all__ = ["SandboxPool", "get_pool", "limited_exec", "run_sandboxed", "stop"]

log = Logger()


def _child_paths() -> list[str]:
    """
    Directories the child needs on sys.path: the repository (for ``sandbox`` and
    ``workers.source``) and the two packages the sandbox depends on.
    """
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for name in ("RestrictedPython", "pyseccomp"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        where = os.path.dirname(spec.origin)
        if spec.submodule_search_locations:  # a package: its parent directory
            where = os.path.dirname(where)
        if where not in paths:
            paths.append(where)
    return paths


_precompiled: str | None = None


def _precompiled_modules() -> str:
    """
    The child's modules from this repository (PRECOMPILED) compiled here once,
    marshalled, base64.

    Every child would otherwise compile them from source (a few milliseconds
    of CPU each, since the child writes no bytecode cache). They are compiled
    from the repository's files, never from anything a player sent; a child
    running another interpreter build ignores them (see ``config["build"]``).
    """
    global _precompiled
    if _precompiled is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        codes = {}
        for name in PRECOMPILED:
            path = os.path.join(root, *name.split("."))
            path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
            with open(path, encoding="utf-8") as f:
                codes[name] = compile(f.read(), path, "exec", dont_inherit=True)
        _precompiled = binascii.b2a_base64(marshal.dumps(codes), newline=False).decode("ascii")
    return _precompiled


def _resolve_ids(user: str | int, group: str | int) -> tuple[int | None, int | None]:
    """uid/gid to drop to; (None, None) when not root or when the sandbox user is root."""
    if os.geteuid() != 0:
        return None, None
    import grp
    import pwd

    try:
        uid = int(user) if str(user).isdigit() else pwd.getpwnam(str(user)).pw_uid
        gid = int(group) if str(group).isdigit() else grp.getgrnam(str(group)).gr_gid
    except KeyError as e:
        raise SandboxUnavailable(f"sandbox user or group does not exist: {e}")
    if uid == 0:
        return None, None
    return uid, gid


def _caller_key(caller: Any) -> Hashable | None:
    if caller is None:
        return None
    try:
        hash(caller)
        return caller
    except TypeError:
        return ("id", id(caller))


def _sandbox_timeout(given: Any) -> float:
    """
    Not given: PROCPOOL_SANDBOX_TIMEOUT. Given: the one rule for time limits
    (procpool.settings.check_timeout), and a sandboxed run always has one.
    """
    if given is None:
        return float(settings.get("PROCPOOL_SANDBOX_TIMEOUT"))
    limit = settings.check_timeout(given, "proc_timeout")
    if limit is None:
        raise SettingError(f"a sandboxed run always has a time limit; proc_timeout={given!r} "
                           "means none. Leave it out to get PROCPOOL_SANDBOX_TIMEOUT, or give "
                           "a positive number of seconds")
    return limit


class SandboxPool:
    """
    Warm, confined one-shot children and the limits around them.

    Every argument left as None comes from the settings (``PROCPOOL_SANDBOX_*``).
    ``user``/``group`` name who the child becomes when the host is root
    (``"root"`` keeps it root, still confined). Example::

        pool = SandboxPool(warm=1)
        d = pool.run("_return(n * 2)", {"n": 21})   # fires with 42
        pool.stop()
    """

    def __init__(self, reactor: Any = None, *, clock: Any = None, warm: int | None = None,
                 max_runs: int | None = None, per_caller: int | None = None,
                 cpu: int | None = None, memory: int | None = None,
                 max_output: int | None = None, user: str | int | None = None,
                 group: str | int | None = None, python: str | None = None,
                 degraded: bool | None = None, restricted: bool | None = None,
                 landlock: bool = True, namespaces: bool = False,
                 seccomp_kill: bool = False, _seccomp: bool = True) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        get = settings.get
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.warm = warm if warm is not None else get("PROCPOOL_SANDBOX_WARM")
        self.max_runs = max_runs or get("PROCPOOL_SANDBOX_MAX_RUNS")
        self.per_caller = per_caller or get("PROCPOOL_SANDBOX_PER_CALLER")
        self.max_output = max_output or get("PROCPOOL_SANDBOX_MAX_OUTPUT")
        self.degraded = degraded if degraded is not None else get("PROCPOOL_SANDBOX_DEGRADED")
        self.restricted = (restricted if restricted is not None
                           else get("PROCPOOL_SANDBOX_RESTRICTED"))
        self.python = python or get("PROCPOOL_SANDBOX_PYTHON") or sys.executable
        uid, gid = _resolve_ids(user if user is not None else get("PROCPOOL_SANDBOX_USER"),
                                group if group is not None else get("PROCPOOL_SANDBOX_GROUP"))
        self.config = {
            "paths": _child_paths(),
            "limits": {"cpu": cpu or get("PROCPOOL_SANDBOX_CPU"),
                       "memory": memory or get("PROCPOOL_SANDBOX_MEMORY"),
                       "uid": uid, "gid": gid, "seccomp": _seccomp,
                       "seccomp_kill": seccomp_kill, "landlock": landlock,
                       "namespaces": namespaces},
            "restricted": self.restricted,
            "degraded": self.degraded,
            "max_output": self.max_output,
            "max_request": MAX_REQUEST,
            "build": [sys.hexversion, sys.implementation.cache_tag],
        }
        self._args = [self.python, "-I", "-S", "-B", "-c", BOOTSTRAP, json.dumps(self.config),
                      _precompiled_modules()]
        self._idle: list[Child] = []
        self._starting: set[Child] = set()
        self._running: set[Child] = set()
        self._children: set[Child] = set()
        self._queue: deque[Request] = deque()
        self._per_caller: dict[Hashable, int] = {}
        self._start_failed: str | None = None
        self._stopped = False

    # --- public ----------------------------------------------------------------
    def start(self) -> None:
        """Start the warm children now instead of at the first run."""
        self._refill()

    def run(self, source: str, context: dict[str, Any] | None = None, *,
            timeout: float | None = None, caller: object | None = None) -> defer.Deferred[Any]:
        """
        Run ``source`` in a fresh confined child; fire with its JSON-able result.

        Bad source types, unusable context and bad timeouts are refused at once
        (``TypeError``/``SerializationError``/``ValueError``). The Deferred fails
        with :class:`SandboxError` (player code failed), ``ProcPoolTimeout``,
        :class:`SandboxBusy` (this caller's quota is in use),
        :class:`SandboxUnavailable` or ``PoolStopped``. Example:
        ``pool.run("_return(x + 1)", {"x": 1})`` fires with 2.
        """
        payload = encode_request(source, dict(context or {}))
        timeout = _sandbox_timeout(timeout)
        if self._stopped:
            return defer.fail(PoolStopped("the sandbox pool is stopped"))
        key = _caller_key(caller)
        if key is not None:
            active = self._per_caller.get(key, 0)
            if active >= self.per_caller:
                return defer.fail(SandboxBusy(
                    f"caller already has {active} sandboxed runs in progress "
                    f"(PROCPOOL_SANDBOX_PER_CALLER={self.per_caller}); try again when one ends"))
            self._per_caller[key] = active + 1
        request = Request(payload, float(timeout), key)
        request.deferred.addBoth(self._release_caller, key)
        self._queue.append(request)
        self._pump(refill=False)
        return request.deferred

    def stop(self) -> defer.Deferred[None]:
        """Fail queued and running requests with PoolStopped, kill every child; fire when gone."""
        self._stopped = True
        while self._queue:
            self._queue.popleft().finish(Failure(PoolStopped("the sandbox pool was stopped")))
        for child in list(self._children):
            if child.request is not None:
                child.request.finish(Failure(PoolStopped("the sandbox pool was stopped")))
            child.kill()
        waits = [c.ended for c in self._children]
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def stats(self) -> dict[str, int]:
        """Counts of children and requests, e.g. ``{"idle": 2, "running": 0, ...}``."""
        return {"idle": len(self._idle), "starting": len(self._starting),
                "running": len(self._running), "queued": len(self._queue),
                "children": len(self._children)}

    def idle_pids(self) -> list[int]:
        """Process ids of warm children that are confined and waiting for a request."""
        return [c.pid for c in self._idle if c.pid is not None]

    # --- internals -------------------------------------------------------------
    def _release_caller(self, result: Any, key: Hashable | None) -> Any:
        if key is not None:
            left = self._per_caller.get(key, 1) - 1
            if left > 0:
                self._per_caller[key] = left
            else:
                self._per_caller.pop(key, None)
        return result

    def _spawn(self) -> Child:
        child = Child(self)
        # No path=: Twisted then uses posix_spawn instead of forking this large
        # process in Python; the child changes to "/" as its first step.
        self.reactor.spawnProcess(child, self.python, self._args, env={},
                                  childFDs={0: "w", 1: "r", 2: "r"})
        self._children.add(child)
        return child

    def _pump(self, refill: bool = True) -> None:
        """
        Hand queued requests to idle (else new) children, then top up the warm ones.

        With ``refill=False`` (a new request) the replacement for a child just
        taken is started only when no idle child is left: a starting
        interpreter costs tens of milliseconds of CPU, which would otherwise
        compete with the run it was taken for. The top-up then happens when a
        run ends.
        """
        while self._queue and len(self._running) < self.max_runs and not self._stopped:
            request = self._queue.popleft()
            if request.done:
                continue
            child = self._idle.pop() if self._idle else self._spawn()
            self._running.add(child)
            child.start_request(request)
        if refill or not self._idle:
            self._refill()

    def _refill(self) -> None:
        while (not self._stopped and self._start_failed is None
               and len(self._idle) + len(self._starting) < self.warm):
            self._starting.add(self._spawn())

    def _child_ready(self, child: Child) -> None:
        self._start_failed = None
        if child in self._starting:
            self._starting.discard(child)
            self._idle.append(child)

    def _warn_about_run(self, child: Child) -> None:
        layers = (child.header or {}).get("layers")
        if isinstance(layers, dict) and "degraded" in layers:
            log.warn("sandboxed run without OS confinement (PROCPOOL_SANDBOX_DEGRADED): "
                     "{reason}", reason=layers["degraded"])
        if not self.restricted:
            log.warn("sandboxed run without the language layer "
                     "(PROCPOOL_SANDBOX_RESTRICTED is off: a testing switch)")

    def _child_ended(self, child: Child) -> None:
        self._children.discard(child)
        self._running.discard(child)
        if child in self._idle:
            self._idle.remove(child)
        if child in self._starting:
            self._starting.discard(child)
            if child.header is None or child.header.get("ready") is not True:
                reason = child._start_error()
                if self._start_failed is None:
                    log.error("sandbox children cannot start: {reason}", reason=reason)
                self._start_failed = reason
        if not self._stopped:
            self._pump()


_pool: SandboxPool | None = None


def get_pool(reactor: Any = None) -> SandboxPool:
    """
    The process-wide sandbox pool, created with the current settings on first use.

    Example: ``get_pool().stats()["idle"]``.
    """
    global _pool
    if _pool is None:
        _pool = SandboxPool(reactor)
        register_stop("sandbox", stop)
        _pool.start()
    return _pool


def run_sandboxed(source: str, context: dict[str, Any], *, timeout: float | None = None,
                  caller: object | None = None) -> defer.Deferred[Any]:
    """
    Run untrusted ``source`` with ``context`` as its globals in the shared sandbox pool.

    The Deferred fires with the JSON-able result (``_return`` rules as for any
    source string) or fails (see :meth:`SandboxPool.run`). Example:
    ``run_sandboxed("_return(len(s))", {"s": "abc"})`` fires with 3.
    """
    return get_pool().run(source, context, timeout=timeout, caller=caller)


def limited_exec(source: str, at_return: Callable[[Any], Any] | None = None,
                 at_err: Callable[[Failure], Any] | None = None, timeout: float | None = None,
                 caller: object | None = None, **context: Any) -> defer.Deferred[Any]:
    """
    Run a player's source string in the sandbox; keyword arguments become its globals.

    ``at_return(result)`` runs on success, ``at_err(failure)`` on failure (an
    error raised in ``at_return`` reaches ``at_err`` too), exactly as with
    ``run_async``: without ``at_err``, a failure goes to an errback you chain
    on the returned Deferred, or is logged once if there is none. Example::

        limited_exec("_return(sum(rolls))", at_return=caller.msg, rolls=[3, 4])
    """
    d = run_sandboxed(source, context, timeout=timeout, caller=caller)
    return _attach_callbacks(d, at_return, None, at_err, None,
                            f"sandboxed source {source[:60]!r}")


def stop() -> defer.Deferred[None]:
    """
    Stop the shared sandbox pool (kill its children); fires when they are gone.

    Example: ``yield sandbox.host.stop()`` in a test's tearDown, or from ``procpool.stop()``.
    """
    global _pool
    pool, _pool = _pool, None
    if pool is None:
        return defer.succeed(None)
    return pool.stop()
