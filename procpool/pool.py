"""
The pool of worker processes, and the path one call takes through it.

    run_async(f, *a, **kw)                        reactor thread
        |  validate, pickle (dill if pickle refuses), check the payload cap
        v
    ProcessPool.submit(kind, payload, timeout) -> Deferred
        |
        v
    +-------------+   _pump(): an idle worker first; else, for a task with
    | queue (FIFO)|   no time limit, a worker whose recent tasks were short
    +-------------+   and that has fewer than MAX_DEPTH tasks in flight;
        |             else start a worker (up to PROCPOOL_MAX_NPROC) and wait
        v
    _Worker.inflight (FIFO)  ----- AMP box "run" on fd 3 ----->  python -m workers
        ^                                                          |  runs tasks in
        |                                                          |  order, answers
        +------ AMP box "_answer" / "_error" on fd 4 --------------+  each before the
        |                                                             next begins
        v
    unpickle the result, rebuild the exception
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

Parts of ampoule kept and replaced (the defects are listed in
spec/pool.md; each has a regression test in tests/test_pool.py):

- ampoule's ``ProcessStarter`` is kept as the starter's base, with
  ``startPythonProcess`` replaced: ampoule replaces the child's
  environment and rewrites PYTHONPATH (defect 4), and uses the global
  reactor (we take an injected one).
- ampoule's ``ProcessPool`` is replaced: it keeps one call in flight per
  worker (about 6k tasks/s at best), misses clean exits mid-call and idle
  deaths (defect 5), does not wait for workers in ``start`` (6), raises
  KeyError after ``stop`` (7), and its timeouts kill one pid (3).
- ampoule's ``AMPChild`` is replaced by a worker that speaks the same AMP
  box format without Twisted (workers/wire.py): importing Twisted costs
  about 200 ms per worker start and per recycle, and AMPChild exits on any
  undeclared exception (defect 2). Values over AMP's 64 KiB limit are cut
  into pieces inside the box (defect 1).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import types
from collections import deque
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet import main as main_error
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool import settings
from procpool.errors import (
    PayloadTooLarge,
    PoolStopped,
    ProcPoolTimeout,
    RemoteError,
    SerializationError,
    WorkerCrashed,
    WorkerStartError,
)
from workers import wire

__all__ = ["ProcessPool", "MAX_DEPTH"]

log = Logger()

#: Most tasks sent ahead to one worker whose recent tasks were short.
MAX_DEPTH = 16
#: A worker's tasks count as short below this many seconds (moving average).
SHORT_TASK = 0.001
_LATENCIES = 2048


class _Task:
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


class _Worker(protocol.ProcessProtocol):
    """One worker process, as the host sees it."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool
        self.pid: int | None = None
        self.parser = wire.BoxParser()
        self.inflight: deque[_Task] = deque()
        self.ready = False
        self.retiring = False
        self.exclusive = False
        self.killed = False
        self.dead = False
        self.closing = False
        self.successor: _Worker | None = None
        self.replaces: _Worker | None = None
        self.asks = 0
        self.dispatched = 0
        self.ewma: float | None = None
        self.last_answer = 0.0
        self.idle_since = 0.0
        self.started: defer.Deferred = defer.Deferred()
        self.start_timer: Any = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._partial: dict[int, bytes] = {1: b"", 2: b""}

    @property
    def depth(self) -> int:
        ewma = self.ewma
        return MAX_DEPTH if ewma is not None and ewma < SHORT_TASK else 1

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        _read_in_large_pieces(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 4:
            pool = self.pool
            for box in self.parser.feed(data):
                try:
                    pool._box_received(self, box)
                except Exception:
                    # Never let one box's trouble lose the boxes behind it.
                    log.failure("procpool: handling an answer from worker {pid} failed",
                                pid=self.pid)
        else:
            self._output(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD in (3, 4) and not self.dead:
            # The worker is going away: send it nothing more. Its unanswered
            # tasks are settled when the process has ended (processEnded).
            self.closing = True
            self.pool._worker_closing(self)

    def _output(self, fd: int, data: bytes) -> None:
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
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if fd == 2:
                self.stderr_tail.append(line)
                log.warn("worker {pid} stderr: {line}", pid=self.pid, line=line)
            else:
                log.info("worker {pid}: {line}", pid=self.pid, line=line)

    def processExited(self, reason: Failure) -> None:
        # The worker is dead, but anything it started may still hold its
        # stdout/stderr (or more) open, and Twisted calls processEnded only
        # when every pipe has closed. Settle now: read what the worker wrote
        # before it died, then stop listening to its pipes.
        reader = getattr(self.transport, "pipes", {}).get(4)
        fd = getattr(reader, "fd", None)
        if fd is not None:
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                except (BlockingIOError, InterruptedError, OSError):
                    break
                if not data:
                    break
                self.childDataReceived(4, data)
        self._settle(reason)
        for child_fd in (1, 2, 3, 4):
            try:
                self.transport.closeChildFD(child_fd)
            except Exception:
                pass

    def processEnded(self, reason: Failure) -> None:
        self._settle(reason)

    def _settle(self, reason: Failure) -> None:
        if self.dead:
            return
        for fd in (1, 2):
            if self._partial[fd]:
                self._output(fd, b"\n")
        self.pool._worker_ended(self, reason)

    def send(self, data: bytes) -> bool:
        """Write to the worker; False if its input is already gone."""
        if self.closing or self.dead:
            return False
        try:
            if len(data) < 65536:
                data = _write_now(self.transport, data)
                if not data:
                    return True
            self.transport.writeToChild(3, data)
        except (KeyError, OSError):
            self.closing = True
            return False
        return True

    def close_input(self) -> None:
        try:
            self.transport.closeChildFD(3)
        except Exception:
            pass

    def kill_group(self) -> None:
        """SIGKILL the worker and everything in its process group."""
        if self.dead or self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


_READ_SIZE = 256 * 1024
_MAX_LINE = 16 * 1024


def _read_in_large_pieces(transport: Any) -> None:
    """
    Read the worker's answers 256 KiB at a time. Twisted reads pipes 8 KiB at
    a time, which caps a 1 MiB echo near 500 MiB/s; larger reads cost small
    messages nothing. Only where the transport is Twisted's POSIX process.
    """
    pipes = getattr(transport, "pipes", {})
    for pipe in (pipes.get(3), pipes.get(4)):
        try:
            import fcntl
            fcntl.fcntl(pipe.fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError):
            pass
    writer = pipes.get(3)
    if writer is not None and hasattr(writer, "SEND_LIMIT"):
        writer.SEND_LIMIT = 1 << 20  # one write per MiB instead of eight
    reader = pipes.get(4)
    fd = getattr(reader, "fd", None)
    if fd is None:
        return
    received = reader.dataReceived

    def do_read() -> Any:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError:
            return main_error.CONNECTION_LOST
        if not data:
            return main_error.CONNECTION_DONE
        received(data)
        return None

    reader.doRead = do_read


def _write_now(transport: Any, data: bytes) -> bytes:
    """
    Write a small box straight to the worker's pipe when Twisted has nothing
    buffered for it, and return what is left to write. Twisted would write it
    on the next reactor turn; writing now saves about 15 us per round trip
    (p50 75 -> 58 us). Anything unexpected falls back to Twisted's buffer.
    """
    writer = getattr(transport, "pipes", {}).get(3)
    fd = getattr(writer, "fd", None)
    if (fd is None or getattr(writer, "_tempDataLen", None) != 0
            or len(getattr(writer, "dataBuffer", b"?")) != getattr(writer, "offset", -1)):
        return data
    try:
        written = os.write(fd, data)
    except (BlockingIOError, InterruptedError):
        return data
    return data[written:]


def _starter_class() -> type:
    # ampoule is imported only when a pool starts: `import ampoule` installs
    # the default reactor (pool.md defect 8).
    from ampoule.main import ProcessStarter

    class WorkerStarter(ProcessStarter):
        """ampoule's starter, spawning ``python -m workers`` with the host's environment."""

        def startPythonProcess(self, prot: Any, *args: Any) -> Any:  # noqa: N802 - ampoule's name
            reactor = self.reactor
            return reactor.spawnProcess(
                prot, sys.executable, (sys.executable, "-m", "workers", *self.args, *args),
                env=self.env, path=self.path, usePTY=False,
                childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})

    return WorkerStarter


def worker_environment() -> dict[str, str]:
    """
    The environment a worker starts with: the host's own, its import path,
    and every setting given to ``procpool.configure()`` (ampoule instead
    replaced the environment and rewrote PYTHONPATH, pool.md defect 4).
    """
    env = dict(os.environ)
    path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    for name, value in settings.snapshot().items():
        if name in settings._given:
            env[name] = "" if value is None else str(value)
    env["PROCPOOL_MAX_PAYLOAD"] = str(settings.get("PROCPOOL_MAX_PAYLOAD"))
    env["PROCPOOL_SPIN"] = str(settings.get("PROCPOOL_SPIN"))
    if settings.get("PROCPOOL_TUNE_MALLOC") and "GLIBC_TUNABLES" not in env:
        env["GLIBC_TUNABLES"] = (f"glibc.malloc.mmap_threshold={_MMAP_THRESHOLD}:"
                                 f"glibc.malloc.trim_threshold={_TRIM_THRESHOLD}")
    return env


_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> bool:
    """
    Ask glibc to keep freed buffers of up to 32 MiB in the heap. By default it
    returns each big buffer to the kernel and faults it in again on the next
    big payload: about 1,000 page faults per 1 MiB echo, half the host's CPU
    time. Measured: 1 MiB echo 270-320 -> 400-590 MiB/s. True if applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD)
                    and libc.mallopt(m_trim_threshold, _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


class ProcessPool:
    """
    A pool of worker processes speaking AMP, fed from one FIFO queue.

    Most code uses :func:`procpool.run_async`, which keeps one pool per
    process; a pool of your own is for tests and special cases::

        pool = ProcessPool(min_workers=1, max_workers=2)
        d = pool.start()
        d.addCallback(lambda _: pool.submit_source("_return(6 * 7)"))

    ``reactor`` spawns the processes; ``clock`` (default: the reactor) times
    the time limits, idle workers and start-up deadlines.
    """

    def __init__(self, *, reactor: Any = None, clock: Any = None,
                 min_workers: int | None = None, max_workers: int | None = None,
                 idle: float | None = None, recycle: int | None = None,
                 max_payload: int | None = None, directory: str | None = None,
                 uid: int | None = None, gid: int | None = None,
                 start_timeout: float | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        get = settings.get
        self.min_workers = min_workers if min_workers is not None else get("PROCPOOL_MIN_NPROC")
        self.max_workers = max_workers if max_workers is not None else get("PROCPOOL_MAX_NPROC")
        self.max_workers = max(self.max_workers, self.min_workers)
        self.idle = idle if idle is not None else get("PROCPOOL_IDLE")
        self.recycle = recycle if recycle is not None else get("PROCPOOL_RECYCLE")
        self.max_payload = max_payload if max_payload is not None else get("PROCPOOL_MAX_PAYLOAD")
        self.directory = directory if directory is not None else get("PROCPOOL_DIRECTORY")
        self.uid = uid if uid is not None else get("PROCPOOL_UID")
        self.gid = gid if gid is not None else get("PROCPOOL_GID")
        self.start_timeout = (start_timeout if start_timeout is not None
                              else get("PROCPOOL_START_TIMEOUT"))
        self.state = "new"
        self._queue: deque[_Task] = deque()
        self._workers: list[_Worker] = []
        self._ready: list[_Worker] = []
        self._starting = 0
        self._start_failures = 0
        self._recycle_not_before = 0.0
        self._respawn_call: Any = None
        self._reaper: Any = None
        self._shutdown_trigger: Any = None
        self._stopped: defer.Deferred | None = None
        self._stop_kill: Any = None
        self._starter: Any = None
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        self.counters = dict.fromkeys(
            ["tasks_done", "tasks_failed", "tasks_timed_out", "tasks_crashed",
             "workers_started", "workers_crashed", "workers_recycled", "workers_failed_to_start"],
            0)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> defer.Deferred:
        """
        Start the minimum number of workers; the Deferred fires once they
        all answer, or fails with :class:`WorkerStartError` (carrying the
        worker's stderr) if one cannot start.
        """
        if self.state in ("stopping", "stopped"):
            return defer.fail(PoolStopped("a stopped pool cannot be started again"))
        if self.state == "running":
            return defer.gatherResults([w.started for w in self._workers if not w.ready],
                                       consumeErrors=True).addCallback(lambda _: None)
        self.state = "running"
        if settings.get("PROCPOOL_TUNE_MALLOC"):
            tune_malloc()
        env = worker_environment()
        env["PROCPOOL_MAX_PAYLOAD"] = str(self.max_payload)
        # The worker drops to PROCPOOL_UID/GID itself once it has started:
        # switching before exec fails wherever that user cannot read the
        # interpreter (a Python under /root, a private virtualenv).
        for key, value in (("PROCPOOL_WORKER_UID", self.uid), ("PROCPOOL_WORKER_GID", self.gid)):
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        self._starter = _starter_class()(env=env, path=self.directory)
        self._starter.reactor = self.reactor
        self._shutdown_trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", self.stop)
        started = [self._spawn().started for _ in range(self.min_workers)]
        if self.max_workers > self.min_workers and self.idle > 0:
            self._reaper = self.clock.callLater(self._reap_interval(), self._reap)
        d = defer.gatherResults(started, consumeErrors=True)

        def unwrap(f: Failure) -> Failure:
            f.trap(defer.FirstError)
            return f.value.subFailure

        return d.addCallbacks(lambda _: None, unwrap)

    def stop(self, grace: float = 10.0) -> defer.Deferred:
        """
        Stop the pool: queued tasks fail with :class:`PoolStopped`; running
        ones get ``grace`` seconds to finish, then their workers are killed
        (and those tasks fail with PoolStopped too). Fires when every
        worker process has ended; later submissions fail their Deferred.
        """
        if self._stopped is not None:
            return _chain(self._stopped)
        self._stopped = defer.Deferred()
        was = self.state
        self.state = "stopping"
        if self._shutdown_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError, TypeError):
                pass
            self._shutdown_trigger = None
        for call in (self._reaper, self._respawn_call):
            if call is not None and call.active():
                call.cancel()
        queued = list(self._queue)
        self._queue.clear()
        for task in queued:
            task.deferred.errback(PoolStopped("the process pool was stopped before the task ran"))
        for worker in list(self._workers):
            worker.retiring = True
            if not worker.inflight:
                worker.close_input()
        self._ready = []
        if self._workers and grace is not None:
            self._stop_kill = self.clock.callLater(grace, self._kill_remaining)
        if not self._workers or was == "new":
            self._finish_stop()
        return _chain(self._stopped)

    def _kill_remaining(self) -> None:
        self._stop_kill = None
        for worker in list(self._workers):
            worker.killed = True
            inflight = list(worker.inflight)
            worker.inflight.clear()
            for task in inflight:
                _cancel(task)
                task.deferred.errback(PoolStopped(
                    "the process pool was stopped while the task was running"))
            worker.kill_group()

    def _finish_stop(self) -> None:
        if self.state == "stopped":
            return
        self.state = "stopped"
        if self._stop_kill is not None and self._stop_kill.active():
            self._stop_kill.cancel()
        self._stop_kill = None
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- submitting ------------------------------------------------------

    def submit(self, kind: bytes, payload: bytes, timeout: float | None = None,
               deferred: defer.Deferred | None = None) -> defer.Deferred:
        """
        Queue one serialised task (``kind`` ``b"c"`` or ``b"s"``, see
        workers/wire.py). Raises :class:`PayloadTooLarge` at once for an
        over-cap payload; the Deferred (``deferred`` if given) fires with the
        unpickled result.
        """
        if self.state != "running":
            if self.state == "new":
                self.start().addErrback(self._start_failed)
            else:
                d = deferred if deferred is not None else defer.Deferred()
                d.errback(PoolStopped())
                return d
        if timeout is not None:
            if not timeout == timeout or timeout < 0:
                raise ValueError(f"timeout must be zero or more seconds, got {timeout!r}")
            if timeout == 0:
                timeout = None  # no limit (ampoule killed at once, pool.md defect 3)
        size = len(payload)
        if size > self.max_payload:
            raise PayloadTooLarge("the task's arguments", size, self.max_payload)
        task = _Task(kind, payload, timeout, deferred)
        queue = self._queue
        # A non-empty queue means no worker can take more right now; the next
        # answer, start or death pumps it again.
        pump = not queue
        queue.append(task)
        if pump:
            self._pump()
        return task.deferred

    def submit_call(self, function: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        """Run ``function(*args, **kwargs)`` in a worker (pickled, or dill-ed if need be)."""
        return self.submit(b"c", dumps((function, args, kwargs), "the callable"))

    def submit_source(self, source: str, **env: Any) -> defer.Deferred:
        """Run a source string in a worker with ``env`` as its globals."""
        return self.submit(b"s", dumps((source, env), "the source's keyword arguments"))

    def _start_failed(self, failure: Failure) -> None:
        log.failure("the process pool could not start its workers", failure)

    # -- dispatch (the hot path) -------------------------------------------

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
                    chosen = worker
                    break
                if (task.timeout is None and not worker.exclusive and n < best
                        and n < worker.depth):
                    chosen, best = worker, n
            if chosen is None:
                self._grow()
                return
            queue.popleft()
            if not self._send(chosen, task):
                queue.appendleft(task)
                self._worker_closing(chosen)

    def _send(self, worker: _Worker, task: _Task) -> bool:
        worker.asks += 1
        task.ask = ask = b"%x" % worker.asks
        # The payload stays with the task until it is answered: if the worker
        # dies first, a task that never started is sent again elsewhere.
        box = wire.encode_run(ask, task.kind, task.payload)
        if not worker.send(box if isinstance(box, bytes) else b"".join(box)):
            return False
        worker.inflight.append(task)
        task.sent = time.perf_counter()
        if task.timeout is not None:
            worker.exclusive = True
            task.timer = self.clock.callLater(task.timeout, self._expire, worker, task)
        worker.dispatched += 1
        if (self.recycle and worker.dispatched >= self.recycle and not worker.retiring
                and worker.successor is None):
            self._recycle(worker)
        return True

    def _recycle(self, worker: _Worker) -> None:
        """Start a successor; the old worker keeps working until it answers (hides the start)."""
        if (self.state != "running" or self._respawn_call is not None
                or self.clock.seconds() < self._recycle_not_before):
            return  # workers are failing to start: keep this one rather than churn
        successor = self._spawn()
        worker.successor = successor
        successor.replaces = worker

        def failed(_: Failure) -> None:
            # Keep the old worker; try again after a growing pause.
            worker.successor = None
            wait = min(30.0, 0.5 * 2 ** max(0, self._start_failures - 1))
            self._recycle_not_before = self.clock.seconds() + wait

        successor.started.addErrback(failed)

    def _worker_closing(self, worker: _Worker) -> None:
        """A worker's pipe closed: dispatch nothing more to it."""
        if worker in self._ready:
            self._ready.remove(worker)

    def _box_received(self, worker: _Worker, box: dict[bytes, bytes]) -> None:
        if not worker.ready:
            if box.get(b"_command") == b"ready":
                self._worker_ready(worker)
            return
        if worker.killed:
            return
        if not worker.inflight:
            log.error("worker {pid} sent an answer nobody asked for; killing it", pid=worker.pid)
            worker.kill_group()
            return
        task = worker.inflight.popleft()
        ask = box.get(b"_answer")
        if ask is None:
            ask = box.get(b"_error")
        if ask != task.ask:
            log.error("worker {pid} answered {got!r}, expected {want!r}; killing it",
                      pid=worker.pid, got=ask, want=task.ask)
            worker.inflight.appendleft(task)
            worker.kill_group()
            return
        now = time.perf_counter()
        service = now - (task.sent if task.sent > worker.last_answer else worker.last_answer)
        worker.last_answer = now
        worker.ewma = service if worker.ewma is None else 0.75 * worker.ewma + 0.25 * service
        self._latencies.append(now - task.submitted)
        if task.timer is not None:
            _cancel(task)
            worker.exclusive = False
        if not worker.inflight:
            worker.idle_since = self.clock.seconds()
            if worker.retiring:
                worker.close_input()
        payload = wire.join_value(box, b"p")
        if b"_answer" in box:
            try:
                result = pickle.loads(payload)
            except Exception as exc:
                self.counters["tasks_failed"] += 1
                task.deferred.errback(SerializationError(
                    f"the task's result could not be unpickled here: {exc!r}"))
            else:
                self.counters["tasks_done"] += 1
                task.deferred.callback(result)
        else:
            self.counters["tasks_failed"] += 1
            try:
                error = _remote_exception(box, payload)
            except Exception as exc:  # the task must settle whatever the box held
                error = RemoteError("unknown", f"the worker's error could not be read: {exc!r}")
            task.deferred.errback(error)
        if self._queue:
            self._pump()

    def _expire(self, worker: _Worker, task: _Task) -> None:
        task.timer = None
        if task not in worker.inflight:
            return
        worker.inflight.remove(task)
        worker.killed = True
        worker.exclusive = False
        if worker in self._ready:
            self._ready.remove(worker)
        self.counters["tasks_timed_out"] += 1
        log.warn("task on worker {pid} passed its {limit} s limit; killing its process group",
                 pid=worker.pid, limit=task.timeout)
        # Anything behind the timed-out task never started: run it elsewhere.
        self._queue.extendleft(reversed(worker.inflight))
        worker.inflight.clear()
        worker.kill_group()
        task.deferred.errback(ProcPoolTimeout(task.timeout))
        self._replenish()
        self._pump()

    # -- workers coming and going ------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self)
        self._workers.append(worker)
        self._starting += 1
        self.counters["workers_started"] += 1
        try:
            self._starter.startPythonProcess(worker)
        except Exception as exc:
            self._workers.remove(worker)
            self._starting -= 1
            self._start_failures += 1
            self.counters["workers_failed_to_start"] += 1
            error = WorkerStartError(f"could not start a worker process: {exc}")
            log.error("{error}", error=str(error))
            worker.started.errback(error)
            if self.state == "running":
                if not self._ready and not self._starting:
                    queued = list(self._queue)
                    self._queue.clear()
                    for task in queued:
                        task.deferred.errback(error)
                if self._respawn_call is None:
                    wait = min(30.0, 0.5 * 2 ** (self._start_failures - 1))
                    self._respawn_call = self.clock.callLater(wait, self._respawn)
            return worker
        worker.start_timer = self.clock.callLater(self.start_timeout, self._start_overdue, worker)
        return worker

    def _start_overdue(self, worker: _Worker) -> None:
        worker.start_timer = None
        if not worker.ready and not worker.dead:
            log.error("worker {pid} did not answer within {s} s; killing it",
                      pid=worker.pid, s=self.start_timeout)
            worker.stderr_tail.append(f"(no answer within {self.start_timeout:g} s)")
            worker.closing = True
            worker.kill_group()

    def _worker_ready(self, worker: _Worker) -> None:
        if worker.closing or worker.killed:
            return  # killed for starting too slowly; its end is settled as a failed start
        worker.ready = True
        self._starting -= 1
        self._start_failures = 0
        if worker.start_timer is not None and worker.start_timer.active():
            worker.start_timer.cancel()
        worker.start_timer = None
        worker.idle_since = self.clock.seconds()
        log.debug("worker {pid} ready", pid=worker.pid)
        if self.state == "running" and not worker.retiring:
            self._ready.append(worker)
            old = worker.replaces
            worker.replaces = None
            if old is not None and not old.dead and not old.retiring:
                self._retire(old, recycled=True)
            worker.started.callback(None)
            self._replenish()
            self._pump()
        else:
            worker.close_input()
            worker.started.callback(None)

    def _grow(self) -> None:
        if self.state != "running":
            return
        live = sum(1 for w in self._workers if not w.retiring)
        if live < self.max_workers and self._starting < len(self._queue) \
                and self._respawn_call is None:
            self._spawn().started.addErrback(lambda f: None)

    def _replenish(self) -> None:
        if self.state != "running" or self._respawn_call is not None:
            return
        live = sum(1 for w in self._workers if not w.retiring and not w.killed)
        missing = self.min_workers - live
        if missing <= 0:
            return
        if self._start_failures:
            wait = min(30.0, 0.5 * 2 ** (self._start_failures - 1))
            self._respawn_call = self.clock.callLater(wait, self._respawn)
            return
        for _ in range(missing):
            self._spawn().started.addErrback(lambda f: None)

    def _respawn(self) -> None:
        self._respawn_call = None
        if self.state != "running":
            return
        live = sum(1 for w in self._workers if not w.retiring and not w.killed)
        if live < self.min_workers or (self._queue and live < self.max_workers):
            self._spawn().started.addErrback(lambda f: None)

    def _retire(self, worker: _Worker, recycled: bool = False) -> None:
        worker.retiring = True
        if worker in self._ready:
            self._ready.remove(worker)
        if recycled:
            self.counters["workers_recycled"] += 1
        # Start the replacement before the old worker leaves, so recycling
        # costs no throughput (ampoule lost 64% to it).
        self._replenish()
        if not worker.inflight:
            worker.close_input()

    def _worker_ended(self, worker: _Worker, reason: Failure) -> None:
        worker.dead = True
        if worker in self._workers:
            self._workers.remove(worker)
        if worker in self._ready:
            self._ready.remove(worker)
        if worker.start_timer is not None and worker.start_timer.active():
            worker.start_timer.cancel()
        status = reason.value
        exitcode = getattr(status, "exitCode", None)
        signum = getattr(status, "signal", None)
        inflight = list(worker.inflight)
        worker.inflight.clear()
        if not worker.ready:
            self._starting -= 1
            self._start_failures += 1
            self.counters["workers_failed_to_start"] += 1
            how = f"was killed by signal {signum}" if signum else f"exited with code {exitcode}"
            tail = "\n".join(worker.stderr_tail) or "(it wrote nothing to stderr)"
            exc = WorkerStartError(f"worker {worker.pid} {how} before it was ready:\n{tail}")
            if self.state == "running":
                log.error("{error}", error=str(exc))
            worker.started.errback(exc)
            if self.state == "running" and not self._ready and not self._starting:
                queued = list(self._queue)
                self._queue.clear()
                for task in queued:
                    task.deferred.errback(exc)
        elif inflight:
            first = inflight[0]
            _cancel(first)
            self.counters["tasks_crashed"] += 1
            self.counters["workers_crashed"] += 1
            log.warn("worker {pid} died while running a task (exit code {code}, signal {sig})",
                     pid=worker.pid, code=exitcode, sig=signum)
            # Put the tasks that never started back first: the errback may
            # stop the pool, which must then fail them rather than lose them.
            self._queue.extendleft(reversed(inflight[1:]))
            first.deferred.errback(WorkerCrashed(worker.pid, exitcode, signum))
        elif not worker.retiring and not worker.killed:
            self.counters["workers_crashed"] += 1
            log.warn("idle worker {pid} died (exit code {code}, signal {sig})",
                     pid=worker.pid, code=exitcode, sig=signum)
        if self.state == "running":
            self._replenish()
            self._pump()
        else:
            queued = list(self._queue)
            self._queue.clear()
            for task in queued:
                task.deferred.errback(PoolStopped())
            if self.state == "stopping" and not self._workers:
                self._finish_stop()

    def _reap_interval(self) -> float:
        return max(0.5, min(self.idle / 2, 30.0))

    def _reap(self) -> None:
        self._reaper = None
        if self.state != "running":
            return
        now = self.clock.seconds()
        live = [w for w in self._ready if not w.retiring]
        for worker in live:
            if len([w for w in self._ready if not w.retiring]) <= self.min_workers:
                break
            if not worker.inflight and now - worker.idle_since >= self.idle:
                log.debug("worker {pid} idle for {s} s; stopping it", pid=worker.pid, s=self.idle)
                self._retire(worker)
        self._reaper = self.clock.callLater(self._reap_interval(), self._reap)

    # -- figures ---------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """
        The pool's figures: workers busy/idle/starting, queue depth, task and
        worker counters, and the round-trip latency (submit to answer) of the
        last tasks, in milliseconds.
        """
        ready = [w for w in self._workers if w.ready and not w.dead]
        latencies = sorted(self._latencies)
        figures: dict[str, Any] = {
            "state": self.state,
            "workers": len(self._workers),
            "busy": sum(1 for w in ready if w.inflight),
            "idle": sum(1 for w in ready if not w.inflight),
            "starting": self._starting,
            "queued": len(self._queue),
            "in_flight": sum(len(w.inflight) for w in self._workers),
            "pids": sorted(w.pid for w in self._workers if w.pid is not None),
            **self.counters,
        }
        for name, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
            figures[name] = (round(latencies[min(len(latencies) - 1, int(q * len(latencies)))]
                                   * 1000, 3) if latencies else None)
        return figures


def _cancel(task: _Task) -> None:
    timer = task.timer
    task.timer = None
    if timer is not None and timer.active():
        timer.cancel()


def _chain(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred that fires with ``d``'s result, leaving ``d`` untouched."""
    out: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)
        return result

    d.addBoth(relay)
    return out


_PLAIN = frozenset([bytes, bytearray, str, int, float, bool, type(None), complex])
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType)


