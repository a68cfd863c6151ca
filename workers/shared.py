"""
Big results cross in shared memory, not through the answer pipe.

The host gives each worker one end of a Unix socket pair on fd 5
(procpool/_spawn.py). A result of :data:`APART` bytes or more is written
into a fresh ``memfd``; its descriptor goes to the host over that socket
(``SCM_RIGHTS``, with the task's ``_ask`` id), and the answer box, still on
the pipe, says so with a ``_shm`` key instead of carrying the bytes::

    _answer=<ask>  _shm=b<size>   the result is the memfd's bytes (a bytes result)
    _answer=<ask>  _shm=p<size>   the memfd holds the result's pickle

The host reads the memfd in a thread of its own, so the reactor never
copies the payload; a ``bytes`` result needs no unpickling at all. The
worker closes its descriptor once sent: from then on the kernel holds the
memory for the host (in its socket's queue while unread), and it is freed
when the host closes the descriptor, or the socket when the worker is gone.
Nothing is left behind by a worker that dies mid-transfer.

Anything that goes wrong on the way (no socket, a task closed it, no
memory for the memfd) sends the answer through the pipe as before; a worker
whose socket a task closed then leaves once it has answered (workers/hygiene.py
watches it), so the next big task's payload finds a socket. Task payloads of
:data:`APART` bytes or more come the same way, the other way round: a
``run`` box with ``_shm=p<size>`` instead of ``p``.
"""

from __future__ import annotations

import os
import stat

from workers.hygiene import move_high

TYPE_CHECKING = False  # not typing's: importing typing costs a worker's start ~3 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ["APART", "Apart", "Channel", "open_channel", "send", "take", "receive"]

#: The descriptor the host puts the worker's end of the socket pair on.
SHARED_FD = 5
#: Results this many bytes or larger go through shared memory.
APART = 1 << 20


class Apart:
    """A result to send apart: ``value`` is a ``bytes`` result, or a result's pickle."""

    __slots__ = ("value", "pickled")

    def __init__(self, value: bytes, pickled: bool) -> None:
        self.value, self.pickled = value, pickled


class Channel:
    """
    The worker's end of the shared-memory socket. ``socket`` is imported at
    its first big payload or result, not at start (it costs a worker's start
    about 5 ms).
    """

    __slots__ = ("fd", "_socket")

    def __init__(self, fd: int) -> None:
        self.fd, self._socket = fd, None

    def socket(self) -> Any:
        """The socket object (made on first use)."""
        if self._socket is None:
            import socket

            self._socket = socket.socket(fileno=self.fd)
            # A host that stopped reading must not hang the worker: the
            # answer then takes the pipe.
            self._socket.settimeout(10.0)
        return self._socket

    def close(self) -> None:
        """Close it (as a task that closes every descriptor would)."""
        if self._socket is not None:
            self._socket.close()
        else:
            os.close(self.fd)


def open_channel() -> Channel | None:
    """
    The worker's end of the shared-memory channel, moved off fd 5 (a task
    may use 5 for its own files), or None when the host gave none.
    """
    try:
        if not stat.S_ISSOCK(os.fstat(SHARED_FD).st_mode):
            return None
    except OSError:
        return None
    channel = Channel(move_high(SHARED_FD))
    os.close(SHARED_FD)
    return channel


def _socket_of(channel: Any) -> Any:
    """A worker's Channel's socket; the host passes its socket itself."""
    return channel.socket() if type(channel) is Channel else channel


def send(channel: Any, ask: bytes, result: Apart, name: str = "procpool-result"
         ) -> bytes | None:
    """
    Put ``result`` in a memfd and hand it to the other side; the ``_shm``
    value for the box, or None if it could not be sent (use the pipe).
    """
    import socket

    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        view, written = memoryview(result.value), 0
        while written < len(view):
            written += os.write(fd, view[written:])
        socket.send_fds(_socket_of(channel), [ask], [fd])
    except OSError:
        return None
    finally:
        os.close(fd)
    return (b"p" if result.pickled else b"b") + str(written).encode()


def take(channel: Any, ask: bytes) -> int:
    """
    The memfd sent with ``ask``, skipping (and closing) any sent with a box
    that never came. Raises OSError if the socket is gone or nothing came.
    """
    import socket

    while True:
        message, fds, _flags, _address = socket.recv_fds(_socket_of(channel), 64, 4)
        if not message:
            raise ConnectionError("the shared-memory socket was closed")
        for fd in fds[1:]:
            os.close(fd)
        if fds and message == ask:
            return fds[0]
        if fds:
            os.close(fds[0])


def receive(channel: Any, ask: bytes, spec: bytes) -> bytes:
    """The payload of the ``run`` box ``ask``, whose ``_shm`` value is ``spec``."""
    if channel is None:
        raise ConnectionError("this worker has no shared-memory socket")
    fd = take(channel, ask)
    try:
        size = int(spec[1:])
        data = os.pread(fd, size, 0)
        while len(data) < size:  # one read but past 2 GiB
            part = os.pread(fd, size - len(data), len(data))
            if not part:
                raise EOFError(f"the payload's memfd holds {len(data):,} of {size:,} bytes")
            data += part
        return data
    finally:
        os.close(fd)
