"""
Workers coming and going: the half of :class:`~procpool.pool.ProcessPool`
that starts, replaces, recycles, reaps and buries worker processes.

ProcessPool (procpool/pool.py) owns the queue and dispatch, and inherits
these steps; they share the pool's attributes, which ProcessPool.__init__
declares and documents. The rules they keep:

- at least PROCPOOL_MIN_NPROC workers that are neither retiring nor killed
  (``_serving``), at most PROCPOOL_MAX_NPROC that are not retiring
  (``_slots_taken``), and never more than PROCPOOL_MAX_NPROC + 1 processes
  alive, retiring ones included (``_may_spawn``): the one over is a
  successor being started;
- a worker takes no new task once it has been sent PROCPOOL_RECYCLE; its
  successor starts when it is four fifths of the way there, and the old one
  leaves when the successor answers (``_recycle_step``);
- a failed start is retried after a pause that doubles (0.5 s up to 30 s);
  meanwhile a worker past its count keeps serving rather than leave the pool
  without workers;
- a worker that dies settles its tasks: those it never read (left in its
  task pipe) go back to the front of the queue; of the others, the oldest
  crashed and the rest never started (back to the queue too).
"""

from __future__ import annotations

import enum
import math
import os
from collections import deque
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool._worker import Task, Worker, WorkerState
from procpool.errors import PoolStopped, WorkerCrashed, WorkerStartError

__all__ = ["CORES", "PoolState", "WorkerSupply"]

#: The cores this process may run on: as many workers poll for work (PROCPOOL_SPIN).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

log = Logger()

#: Seconds after the pool's first workers answered that its fork server starts.
FORK_SERVER_DELAY = 0.05

_READY, _RETIRING, _LOST, _KILLED, _DEAD = (
    WorkerState.READY, WorkerState.RETIRING, WorkerState.LOST, WorkerState.KILLED,
    WorkerState.DEAD)