def _may_name_main(obj: Any) -> bool:
    """Could ``obj``'s pickle refer to ``__main__``? Cheap for the common shapes."""
    if type(obj) is tuple and len(obj) in (2, 3):
        head, *rest = obj
        if getattr(head, "__module__", None) == "__main__":
            return True
        if type(head) not in _PLAIN and not isinstance(head, _FUNCTIONS):
            return True  # a partial, a callable object...: scan its pickle
        for part in rest:
            values = part.values() if type(part) is dict else part
            if type(values) not in (tuple, type({}.values())):
                return True
            if any(type(v) not in _PLAIN for v in values):
                return True
        return False
    return True


def dumps(obj: Any, what: str) -> bytes:
    """
    Pickle ``obj`` for a worker: plain pickle first (fast), dill for what it
    refuses (lambdas, closures, things defined in ``__main__``, which the
    worker cannot import). Raises :class:`SerializationError` naming ``what``
    could not be serialised.
    """
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception:
        data = b""
    else:
        # Scanning a big pickle costs about as much as copying it: skip the
        # scan when the arguments are plain values.
        if not _may_name_main(obj) or b"__main__" not in data:
            return data
    try:
        import dill
        return dill.dumps(obj, protocol=5, recurse=True)
    except Exception as exc:
        raise SerializationError(f"{what} could not be serialised for a worker process: "
                                 f"{type(exc).__name__}: {exc}") from exc


def _remote_exception(box: dict[bytes, Any], payload: Any) -> BaseException:
    # Values over 2 KiB arrive as memoryviews (workers/wire.py): copy the small fields.
    code = bytes(box.get(b"_error_code", b""))
    description = bytes(box.get(b"_error_description", b"")).decode("utf-8", "replace")
    if code == b"TOO_LARGE":
        size, _, cap = description.partition("/")
        return PayloadTooLarge("the task's result", int(size or 0), int(cap or 0))
    if code == b"UNSERIALIZABLE":
        return SerializationError(description)
    try:
        info = wire.ErrorInfo(*pickle.loads(payload))
    except Exception:
        return RemoteError("unknown", description)
    exc: BaseException | None = None
    if info.pickled:
        try:
            exc = pickle.loads(info.pickled)
        except Exception:
            exc = None
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt etc. must not be re-raised in the host.
        return RemoteError(info.type_name, info.message, info.traceback)
    exc.remote_traceback = info.traceback  # type: ignore[attr-defined]
    exc.add_note("Raised in a procpool worker; remote traceback:\n" + info.traceback.rstrip())
    return exc
