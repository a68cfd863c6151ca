"""
A reactor watchdog that names the call that froze the server.

When the reactor thread has not turned for ``threshold`` seconds, a watchdog
thread takes that thread's stack at that moment (``sys._current_frames``).
When the reactor turns again, the stall is logged once, through
``twisted.logger`` from the reactor thread, with how long it lasted and the
frames where it was stuck, the innermost of them outside Twisted named
first::

    procpool.configure(PROCPOOL_WATCHDOG=0.25)   # procpool.start() starts it
    # ... a callback that runs time.sleep(1) in the reactor thread logs:
    # reactor blocked for 1.00 s in slow_callback (game/commands.py:12); stack: ...

The reactor side is a ``LoopingCall`` on the injected clock that stamps a
heartbeat every quarter of the threshold; the thread only reads it, and
sleeps until the last beat is a threshold old, so it wakes about once per
three quarters of the threshold while the reactor turns. Off by default;
``bench/run.py --watchdog-only`` measures its cost.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from procpool.errors import SettingError

__all__ = ["Watchdog", "figures", "start_watchdog", "stop_watchdog"]

log = Logger()

_TWISTED = os.sep + "twisted" + os.sep
_HERE = os.path.abspath(__file__)


def _stack_outside_twisted(frame: Any, depth: int = 12) -> list[traceback.FrameSummary]:
    """The frames of ``frame``'s stack, innermost last, without Twisted's or this module's."""
    frames = traceback.extract_stack(frame)
    ours = [f for f in frames
            if _TWISTED not in f.filename and os.path.abspath(f.filename) != _HERE]
    return ours[-depth:]


def _where(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame outside Twisted, as ``function (file:line)``."""
    if not frames:
        return "a call in Twisted itself"
    top = frames[-1]
    return f"{top.name} ({top.filename}:{top.lineno})"


class Watchdog:
    """
    Notices a reactor thread that has not turned for ``threshold`` seconds.

    @ivar threshold: seconds without a turn that count as a stall.
    @ivar stalls: how many stalls were logged.
    @ivar last_stall: (seconds, frames) of the last stall logged, or None.
    """

    def __init__(self, threshold: float, reactor: Any = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not threshold > 0:
            raise SettingError(f"the watchdog's threshold (PROCPOOL_WATCHDOG) must be seconds "
                               f"above 0, got {threshold!r}")
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.threshold = float(threshold)
        self.stalls = 0
        self.last_stall: tuple[float, list[traceback.FrameSummary]] | None = None
        self._beat = time.monotonic()
        self._caught: tuple[float, list[traceback.FrameSummary]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop = LoopingCall(self._heartbeat)
        self._loop.clock = reactor
        self._reactor_thread = 0

    def start(self) -> None:
        """Start watching; call it from the reactor thread."""
        if self._thread is not None:
            return
        self._reactor_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._loop.start(self.threshold / 4, now=True)
        self._thread = threading.Thread(target=self._watch, name="procpool-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the thread wakes and ends at once)."""
        self._stop.set()
        if self._loop.running:
            self._loop.stop()
        self._thread = None

    def figures(self) -> dict[str, Any]:
        """
        What this watchdog has seen, for ``procpool.stats()``: its threshold,
        the stalls it logged, and the last one's seconds and place::

            {"watchdog_threshold": 0.25, "watchdog_stalls": 1,
             "watchdog_last_stall_s": 1.0, "watchdog_last_stall_in": "slow (game.py:12)"}
        """
        seconds = where = None
        if self.last_stall is not None:
            seconds, frames = self.last_stall
            seconds = round(seconds, 3)
            where = _where(frames)
        return {"watchdog_threshold": self.threshold, "watchdog_stalls": self.stalls,
                "watchdog_last_stall_s": seconds, "watchdog_last_stall_in": where}

    def _heartbeat(self) -> None:
        now = time.monotonic()
        began, self._beat = self._beat, now
        caught, self._caught = self._caught, None
        # A stack caught for an earlier beat (the thread read the beat just before this
        # one moved it) is not this stall's: one stall, one line.
        if caught is not None and caught[0] == began:
            self._report(now - caught[0], caught[1])

    def _watch(self) -> None:
        # The thread sleeps until the reactor would have been silent for the threshold,
        # counted from its last beat; while the reactor turns the beat moves on, so the
        # thread wakes about once per three quarters of the threshold (each wake-up takes
        # the GIL from the reactor), and a stall is caught the moment it passes the threshold.
        while True:
            beat = self._beat
            left = beat + self.threshold - time.monotonic()
            if left <= 0 and self._caught is None:
                frame = sys._current_frames().get(self._reactor_thread)
                if frame is not None:
                    self._caught = (beat, _stack_outside_twisted(frame))
            if left <= 0:
                left = self.threshold / 4  # caught: look again once the reactor has turned
            if self._stop.wait(left):
                return

    def _report(self, seconds: float, frames: list[traceback.FrameSummary]) -> None:
        self.stalls += 1
        self.last_stall = (seconds, frames)
        where = _where(frames)
        stack = "".join(traceback.format_list(frames)).rstrip()
        log.warn("reactor blocked for {seconds:.2f} s in {where}; stack:\n{stack}",
                 seconds=seconds, where=where, stack=stack)


_running: Watchdog | None = None


def start_watchdog(threshold: float, reactor: Any = None) -> Watchdog:
    """
    Start the process's watchdog (``procpool.start()`` does it when
    ``PROCPOOL_WATCHDOG`` is set); from the reactor thread::

        procpool.watchdog.start_watchdog(0.25)
    """
    global _running
    if _running is None:
        _running = Watchdog(threshold, reactor)
        _running.start()
    return _running


def figures() -> dict[str, Any]:
    """
    The process's watchdog figures (see :meth:`Watchdog.figures`); with no
    watchdog running, a threshold of None (off) and no stalls::

        procpool.watchdog.figures()["watchdog_threshold"]   # None: off
    """
    if _running is None:
        return {"watchdog_threshold": None, "watchdog_stalls": 0,
                "watchdog_last_stall_s": None, "watchdog_last_stall_in": None}
    return _running.figures()


def stop_watchdog() -> None:
    """Stop the process's watchdog, if one runs (``procpool.stop()`` does it)."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None
