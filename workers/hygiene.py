"""
A task cannot poison its worker's descriptors.

A task may close descriptors 0, 1 and 2 (as a daemonising script does) or
put files of its own on 3 and 4. Before this, every later ``print()`` in that
worker failed with EBADF (or went into whatever file took the number next),
and a pipe put on 3/4 hung the worker. So:

- the wire moves out of the way at start: the host's pipes on 3 and 4 are
  duplicated above ``_BASE`` (close-on-exec) and 3 and 4 are closed, so
  3 and 4 are free for tasks;
- copies of the original 0, 1 and 2 are kept there too;
- after each task, one ``poll()`` of 0, 1, 2 and the wire with no events
  asked (the kernel still reports a closed descriptor, POLLNVAL, and a
  hung-up one) says whether anything is wrong: one system call, well under
  a microsecond, made after the answer is written so the host never waits
  for it. A closed 0/1/2 is put back on its original target (so output
  still reaches the host's log), or on /dev/null if that is gone too; a
  broken wire makes the worker leave, and the host starts another.
"""

from __future__ import annotations

import fcntl
import os
import select

__all__ = ["Descriptors", "move_high"]

#: The lowest descriptor the worker keeps its own (tasks get the low numbers).
_BASE = 100
_STANDARD = (0, 1, 2)
_BROKEN = select.POLLNVAL | select.POLLERR


def move_high(fd: int) -> int:
    """A close-on-exec copy of ``fd`` at ``_BASE`` or above (lower if the fd limit is low)."""
    for base in (_BASE, 10):
        try:
            return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base)
        except OSError:
            continue
    return os.dup(fd)


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


class Descriptors:
    """
    The worker's wire (``fd_in``, ``fd_out``), moved away from 3 and 4, and
    the check after each task: ``bad = watch(0)``; if ``bad``, call
    ``repair(bad)``, which is False when the worker must leave.
    """

    def __init__(self, fd_in: int = 3, fd_out: int = 4, also: int | None = None) -> None:
        self.fd_in = move_high(fd_in)
        self.fd_out = move_high(fd_out)
        os.close(fd_in)
        os.close(fd_out)
        self._saved = {fd: move_high(fd) if _is_open(fd) else None for fd in _STANDARD}
        poller = select.poll()
        # ``also``: the shared-memory socket (workers/shared.py), watched like the wire.
        self._wire = (self.fd_in, self.fd_out) if also is None else (self.fd_in, self.fd_out, also)
        for fd in (*_STANDARD, *self._wire):
            poller.register(fd, 0)  # no events asked: only hang-ups and closed descriptors
        self.watch = poller.poll
        bad = self.watch(0)
        if bad:
            self.repair(bad)

    def repair(self, bad: list[tuple[int, int]]) -> bool:
        """Put back what a task broke among 0, 1, 2; False if the wire itself is broken."""
        for fd, events in bad:
            if fd in self._wire:
                if events & _BROKEN:
                    return False
                continue  # the host closed the task pipe: the next read says so
            self._restore(fd, events)
        return True

    def _restore(self, fd: int, events: int) -> None:
        saved = self._saved.get(fd)
        if events & select.POLLNVAL and saved is not None and _is_open(saved):
            os.dup2(saved, fd)  # the original target: output still reaches the host's log
            return
        null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: often fd itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