class PoolState(enum.StrEnum):
    """A pool's life: NEW -> RUNNING -> STOPPING -> STOPPED (never started again)."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _backoff(failures: int) -> float:
    """Seconds to wait before starting a worker again after ``failures`` failed starts."""
    return min(30.0, 0.5 * 2 ** max(0, failures - 1))


class WorkerSupply:
    """The worker-lifecycle steps of :class:`~procpool.pool.ProcessPool` (a base class)."""

    state: PoolState
    clock: Any
    min_workers: int
    max_workers: int
    idle: float
    recycle: int
    start_timeout: float
    max_payload: int
    counters: dict[str, int]
    _queue: deque[Task]
    _queued_bytes: int
    _retiring: int
    _workers: list[Worker]
    _ready: list[Worker]
    _starting: set[Worker]
    _spinners: set[Worker]
    _start_failures: int
    _recycle_not_before: float
    _respawn_call: Any
    _reaper: Any
    _starter: Any

    def _pump(self) -> None:
        raise NotImplementedError  # dispatch: procpool/_dispatch.py

    def _fail_queued(self, error: Exception) -> None:
        raise NotImplementedError  # ProcessPool's

    def _finish_stop(self) -> None:
        raise NotImplementedError  # ProcessPool's

    def _garbled_ended(self, worker: Worker, read: list[Task]) -> None:
        raise NotImplementedError  # procpool/_ending.py

    def _move(self, worker: Worker, state: WorkerState) -> None:
        """
        Move ``worker`` to ``state``. ``_ready`` holds READY workers only (all
        but those past their recycling count); ``_retiring`` counts RETIRING ones.
        """
        was = worker.state
        if was is _READY and state is not _READY and worker in self._ready:
            self._ready.remove(worker)
        worker.move(state)
        if state is _READY:
            self._ready.append(worker)
        self._retiring += (state is _RETIRING) - (was is _RETIRING)

    def _requeue_front(self, tasks: list[Task]) -> None:
        """Put tasks that never started back at the front of the queue, in order."""
        tasks = [t for t in tasks if not t.cancelled]
        self._queue.extendleft(reversed(tasks))
        self._queued_bytes += sum(len(t.payload) for t in tasks)

    def _may_spawn(self) -> bool:
        """At most PROCPOOL_MAX_NPROC + 1 processes alive (the one over: a successor starting)."""
        return len(self._workers) <= self.max_workers

    def _slots_taken(self) -> int:
        """Workers counted against PROCPOOL_MAX_NPROC: all but the retiring ones."""
        return sum(1 for w in self._workers if w.state is not _RETIRING)

    def _serving(self) -> int:
        """Workers counted toward PROCPOOL_MIN_NPROC: neither retiring nor killed."""
        return sum(1 for w in self._workers if w.state not in (_RETIRING, _KILLED))

    def _spawn(self, replaces: Worker | None = None) -> Worker:
        worker = Worker(self, self.max_payload)
        if self.recycle:
            worker.recycle_at = self.recycle - self.recycle // 5
        # One worker a core polls for its next task (PROCPOOL_SPIN); those past
        # the cores sleep: 8 polling workers on 2 cores ran 14.2k no-ops/s, 18.1k
        # with one a core. A successor takes its worker's turn; a worker on its
        # way out (killed, lost, retiring or replaced) has left its own.
        spins = (replaces in self._spinners if replaces is not None else sum(
            1 for w in self._workers if w in self._spinners and w.successor is None
            and w.state not in (_RETIRING, _KILLED, _LOST)) < CORES)
        self._workers.append(worker)
        if spins:
            self._spinners.add(worker)
        self._starting.add(worker)
        self.counters["workers_started"] += 1
        try:
            self._starter.startPythonProcess(worker, *(() if spins else ("--no-spin",)))
        except Exception as exc:
            self._spinners.discard(worker)
            self._workers.remove(worker)
            self._starting.discard(worker)
            worker.move(_DEAD)
            error = WorkerStartError(f"could not start a worker process: {exc}")
            log.error("{error}", error=str(error))
            self._start_failed(worker, error)
            return worker
        worker.start_timer = self.clock.callLater(self.start_timeout, self._start_overdue, worker)
        return worker

    def _start_failed(self, worker: Worker, error: WorkerStartError) -> None:
        """A worker did not start: fail what waits for it; try again after a pause."""
        self._start_failures += 1
        self.counters["workers_failed_to_start"] += 1
        # Arm the retry before any errback runs: an errback may stop the pool,
        # and stop() must find the retry to cancel it.
        if self.state is PoolState.RUNNING and self._respawn_call is None:
            self._respawn_call = self.clock.callLater(_backoff(self._start_failures),
                                                      self._respawn)
        worker.started.errback(error)
        if self.state is PoolState.RUNNING and not self._ready and not self._starting:
            self._fail_queued(error)

    def _start_overdue(self, worker: Worker) -> None:
        worker.start_timer = None
        if worker in self._starting and worker.state is not _KILLED:
            log.error("worker {pid} did not answer within {s} s; killing it",
                      pid=worker.pid, s=self.start_timeout)
            worker.stderr_tail.append(f"(no answer within {self.start_timeout:g} s)")
            self._move(worker, _KILLED)
            worker.kill_group()

    def _worker_ready(self, worker: Worker) -> None:
        if worker.state in (_LOST, _KILLED):
            return  # going away already; its end is settled as a failed start
        self._starting.discard(worker)
        self._start_failures = 0
        if not self._starting and self.state is PoolState.RUNNING:
            # Only now, and on a later turn: started beside the first workers,
            # it made the pool's start slower (29 -> 36 ms to the first result,
            # 2 workers on 2 cores), and its spawn here would hold up the
            # first answers (about 2 ms with a core held).
            self._starter.begin_forking(self.clock, FORK_SERVER_DELAY)
        if worker.start_timer is not None and worker.start_timer.active():
            worker.start_timer.cancel()
        worker.start_timer = None
        worker.idle_since = self.clock.seconds()
        log.debug("worker {pid} ready", pid=worker.pid)
        if self.state is not PoolState.RUNNING or worker.state is _RETIRING:
            worker.close_input()
            worker.started.callback(None)
            return
        self._move(worker, _READY)
        old, worker.replaces = worker.replaces, None
        if old is not None and old.state is _READY:
            self._retire(old, recycled=True)
        worker.started.callback(None)
        self._replenish()
        self._pump()

    def _worker_lost(self, worker: Worker) -> None:
        """A worker's pipe closed or a write to it failed: dispatch nothing more to it."""
        if worker.state in (WorkerState.STARTING, _READY):
            self._move(worker, _LOST)

    def _grow(self) -> None:
        if (self.state is PoolState.RUNNING and self._respawn_call is None
                and self._may_spawn() and self._slots_taken() < self.max_workers
                and len(self._starting) < len(self._queue)):
            self._spawn().started.addErrback(lambda f: None)

    def _replenish(self) -> None:
        if self.state is not PoolState.RUNNING or self._respawn_call is not None:
            return
        missing = self.min_workers - self._serving()
        if missing <= 0:
            return
        if self._start_failures:
            self._respawn_call = self.clock.callLater(_backoff(self._start_failures),
                                                      self._respawn)
            return
        for _ in range(missing):
            if not self._may_spawn():
                return  # the next worker to end calls this again
            self._spawn().started.addErrback(lambda f: None)

    def _respawn(self) -> None:
        self._respawn_call = None
        if self.state is not PoolState.RUNNING:
            return
        serving = self._serving()
        if self._may_spawn() and (serving < self.min_workers
                                  or (self._queue and serving < self.max_workers)):
            self._spawn().started.addErrback(lambda f: None)

    def _starts_failing(self) -> bool:
        return (self._respawn_call is not None
                or self.clock.seconds() < self._recycle_not_before)

    def _recycle_step(self, worker: Worker) -> None:
        """
        ``worker.dispatched`` reached ``worker.recycle_at``: four fifths of
        the way, start its successor (it hides the start); at the count, the
        worker takes nothing more and leaves when its successor answers.
        """
        if worker.successor is None:
            self._start_successor(worker)
        if worker.dispatched < self.recycle:
            worker.recycle_at = self.recycle
            return
        worker.recycle_at = math.inf
        if worker.successor is not None:
            if worker in self._ready:
                self._ready.remove(worker)  # READY, but sent nothing more
        elif self._starts_failing() and self.state is PoolState.RUNNING:
            worker.recycle_at = worker.dispatched + 1  # keep serving; try again later
        else:
            self._retire(worker, recycled=True)

    def _start_successor(self, worker: Worker) -> None:
        if (self.state is not PoolState.RUNNING or worker.state is not _READY
                or self._starts_failing() or not self._may_spawn()):
            return  # workers are failing to start: keep this one rather than churn
        successor = self._spawn(replaces=worker)
        worker.successor = successor
        successor.replaces = worker

        def failed(_: Failure) -> None:
            # Keep the old worker; try again after a growing pause.
            worker.successor = None
            self._recycle_not_before = self.clock.seconds() + _backoff(self._start_failures)
            if worker.state is _READY and worker not in self._ready:
                self._ready.append(worker)
                worker.recycle_at = worker.dispatched + 1
                self._pump()

        successor.started.addErrback(failed)

    def _retire(self, worker: Worker, recycled: bool = False) -> None:
        if worker.state in (WorkerState.STARTING, _READY):
            self._move(worker, _RETIRING)
        if recycled:
            self.counters["workers_recycled"] += 1
        # Start the replacement before the old worker leaves, so recycling
        # costs no throughput (ampoule lost 64% to it).
        self._replenish()
        if not worker.inflight and worker not in self._starting:
            worker.close_input()

    def _worker_ended(self, worker: Worker, reason: Failure) -> None:
        was = worker.state
        self._move(worker, _DEAD)
        self._workers.remove(worker)
        self._spinners.discard(worker)
        if worker.start_timer is not None and worker.start_timer.active():
            worker.start_timer.cancel()
        exitcode = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        unread = worker.unread_at_exit() if worker.inflight else 0
        inflight = list(worker.inflight)
        worker.inflight.clear()
        read = inflight[:len(inflight) - unread]
        if unread:
            # Tasks still in its pipe never started, whatever killed it.
            self._requeue_front(inflight[len(read):])
        if worker in self._starting:
            self._starting.discard(worker)
            self._ended_before_ready(worker, exitcode, signum)
        elif read and worker.garbled is not None:
            self._garbled_ended(worker, read)
        elif read:
            self._crashed(worker, read, exitcode, signum)
        elif was not in (_RETIRING, _KILLED):
            self.counters["workers_crashed"] += 1
            log.warn("idle worker {pid} died (exit code {code}, signal {sig})",
                     pid=worker.pid, code=exitcode, sig=signum)
        if self.state is PoolState.RUNNING:
            self._replenish()
            self._pump()
            return
        self._fail_queued(PoolStopped())
        if self.state is PoolState.STOPPING and not self._workers:
            self._finish_stop()

    def _ended_before_ready(self, worker: Worker, exitcode: int | None,
                            signum: int | None) -> None:
        how = f"was killed by signal {signum}" if signum else f"exited with code {exitcode}"
        tail = "\n".join(worker.stderr_tail) or "(it wrote nothing to stderr)"
        error = WorkerStartError(f"worker {worker.pid} {how} before it was ready:\n{tail}")
        if self.state is PoolState.RUNNING:
            log.error("{error}", error=str(error))
        self._start_failed(worker, error)

    def _crashed(self, worker: Worker, inflight: list[Task], exitcode: int | None,
                 signum: int | None) -> None:
        """The oldest task in flight killed its worker; the others never started."""
        first = inflight[0]
        first.cancel_timer()
        self.counters["tasks_crashed"] += 1
        self.counters["workers_crashed"] += 1
        log.warn("worker {pid} died while running a task (exit code {code}, signal {sig})",
                 pid=worker.pid, code=exitcode, sig=signum)
        # Put the tasks that never started back first: the errback may stop
        # the pool, which must then fail them rather than lose them.
        self._requeue_front(inflight[1:])
        if not first.deferred.called:
            first.deferred.errback(WorkerCrashed(worker.pid, exitcode, signum))

    def _reap_interval(self) -> float:
        return max(0.5, min(self.idle / 2, 30.0))

    def _reap(self) -> None:
        """Retire workers idle for PROCPOOL_IDLE seconds, down to the minimum."""
        self._reaper = None
        if self.state is not PoolState.RUNNING:
            return
        now = self.clock.seconds()
        for worker in list(self._ready):
            if len(self._ready) <= self.min_workers:
                break
            if not worker.inflight and now - worker.idle_since >= self.idle:
                log.debug("worker {pid} idle for {s} s; stopping it", pid=worker.pid, s=self.idle)
                self._retire(worker)
        self._reaper = self.clock.callLater(self._reap_interval(), self._reap)
