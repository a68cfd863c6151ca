"""
One sandboxed run's request, and the confined child process that serves it.

A child's life: starting (confining itself) -> ready (idle, blocked on its
first read) -> running one request -> ended. It writes a ready line, then
one reply line, then exits; anything else is a crash or a protocol error.
The pool (sandbox/host.py) decides which child runs which request.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Hashable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from procpool.errors import ProcPoolTimeout, SandboxError, SandboxUnavailable
from sandbox.replies import parse_reply

__all__ = ["Request", "Child"]

_HEADER_CAP = 64 << 10
_STDERR_CAP = 16 << 10
_KILL_GRACE = 2.0  # seconds a killed child may take to end before its pipes are closed


class Request:
    """One request: its payload, time limit and caller, and the Deferred it fires."""

    def __init__(self, payload: bytes, timeout: float, caller: Hashable | None) -> None:
        self.payload = payload
        self.timeout = timeout
        self.caller = caller
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self.done = False

    def finish(self, result: Any) -> None:
        if not self.done:
            self.done = True
            if isinstance(result, Failure):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)


class Child(ProcessProtocol):
    """One confined child process: starting -> ready (idle) -> running -> ended."""

    def __init__(self, pool: Any) -> None:  # a sandbox.host.SandboxPool
        self.pool = pool
        self.pid: int | None = None
        self.header: dict[str, Any] | None = None
        self.request: Request | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.alive = True
        self._exited = False  # reaped: its pid may already belong to another process
        self._warned = False
        self._grace: Any = None
        self._stdout = bytearray()
        self._stdout_size = 0
        self._stderr = bytearray()
        self._overflow = False
        self._timer: Any = None
        self._cap = pool.max_output + _HEADER_CAP

    # --- driven by the pool ------------------------------------------------
    def start_request(self, request: Request) -> None:
        self.request = request
        self._timer = self.pool.clock.callLater(request.timeout, self._deadline)
        self.transport.write(request.payload)
        self.transport.closeStdin()

    def kill(self) -> None:
        if not self.alive:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the child is its session's leader
        except (OSError, TypeError):
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass
        if self._grace is None:
            self._grace = self.pool.clock.callLater(_KILL_GRACE, self._abandon)

    def _abandon(self) -> None:
        """
        Killed, yet not ended: something outside its process group holds its
        pipes (impossible when confined, since it cannot fork). Close them so
        that it ends and frees its place.
        """
        self._grace = None
        if self.alive:
            self.transport.loseConnection()

    def _deadline(self) -> None:
        self._timer = None
        if self.request is not None:
            self.request.finish(Failure(ProcPoolTimeout(self.request.timeout)))
        self.kill()

    # --- ProcessProtocol ---------------------------------------------------
    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            room = _STDERR_CAP - len(self._stderr)
            self._stderr += data[:max(room, 0)]
            if len(data) > room:
                # Stop reading: a child flooding stderr must not keep the reactor busy.
                self.transport.closeChildFD(2)
            return
        if self._overflow:
            return
        self._stdout_size += len(data)
        if self._stdout_size > self._cap:
            self._overflow = True
            self._stdout.clear()
            self.kill()
            return
        self._stdout += data
        if self.header is None:
            end = self._stdout.find(b"\n")
            if end < 0:
                if len(self._stdout) > _HEADER_CAP:
                    self._overflow = True
                    self.kill()
                return
            line = bytes(self._stdout[:end])
            del self._stdout[:end + 1]
            try:
                header = json.loads(line)
            except ValueError:
                header = {"ready": False, "error": "unreadable ready line"}
            if not isinstance(header, dict):
                header = {"ready": False, "error": "unreadable ready line"}
            self.header = header
            if header.get("ready") is True:
                self.pool._child_ready(self)
            else:
                self.kill()  # it will not run anything: do not let it linger

    def childConnectionLost(self, fd: int) -> None:
        """
        Stdout closed: the child wrote all it will ever write there. If that is
        exactly one complete reply line, the request is answered now, without
        waiting for the exit to be reaped; the child is killed at once so that
        nothing it might still do can matter, and it keeps its place among
        the running ones until it has been reaped.
        """
        request = self.request
        if fd != 1 or request is None or request.done or self._overflow \
                or self.header is None or self.header.get("ready") is not True:
            return
        if self._stdout.count(b"\n") != 1 or not self._stdout.endswith(b"\n"):
            return  # processEnded tells a crash from a protocol error
        if not self._exited:  # the usual case: it is still tearing itself down
            self.kill()
        self._warn()
        try:
            result = parse_reply(bytes(self._stdout))
        except SandboxError:
            result = Failure()
        request.finish(result)

    def processExited(self, reason: Failure) -> None:
        self._exited = True

    def processEnded(self, reason: Failure) -> None:
        self.alive = False
        for timer in (self._timer, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._grace = None
        request = self.request
        if request is not None:
            self._warn()
            if not request.done:
                request.finish(self._outcome(reason))
        self.pool._child_ended(self)
        self.ended.callback(None)

    def _warn(self) -> None:
        if not self._warned:
            self._warned = True
            self.pool._warn_about_run(self)

    def _start_error(self) -> str:
        if self.header is not None and isinstance(self.header.get("error"), str):
            return self.header["error"]
        tail = bytes(self._stderr[-400:]).decode("utf-8", "replace").strip()
        return tail or "the sandbox child exited before it was ready"

    def _outcome(self, reason: Failure) -> Any:
        if self.header is None or self.header.get("ready") is not True:
            return Failure(SandboxUnavailable(
                f"sandboxed child could not be confined: {self._start_error()}"))
        if self._overflow:
            return Failure(SandboxError(
                "OutputTooLarge", f"the sandboxed child wrote more than {self._cap} bytes"))
        status = getattr(reason.value, "status", None)
        sig = getattr(reason.value, "signal", None)
        exitcode = getattr(reason.value, "exitCode", None)
        if sig is not None or (status is not None and os.WIFSIGNALED(status)):
            sig = sig if sig is not None else os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            hint = " (CPU limit)" if sig == signal.SIGXCPU else ""
            return Failure(SandboxError("SandboxCrashed", f"sandboxed child was killed by "
                                                          f"{name}{hint}"))
        if exitcode:
            return Failure(SandboxError("SandboxCrashed",
                                        f"sandboxed child exited with code {exitcode}"))
        data = bytes(self._stdout)
        if data.count(b"\n") != 1 or not data.endswith(b"\n"):
            return Failure(SandboxError("SandboxProtocolError",
                                        "sandboxed child did not write exactly one reply line"))
        try:
            return parse_reply(data)
        except SandboxError:
            return Failure()
