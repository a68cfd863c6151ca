"""
The transport of a worker the fork server forked (procpool/_forker.py).

A forked worker is the fork server's child, not the host's, so Twisted
cannot wait for it. :class:`ForkedProcess` is Twisted's process transport
with the same pipes (procpool/_pipes.py works on it unchanged) but with no
fork and no ``waitpid`` of its own: the server reaps the worker and reports
its status, which is handed to ``processEnded``, as Twisted's reaper would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.process import Process, _BaseProcess
from twisted.logger import Logger

__all__ = ["WORKER_FDS", "ForkedProcess"]

log = Logger()

#: A worker's descriptors: 0-5 (workers/forker.py's WORKER_FDS).
WORKER_FDS = 6


class ForkedProcess(Process):
    """
    The transport of a worker the fork server forked. ``child_fds`` is
    Twisted's ``childFDs`` for descriptors 0-5 (``"r"``, ``"w"`` or a
    descriptor of the host's to give); ``fork(fds)`` sends the child's ends
    to the server and returns the worker's pid, or raises.
    """

    #: The fork server that forked it (procpool/_forker.py's ForkServer sets it).
    server: Any = None

    def __init__(self, reactor: Any, proto: protocol.ProcessProtocol,
                 child_fds: dict[int, Any], fork: Callable[[list[int]], int]) -> None:
        if sorted(child_fds) != list(range(WORKER_FDS)):
            raise ValueError(f"a forked worker takes descriptors 0-{WORKER_FDS - 1}")
        self._reactor = reactor
        _BaseProcess.__init__(self, proto)
        self.pipes: dict[int, Any] = {}
        ours: dict[int, int] = {}
        theirs: dict[int, int] = {}
        opened: list[int] = []
        try:
            for child_fd, target in sorted(child_fds.items()):
                if target not in ("r", "w"):
                    theirs[child_fd] = target
                    continue
                read, write = os.pipe()
                opened += [read, write]
                ours[child_fd], theirs[child_fd] = (read, write) if target == "r" else (write,
                                                                                       read)
            self.pid = fork([theirs[fd] for fd in range(WORKER_FDS)])
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        for child_fd, fd in ours.items():
            os.close(theirs[child_fd])
            if child_fds[child_fd] == "r":
                self.pipes[child_fd] = self.processReaderFactory(reactor, self, child_fd, fd)
            else:
                self.pipes[child_fd] = self.processWriterFactory(reactor, self, child_fd, fd,
                                                                 forceReadHack=True)
        self.proto = proto
        try:
            proto.makeConnection(self)
        except Exception:
            log.failure("procpool: a forked worker's protocol failed to connect")

    def reapProcess(self) -> None:  # noqa: N802 - Twisted's name
        """Nothing to wait for here: the server reaps the worker and reports its end."""

    def killed(self) -> None:
        """The host SIGKILLed it: its end must be reported (the server's ``expect_end``)."""
        if self.server is not None:
            self.server.expect_end(self)
