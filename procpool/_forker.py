"""
The host's side of the fork server (workers/forker.py): workers forked by a
process that has already imported what they need, instead of each spawned
as a fresh interpreter (about 3 ms to a ready worker against about 20-25 ms;
docs/design.md, "The fork server"). Each forked worker's transport is a
:class:`~procpool._forked.ForkedProcess`, whose end :class:`ForkServer`
reports from the server's own ``waitpid``.

The server starts 50 ms after the pool's first workers (spawned) have answered.
Workers are spawned whenever it cannot fork: while it starts, while a fork
request is unanswered, after it died. When the server dies, so do its
workers (``PR_SET_PDEATHSIG``); the host kills their process groups too,
should one not have asked yet, and ends each with the status of a SIGKILL,
so their tasks settle as for any worker killed. Another server starts after
2 s, then 4 s; after MAX_FAILED_STARTS servers in a row that forked nothing,
the pool spawns for good.
"""

from __future__ import annotations

import enum
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from procpool._forked import ForkedProcess

__all__ = ["ForkFailed", "ForkServer", "ForkedProcess", "ServerState"]

log = Logger()

#: Seconds the reactor waits for the server's answer to a fork (about 1 ms as a
#: rule); past it the worker is spawned instead and the server gets nothing more
#: until it answers.
REPLY_TIMEOUT = 0.25
#: Servers that end this many times in a row without forking a worker: none is started again.
MAX_FAILED_STARTS = 3
_MESSAGE = 256


class ForkFailed(Exception):
    """The fork server could not fork a worker; the caller spawns one instead."""


class ServerState(enum.Enum):
    """
    A fork server's life. GONE (none yet, or dead: another may follow after
    a pause) -> STARTING (spawned, importing) -> READY (forks on request);
    READY -> BEHIND (a fork request went unanswered: nothing more is sent)
    -> READY (it answered); STARTING, READY or BEHIND -> GONE (it died, or
    was killed past its deadline); any -> STOPPED (the pool stopped, or too
    many servers died without forking): for good.
    """

    STARTING = "starting"
    READY = "ready"
    BEHIND = "behind"
    GONE = "gone"
    STOPPED = "stopped"


