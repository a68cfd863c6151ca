"""
Progress as it comes: what a task reports before it returns.

A callable run by ``run_async(..., at_progress=cb)`` calls :func:`progress`;
a source string's every ``_return(value)`` does the same. Each value is
pickled and sent to the host at once, where ``cb(value)`` runs in the
reactor thread, in order, before ``at_return`` gets the whole result::

    from workers import progress      # the function (workers/reporting.py)

    def count_to(n):
        for i in range(n):
            progress(i)          # reaches at_progress now
        return n

Without ``at_progress`` (or outside a task) ``progress`` does nothing.
Shared by the workers and the host's thread fallback; standard library only.
"""

from __future__ import annotations

from _thread import _local  # threading.local, without importing threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["progress", "reporting"]

# The sender of the task running in this thread, when its caller asked for progress.
_current = _local()


def progress(value: Any) -> None:
    """Send ``value`` to the running task's ``at_progress`` (nothing if none was asked)."""
    send = getattr(_current, "send", None)
    if send is not None:
        send(value)


class reporting:  # noqa: N801 - used as a with-statement, like contextlib's helpers
    """``with reporting(send):`` a task's progress goes to ``send`` until the block ends."""

    def __init__(self, send: Callable[[Any], None] | None) -> None:
        self.send = send

    def __enter__(self) -> None:
        self.saved = getattr(_current, "send", None)
        _current.send = self.send

    def __exit__(self, *_: Any) -> None:
        _current.send = self.saved
