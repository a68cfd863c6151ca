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

import array
import fcntl
import os
import termios
from collections.abc import Callable
from typing import Any

from twisted.internet import main as main_error

__all__ = ["READ_SIZE", "widen", "write_now", "drain", "second_reader", "unread", "unwritten",
           "take_back", "put_back"]

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


def second_reader(transport: Any, task_fd: int = 3) -> int | None:
    """
    A non-blocking read end of the worker's task pipe, for :func:`take_back`;
    None where it cannot be had. The pipe is reopened through /proc/self/fd:
    the host holds only its write end.
    """
    fd = getattr(_pipe(transport, task_fd), "fd", None)
    if fd is None:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None


def unread(transport: Any, task_fd: int = 3) -> int:
    """Bytes in the task pipe the worker has not read yet; -1 if that cannot be told."""
    fd = getattr(_pipe(transport, task_fd), "fd", None)
    if fd is None:
        return -1
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count)
    except OSError:
        return -1
    return count[0]


def unwritten(transport: Any, task_fd: int = 3) -> int | None:
    """Bytes Twisted still holds for the task pipe (not yet in it); None if unknown."""
    writer = _pipe(transport, task_fd)
    try:
        return len(writer.dataBuffer) - writer.offset + writer._tempDataLen
    except (AttributeError, TypeError):
        return None


def take_back(reader: int) -> bytes:
    """
    Read everything now in the task pipe through :func:`second_reader`'s end.
    A read takes all that is there (more than the pipe holds is asked for),
    so the worker and the host never split one write between them.
    """
    parts = []
    while True:
        try:
            data = os.read(reader, 4 * _PIPE_SIZE)
        except OSError:  # includes BlockingIOError: the pipe is empty
            break
        if not data:
            break
        parts.append(data)
    return b"".join(parts)


def put_back(transport: Any, data: bytes, task_fd: int = 3) -> bool:
    """Write bytes taken back into the task pipe again, unchanged; False if that failed."""
    fd = getattr(_pipe(transport, task_fd), "fd", None)
    if fd is None:
        return False
    try:
        written = os.write(fd, data)  # the pipe held these bytes a moment ago: they fit
    except BlockingIOError:
        written = 0
    except OSError:
        return False
    if written < len(data):
        transport.writeToChild(task_fd, data[written:])
    return True
