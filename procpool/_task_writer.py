"""
The task handler's one storage thread: every database call in order, writes batched.

Persistent adds and deletes that pile up while the thread is busy go to the
database in one transaction (docs/persistence.md has the figures). A delete
the database refuses is never dropped: it stays pending, rides along with
every later write and is tried again every RETRY_SECONDS until it commits,
and meanwhile its id is listed in the storage's done file, so that a host
stopped before the database is back does not run that task again: the next
start leaves the row unrun, says so, and deletes it (docs/persistence.md,
"Across an outage").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool.storage import Storage, StoredTask
from procpool.storage.done import DoneFile

__all__ = ["Writer", "RETRY_SECONDS"]

log = Logger()

#: How long pending deletes (of tasks that ran or were cancelled) wait before another try.
RETRY_SECONDS = 2.0

#: Deletes this process could neither commit nor record in a done file, by
#: database: a later start in this process leaves those rows unrun too.
_unwritten: dict[str, set[int]] = {}


def _ids(ids: Iterable[int], most: int = 20) -> str:
    """``"3, 5, 7"``; past ``most`` ids, ``"3, 5, ... and 12 more"``."""
    listed = sorted(set(ids))
    text = ", ".join(str(i) for i in listed[:most])
    return text + (f" and {len(listed) - most} more" if len(listed) > most else "")


class Writer:
    """
    Runs the storage on one dedicated thread, in the order asked, batching writes.

    Writes that pile up while the thread is busy go to the database in a single
    transaction, which is what keeps 1,000 persistent adds cheap. Deletes the
    database refuses stay pending (and listed in the done file) until one commits.
    """

    def __init__(self, storage: Storage, high_water: Callable[[], int], clock: Any) -> None:
        from twisted.python.threadpool import ThreadPool
        self.storage = storage
        self._high_water = high_water
        self._clock = clock
        self._queue: list[tuple[str, Any, Deferred[Any]]] = []
        self._pending: list[int] = []      # deletes not committed yet, carried by every write
        self._failures = 0                 # failed writes of the current pending deletes
        self._retry_call: Any = None
        self._busy = False
        self._closed = False
        self._told: str | None = None      # the last thing said about where they are listed
        self._key = storage.done_path or storage.name
        self._done = DoneFile(storage.done_path, storage.name) if storage.done_path else None
        # Thread side: the done file is there (clear it after a commit), and why
        # the last failed write could not record its deletes in it.
        self._listed = False
        self._unlisted: str | None = None if self._done else "the storage keeps no done file"
        self._pool = ThreadPool(1, 1, name="procpool-task-storage")
        self._pool.start()

    @property
    def pending(self) -> tuple[int, ...]:
        """Ids of tasks that ran or were cancelled whose rows are not deleted yet."""
        return tuple(self._pending)

    def call(self, fn: Callable[[], Any]) -> Deferred[Any]:
        """Run ``fn`` on the storage thread after everything queued before it."""
        return self._push("call", fn)

    def open_and_load(self) -> Deferred[tuple[list[StoredTask], int]]:
        """
        Open the storage and read its rows and id high-water mark, on the thread.

        Rows of tasks the done file (or this process) knows ran already are
        left out, named in a warning, and deleted.
        """
        return self.call(self._open_and_load).addCallback(self._leave_out_done)

    def put(self, stored: StoredTask) -> Deferred[None]:
        """Store (or replace) one task's row; fails if its batch could not be written."""
        return self._push("put", stored)

    def delete(self, task_id: int) -> Deferred[None]:
        """Delete one task's row; never fails: a refused delete stays pending until it commits."""
        return self._push("delete", task_id)

    def flush(self) -> Deferred[None]:
        """Fires once everything queued before it is done."""
        return self.call(lambda: None)

    def close(self, write_mark: bool = True) -> Deferred[None]:
        """Write the high-water mark and pending deletes, close the storage, stop the thread."""
        self._closed = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if write_mark:
            self._push("delete", None)     # an empty write: carries the mark and pending deletes
        d = self.call(self.storage.close)

        def stopped(result: Any) -> Any:
            if self._pending:
                self._report_stop()
            else:
                _unwritten.pop(self._key, None)
            self._pool.stop()
            return result
        return d.addBoth(stopped)

    def _report_stop(self) -> None:
        if self._unlisted is None:
            then = (f"they are listed in {self._done.path}: the next start "  # type: ignore[union-attr]
                    "deletes their rows, and they are not run again")
        else:
            _unwritten.setdefault(self._key, set()).update(self._pending)
            then = (f"they could not be listed in a done file either ({self._unlisted}), so "
                    "they will run again after a restart of the host (a start in this "
                    "process still leaves them unrun)")
        log.error("task database {database} unreachable at stop: {count} row(s) of tasks "
                  "that ran or were cancelled (tasks {ids}) could not be deleted; {then}",
                  database=self.storage.name, count=len(set(self._pending)),
                  ids=_ids(self._pending), then=then)

    def _open_and_load(self) -> tuple[list[StoredTask], int, set[int], str | None]:
        self.storage.open()
        rows, next_id = self.storage.load()
        done: set[int] = set()
        unreadable = None
        if self._done is not None:
            try:
                done = self._done.read()
            except OSError as e:
                unreadable = f"{type(e).__name__}: {e}"
            self._listed = self._done.exists()
        return rows, next_id, done, unreadable

    def _leave_out_done(self, loaded: tuple[list[StoredTask], int, set[int], str | None]
                        ) -> tuple[list[StoredTask], int]:
        rows, next_id, done, unreadable = loaded
        if unreadable is not None:
            log.error("could not read the done file {path} of {database} ({reason}): tasks "
                      "listed there, which already ran, run again now",
                      path=self._done.path if self._done else None,
                      database=self.storage.name, reason=unreadable)
        done |= _unwritten.get(self._key, set())
        skipped = [row.task_id for row in rows if row.task_id in done]
        if skipped:
            log.warn("tasks {ids} already ran or were cancelled, but {database} could not "
                     "delete their rows before the last stop: they are not run again, and "
                     "their rows are deleted now", ids=_ids(skipped), database=self.storage.name)
            rows = [row for row in rows if row.task_id not in done]
        if done:
            self._pending = sorted(set(self._pending) | done)
            self._push("delete", None)
        return rows, next_id

    def _push(self, kind: str, item: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._queue.append((kind, item, d))
        self._kick()
        return d

    def _kick(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool
        if self._busy or not self._queue:
            return
        deletes: list[int] = []
        if self._queue[0][0] == "call":
            batch = [self._queue.pop(0)]
            work = batch[0][1]
        else:
            count = 0
            while count < len(self._queue) and self._queue[count][0] != "call":
                count += 1
            batch, self._queue = self._queue[:count], self._queue[count:]
            puts = [item for kind, item, _ in batch if kind == "put"]
            deletes = self._pending + [item for kind, item, _ in batch
                                       if kind == "delete" and item is not None]
            self._pending = []
            next_id = self._high_water()

            def work() -> None:
                self._write(puts, deletes, next_id)
        self._busy = True
        done = deferToThreadPool(reactor, self._pool, work)
        done.addBoth(self._done_writing, batch, deletes)

    def _write(self, puts: list[StoredTask], deletes: list[int], next_id: int) -> None:
        """On the thread: one transaction; refused deletes go to the done file first."""
        try:
            self.storage.apply(puts, deletes, next_id)
        except Exception:
            if deletes and self._done is not None:
                try:
                    self._done.write(deletes)
                    self._listed, self._unlisted = True, None
                except OSError as e:
                    self._unlisted = f"{type(e).__name__}: {e}"
            raise
        if self._listed:
            try:
                self._done.clear()         # type: ignore[union-attr]
                self._listed = False
            except OSError:
                pass                       # a stale list only deletes rows already gone

    def _done_writing(self, result: Any, batch: list[tuple[str, Any, Deferred[Any]]],
                      deletes: list[int]) -> None:
        self._busy = False
        if deletes:
            if isinstance(result, Failure):
                self._pending = deletes + self._pending
                self._failures += 1
                self._report_refused(result)
                self._schedule_retry()
            elif self._failures:
                log.info("{count} row(s) of tasks that ran or were cancelled were deleted "
                         "from {database} after {failures} failed writes",
                         count=len(set(deletes)), database=self.storage.name,
                         failures=self._failures)
                self._failures = 0
        for kind, _, d in batch:
            if kind == "delete":
                d.callback(None)
            else:
                d.callback(result) if not isinstance(result, Failure) else d.errback(result)
        self._kick()

    def _report_refused(self, failure: Failure) -> None:
        """Say once per outage that deletes wait, and where they are listed meanwhile."""
        if self._failures != 1 and self._unlisted == self._told:
            return
        self._told = self._unlisted
        if self._unlisted is None:
            meanwhile = (f"they are listed in {self._done.path} meanwhile, so they do not "  # type: ignore[union-attr]
                         "run again even if the host stops first")
        else:
            meanwhile = (f"they could not be listed in a done file ({self._unlisted}): if the "
                         "host stops before the database is back, they will run again")
        log.warn("could not delete {count} row(s) of tasks that ran or were cancelled "
                 "(tasks {ids}) from {database}: {reason}; retrying every {seconds} s and "
                 "with every write; {meanwhile}", count=len(set(self._pending)),
                 ids=_ids(self._pending), database=self.storage.name,
                 reason=failure.getErrorMessage(), seconds=RETRY_SECONDS, meanwhile=meanwhile)

    def _schedule_retry(self) -> None:
        if self._closed:
            return          # close() wrote them once more; what is left, it reports
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self._clock.callLater(RETRY_SECONDS, self._push, "delete", None)
