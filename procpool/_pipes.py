"""
Faster pipes to a worker, by reaching into Twisted's POSIX process transport.

Everything here touches private attributes of ``twisted.internet.process``
(``pipes``, ``fd``, ``doRead``, ``dataBuffer``, ``offset``, ``_tempDataLen``,
``SEND_LIMIT``); each function checks what it needs and does nothing where
the transport is not Twisted's POSIX one, so the pool still works (slower)
on another transport or a Twisted that changed them. Measured gains are in
docs/design.md (the wire).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import main as main_error

__all__ = ["READ_SIZE", "widen", "write_now", "drain"]

#: Bytes read from a worker's answer pipe at once (Twisted reads 8 KiB).
READ_SIZE = 256 * 1024
_PIPE_SIZE = 1 << 20


def _pipe(transport: Any, child_fd: int) -> Any:
    return getattr(transport, "pipes", {}).get(child_fd)


def widen(transport: Any, task_fd: int = 3, answer_fd: int = 4) -> None:
    """
    1 MiB pipe buffers, one write per MiB, and answers read 256 KiB at a
    time: reading 8 KiB at a time caps a 1 MiB echo near 500 MiB/s, and
    larger reads cost small messages nothing.
    """
    for pipe in (_pipe(transport, task_fd), _pipe(transport, answer_fd)):
        try:
            import fcntl
            fcntl.fcntl(pipe.fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (OSError, AttributeError):
            pass
    writer = _pipe(transport, task_fd)
    if writer is not None and hasattr(writer, "SEND_LIMIT"):
        writer.SEND_LIMIT = _PIPE_SIZE  # one write per MiB instead of eight
    reader = _pipe(transport, answer_fd)
    fd = getattr(reader, "fd", None)
    if fd is None:
        return
    received = reader.dataReceived

    def do_read() -> Any:
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main_error.CONNECTION_LOST
        if not data:
            return main_error.CONNECTION_DONE
        received(data)
        return None

    reader.doRead = do_read


def write_now(transport: Any, data: bytes, task_fd: int = 3) -> bytes:
    """
    Write a small box straight to the worker's pipe when Twisted has nothing
    buffered for it, and return what is left to write. Twisted would write it
    on the next reactor turn; writing now saves about 15 us per round trip
    (p50 75 -> 58 us). Anything unexpected falls back to Twisted's buffer.
    """
    writer = _pipe(transport, task_fd)
    fd = getattr(writer, "fd", None)
    if (fd is None or getattr(writer, "_tempDataLen", None) != 0
            or len(getattr(writer, "dataBuffer", b"?")) != getattr(writer, "offset", -1)):
        return data
    try:
        written = os.write(fd, data)
    except (BlockingIOError, InterruptedError):
        return data
    return data[written:]


def drain(transport: Any, deliver: Callable[[bytes], None], answer_fd: int = 4) -> None:
    """
    Read whatever is left in the answer pipe and ``deliver`` it, without
    waiting: for a worker that has exited, whose last answers Twisted has not
    read yet.
    """
    fd = getattr(_pipe(transport, answer_fd), "fd", None)
    if fd is None:
        return
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:  # includes BlockingIOError: nothing more for now
            return
        if not data:
            return
        deliver(data)
