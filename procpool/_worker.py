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
import math
import os
import signal
import time
from collections import deque
from typing import Any, Protocol

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool import _pipes
from procpool._answers import AnswerParser, answered_in, raw_box
from workers import wire

__all__ = ["Task", "Worker", "WorkerState", "MAX_DEPTH", "SHORT_TASK", "box_size",
           "answered_in", "raw_box"]

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
    @ivar cancelled: its Deferred was cancelled while it waited, already read,
        behind another task on a worker (that worker is killed when it starts it).
    @ivar on_progress: called with each value the task reports before its
        answer (kinds ``b"C"`` and ``b"S"``), or None.
    @ivar apart: the ``_shm`` value of its last ``run`` box, when its payload
        crossed in shared memory (procpool/_shared.py); else None.
    """

    __slots__ = ("deferred", "kind", "payload", "timeout", "ask", "submitted", "sent", "timer",
                 "cancelled", "on_progress", "apart")

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
        self.cancelled = False
        self.on_progress: Any = None
        self.apart: bytes | None = None

    def cancel_timer(self) -> None:
        """Disarm the time limit, if armed."""
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


def box_size(task: Task) -> int:
    """Bytes of the ``run`` box that carried ``task`` (workers/wire.py's encode_run)."""
    if task.apart is not None:
        return len(wire.encode_run_apart(task.ask, task.kind, task.apart))
    size = len(task.payload)
    if size <= wire.MAX_VALUE:
        return 36 + len(task.ask) + size
    return sum(len(part) for part in wire.encode_run(task.ask, task.kind, task.payload))


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
    def _framing_lost(self, worker: Worker, why: str) -> None: ...


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
    @ivar recycle_at: ``dispatched`` count of its next recycling step (the pool's).
    @ivar max_pairs: most values one answer box may hold (from the payload cap).
    @ivar taskback: a second read end of its task pipe, to take back tasks it
        has not read (procpool/_pipes.py), or None.
    @ivar shared: the host's end of the socket its big results' memfds come
        through (procpool/_shared.py), or None.
    @ivar garbled: once its answers lost their framing, all it wrote since
        (raw); else None. ``garbled_why`` says what was wrong.
    """

    def __init__(self, pool: _Pool, max_payload: int = 1 << 28) -> None:
        self.pool = pool
        self.pid: int | None = None
        self.state = WorkerState.STARTING
        self.parser = AnswerParser()
        self.max_pairs = max_payload // wire.MAX_VALUE + 16
        self.recycle_at: float = math.inf
        self.taskback: int | None = None
        self.shared: Any = None
        self.garbled: bytes | None = None
        self.garbled_why = ""
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
        self.taskback = _pipes.second_reader(self.transport, TASK_FD)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD != ANSWER_FD:
            self._output(childFD, data)
            return
        if self.garbled is not None:
            self.garbled += data  # killed: kept to see which tasks it answered
            return
        pool = self.pool
        parser = self.parser
        for box in parser.feed(data):
            try:
                pool._box_received(self, box)
            except Exception:
                # Never let one box's trouble lose the boxes behind it.
                log.failure("procpool: handling an answer from worker {pid} failed",
                            pid=self.pid)
        if parser._left or parser._box:
            if self.state is not WorkerState.KILLED:
                why = parser.lost(self.max_pairs)
                if why is not None:
                    pool._framing_lost(self, why)
            if self.garbled is not None:
                self.garbled += parser.unreadable()
                self.parser = AnswerParser()

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
        self._close_taskback()
        for child_fd in (1, 2, TASK_FD, ANSWER_FD):
            try:
                self.transport.closeChildFD(child_fd)
            except Exception:
                pass

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self._settle(reason)
        self._close_taskback()

    def _close_taskback(self) -> None:
        fd, self.taskback = self.taskback, None
        if fd is not None:
            os.close(fd)
        shared, self.shared = self.shared, None
        if shared is not None:
            shared.close()  # and with it any memfd the worker sent and nobody took

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

    def read_all_sent(self) -> bool:
        """Has the worker read every box sent to it? (Then what is sent next waits in the pipe.)"""
        return (_pipes.unread(self.transport, TASK_FD) == 0
                and _pipes.unwritten(self.transport, TASK_FD) == 0)

    def withdraw(self) -> list[Task]:
        """
        Take back the tasks in flight whose boxes the worker has not read yet
        (the newest ones), oldest first; they never started. Nothing is
        taken when the pipe does not hold whole boxes (the worker is reading
        one): then the bytes go back unchanged.
        """
        if (self.taskback is None or self.state is WorkerState.DEAD
                or _pipes.unwritten(self.transport, TASK_FD) != 0):
            return []
        data = _pipes.take_back(self.taskback)
        if not data:
            return []
        count = self._boxes_in(len(data))
        if count is None:
            _pipes.put_back(self.transport, data, TASK_FD)
            return []
        taken = [self.inflight.pop() for _ in range(count)]
        taken.reverse()
        self.dispatched -= count
        return taken

    def _boxes_in(self, size: int) -> int | None:
        """How many of the newest tasks' boxes are exactly the last ``size`` bytes sent, or None."""
        count = 0
        for task in reversed(self.inflight):
            if size <= 0:
                break
            size -= box_size(task)
            count += 1
        return count if size == 0 else None

    def unread_at_exit(self) -> int:
        """
        For a worker that has exited: how many of its newest tasks in flight
        it never read whole (so never started), from what is left in its
        task pipe and in Twisted's buffer for it.
        """
        left = _pipes.unwritten(self.transport, TASK_FD) or 0
        if self.taskback is not None:
            left += len(_pipes.take_back(self.taskback))
        count = 0
        for task in reversed(self.inflight):
            if left <= 0:
                break
            left -= box_size(task)
            count += 1
        return count

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
        killed = getattr(self.transport, "killed", None)  # a forked worker (procpool/_forked.py)
        if killed is not None:
            killed()
