"""
The Ray backend's link to the cluster (procpool/_ray.py has the pool): the
one thread that makes every Ray call, and how Ray's answers and errors are
read. One process has one Ray connection (Ray's own rule), so the link is
process-wide and outlives a stopped pool.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from procpool.errors import RemoteError, SettingError, WorkerCrashed
from workers import ray_task

__all__ = ["Link", "Task", "freeze_the_heap", "link_for", "ray_error"]

log = Logger()

_RESOURCES_EVERY = 5.0  # seconds between looks at the cluster's CPU count (for stats)
# A payload this big goes to Ray as an argument of its own (workers/ray_task.py),
# not copied behind the header (a 1 MiB echo: 46% slower than plain Ray's, then 34%).
_APART = 64 * 1024


class Task:
    """One task handed to Ray; settled once, by its answer, its time limit, a cancel or stop."""

    __slots__ = ("kind", "payload", "timeout", "deferred", "submitted", "ref", "timer", "counts")

    def __init__(self, kind: bytes, payload: bytes, timeout: float | None,
                 deferred: defer.Deferred, counts: dict[str, int]) -> None:
        self.kind, self.payload, self.timeout, self.deferred = kind, payload, timeout, deferred
        self.counts = counts    # the pool's counters; a scratch dict for the start's no-op
        self.submitted = time.perf_counter()
        self.ref: Any = None    # the ObjectRef, set in the link's thread
        self.timer: Any = None  # the time limit's DelayedCall


class Link:
    """
    This process's connection to a Ray cluster and the one thread that
    makes Ray calls. Work goes in with :meth:`call`; answers come back to
    the reactor with ``callFromThread``.
    """

    def __init__(self, reactor: Any, address: str) -> None:
        self.reactor, self.address = reactor, address
        self.remote: Any = None      # workers.ray_task.run as a Ray remote function
        # May a lone small task be handed to Ray from the reactor's thread (see
        # Link.may_send_here)? Not through Ray Client, whose .remote() is a network call.
        self.here = False
        self.error: BaseException | None = None
        self.cpus = 0
        self.frozen = False  # gc.freeze() done after connecting (RayPool, once a connection)
        self.resources_at = 0.0
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self.thread = threading.Thread(target=self._serve, name="procpool-ray", daemon=True)
        self.thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in the link's thread, after the calls already asked for."""
        self.calls.put((function, args))

    def _serve(self) -> None:
        while True:
            item = self.calls.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except BaseException:  # noqa: BLE001 - the thread must go on
                self.reactor.callFromThread(log.failure, "procpool's Ray thread: a call failed")

    # -- in the link's thread ---------------------------------------------

    def connect(self, then: Callable[[BaseException | None], Any]) -> None:
        """
        Connect (or start a local cluster); ``then(error or None)`` in the
        reactor. After a failed attempt the next pool's start tries again.
        """
        if self.remote is None:
            self.error = None
            try:
                self._connect()
            except BaseException as exc:  # noqa: BLE001 - reported to the reactor
                self.error = exc
        self.reactor.callFromThread(then, self.error)

    def _connect(self) -> None:
        loopback = _on_loopback(self.address)
        if loopback:
            # Keep this driver (and a cluster started here) on 127.0.0.1: without
            # this Ray moves a loopback address to the machine's outward interface.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray
        if loopback:
            from ray._private import ray_constants  # read when Ray was imported: set it too
            ray_constants.ENABLE_RAY_CLUSTER = False

        if not ray.is_initialized():  # else the game's own ray.init() is used as it is
            options: dict[str, Any] = {"include_dashboard": False}
            if self.address == "local":
                options.update(address="local", _node_ip_address="127.0.0.1")
            else:
                options["address"] = self.address
            ray.init(**options)
        self.remote = ray.remote(max_retries=0, num_cpus=1, name="procpool")(ray_task.run)
        self.here = not _through_ray_client(ray)
        self.look_at_resources()

    def look_at_resources(self) -> None:
        """Note the cluster's CPU count (for stats); at most every few seconds."""
        now = time.monotonic()
        if self.remote is None or now - self.resources_at < _RESOURCES_EVERY:
            return
        import ray
        self.resources_at = now
        self.cpus = int(ray.cluster_resources().get("CPU", 0))

    def may_send_here(self, task: Task) -> bool:
        """
        May ``task`` be handed to Ray from the caller's thread (the reactor's)?
        Yes for a small task on a connection that is not Ray Client: its
        ``.remote()`` queues it in this process's Ray core worker and returns,
        in CPU time only (the remote function was exported by the start's
        no-op, which the pool waits for before it sends from here, and an
        argument under ``_APART`` is sent inline, not put in Ray's object
        store). That saves a wake of the link's thread, about
        80 us of a lone task's round trip; a burst still goes through the
        link's thread, so the reactor never spends more than one task's
        ``.remote()`` this way in one turn.
        """
        return self.here and len(task.payload) < _APART

    def send(self, pool: Any) -> None:
        """
        Hand Ray every task waiting in ``pool``'s outbox (one call of this
        thread for a burst, not one per task).
        """
        pool._sending = False  # before draining: a task put after this asks for a new send
        outbox = pool._outbox
        while outbox:
            self.send_one(pool, outbox.popleft())

    def send_one(self, pool: Any, task: Task) -> None:
        """
        Hand ``task`` to Ray; its end comes back through its ObjectRef's
        callback into the pool's inbox. In the link's thread, or in the
        reactor's for a task that is not in the outbox (``may_send_here``).
        """
        if task.deferred.called:  # cancelled or timed out before it was sent
            return
        if self.remote is None:
            self.reactor.callFromThread(pool._unsent, task, self.error)
            return
        try:
            if len(task.payload) < _APART:
                ref = self.remote.remote(b"".join((pool._header, task.kind, task.payload)))
            else:
                ref = self.remote.remote(pool._header + task.kind, task.payload)
            task.ref = ref
            _when_done(ref, lambda outcome, task=task: pool._arrived(task, outcome))
        except BaseException as exc:  # noqa: BLE001 - the task fails, not the thread
            self.reactor.callFromThread(pool._unsent, task, exc)
            self.cancel(task)  # if Ray has it, it must not run unheard
            return
        task.payload = b""

    def cancel(self, task: Task) -> None:
        """Force-cancel a sent task: Ray ends the worker process running it."""
        if task.ref is None:
            return
        import ray
        try:
            ray.cancel(task.ref, force=True)
        except Exception as exc:  # noqa: BLE001 - e.g. it finished meanwhile
            self.reactor.callFromThread(log.debug, "ray.cancel: {error!r}", error=exc)


