"""
Big payloads and results through shared memory: the host's side
(workers/shared.py is the worker's, and says what crosses).

An answer box with a ``_shm`` key has its result in a ``memfd`` that the
worker sent over the socket on its fd 5 just before writing the box. The
host takes that descriptor from its end of the socket (:func:`take`), and a
thread of its own reads the memfd into one ``bytes`` object: ``os.pread``
releases the GIL, so the reactor goes on while hundreds of MiB are copied.
The reactor then has the result at once for a ``bytes`` result, or unpickles
it (the pipe's pieces are never joined). Answers that arrive this way fire
their Deferreds once read, so a big result may fire after a small one its
worker answered later; each Deferred still fires in the reactor thread.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from workers import shared

__all__ = ["take", "receive", "send_payload"]

log = Logger()

#: A result's reader hands it over as ``(result, None)`` or ``(None, error)``.
Deliver = Callable[[Any, "BaseException | None"], None]


def take(channel: socket.socket | None, ask: bytes) -> int | None:
    """
    The memfd the worker sent with the answer to ``ask``, or None if there is
    none. Descriptors sent with answers nobody took (a box the host threw
    away) are closed on the way.
    """
    if channel is None:
        return None
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, 64, 4)
        except OSError:  # nothing there (BlockingIOError), or the socket is gone
            return None
        if not message:
            return None  # the worker's end closed
        for fd in fds[1:]:
            os.close(fd)
        if fds and message == ask:
            return fds[0]
        if fds:
            os.close(fds[0])


def _read(fd: int, size: int) -> bytes:
    """All ``size`` bytes of the memfd ``fd`` (one read but past 2 GiB)."""
    data = os.pread(fd, size, 0)
    if len(data) == size:
        return data
    parts = [data]
    done = len(data)
    while done < size:
        part = os.pread(fd, size - done, done)
        if not part:
            raise EOFError(f"the result's shared memory holds {done:,} of {size:,} bytes")
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def receive(reactor: Any, channel: socket.socket | None, ask: bytes, spec: bytes,
            deliver: Deliver) -> None:
    """
    Read the result the ``_shm`` value ``spec`` describes (``b<size>``: the
    result's bytes; ``p<size>``: its pickle) in a thread, and hand it to
    ``deliver`` in the reactor thread.
    """
    fd = take(channel, ask)
    if fd is None:
        deliver(None, EOFError("the worker said its result was in shared memory, but no "
                               "shared memory came with it"))
        return
    kind, size = spec[:1], int(spec[1:])

    def read() -> None:
        try:
            data = _read(fd, size)
        except Exception as exc:  # noqa: BLE001 - handed to the task's Deferred
            reactor.callFromThread(deliver, None, exc)
        else:
            reactor.callFromThread(_loaded, kind, data, deliver)
        os.close(fd)  # after: freeing hundreds of MiB takes the kernel tens of ms

    threading.Thread(target=read, name="procpool-result", daemon=True).start()


def _loaded(kind: bytes, data: bytes, deliver: Deliver) -> None:
    if kind == b"b":
        deliver(data, None)
        return
    try:
        result = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - the task's own failure
        deliver(None, exc)
        return
    del data
    deliver(result, None)


def send_payload(channel: socket.socket | None, ask: bytes, payload: bytes) -> bytes | None:
    """
    Put a task's payload in a memfd and send it to its worker ahead of the
    ``run`` box: that box's ``_shm`` value, or None (send it through the pipe).
    A memfd whose box is later taken back unread stays in that worker's socket
    until its next big task, or its end.
    """
    if channel is None:
        return None
    return shared.send(channel, ask, shared.Apart(payload, pickled=True), name="procpool-task")
