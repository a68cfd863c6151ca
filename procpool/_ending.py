"""
Tasks that end early: a time limit passed, a cancelled Deferred, an answer
stream that lost its framing.

The part of :class:`~procpool.pool.ProcessPool` that kills a worker in the
middle of its work (ProcessPool inherits it). One rule for all three: the
running task is settled here, the worker's process group is killed, and the
tasks behind it, which never started (a worker answers in order, each answer
before its next task: docs/design.md), go back to the front of the queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from procpool._dispatch import Dispatch
from procpool._worker import Task, Worker, WorkerState, answered_in, raw_box
from procpool.errors import ProcPoolTimeout, WorkerProtocolError

__all__ = ["TaskEndings"]

log = Logger()

_KILLED = WorkerState.KILLED


class TaskEndings(Dispatch):
    """Time limits, cancelling and garbled answers of :class:`~procpool.pool.ProcessPool`."""

    def _wrong_answer(self, worker: Worker, box: dict[bytes, Any]) -> None:
        """An answer to no task, or to another than the oldest in flight: kill the worker."""
        ask = box.get(b"_answer", box.get(b"_error"))
        if not worker.inflight:
            self._framing_lost(worker, "an answer nobody asked for")
        else:
            self._framing_lost(worker, f"answer {bytes(ask or b'')[:20]!r} where "
                                       f"{worker.inflight[0].ask!r} was due")
        if worker.garbled is not None:
            worker.garbled += raw_box(box)

    def _framing_lost(self, worker: Worker, why: str) -> None:
        """
        The answer stream cannot be read any further: kill the worker now
        and keep what it still writes, raw; its tasks are settled when it
        has exited (:meth:`_garbled_ended`), once all it wrote is in.
        """
        if worker.state in (_KILLED, WorkerState.DEAD):
            return
        log.error("worker {pid}'s answers lost their framing ({why}); killing it",
                  pid=worker.pid, why=why)
        worker.garbled, worker.garbled_why = b"", why
        self._move(worker, _KILLED)
        worker.kill_group()
        self._replenish()

    def _garbled_ended(self, worker: Worker, read: list[Task]) -> None:
        """
        A worker killed for garbled answers has exited; ``read`` are the
        tasks it had read. Those whose answer shows in what it wrote ran, and
        the first after them was running: they fail with WorkerProtocolError;
        the rest never started and go back to the queue.
        """
        seen = worker.garbled or b""
        ran = 1 + max((i for i, t in enumerate(read) if answered_in(seen, t.ask)), default=-1)
        self.counters["workers_crashed"] += 1
        self._requeue_front(read[ran + 1:])
        error = WorkerProtocolError(worker.pid, worker.garbled_why)
        for task in read[:ran + 1]:
            task.cancel_timer()
            self.counters["tasks_crashed"] += 1
            if not task.deferred.called:
                task.deferred.errback(error)

    def _kill_running(self, worker: Worker) -> Task:
        """Kill ``worker`` and return its running task; the ones behind it go back to the queue."""
        inflight = worker.inflight
        task = inflight.popleft()
        task.cancel_timer()
        self._move(worker, _KILLED)
        # Anything behind the running task never started: run it elsewhere.
        self._requeue_front(list(inflight))
        inflight.clear()
        worker.kill_group()
        self._replenish()
        return task

    def _expire(self, worker: Worker, task: Task) -> None:
        task.timer = None
        if not worker.inflight or worker.inflight[0] is not task or worker.state is _KILLED:
            return
        self.counters["tasks_timed_out"] += 1
        log.warn("task on worker {pid} passed its {limit} s limit; killing its process group",
                 pid=worker.pid, limit=task.timeout)
        self._kill_running(worker)
        task.deferred.errback(ProcPoolTimeout(task.timeout))
        self._pump()

    def _cancel(self, d: defer.Deferred) -> None:
        """
        ``d.cancel()`` for a task: a queued one leaves the queue; a running
        one's worker is killed with its process group, like a time limit; one
        waiting on a worker behind another is taken back, or, if the worker
        has read it already, its worker is killed when it starts it.
        Deferred.cancel then fails ``d`` with CancelledError.
        """
        for i, task in enumerate(self._queue):
            if task.deferred is d:
                del self._queue[i]
                self._queued_bytes -= len(task.payload)
                self.counters["tasks_cancelled"] += 1
                return
        for worker in self._workers:
            task = next((t for t in worker.inflight if t.deferred is d), None)
            if task is None:
                continue
            self.counters["tasks_cancelled"] += 1
            if worker.state is _KILLED:
                task.cancelled = True  # its worker is going; it is settled as it ends
                return
            if worker.inflight[0] is task:
                log.info("task on worker {pid} cancelled; killing its process group",
                         pid=worker.pid)
                self._kill_running(worker)
                self._pump()
                return
            task.cancelled = True
            self._requeue_front(worker.withdraw())  # drops it, if it was still in the pipe
            return