@implementer(IReadDescriptor)
class ForkServer:
    """
    The pool's fork server, started again after a pause if it dies.

    ``launch(protocol, control_fd)`` spawns ``workers/__main__.py --forker``
    with the server's end of the control socket on fd 3 and returns its
    transport (procpool/_spawn.py).

    @ivar state: a :class:`ServerState`; :meth:`fork` works only when READY.
    @ivar pid: the server's pid, while it runs.
    @ivar forked: workers forked so far, over every server started.
    """

    def __init__(self, reactor: Any, clock: Any,
                 launch: Callable[[protocol.ProcessProtocol, int], Any],
                 start_timeout: float = 30.0) -> None:
        self.reactor, self.clock = reactor, clock
        self.state = ServerState.GONE
        self.pid: int | None = None
        self.forked = 0
        self._launch = launch
        self._start_timeout = start_timeout
        self._control: socket.socket | None = None
        self._transport: Any = None
        self._killed: set[ForkedProcess] = set()
        self._begun = False
        self._protocol: _ServerProtocol | None = None
        self._children: dict[int, ForkedProcess] = {}
        self._backlog: list[tuple[Any, ...]] = []
        self._timer: Any = None
        self._failed_starts = 0

    @property
    def ready(self) -> bool:
        """May :meth:`fork` be called now?"""
        return self.state is ServerState.READY and self._control is not None

    def begin(self) -> None:
        """Start the first server (later ones start after a server dies); once only."""
        if not self._begun:
            self._begun = True
            self.start()

    def start(self) -> None:
        """Spawn a server; it is ready once it says so (workers are spawned meanwhile)."""
        if self.state is not ServerState.GONE:
            return
        self._protocol = running = _ServerProtocol(self)
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:  # out of descriptors, say
            self._lost(running, f"it could not be started: {exc}")
            running.ended.callback(None)
            return
        ours.setblocking(False)
        # All set before the launch: a server that dies at once may be
        # reaped, and so lost, before the launch returns.
        self._control = ours
        self.state = ServerState.STARTING
        self.reactor.addReader(self)
        self._set_timer(self._start_timeout, self._overdue)
        try:
            self._transport = self._launch(running, theirs.fileno())
        except Exception as exc:
            self._lost(running, f"it could not be started: {exc}")
            running.ended.callback(None)  # no process: nothing will end it
            return
        finally:
            theirs.close()
        if running is self._protocol and self.state is ServerState.STARTING:
            self.pid = self._transport.pid

    def fork(self, proto: protocol.ProcessProtocol, child_fds: dict[int, Any],
             spin: bool) -> ForkedProcess:
        """Fork a worker for ``proto`` (its transport is returned); raises :class:`ForkFailed`."""
        if not self.ready:
            raise ForkFailed(f"the fork server is {self.state.value}")
        request = b"fork s" if spin else b"fork n"

        def ask(fds: list[int]) -> int:
            try:
                socket.send_fds(self._control, [request], fds)
            except OSError as exc:
                raise ForkFailed(f"the fork server did not take the request: {exc}") from None
            return self._answer()

        process = ForkedProcess(self.reactor, proto, child_fds, ask)
        self._children[process.pid] = process
        process.server = self
        self.forked += 1
        running = self._protocol
        if running is not None:
            running.forked += 1
        return process

    def stop(self) -> defer.Deferred:
        """Let the server go (at EOF on its socket it exits); fires once it has ended."""
        was, self.state = self.state, ServerState.STOPPED
        self._set_timer(None)
        self._close_control()
        running = self._protocol
        if running is None or running.ended.called:
            return defer.succeed(None)
        if was is ServerState.STARTING:
            self._kill()  # still importing: nothing of it to wait for
        # It exits at EOF; one that does not within a few seconds is killed.
        kill = self.clock.callLater(5.0, self._kill)
        done: defer.Deferred = defer.Deferred()

        def ended(_: object) -> None:
            if kill.active():
                kill.cancel()
            done.callback(None)

        running.ended.addBoth(ended)
        return done

    # -- the control socket (IReadDescriptor) --------------------------------

    def fileno(self) -> int:
        """The host's end of the control socket (-1 once closed)."""
        return self._control.fileno() if self._control is not None else -1

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        """What Twisted's log calls this reader."""
        return "procpool fork server"

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        """Act on what the server said: that it is ready, a late answer, which workers ended."""
        self._act_on(self._read_all())

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        """The reactor dropped the socket: fork nothing more through it."""
        self._close_control()

    # -- steps ---------------------------------------------------------------

    def _read_all(self) -> list[tuple[Any, ...]]:
        """
        The server's messages waiting, the backlog first, as events. A worker's
        end is matched to its transport as it is read, before any is acted
        on: acting on one may fork a worker that reuses another's pid.
        """
        events, self._backlog = self._backlog, []
        while self._control is not None:
            try:
                data = self._control.recv(_MESSAGE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._close_control()
                break
            events.append(self._event(data))
        return events

    def _event(self, message: bytes) -> tuple[Any, ...]:
        word, _, rest = message.partition(b" ")
        if word == b"exit":
            try:
                pid, status = (int(part) for part in rest.split())
            except ValueError:
                return (b"garbled", message)
            return (b"exit", self._children.pop(pid, None), status)
        return (word, rest)

    def _act_on(self, events: list[tuple[Any, ...]]) -> None:
        """Act on each event; one that fails is logged, and the others still count."""
        for event in events:
            try:
                self._act(*event)
            except Exception:
                log.failure("procpool: acting on the fork server's {event!r} failed",
                            event=event[0])

    def _act(self, word: bytes, *rest: Any) -> None:
        if word == b"exit":
            process, status = rest
            if process is not None:
                self._killed.discard(process)
                if not self._killed and self.state is ServerState.READY:
                    self._set_timer(None)  # every worker the host killed has ended
                process.processEnded(status)
        elif word == b"ready" and self.state is ServerState.STARTING:
            self._caught_up()
            log.debug("fork server {pid} ready", pid=self.pid)
        elif word in (b"pid", b"error") and self.state is ServerState.BEHIND:
            # The answer to a request given up on: a worker forked then has no host.
            if word == b"pid" and rest[0].isdigit():
                _kill_quietly(int(rest[0]))
            self._caught_up()
        elif word == b"garbled":
            log.error("procpool: the fork server said {message!r}, which is no message of "
                      "its protocol; ignored", message=rest[0][:80])

    def expect_end(self, process: ForkedProcess) -> None:
        """
        The host killed ``process``: its end must come. A server that does not
        report it within the start timeout (stopped, stuck) is killed, which
        ends its workers, so nothing waits on it for ever (a pool's stop).
        """
        if process in self._children.values():
            self._killed.add(process)
            if self.state is ServerState.READY and self._timer is None:
                self._set_timer(self._start_timeout, self._ends_overdue)

    def _ends_overdue(self) -> None:
        self._timer = None
        if self._killed and self.state is ServerState.READY:
            log.warn("procpool: the fork server did not report the end of {n} killed "
                     "workers within {s} s; killing it", n=len(self._killed),
                     s=self._start_timeout)
            self._kill()

    def _caught_up(self) -> None:
        self.state = ServerState.READY
        self._set_timer(self._start_timeout if self._killed else None, self._ends_overdue)

    def _answer(self) -> int:
        """Wait (blocking, at most REPLY_TIMEOUT) for the answer to a fork request."""
        control = self._control
        assert control is not None
        poller = select.poll()
        poller.register(control, select.POLLIN)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not poller.poll(left * 1000):
                    break
                data = control.recv(_MESSAGE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise ForkFailed(f"the fork server's socket failed: {exc}") from None
            if data.startswith(b"pid ") and data[4:].isdigit():
                return int(data[4:])
            if data.startswith(b"error "):
                raise ForkFailed(data[6:].decode("utf-8", "replace"))
            if not data:
                self._close_control()
                raise ForkFailed("the fork server closed its socket")
            if not self._backlog:
                self.reactor.callLater(0, self.doRead)
            self._backlog.append(self._event(data))  # acted on at the reactor's next turn
        # Nothing more goes to it until it answers; silent past the start
        # timeout, it is killed (and its workers with it) and another started.
        self.state = ServerState.BEHIND
        self._set_timer(self._start_timeout, self._overdue)
        raise ForkFailed(f"the fork server did not answer within {REPLY_TIMEOUT:g} s")

    def _set_timer(self, delay: float | None, call: Callable[[], None] | None = None) -> None:
        """Arm the one pending call (start deadline, answer deadline or restart), or none."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None if delay is None else self.clock.callLater(delay, call)

    def _overdue(self) -> None:
        self._timer = None
        if self.state in (ServerState.STARTING, ServerState.BEHIND):
            log.warn("procpool: the fork server did not answer within {s} s; killing it",
                     s=self._start_timeout)
            self._kill()

    def _kill(self) -> None:
        try:
            self._transport.signalProcess("KILL")
        except (error.ProcessExitedAlready, AttributeError, OSError):
            pass

    def _close_control(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            self.reactor.removeReader(self)
            control.close()

    def _lost(self, running: _ServerProtocol, why: str) -> None:
        """
        The server died: act on its last reports, then end each of its
        workers still alive as killed, and start another later.
        """
        if running is not self._protocol:
            return  # an earlier server's; its workers were settled then
        self._act_on(self._read_all())
        self._close_control()
        self._set_timer(None)
        if self.state is not ServerState.STOPPED:
            self.state = ServerState.GONE
        self.pid = None
        children = list(self._children.values())
        self._children.clear()
        self._killed.clear()
        for process in children:
            # The pid itself too: a worker that has not called setsid() yet
            # leads no group (and one not yet asking for PDEATHSIG lives on).
            _kill_quietly(process.pid, group=True)
        self._act_on([(b"exit", process, signal.SIGKILL) for process in children])
        if self.state is ServerState.STOPPED:
            return  # the pool stopped, maybe while those ends were settled
        log.warn("procpool: the fork server ended ({why}); {n} of its workers were killed "
                 "with it; workers are spawned until another is ready", why=why, n=len(children))
        # A server that forked workers before it died earns a fresh count.
        self._failed_starts = 1 if running.forked else self._failed_starts + 1
        if self._failed_starts >= MAX_FAILED_STARTS:
            log.error("procpool: {n} fork servers in a row ended without forking a worker; "
                      "this pool spawns its workers from now on", n=self._failed_starts)
            self.state = ServerState.STOPPED
            return
        self._set_timer(2.0 ** self._failed_starts, self.start)


def _kill_quietly(pid: int | None, group: bool = False) -> None:
    """SIGKILL a process (and, with ``group``, the group it leads), if it is still there."""
    if pid is None:
        return
    for kill in ((os.killpg, os.kill) if group else (os.kill,)):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


class _ServerProtocol(protocol.ProcessProtocol):
    """
    One fork server process: its output goes to the log; its exit ends its
    workers. @ivar ended: fires when the process has ended and its pipes closed.
    """

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.forked = 0
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        for line in data.decode("utf-8", "replace").splitlines():
            if line:
                log.warn("fork server {pid}: {line}", pid=self.server.pid, line=line)

    def processExited(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.server._lost(self, f"exit code {code}, signal {sig}")

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        if not self.ended.called:
            self.ended.callback(None)
