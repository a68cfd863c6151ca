"""
Fair shares: one caller's many tasks never hold up another caller's few.

``run_async(..., caller=player)`` counts the task against ``player``: at most
``PROCPOOL_PER_CALLER`` of one caller's tasks are in the pool at once (queued
there or running); the rest wait here, each caller in its own line, and the
next one of a caller goes in when one of that caller's tasks settles. So a
player who submits 1,000 tasks takes at most that many workers, and another
player's single task finds the pool as if the first had sent only those::

    run_async(search, "sword", caller=self)      # counted against self

``caller`` is still passed on (to the callable, or as a source string's
global), as before. Tasks without a caller are not counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

__all__ = ["Shares"]


class Shares:
    """
    Per-caller admission in front of the pool.

    @ivar limit: most tasks of one caller in the pool at once.
    @ivar running: caller key -> how many of its tasks are in the pool.
    @ivar waiting: caller key -> its tasks not yet admitted, in order.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[Any, int] = {}
        self.waiting: dict[Any, deque[tuple[Callable[[], defer.Deferred], defer.Deferred]]] = {}

    @staticmethod
    def key(caller: Any) -> Any:
        """The caller's share key: the caller itself where hashable, else its identity."""
        try:
            hash(caller)
        except TypeError:
            return ("id", id(caller))
        return caller

    def submit(self, caller: Any, send: Callable[[], defer.Deferred],
               out: defer.Deferred) -> defer.Deferred:
        """Run ``send()`` now if ``caller`` has room, else when it has; ``out`` gets its result."""
        key = self.key(caller)
        if self.running.get(key, 0) < self.limit:
            self._admit(key, send, out)
        else:
            self.waiting.setdefault(key, deque()).append((send, out))
        return out

    def cancel(self, out: defer.Deferred) -> bool:
        """Take a task that is still waiting out of its line (True if it was there)."""
        for key, line in self.waiting.items():
            for entry in line:
                if entry[1] is out:
                    line.remove(entry)
                    if not line:
                        del self.waiting[key]
                    return True
        return False

    def _admit(self, key: Any, send: Callable[[], defer.Deferred],
               out: defer.Deferred) -> None:
        self.running[key] = self.running.get(key, 0) + 1
        try:
            d = send()
        except Exception:
            self._settled(None, key)
            out.errback()
            return
        d.addBoth(self._settled, key)
        d.chainDeferred(out)

    def _settled(self, result: Any, key: Any) -> Any:
        left = self.running[key] - 1
        if left:
            self.running[key] = left
        else:
            del self.running[key]
        line = self.waiting.get(key)
        if line:
            send, out = line.popleft()
            if not line:
                del self.waiting[key]
            self._admit(key, send, out)
        return result

    def figures(self) -> dict[str, int]:
        """
        For ``procpool.stats()``: the per-caller limit, callers with tasks in
        the pool, callers with tasks waiting for their share, and how many
        tasks wait::

            {"limit": 2, "callers": 3, "callers_waiting": 1, "waiting_for_share": 198}
        """
        return {"limit": self.limit, "callers": len(self.running),
                "callers_waiting": len(self.waiting),
                "waiting_for_share": sum(len(line) for line in self.waiting.values())}
