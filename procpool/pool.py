"""
The pool of worker processes, and the path one call takes through it.

    run_async(f, *a, **kw)                        reactor thread (procpool/api.py)
        |  validate, pickle (dill if pickle refuses: procpool/_codec.py),
        |  check the payload cap
        v
    ProcessPool._submit(kind, payload, timeout, AsyncResult) -> the AsyncResult
        |
        v
    +-------------+   _pump() (procpool/_dispatch.py): an idle worker first;
    | queue (FIFO)|   else start a worker (up to PROCPOOL_MAX_NPROC) and wait;
    +-------------+   only when none can start, send a task with no time limit
        |             ahead to a worker whose recent tasks were short (fewer
        |             than MAX_DEPTH in flight); bounded: PROCPOOL_MAX_QUEUE
        v
    Worker.inflight (FIFO)  ----- AMP box "run" on fd 3 ----->  workers/__main__.py
        ^     (procpool/_worker.py)                                |  runs tasks in
        |                                                          |  order, answers
        +------ AMP box "_answer" / "_error" on fd 4 --------------+  each before the
        |                                                             next begins
        v
    _box_received: unpickle the result, or rebuild the exception (_codec)
        |
        v
    Deferred.callback / errback  ->  at_return / at_err  (reactor thread)

A worker answers its tasks in the order it got them and writes each answer
before it starts the next task. That one rule gives exact crash isolation
with several tasks in flight: when a worker dies, the oldest unanswered
task is the one that was running (it fails with WorkerCrashed), and the
ones behind it never started (they go back to the front of the queue).

A task with a time limit goes only to a worker with nothing in flight, and
nothing is sent behind it; its clock starts when it is sent. On expiry the
worker's whole process group gets SIGKILL and a replacement starts.

The rooms: this module holds the queue, answers, time limits, cancelling and
stop; procpool/_dispatch.py picks a worker for each task and moves tasks off
a worker whose task turned out slow; procpool/_supply.py starts, recycles and
buries workers; procpool/_worker.py is one worker process and its lifecycle states;
procpool/_spawn.py starts one (command, environment, malloc);
procpool/_pipes.py makes its pipes fast; procpool/_codec.py turns tasks into
bytes and answers back into results; workers/ is the other end. What was
kept from ampoule and what was replaced, and why, is in docs/design.md.
"""

from __future__ import annotations

import pickle
import time
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from procpool import _codec, _shared, _spawn, settings
from procpool._ending import TaskEndings
from procpool._supply import PoolState
from procpool._worker import Task, Worker, WorkerState, raw_box
from procpool.errors import PayloadTooLarge, PoolBusy, PoolStopped, SettingError
from procpool.results import _chain, _gather
from workers import wire

__all__ = ["ProcessPool", "PoolState"]

log = Logger()

_LATENCIES = 2048
_COUNTERS = ("tasks_done", "tasks_failed", "tasks_timed_out", "tasks_crashed",
             "tasks_cancelled", "tasks_rejected", "tasks_moved", "workers_started",
             "workers_crashed", "workers_recycled", "workers_failed_to_start")
_RETIRING, _KILLED = WorkerState.RETIRING, WorkerState.KILLED


