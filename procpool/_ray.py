"""
The Ray backend: the same ``run_async`` on a Ray cluster (``PROCPOOL_BACKEND = "ray"``).

    run_async(f, *a, **kw)                  reactor thread (procpool/api.py): checks, pickles
        |
        v
    RayPool._submit: payload cap, in-flight bound, the time limit's timer
        |
        v
    the pool's outbox; the first task of a burst asks the link's thread for a send
        |              (a lone small task, none other in flight, is sent from here)
        v
    Link.calls (FIFO, procpool/_ray_link.py): the thread "procpool-ray" makes the other
        |              Ray calls: ray.init, remote(...), ray.cancel(force=True), resources
        v
    Ray cluster: workers.ray_task.run(header + kind + payload) in a Ray worker process
        |              (a payload of 64 KiB or more is a second argument, not joined)
        |              answers with the pickled result, or a local worker's error box
        v
    Ray's own thread: the ObjectRef is done -> its outcome to the pool's inbox; the first end
        |              of a batch asks the reactor for a turn (callFromThread)
        v
    reactor thread: drains the inbox: each answer -> result or rebuilt exception;
                    at_return / at_err (while ends come fast, every 5 ms for all)

The reactor thread never waits on Ray (no ``ray.get`` there, no polling):
it hands calls to the link's thread and hears back through ``callFromThread``;
its one Ray call, ``.remote()`` for a lone small task, only queues the task
(``Link.may_send_here``). ``import ray`` happens in the link's thread, so a
game that does not choose Ray never imports it. A process has one Ray
connection (Ray's rule), so the link is process-wide and outlives a stopped
pool. What differs from the local pool: docs/scale-out.md.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from procpool import _codec, settings
from procpool._ray_link import Link, Task, _disconnect, freeze_the_heap, link_for, ray_error
from procpool._supply import PoolState as _State
from procpool.errors import (
    PayloadTooLarge,
    PoolBusy,
    PoolStopped,
    ProcPoolTimeout,
    RemoteError,
    SettingError,
    WorkerCrashed,
    WorkerStartError,
)
from procpool.pool import _COUNTERS, _LATENCIES  # the local pool's figures, the same names
from procpool.results import _chain
from workers import limits, ray_task, wire

__all__ = ["RayPool", "_disconnect"]

log = Logger()

# With 1,000 tasks in flight the reactor's lag p99 was 5-22 ms at Python's default
# 5 ms, 3.2-3.8 ms at this (tests/test_backends.py); throughput moved within noise.
_SWITCH_INTERVAL = 0.0005
_DRAIN_SLICE = 0.001  # seconds of settling in one reactor turn, then the rest next turn
_LINGER = 0.005  # ends coming faster than this apart are settled together, this often


class RayPool:
    """
    The Ray backend, with the local pool's interface (``start``, ``stop``,
    ``stats``, ``_submit``), chosen by ``PROCPOOL_BACKEND = "ray"``::

        procpool.configure(PROCPOOL_BACKEND="ray", PROCPOOL_RAY_ADDRESS="auto")
        procpool.run_async(render_map, area).addCallback(show)

    ``PROCPOOL_RAY_ADDRESS`` is ``local`` (start a cluster of this machine,
    on 127.0.0.1; the default), ``auto`` (the cluster ``ray start`` began
    here), ``host:port`` (a cluster's head) or ``ray://host:10001`` (Ray
    client). ``clock`` (default: the reactor) times the time limits.
    """

    backend = "ray"

    def __init__(self, *, reactor: Any = None, clock: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        values = settings.snapshot()
        self.address: str = values["PROCPOOL_RAY_ADDRESS"]
        self.max_payload: int = values["PROCPOOL_MAX_PAYLOAD"]
        self.max_in_flight: int = values["PROCPOOL_MAX_QUEUE"]
        self.init: str | None = values["PROCPOOL_WORKER_INIT"]
        self.start_timeout: float = values["PROCPOOL_START_TIMEOUT"]
        self.tune: bool = values["PROCPOOL_TUNE_MALLOC"]
        self.gc_freeze: bool = values["PROCPOOL_RAY_GC_FREEZE"]
        self._header = ray_task.header(self.max_payload, self.init, self.tune)
        self.state = _State.NEW
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self._link: Link | None = None
        self._tasks: dict[defer.Deferred, Task] = {}
        self._start_waiters: list[defer.Deferred] = []
        self._start_done = False
        self._start_error: Exception | None = None  # why the start failed
        self._start_timer: Any = None
        self._stopped: defer.Deferred | None = None
        self._stop_kill: Any = None
        self._shutdown_trigger: Any = None
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        # Tasks go to the link's thread, and their ends come back, in batches: the
        # outbox is drained by one call of that thread (``_sending``: one is asked
        # for), the inbox by one reactor turn (``_draining``: one is asked for).
        self._outbox: deque[Task] = deque()
        self._sending = False
        self._inbox: deque[tuple[Task, Any]] = deque()  # (task, its answer or Ray's error)
        self._draining = False
        self._drained_at = 0.0  # perf_counter() at the last drain
        self._linger: Any = None  # the DelayedCall of the next drain while ends come fast
        self.canceller = self._cancel

    # -- lifecycle -------------------------------------------------------

    def start(self) -> defer.Deferred:
        """
        Connect to the cluster (or start a local one) in the link's thread;
        fires once a first no-op task has answered, or fails with
        :class:`WorkerStartError` saying why Ray could not be reached.
        """
        if self.state in (_State.STOPPING, _State.STOPPED):
            return defer.fail(PoolStopped("a stopped pool cannot be started again"))
        if self.state is _State.RUNNING:
            return self._start_waiter()
        self.state = _State.RUNNING
        if self.tune:
            limits.tune_malloc()
        if sys.getswitchinterval() > _SWITCH_INTERVAL:
            # Ray's threads in this process hold the GIL up to the interpreter's
            # switch interval at a time (5 ms by default); the reactor waits meanwhile.
            sys.setswitchinterval(_SWITCH_INTERVAL)
            log.info("procpool: the Ray backend set sys.setswitchinterval({s}) so that the "
                     "reactor thread waits at most that for the GIL", s=_SWITCH_INTERVAL)
        self._shutdown_trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: self.stop(settings.get("PROCPOOL_STOP_GRACE")))
        waiter = self._start_waiter()
        try:
            self._link = link_for(self.reactor, self.address)
        except SettingError as exc:
            self._fail_start(exc)
            return waiter
        self._link.call(self._link.connect, self._connected)
        self._start_timer = self.clock.callLater(self.start_timeout, self._start_overdue)
        log.info("procpool: tasks run on the Ray cluster at {address}; sandboxed runs and "
                 "use_thread stay on this machine", address=self.address)
        return waiter

    def _start_waiter(self) -> defer.Deferred:
        """A Deferred of the start's outcome (each caller gets its own)."""
        if self._start_error is not None:
            return defer.fail(self._start_error)
        if self._start_done:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._start_waiters.append(waiter)
        return waiter

    def _start_ended(self, error: Exception | None = None) -> None:
        """The start's outcome, once: the first no-op answered, or ``error``."""
        if self._start_done:
            return
        self._start_done, self._start_error = True, error
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def _start_overdue(self) -> None:
        self._start_timer = None
        self._fail_start(WorkerStartError(
            f"the Ray cluster at {self.address!r} did not run a first task within "
            f"PROCPOOL_START_TIMEOUT ({self.start_timeout:g} s)"))

    def _fail_start(self, error: Exception) -> None:
        """
        The cluster could not be reached: the start fails with ``error``; the
        tasks not yet handed to Ray, and every task asked for from now on (at
        once), with a :class:`WorkerStartError` saying the same. A new pool
        (``procpool.stop()``, then a task) tries again.
        """
        if self._start_done:
            return
        self._start_ended(error)
        for task in [t for t in self._tasks.values() if t.ref is None]:
            task.counts["tasks_failed"] += 1
            self._end(task, WorkerStartError(str(error)))
        self._maybe_stopped()

    def _connected(self, error: BaseException | None) -> None:
        if error is not None:
            self._fail_start(WorkerStartError(
                f"could not reach the Ray cluster at {self.address!r}: {error!r}"))
            return
        if self.gc_freeze and not self._link.frozen:  # type: ignore[union-attr]
            self._link.frozen = True  # type: ignore[union-attr]
            freeze_the_heap()
        warm = self._submit(b"c", pickle.dumps((int, (), {})), None,
                            counts=dict.fromkeys(_COUNTERS, 0))
        warm.addCallbacks(lambda _: self._start_ended(), lambda f: self._fail_start(
            WorkerStartError(f"the Ray cluster at {self.address!r} could not run a first "
                             f"task: {f.value!r}")))

    def stop(self, grace: float = 10.0) -> defer.Deferred:
        """
        Stop taking tasks; those sent get ``grace`` seconds, then are
        force-cancelled on the cluster and fail with :class:`PoolStopped`.
        Fires when every task has settled. The process's Ray connection stays
        (Ray allows one per process and closes it at exit).
        """
        if self._stopped is not None:
            return _chain(self._stopped)
        self._stopped = defer.Deferred()
        self.state = _State.STOPPING
        if self._shutdown_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError, TypeError):
                pass
            self._shutdown_trigger = None
        if self._tasks and grace is not None:
            self._stop_kill = self.clock.callLater(grace, self._kill_remaining)
        self._maybe_stopped()
        return _chain(self._stopped)

    def _kill_remaining(self) -> None:
        self._stop_kill = None
        for task in list(self._tasks.values()):
            self._end(task, PoolStopped("the pool was stopped while the task was running"))
            self._link.call(self._link.cancel, task)  # type: ignore[union-attr]
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if self.state is not _State.STOPPING or self._tasks:
            return
        self.state = _State.STOPPED
        if self._stop_kill is not None and self._stop_kill.active():
            self._stop_kill.cancel()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()  # nothing is left to arrive
            self._linger, self._draining = None, False
        if not self._start_done:  # stopped before the first no-op answered
            self._start_ended(PoolStopped("the pool was stopped before it had started"))
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- submitting ------------------------------------------------------

    def _submit(self, kind: bytes, payload: bytes, timeout: float | None,
                deferred: defer.Deferred | None = None,
                on_progress: Any = None, counts: dict[str, int] | None = None) -> defer.Deferred:
        """
        Hand one serialised task to Ray (the local pool's ``_submit``, same
        rules); ``counts``: where its outcome is counted (default: ``stats()``).
        """
        if on_progress is not None:
            raise TypeError("at_progress is not available on the Ray backend "
                            "(PROCPOOL_BACKEND='ray'); the task's result still arrives")
        d = deferred if deferred is not None else defer.Deferred(self._cancel)
        if self.state is not _State.RUNNING:
            if self.state is not _State.NEW:
                d.errback(PoolStopped())
                return d
            self.start().addErrback(
                lambda f: log.failure("procpool could not reach the Ray cluster", f))
        if len(payload) > self.max_payload:
            raise PayloadTooLarge("the task's arguments", len(payload), self.max_payload)
        if self._start_error is not None:
            self.counters["tasks_failed"] += 1
            d.errback(WorkerStartError(str(self._start_error)))
            return d
        if len(self._tasks) >= self.max_in_flight:
            self.counters["tasks_rejected"] += 1
            d.errback(PoolBusy("PROCPOOL_MAX_QUEUE", self.max_in_flight, len(self._tasks),
                               "tasks"))
            return d
        task = Task(kind, payload, timeout, d, counts if counts is not None else self.counters)
        lone, link = not self._tasks and self._start_done, self._link
        self._tasks[d] = task
        if timeout:
            task.timer = self.clock.callLater(timeout, self._expire, task)
        if lone and link.may_send_here(task):  # type: ignore[union-attr]
            link.send_one(self, task)  # type: ignore[union-attr]  # not through the outbox
        else:
            self._outbox.append(task)
            if not self._sending:
                self._sending = True
                link.call(link.send, self)  # type: ignore[union-attr]
        return d

    # -- endings (reactor thread) -------------------------------------------

    def _end(self, task: Task, error: BaseException | None = None, result: Any = None) -> None:
        """Settle ``task`` once: with ``error`` if given, else with ``result``."""
        if self._tasks.pop(task.deferred, None) is None:
            return
        if task.timer is not None and task.timer.active():
            task.timer.cancel()
        if task.counts is self.counters:  # not the start's no-op
            self._latencies.append(time.perf_counter() - task.submitted)
        if error is None:
            task.deferred.callback(result)
        else:
            task.deferred.errback(error)

    def _arrived(self, task: Task, outcome: Any) -> None:
        """(Ray's thread) ``task``'s ObjectRef is done: queue its outcome for the reactor."""
        self._inbox.append((task, outcome))
        if not self._draining:
            self._draining = True
            self.reactor.callFromThread(self._drain)

    def _drain(self, lingered: bool = False) -> None:
        """
        (Reactor) settle the tasks whose ends arrived, a millisecond's worth a turn.
        While ends come faster than one per ``_LINGER`` (``lingered``: this turn
        is ``_LINGER`` after the last) and tasks wait in Ray's queue (more in flight
        than 4 times the cluster's CPUs), the reactor comes back ``_LINGER`` later
        for all that arrived meanwhile: ``_draining`` stays set, so Ray's thread
        does not wake it for each, at about 50 us of its CPU a wake (docs/scale-out.md).
        """
        self._linger = None
        now = time.perf_counter()
        busy, self._drained_at = lingered or now - self._drained_at < _LINGER, now
        inbox, settled = self._inbox, 0
        deadline = now + _DRAIN_SLICE
        while inbox:
            self._settle(*inbox.popleft())
            settled += 1
            if settled % 16 == 0 and time.perf_counter() > deadline:
                self.reactor.callLater(0, self._drain)  # the rest next turn: others get theirs
                return
        if busy and settled and len(self._tasks) > self._queued_beyond():
            if not lingered:  # a burst begins: is the cluster's CPU count still right?
                self._link.call(self._link.look_at_resources)  # type: ignore[union-attr]
            self._linger = self.reactor.callLater(_LINGER, self._drain, True)
            return
        self._draining = False  # an end put from now on asks for a turn of its own
        if inbox:  # put while the flag was still set
            self._draining = True
            self.reactor.callLater(0, self._drain)

    def _queued_beyond(self) -> int:
        """How many tasks in flight mean that some wait in Ray's queue: a burst."""
        return max(8, 4 * self._link.cpus) if self._link is not None else 8

    def _settle(self, task: Task, outcome: Any) -> None:
        """The task's ObjectRef is done: its answer box's bytes, or Ray's error."""
        if task.deferred not in self._tasks:
            return  # settled already (time limit, cancel, stop)
        if isinstance(outcome, BaseException):
            error = ray_error(outcome)
            task.counts["tasks_crashed" if isinstance(error, WorkerCrashed)
                        else "tasks_failed"] += 1
            self._end(task, error)
        else:
            self._answered(task, outcome)
        self._maybe_stopped()

    def _answered(self, task: Task, data: bytes) -> None:
        if data[:1] != ray_task.RESULT:
            box = next(iter(wire.BoxParser().feed(data)), None)
            if box is None:
                task.counts["tasks_failed"] += 1
                self._end(task, RemoteError("unknown", "the Ray task's answer could not be read"))
                return
            task.counts["tasks_failed"] += 1
            self._end(task, _codec.rebuild_error(box, wire.join_value(box, b"p")))
            return
        try:
            result = pickle.loads(data)
        except Exception as exc:
            task.counts["tasks_failed"] += 1
            self._end(task, _codec.unloadable_result(exc))
        else:
            task.counts["tasks_done"] += 1
            self._end(task, result=result)

    def _unsent(self, task: Task, error: BaseException | None) -> None:
        """Ray refused the task, or was never reached."""
        task.counts["tasks_failed"] += 1
        self._end(task, WorkerStartError(f"the task could not be handed to the Ray cluster at "
                                         f"{self.address!r}: {error!r}"))
        self._maybe_stopped()

    def _expire(self, task: Task) -> None:
        task.timer = None
        if task.deferred not in self._tasks:
            return
        task.counts["tasks_timed_out"] += 1
        self._end(task, ProcPoolTimeout(task.timeout or 0.0, killed="it was force-cancelled "
                                        "on the Ray cluster (its worker process ended)"))
        self._link.call(self._link.cancel, task)  # type: ignore[union-attr]
        self._maybe_stopped()

    def _cancel(self, deferred: defer.Deferred) -> None:
        """``Deferred.cancel()``: force-cancel on the cluster; the Deferred fails CancelledError."""
        task = self._tasks.pop(deferred, None)
        if task is None:
            return
        if task.timer is not None and task.timer.active():
            task.timer.cancel()
        task.counts["tasks_cancelled"] += 1
        self._link.call(self._link.cancel, task)  # type: ignore[union-attr]
        self.reactor.callLater(0, self._maybe_stopped)

    # -- figures ---------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """
        The local pool's figures, for the Ray backend: ``workers`` is the
        cluster's CPU count (looked at every few seconds), ``in_flight`` the
        tasks handed to Ray and not settled; ``backend`` (``"ray"``) and
        ``address`` say where they run.
        """
        link = self._link
        if link is not None:
            link.call(link.look_at_resources)
        cpus = link.cpus if link is not None else 0
        flying = len(self._tasks)
        latencies = sorted(self._latencies)
        figures: dict[str, Any] = {
            "backend": "ray", "address": self.address, "state": self.state.value,
            "workers": cpus, "busy": min(flying, cpus), "idle": max(0, cpus - flying),
            "starting": 0, "queued": max(0, flying - cpus), "queued_bytes": 0,
            "in_flight": flying, "pids": [], **self.counters,
        }
        for name, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
            figures[name] = (round(latencies[min(len(latencies) - 1, int(q * len(latencies)))]
                                   * 1000, 3) if latencies else None)
        return figures

