"""
A small host process for the restart test: ``python -m tests.scripts_delay.host``.

``schedule DATABASE RECORD``: starts the task handler, schedules tasks
0..EARLY-1 to run at once or within half a second and tasks EARLY..COUNT-1
between LATE and LATE+SPREAD seconds from now, all persistent; prints
``READY <time of scheduling>`` once every row is stored and the early tasks
have run and been deleted, then waits to be killed (SIGKILL) or stopped
(SIGTERM: a clean stop through the reactor's shutdown).

``resume DATABASE RECORD``: starts the handler (which loads the stored tasks),
prints ``LOADED <n>``, and stops cleanly once every task has run (``DONE``).
"""

from __future__ import annotations

import sys
import time

import procpool
from procpool import tasks
from tests.scripts_delay.callbacks import note

COUNT, EARLY, LATE, SPREAD = 100, 20, 3.0, 2.0


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def schedule(reactor, handler, record: str):
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def run():
        yield handler.start()
        now = time.time()
        for n in range(COUNT):
            seconds = (n % 6) * 0.1 if n < EARLY else LATE + SPREAD * (n - EARLY) / (COUNT - EARLY)
            tasks.delay(seconds, note, record, n, now + seconds, persistent=True)
        while len(handler.tasks) > COUNT - EARLY:
            yield deferLater(reactor, 0.02, lambda: None)
        yield handler.flush()
        say(f"READY {now:.6f}")
    return run()


def resume(reactor, handler, record: str):
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def run():
        yield handler.start()
        say(f"LOADED {len(handler.tasks)}")
        deadline = time.time() + 20
        while handler.tasks and time.time() < deadline:
            yield deferLater(reactor, 0.02, lambda: None)
        yield handler.flush()
        say("DONE" if not handler.tasks else f"TIMEOUT {len(handler.tasks)} left")
        reactor.stop()
    return run()


def main(argv: list[str]) -> None:
    mode, database, record = argv
    procpool.configure(PROCPOOL_DATABASE=database)
    from twisted.internet import reactor
    handler = tasks.get_handler()
    job = {"schedule": schedule, "resume": resume}[mode]

    def begin():
        job(reactor, handler, record).addErrback(lambda f: (say(f"ERROR {f.value!r}"),
                                                            reactor.stop()))
    reactor.callWhenRunning(begin)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