def _when_done(ref: Any, callback: Callable[[Any], Any]) -> None:
    """
    ``callback(value or exception)`` in a thread of Ray's once ``ref`` is
    done: through ``ObjectRef._on_completed`` (Ray's own, under ``future()``;
    10% more tasks a second without the Future between), else ``future()``.
    """
    on_completed = getattr(ref, "_on_completed", None)
    if on_completed is not None:
        on_completed(callback)
        return

    def unwrap(future: Any) -> None:
        try:
            outcome = future.result()
        except BaseException as exc:  # noqa: BLE001 - the ref's error is the outcome
            outcome = exc
        callback(outcome)

    ref.future().add_done_callback(unwrap)


def _through_ray_client(ray: Any) -> bool:
    """Is this process's Ray connection a Ray Client one (``ray://``)?"""
    try:
        from ray.util.client import ray as client
    except ImportError:
        return False
    return bool(client.is_connected())


def _on_loopback(address: str) -> bool:
    """Is ``address`` ('local', 'host:port', 'ray://host:port') this machine's loopback?"""
    if address == "local":
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


_link: Link | None = None


def link_for(reactor: Any, address: str) -> Link:
    """
    This process's link, made on first use; a different ``address`` than the
    link's raises :class:`SettingError` (Ray allows one cluster a process).
    """
    global _link
    if _link is None:
        _link = Link(reactor, address)
    elif _link.address != address:
        raise SettingError(f"this process is connected to the Ray cluster at "
                           f"{_link.address!r}; Ray allows one cluster per process, so "
                           f"PROCPOOL_RAY_ADDRESS={address!r} cannot be used until it restarts")
    return _link


def ray_error(exc: BaseException) -> BaseException:
    """What a failed ObjectRef means for the task: a crash, or the runner's own failure."""
    from ray import exceptions as rx
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, rx.RayTaskError):
        # workers.ray_task.run itself failed: procpool is not importable on the node, say.
        cause = getattr(exc, "cause", None)
        name = type(cause).__name__ if cause is not None else type(exc).__name__
        return RemoteError(name, f"the Ray task could not run procpool's runner: {cause or first}",
                           str(exc))
    if isinstance(exc, rx.TaskCancelledError):
        return WorkerCrashed(None, how="was cancelled on the Ray cluster by someone other than "
                                       "procpool")
    if isinstance(exc, rx.RayError):
        return WorkerCrashed(None, how=f"on the Ray cluster died while running the task "
                                       f"({type(exc).__name__}: {first[:300]})")
    return RemoteError(type(exc).__name__, str(exc))


def _disconnect(patience: float = 30.0) -> None:
    """
    End this process's Ray connection (``ray.shutdown()`` in the link's
    thread) and the thread; the next RayPool connects afresh. For tests and
    tools that end a cluster they started: call it with no pool running.
    """
    global _link
    link, _link = _link, None
    if link is None:
        return
    done = threading.Event()

    def shut_down() -> None:
        try:
            if link.remote is not None:
                import ray
                ray.shutdown()
        finally:
            done.set()

    link.call(shut_down)
    link.calls.put(None)
    done.wait(patience)


def freeze_the_heap() -> None:
    """
    Collect once, then move every object alive (Ray's modules, the game's
    own long-lived objects) out of the collector's later passes: with Ray
    imported a full collection held the GIL, so every thread, 52-98 ms
    (docs/scale-out.md). Objects made later are collected as before.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("procpool: {count} objects moved out of the garbage collector's full passes "
             "after connecting to Ray (gc.freeze; PROCPOOL_RAY_GC_FREEZE), in {ms:.0f} ms",
             count=gc.get_freeze_count(), ms=(time.perf_counter() - started) * 1000)
