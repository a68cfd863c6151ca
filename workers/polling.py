"""
How an idle worker waits for its next task: it polls for PROCPOOL_SPIN
seconds before it sleeps in read, yielding its core between polls, and
sleeps at once for a while after a poll that had to share its core
(workers/worker.py calls :func:`wait_briefly`; docs/design.md, "Start-up,
polling and the collector").
"""

from __future__ import annotations

import os
import select
import time

__all__ = ["SHARED_CORE_BACKOFF", "wait_briefly"]

#: ``perf_counter()`` until which idle spells sleep at once: a poll shared its core.
_no_poll_until = 0.0
#: Seconds a worker sleeps at once in its idle spells after its poll shared its core.
SHARED_CORE_BACKOFF = 0.02


def wait_briefly(poller: select.poll, spin: float) -> None:
    """
    Poll for the next task for up to ``spin`` seconds before blocking in read.
    Waking a sleeping process costs more than the round trip itself on an
    idle machine (about 50 us), and tasks often come one after another.

    Between polls it yields its core, so a host waiting for that core runs
    first (20,000 no-ops on 2 cores: 17.1k -> 21.1k/s). A poll that got
    less than half of its core (the host or another process kept it) is
    worse than sleeping: the worker, runnable but not running, notices a
    task later than a woken one would. It then sleeps at once in its idle
    spells for SHARED_CORE_BACKOFF seconds (with one core held by another
    process: round trip p50 64-90 -> about 40 us, docs/design.md).
    """
    global _no_poll_until
    if poller.poll(0):
        return
    clock, cpu = time.perf_counter, time.thread_time
    began = clock()
    if began < _no_poll_until:
        return
    began_cpu = cpu()
    deadline = began + spin
    yield_core = os.sched_yield
    while clock() < deadline:
        if poller.poll(0):
            break
        yield_core()
    ended = clock()
    wall = ended - began
    if wall > 20e-6 and cpu() - began_cpu < wall / 2:
        _no_poll_until = ended + SHARED_CORE_BACKOFF