class ProcessPool(TaskEndings):
    """
    A pool of worker processes speaking AMP, fed from one FIFO queue.

    Most code uses :func:`procpool.run_async`, which keeps one pool per
    process; a pool of your own is for tests and special cases::

        pool = ProcessPool(min_workers=1, max_workers=2)
        d = pool.start()
        d.addCallback(lambda _: pool.submit_source("_return(6 * 7)"))

    ``reactor`` spawns the processes; ``clock`` (default: the reactor) times
    the time limits, idle workers, start-up deadlines and back-off. Every
    argument left as None comes from the settings (``PROCPOOL_*``).

    @ivar fork_server: whether workers are forked by a fork server once it
        is ready (procpool/_forker.py), or every one spawned.
    @ivar state: a :class:`PoolState`.
    @ivar counters: task and worker counts since the pool was made.
    """

    def __init__(self, *, reactor: Any = None, clock: Any = None,
                 min_workers: int | None = None, max_workers: int | None = None,
                 idle: float | None = None, recycle: int | None = None,
                 max_payload: int | None = None, directory: str | None = None,
                 uid: int | None = None, gid: int | None = None,
                 start_timeout: float | None = None, max_queue: int | None = None,
                 max_queued_bytes: int | None = None, fork_server: bool | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor

        values = settings.snapshot()  # checks the settings together, from code or environment

        def pick(given: Any, name: str) -> Any:
            return given if given is not None else values[name]

        self.min_workers = pick(min_workers, "PROCPOOL_MIN_NPROC")
        self.max_workers = pick(max_workers, "PROCPOOL_MAX_NPROC")
        if self.min_workers > self.max_workers:
            raise SettingError(f"min_workers ({self.min_workers}) must not exceed max_workers "
                               f"({self.max_workers})")
        self.idle = pick(idle, "PROCPOOL_IDLE")
        self.recycle = pick(recycle, "PROCPOOL_RECYCLE")
        self.max_payload = pick(max_payload, "PROCPOOL_MAX_PAYLOAD")
        self.directory = pick(directory, "PROCPOOL_DIRECTORY")
        self.uid, self.gid = pick(uid, "PROCPOOL_UID"), pick(gid, "PROCPOOL_GID")
        self.start_timeout = pick(start_timeout, "PROCPOOL_START_TIMEOUT")
        self.max_queue, self.max_queued_bytes = (pick(max_queue, "PROCPOOL_MAX_QUEUE"), pick(
            max_queued_bytes, "PROCPOOL_MAX_QUEUED_BYTES"))
        self.fork_server = pick(fork_server, "PROCPOOL_FORK_SERVER")
        self.state = PoolState.NEW
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self._queue: deque[Task] = deque()
        self._queued_bytes = self._retiring = 0  # payload bytes in _queue; RETIRING workers
        self._balance_call: Any = None        # the next look at tasks waiting behind others
        self._workers: list[Worker] = []     # every worker not yet DEAD
        self._ready: list[Worker] = []       # exactly the READY ones, in dispatch order
        self._starting, self._spinners = set[Worker](), set[Worker]()  # no "ready" yet; polling
        self._start_failures = 0             # in a row; reset by a worker that answers
        self._recycle_not_before = 0.0
        self._respawn_call: Any = None
        self._reaper: Any = None
        self._shutdown_trigger: Any = None
        self._stopped: defer.Deferred | None = None
        self._stop_kill: Any = None
        self._starter: Any = None
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        self.canceller = self._cancel  # for Deferreds handed to _submit (procpool/api.py)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> defer.Deferred:
        """
        Start the minimum number of workers; the Deferred fires once they
        all answer, or fails with :class:`WorkerStartError` (carrying the
        worker's stderr) if one cannot start.
        """
        if self.state in (PoolState.STOPPING, PoolState.STOPPED):
            return defer.fail(PoolStopped("a stopped pool cannot be started again"))
        if self.state is PoolState.RUNNING:
            return _gather(w.started for w in self._starting)
        self.state = PoolState.RUNNING
        if settings.get("PROCPOOL_TUNE_MALLOC"):
            _spawn.tune_malloc()
        self._starter = _spawn.make_starter(
            self.reactor, max_payload=self.max_payload, uid=self.uid, gid=self.gid,
            directory=self.directory, clock=self.clock, start_timeout=self.start_timeout,
            fork_server=self.fork_server)
        self._shutdown_trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: self.stop(settings.get("PROCPOOL_STOP_GRACE")))
        started = [self._spawn().started for _ in range(self.min_workers)]
        if self.max_workers > self.min_workers and self.idle > 0:
            self._reaper = self.clock.callLater(self._reap_interval(), self._reap)
        return _gather(started)

    def stop(self, grace: float = 10.0) -> defer.Deferred:
        """
        Stop the pool: queued tasks fail with :class:`PoolStopped`; running
        ones get ``grace`` seconds to finish, then their workers are killed
        (and those tasks fail with PoolStopped too). Fires when every
        worker process has ended, and then the fork server; later
        submissions fail their Deferred.
        """
        if self._stopped is not None:
            return _chain(self._stopped)
        self._stopped = defer.Deferred()
        was, self.state = self.state, PoolState.STOPPING
        if self._shutdown_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError, TypeError):
                pass
            self._shutdown_trigger = None
        for call in (self._reaper, self._respawn_call, self._balance_call):
            if call is not None and call.active():
                call.cancel()
        self._fail_queued(PoolStopped("the process pool was stopped before the task ran"))
        for worker in list(self._workers):
            self._retire(worker)
        if self._workers and grace is not None:
            self._stop_kill = self.clock.callLater(grace, self._kill_remaining)
        if not self._workers or was is PoolState.NEW:
            self._finish_stop()
        return _chain(self._stopped)

    def _kill_remaining(self) -> None:
        self._stop_kill = None
        for worker in list(self._workers):
            if worker.state is not _KILLED:
                self._move(worker, _KILLED)
            inflight = list(worker.inflight)
            worker.inflight.clear()
            for task in inflight:
                task.cancel_timer()
                if not task.cancelled:
                    task.deferred.errback(PoolStopped(
                        "the process pool was stopped while the task was running"))
            worker.kill_group()

    def _finish_stop(self) -> None:
        if self.state is PoolState.STOPPED:
            return
        self.state = PoolState.STOPPED
        if self._stop_kill is not None and self._stop_kill.active():
            self._stop_kill.cancel()
        self._stop_kill = None
        stopped = self._stopped
        if stopped is not None and not stopped.called:
            # The fork server goes last: it reaps the workers.
            ended = self._starter.stop() if self._starter is not None else defer.succeed(None)
            ended.addBoth(lambda _: None if stopped.called else stopped.callback(None))

    # -- submitting ------------------------------------------------------

    def submit_call(self, function: Any, *args: Any, timeout: float | None = None,
                    **kwargs: Any) -> defer.Deferred:
        """
        Run ``function(*args, **kwargs)`` in a worker (pickled, or dill-ed if
        need be), killed after ``timeout`` seconds (None or 0: no limit)::

            pool.submit_call(pow, 2, 10).addCallback(print)      # 1024
        """
        payload = _codec.dumps((function, args, kwargs), "the callable or its arguments")
        return self._submit(b"c", payload, settings.check_timeout(timeout, "timeout"))

    def submit_source(self, source: str, *, timeout: float | None = None,
                      **env: Any) -> defer.Deferred:
        """
        Run a source string in a worker with ``env`` as its globals (the
        ``_return`` rules of ``run_async``)::

            pool.submit_source("_return(n * 2)", n=21).addCallback(print)   # 42
        """
        if not isinstance(source, str):
            raise TypeError(f"source must be a str, not {type(source).__name__}")
        payload = _codec.dumps((source, env), "the source's keyword arguments")
        return self._submit(b"s", payload, settings.check_timeout(timeout, "timeout"))

    def _submit(self, kind: bytes, payload: bytes, timeout: float | None,
                deferred: defer.Deferred | None = None,
                on_progress: Any = None) -> defer.Deferred:
        """
        Queue one serialised task (``kind`` and ``payload`` as in
        workers/wire.py; ``timeout`` already checked by
        :func:`procpool.settings.check_timeout`). Raises
        :class:`PayloadTooLarge` at once for an over-cap payload; fails the
        Deferred at once with :class:`PoolBusy` past the queue's bounds. A
        ``deferred`` given should have :attr:`canceller` as its canceller.
        """
        if self.state is not PoolState.RUNNING:
            if self.state is not PoolState.NEW:
                d = deferred if deferred is not None else defer.Deferred()
                d.errback(PoolStopped())
                return d
            self.start().addErrback(
                lambda f: log.failure("the process pool could not start its workers", f))
        size = len(payload)
        if size > self.max_payload:
            raise PayloadTooLarge("the task's arguments", size, self.max_payload)
        queue = self._queue
        if queue and (len(queue) >= self.max_queue
                      or self._queued_bytes + size > self.max_queued_bytes):
            return self._refuse(size, deferred)
        task = Task(kind.upper() if on_progress is not None else kind, payload, timeout,
                    deferred if deferred is not None else defer.Deferred(self.canceller))
        task.on_progress = on_progress
        # A non-empty queue means no worker can take more right now; the next
        # answer, start or death pumps it again.
        pump = not queue
        queue.append(task)
        self._queued_bytes += size
        if pump:
            self._pump()
        return task.deferred

    def _refuse(self, size: int, deferred: defer.Deferred | None) -> defer.Deferred:
        self.counters["tasks_rejected"] += 1
        if len(self._queue) >= self.max_queue:
            error = PoolBusy("PROCPOOL_MAX_QUEUE", self.max_queue, len(self._queue), "tasks")
        else:
            error = PoolBusy("PROCPOOL_MAX_QUEUED_BYTES", self.max_queued_bytes,
                             self._queued_bytes + size, "bytes")
        d = deferred if deferred is not None else defer.Deferred()
        d.errback(error)
        return d

    def _fail_queued(self, error: Exception) -> None:
        queued = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        for task in queued:
            task.deferred.errback(error)

    # -- answers (the hot path) --------------------------------------------

    def _progress(self, inflight: deque[Task], box: dict[bytes, Any]) -> bool:
        """A value the running task reported before its answer: to its at_progress, now."""
        if not inflight or box.get(b"_progress") != inflight[0].ask:
            return False
        task = inflight[0]
        try:
            value = _codec.load_result(wire.join_value(box, b"p"))
        except Exception:
            log.failure("a progress value of a task could not be read")
            return True
        try:
            task.on_progress(value)
        except Exception:
            log.failure("at_progress raised; the task goes on")
        return True

    def _box_received(self, worker: Worker, box: dict[bytes, Any]) -> None:
        if worker in self._starting:
            if box.get(b"_command") == b"ready":
                self._worker_ready(worker)
            return
        if worker.state is _KILLED:
            if worker.garbled is not None:
                worker.garbled += raw_box(box)  # settled from all it wrote, once it ends
            return  # else its tasks were settled when it was killed
        inflight = worker.inflight
        ask = box.get(b"_answer")
        if ask is None:
            ask = box.get(b"_error")
            if ask is None and self._progress(inflight, box):
                return
        if not inflight or ask != inflight[0].ask:
            self._wrong_answer(worker, box)
            return
        task = inflight.popleft()
        now = time.perf_counter()
        service = now - (task.sent if task.sent > worker.last_answer else worker.last_answer)
        worker.last_answer = now
        ewma = worker.ewma
        worker.ewma = service if ewma is None else 0.75 * ewma + 0.25 * service
        self._latencies.append(now - task.submitted)
        if task.timer is not None:
            task.cancel_timer()
        if not inflight:
            worker.idle_since = self.clock.seconds()
            if worker.state is _RETIRING:
                worker.close_input()
        self._settle_answer(worker, task, box)
        if inflight and inflight[0].cancelled:
            self._kill_running(worker)  # it was cancelled while it waited; it starts now
            self._pump()
        elif self._queue:
            self._pump()

    def _settle_answer(self, worker: Worker, task: Task, box: dict[bytes, Any]) -> None:
        """Fire ``task``'s Deferred from its answer (a big one: once a thread has read it)."""
        if b"_answer" not in box:
            self.counters["tasks_failed"] += 1
            task.deferred.errback(_codec.rebuild_error(box, wire.join_value(box, b"p")))
            return
        apart = box.get(b"_shm")
        if apart is not None:
            _shared.receive(self.reactor, worker.shared, box[b"_answer"], bytes(apart),
                            lambda result, exc: self._apart_answered(task, result, exc))
            return
        try:
            result = pickle.loads(wire.join_value(box, b"p"))
        except Exception as exc:
            self.counters["tasks_failed"] += 1
            task.deferred.errback(_codec.unloadable_result(exc))
        else:
            self.counters["tasks_done"] += 1
            task.deferred.callback(result)

    def _apart_answered(self, task: Task, result: Any, exc: BaseException | None) -> None:
        if task.deferred.called:
            return  # cancelled while its result was read
        if exc is None:
            self.counters["tasks_done"] += 1
            task.deferred.callback(result)
        else:
            self.counters["tasks_failed"] += 1
            task.deferred.errback(_codec.unloadable_result(exc))

    # -- figures ---------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """
        The pool's figures: workers busy/idle/starting, queue depth, task and
        worker counters, and the round-trip latency (submit to answer) of the
        last tasks, in milliseconds::

            pool.stats()["busy"]
        """
        answering = [w for w in self._workers if w not in self._starting]
        latencies = sorted(self._latencies)
        figures: dict[str, Any] = {
            "backend": "local", "state": self.state.value,
            "workers": len(self._workers),
            "busy": sum(1 for w in answering if w.inflight),
            "idle": sum(1 for w in answering if not w.inflight),
            "starting": len(self._starting),
            "queued": len(self._queue),
            "queued_bytes": self._queued_bytes,
            "in_flight": sum(len(w.inflight) for w in self._workers),
            "pids": sorted(w.pid for w in self._workers if w.pid is not None),
            **self.counters,
        }
        for name, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
            figures[name] = (round(latencies[min(len(latencies) - 1, int(q * len(latencies)))]
                                   * 1000, 3) if latencies else None)
        return figures

    @staticmethod
    def figures_before_start() -> dict[str, Any]:
        """What :meth:`stats` says of a pool that does not exist yet: all zeros."""
        return {"backend": settings.get("PROCPOOL_BACKEND"), "state": "not started",
                "workers": 0, "busy": 0, "idle": 0, "starting": 0, "queued": 0,
                "queued_bytes": 0, "in_flight": 0, "pids": [],
                **dict.fromkeys(_COUNTERS, 0),
                "latency_p50_ms": None, "latency_p99_ms": None}

