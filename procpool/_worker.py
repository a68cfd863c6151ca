"""
One task and one worker process, as the host sees them.

A worker has one lifecycle state, and these are its legal moves::

    STARTING --ready box--> READY --recycle, idle, stop--> RETIRING --exit--> DEAD
        |                     |                              |
        |                     +--pipe closed, write failed--> LOST ---exit--> DEAD
        |                     |                              |
        +---------------------+--timeout, start overdue, ----+--> KILLED --exit--> DEAD
                                 stop's grace over

Every state but DEAD may also go straight to DEAD (the process ended). The
pool dispatches only to READY workers. A RETIRING worker finishes what is in
flight, then its input is closed and it exits; its pipes closing on the way
is expected, so it stays RETIRING. A KILLED worker's answers are ignored: the
pool has already settled its tasks. :meth:`Worker.move` refuses any other
move, so a wrong transition fails loudly where it is made.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from collections import deque
from typing import Any, Protocol

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool import _pipes
from workers import wire

__all__ = ["Task", "Worker", "WorkerState", "MAX_DEPTH", "SHORT_TASK"]

log = Logger()

#: Most tasks sent ahead to one worker whose recent tasks were short.
MAX_DEPTH = 16
#: A worker's tasks count as short below this many seconds (moving average).
SHORT_TASK = 0.001
#: Output lines longer than this are logged in pieces.
_MAX_LINE = 16 * 1024
#: The descriptors of a worker's two AMP pipes (see procpool/_spawn.py).
TASK_FD, ANSWER_FD = 3, 4


class Task:
    """
    One submitted task.

    @ivar deferred: fires with the result (the caller's AsyncResult).
    @ivar kind: ``b"c"`` (a pickled call) or ``b"s"`` (a pickled source string).
    @ivar payload: the pickled task; kept until it is answered, so a task that
        never started can be sent again elsewhere.
    @ivar timeout: seconds it may run once sent, or None.
    @ivar ask: its ``_ask`` id on the worker it was sent to.
    @ivar submitted: ``perf_counter()`` when it was submitted.
    @ivar sent: ``perf_counter()`` when it was last sent to a worker.
    @ivar timer: the pending ``IDelayedCall`` of its time limit, or None.
    """

    __slots__ = ("deferred", "kind", "payload", "timeout", "ask", "submitted", "sent", "timer")

    def __init__(self, kind: bytes, payload: bytes, timeout: float | None,
                 deferred: defer.Deferred | None = None) -> None:
        self.deferred: defer.Deferred = deferred if deferred is not None else defer.Deferred()
        self.kind = kind
        self.payload = payload
        self.timeout = timeout
        self.ask = b""
        self.submitted = time.perf_counter()
        self.sent = 0.0
        self.timer: Any = None

    def cancel_timer(self) -> None:
        """Disarm the time limit, if armed."""
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


class WorkerState(enum.Enum):
    """Where a worker is in its life; the moves are drawn in this module's docstring."""

    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    LOST = "lost"
    KILLED = "killed"
    DEAD = "dead"


_S = WorkerState
_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    _S.STARTING: frozenset([_S.READY, _S.RETIRING, _S.LOST, _S.KILLED, _S.DEAD]),
    _S.READY: frozenset([_S.RETIRING, _S.LOST, _S.KILLED, _S.DEAD]),
    _S.RETIRING: frozenset([_S.KILLED, _S.DEAD]),
    _S.LOST: frozenset([_S.KILLED, _S.DEAD]),
    _S.KILLED: frozenset([_S.DEAD]),
    _S.DEAD: frozenset(),
}


class _Pool(Protocol):
    """What a worker reports to its pool (procpool.pool.ProcessPool), and nothing more."""

    def _box_received(self, worker: Worker, box: dict[bytes, Any]) -> None: ...

    def _worker_lost(self, worker: Worker) -> None: ...

    def _worker_ended(self, worker: Worker, reason: Failure) -> None: ...


