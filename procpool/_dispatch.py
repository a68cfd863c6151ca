"""
Dispatch: which worker gets the task at the head of the queue (the hot path).

The half of :class:`~procpool.pool.ProcessPool` between the queue and the
workers; ProcessPool (procpool/pool.py) inherits it, and these steps share
the pool's attributes, which ProcessPool.__init__ declares. The rules:

- an idle worker first;
- else, for a task with no time limit, send it ahead ("pipelining") to the
  least loaded worker whose recent tasks were short, but only when no
  worker can be started (the task then waits in the queue for that one, not
  behind another task), and only once that worker has read the task it is
  running (so what is sent ahead stays in its pipe, where the host can take
  it back);
- every ``BALANCE_EVERY`` seconds while tasks wait behind others, a worker
  whose current task has run ``SLOW_TASK`` or more counts as slow (nothing
  more is sent ahead to it), and when a worker is idle or can be started,
  the tasks it has not read are taken back to the front of the queue
  (procpool/_pipes.py, docs/design.md).

A task never runs twice: only bytes still in the worker's pipe are taken
back, and a read takes all that is there, so the worker and the host never
split a box between them.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

from procpool import _shared
from procpool._supply import PoolState, WorkerSupply
from procpool._worker import MAX_DEPTH, Task, Worker, WorkerState
from workers import wire
from workers.shared import APART

__all__ = ["Dispatch", "BALANCE_EVERY", "SLOW_TASK"]

log = Logger()

#: Seconds between looks at the tasks waiting behind others on a worker.
BALANCE_EVERY = 0.01
#: A task running this long turned out slow: what waits behind it may move.
SLOW_TASK = 0.01
_READY, _RETIRING = WorkerState.READY, WorkerState.RETIRING


class Dispatch(WorkerSupply):
    """The dispatch steps of :class:`~procpool.pool.ProcessPool` (a base class)."""

    _balance_call: object | None

    def _pump(self) -> None:
        queue = self._queue
        ready = self._ready
        while queue:
            task = queue[0]
            chosen = None
            best = MAX_DEPTH
            for worker in ready:
                n = len(worker.inflight)
                if n == 0:
                    chosen, best = worker, 0
                    break
                if (task.timeout is None and n < best and n < worker.depth
                        and not worker.exclusive):
                    chosen, best = worker, n
            if chosen is None or (best and not self._may_send_ahead(chosen, best)):
                self._grow()
                return
            queue.popleft()
            self._queued_bytes -= len(task.payload)
            if not self._send(chosen, task):
                queue.appendleft(task)
                self._queued_bytes += len(task.payload)
                self._worker_lost(chosen)

    def _can_start(self) -> bool:
        """Could a worker be started now (a free slot, no back-off)?"""
        alive = len(self._workers)
        return (alive - self._retiring < self.max_workers and alive <= self.max_workers
                and self._respawn_call is None and self.state is PoolState.RUNNING)

    def _may_send_ahead(self, worker: Worker, in_flight: int) -> bool:
        """May a task be sent behind the ``in_flight`` ones ``worker`` has?"""
        if self._can_start():
            return False  # it waits for the new worker, not behind another task
        if self._balance_call is None:
            self._balance_call = self.clock.callLater(BALANCE_EVERY, self._balance)
        # Behind a task the worker has not read yet, what follows would be
        # read with it, and could not be taken back if that task is slow.
        return in_flight > 1 or worker.read_all_sent()

    def _send(self, worker: Worker, task: Task) -> bool:
        worker.asks += 1
        task.ask = ask = b"%x" % worker.asks
        task.apart = spec = (_shared.send_payload(worker.shared, ask, task.payload)
                             if len(task.payload) >= APART else None)
        box = (wire.encode_run(ask, task.kind, task.payload) if spec is None
               else wire.encode_run_apart(ask, task.kind, spec))
        if not worker.send(box if isinstance(box, bytes) else b"".join(box)):
            return False
        worker.inflight.append(task)
        task.sent = time.perf_counter()
        if task.timeout is not None:
            task.timer = self.clock.callLater(task.timeout, self._expire, worker, task)
        worker.dispatched += 1
        if worker.dispatched >= worker.recycle_at:
            self._recycle_step(worker)
        return True

    def _expire(self, worker: Worker, task: Task) -> None:
        raise NotImplementedError  # time limits: procpool/_ending.py

    def _balance(self) -> None:
        """Mark slow workers; move what waits behind their task when a worker could take it."""
        self._balance_call = None
        if self.state is not PoolState.RUNNING:
            return
        now = time.perf_counter()
        spare = self._can_start() or any(not w.inflight for w in self._ready)
        moved: list[Task] = []
        waiting = False
        for worker in self._workers:
            inflight = worker.inflight
            if not inflight or worker.state not in (_READY, _RETIRING):
                continue
            running = now - max(inflight[0].sent, worker.last_answer)
            if running >= SLOW_TASK:
                # A lower bound of its service time: nothing more is sent ahead to it.
                worker.ewma = max(worker.ewma or 0.0, running)
                if spare and len(inflight) > 1:
                    moved += worker.withdraw()
            waiting = waiting or len(worker.inflight) > 1
        if moved:
            log.debug("{n} tasks moved off workers whose task turned out slow", n=len(moved))
            moved.sort(key=lambda t: t.submitted)
            self.counters["tasks_moved"] += len(moved)
            self._requeue_front(moved)
        if self._queue:
            self._pump()
        if waiting and self._balance_call is None:
            self._balance_call = self.clock.callLater(BALANCE_EVERY, self._balance)
