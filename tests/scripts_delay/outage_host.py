"""
A host process for the database-outage tests: ``python -m tests.scripts_delay.outage_host``.

``schedule DATABASE RECORD``: starts the task handler and schedules COUNT
persistent tasks due between FIRST and FIRST+SPREAD seconds from now; prints
``READY <time of scheduling>`` once every row is stored, then runs until it
is stopped (SIGTERM: a clean stop through the reactor's shutdown).

``resume DATABASE RECORD``: starts the handler (which loads the stored tasks),
prints ``LOADED <n>``, and stops cleanly once every loaded task has run
(``DONE``).

The log goes to stderr. A SQLite database is opened with a short busy
timeout, so a lock held by the test makes writes fail quickly; a PostgreSQL
one with the default settings (its done file lands in $XDG_STATE_HOME, which
the test chooses).
"""

from __future__ import annotations

import sys
import time

import procpool
from procpool import tasks
from procpool.storage import is_postgres
from procpool.storage.sqlite import SQLiteStorage
from tests.scripts_delay.callbacks import note

COUNT, FIRST, SPREAD = 100, 1.0, 3.0


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def schedule(reactor, handler, record: str):
    from twisted.internet.defer import inlineCallbacks

    @inlineCallbacks
    def run():
        yield handler.start()
        now = time.time()
        for n in range(COUNT):
            seconds = FIRST + SPREAD * n / COUNT
            tasks.delay(seconds, note, record, n, now + seconds, persistent=True)
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
    from twisted.logger import globalLogBeginner, textFileLogObserver
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    procpool.configure(PROCPOOL_DATABASE=database)
    storage = database if is_postgres(database) else SQLiteStorage(database, busy_timeout=0.2)
    handler = tasks.TaskHandler(storage=storage)
    tasks.set_handler(handler)
    from twisted.internet import reactor
    job = {"schedule": schedule, "resume": resume}[mode]

    def begin():
        job(reactor, handler, record).addErrback(lambda f: (say(f"ERROR {f.value!r}"),
                                                            reactor.stop()))
    reactor.callWhenRunning(begin)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