class Worker(protocol.ProcessProtocol):
    """
    One worker process: its pipes, its state and the tasks it has in flight.

    The worker reports to its pool (``_box_received``, ``_worker_lost``,
    ``_worker_ended``); the pool decides everything else.

    @ivar pool: the pool it belongs to (it reports through ``_Pool``'s methods).
    @ivar pid: its process id, once spawned.
    @ivar state: its :class:`WorkerState`; change it with :meth:`move`.
    @ivar inflight: tasks sent and not yet answered, oldest first; the
        oldest is the one running (the worker answers in order).
    @ivar successor: the worker started to replace this one when it is
        recycled, until that one answers.
    @ivar replaces: for a successor, the worker it will replace.
    @ivar asks: how many tasks were ever sent (the next ``_ask`` id).
    @ivar dispatched: tasks sent, counted for recycling.
    @ivar ewma: moving average of its task service time, seconds (None: no
        answer yet); below SHORT_TASK, tasks may be sent ahead to it.
    @ivar last_answer: ``perf_counter()`` of its last answer.
    @ivar idle_since: clock time it last had nothing in flight.
    @ivar started: fires when it answers, or fails with WorkerStartError.
    @ivar start_timer: the pending start deadline, or None.
    @ivar stderr_tail: its last 40 stderr lines (for start errors).
    """

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.pid: int | None = None
        self.state = WorkerState.STARTING
        self.parser = wire.BoxParser()
        self.inflight: deque[Task] = deque()
        self.successor: Worker | None = None
        self.replaces: Worker | None = None
        self.asks = 0
        self.dispatched = 0
        self.ewma: float | None = None
        self.last_answer = 0.0
        self.idle_since = 0.0
        self.started: defer.Deferred = defer.Deferred()
        self.start_timer: Any = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._partial: dict[int, bytes] = {1: b"", 2: b""}

    def __repr__(self) -> str:
        return f"<Worker {self.pid} {self.state.value}, {len(self.inflight)} in flight>"

    def move(self, new: WorkerState) -> None:
        """Change state; a move not drawn in the module docstring raises RuntimeError."""
        if new not in _MOVES[self.state]:
            raise RuntimeError(f"worker {self.pid}: {self.state.value} -> {new.value} "
                               "is not a legal move")
        self.state = new

    @property
    def depth(self) -> int:
        """How many tasks it may have in flight: MAX_DEPTH while its tasks are short, else 1."""
        ewma = self.ewma
        return MAX_DEPTH if ewma is not None and ewma < SHORT_TASK else 1

    @property
    def exclusive(self) -> bool:
        """Is its task one with a time limit? (Nothing is ever sent behind such a task.)"""
        return bool(self.inflight) and self.inflight[0].timeout is not None

    # -- Twisted's calls ---------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.pid = self.transport.pid
        _pipes.widen(self.transport, TASK_FD, ANSWER_FD)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD != ANSWER_FD:
            self._output(childFD, data)
            return
        pool = self.pool
        for box in self.parser.feed(data):
            try:
                pool._box_received(self, box)
            except Exception:
                # Never let one box's trouble lose the boxes behind it.
                log.failure("procpool: handling an answer from worker {pid} failed",
                            pid=self.pid)

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N802, N803
        if childFD in (TASK_FD, ANSWER_FD):
            # The worker is going away: send it nothing more. Its unanswered
            # tasks are settled when the process has ended.
            self.pool._worker_lost(self)

    def processExited(self, reason: Failure) -> None:  # noqa: N802
        # The worker is dead, but anything it started may still hold its
        # stdout/stderr open, and Twisted calls processEnded only when every
        # pipe has closed. Settle now: read what the worker wrote before it
        # died, then stop listening to its pipes.
        _pipes.drain(self.transport, lambda data: self.childDataReceived(ANSWER_FD, data),
                     ANSWER_FD)
        self._settle(reason)
        for child_fd in (1, 2, TASK_FD, ANSWER_FD):
            try:
                self.transport.closeChildFD(child_fd)
            except Exception:
                pass

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self._settle(reason)

    def _settle(self, reason: Failure) -> None:
        if self.state is WorkerState.DEAD:
            return
        for fd in (1, 2):
            if self._partial[fd]:
                self._output(fd, b"\n")
        self.pool._worker_ended(self, reason)

    def _output(self, fd: int, data: bytes) -> None:
        """Log what the worker printed, a line at a time (stderr as warnings)."""
        text = self._partial[fd] + data.replace(b"\r", b"\n")
        *lines, rest = text.split(b"\n")
        if len(rest) > _MAX_LINE:
            # Output with no newline (a progress bar, a binary blob): log it in
            # pieces rather than hold it and re-join it on every read.
            lines.append(rest[:_MAX_LINE] + b" [cut]")
            rest = b""
        self._partial[fd] = rest
        for raw in lines:
            if not raw:
                continue
            line = raw.decode("utf-8", "replace")
            if fd == 2:
                self.stderr_tail.append(line)
                log.warn("worker {pid} stderr: {line}", pid=self.pid, line=line)
            else:
                log.info("worker {pid}: {line}", pid=self.pid, line=line)

    # -- the pool's calls --------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write to the worker; False if its input is already gone."""
        if self.state in (WorkerState.LOST, WorkerState.DEAD):
            return False
        try:
            if len(data) < 65536:
                data = _pipes.write_now(self.transport, data, TASK_FD)
                if not data:
                    return True
            self.transport.writeToChild(TASK_FD, data)
        except (KeyError, OSError):
            return False
        return True

    def close_input(self) -> None:
        """Close the task pipe: the worker exits once it has answered what it has."""
        try:
            self.transport.closeChildFD(TASK_FD)
        except Exception:
            pass

    def kill_group(self) -> None:
        """SIGKILL the worker and everything in its process group."""
        if self.state is WorkerState.DEAD or self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
