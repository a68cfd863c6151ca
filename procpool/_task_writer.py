"""
The task handler's one storage thread: every database call in order, writes batched.

Persistent adds and deletes that pile up while the thread is busy go to the
database in one transaction (docs/persistence.md has the figures). A delete
that fails is kept and carried by the next write; at stop, any still
unwritten are reported in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool.storage import Storage, StoredTask

__all__ = ["Writer", "RETRY_SECONDS"]

log = Logger()

#: How long failed deletes (of tasks that already ran) wait before another try.
RETRY_SECONDS = 2.0


class Writer:
    """
    Runs the storage on one dedicated thread, in the order asked, batching writes.

    Writes that pile up while the thread is busy go to the database in a single
    transaction, which is what keeps 1,000 persistent adds cheap.
    """

    def __init__(self, storage: Storage, high_water: Callable[[], int], clock: Any) -> None:
        from twisted.python.threadpool import ThreadPool
        self.storage = storage
        self._high_water = high_water
        self._clock = clock
        self._queue: list[tuple[str, Any, Deferred[Any]]] = []
        self._retry_deletes: list[int] = []
        self._retry_call: Any = None
        self._busy = False
        self._pool = ThreadPool(1, 1, name="procpool-task-storage")
        self._pool.start()

    def call(self, fn: Callable[[], Any]) -> Deferred[Any]:
        """Run ``fn`` on the storage thread after everything queued before it."""
        return self._push("call", fn)

    def open_and_load(self) -> Deferred[tuple[list[StoredTask], int]]:
        """Open the storage and read its rows and id high-water mark, on the thread."""
        return self.call(self._open_and_load)

    def put(self, stored: StoredTask) -> Deferred[None]:
        """Store (or replace) one task's row; fails if its batch could not be written."""
        return self._push("put", stored)

    def delete(self, task_id: int) -> Deferred[None]:
        """Delete one task's row; never fails: a failed delete is retried later."""
        return self._push("delete", task_id)

    def flush(self) -> Deferred[None]:
        """Fires once everything queued before it is done."""
        return self.call(lambda: None)

    def close(self, write_mark: bool = True) -> Deferred[None]:
        """Write the high-water mark, close the storage and stop the thread."""
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if write_mark:
            self._push("delete", None)     # an empty write: carries the id high-water mark
        d = self.call(self.storage.close)

        def stopped(result: Any) -> Any:
            if self._retry_deletes:
                log.warn("task database {database} unreachable at stop: {count} finished "
                         "tasks are still stored and will run again after a restart",
                         database=self.storage.name, count=len(self._retry_deletes))
            self._pool.stop()
            return result
        return d.addBoth(stopped)

    def _open_and_load(self) -> tuple[list[StoredTask], int]:
        self.storage.open()
        return self.storage.load()

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
        if self._queue[0][0] == "call":
            batch = [self._queue.pop(0)]
            work = batch[0][1]
        else:
            count = 0
            while count < len(self._queue) and self._queue[count][0] != "call":
                count += 1
            batch, self._queue = self._queue[:count], self._queue[count:]
            puts = [item for kind, item, _ in batch if kind == "put"]
            deletes = self._retry_deletes + [item for kind, item, _ in batch
                                             if kind == "delete" and item is not None]
            self._retry_deletes = []
            next_id = self._high_water()

            def work() -> None:
                self.storage.apply(puts, deletes, next_id)
        self._busy = True
        done = deferToThreadPool(reactor, self._pool, work)
        done.addBoth(self._done, batch)

    def _done(self, result: Any, batch: list[tuple[str, Any, Deferred[Any]]]) -> None:
        self._busy = False
        if isinstance(result, Failure) and batch[0][0] != "call":
            failed = [item for kind, item, _ in batch if kind == "delete" and item is not None]
            if failed:
                self._retry_deletes.extend(failed)
                log.warn("could not delete {count} finished tasks from {database}, will retry: "
                         "{reason}", count=len(failed), database=self.storage.name,
                         reason=result.getErrorMessage())
                self._schedule_retry()
        for kind, _, d in batch:
            if kind == "delete":
                d.callback(None)
            else:
                d.callback(result) if not isinstance(result, Failure) else d.errback(result)
        self._kick()

    def _schedule_retry(self) -> None:
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self._clock.callLater(RETRY_SECONDS, self._push, "delete", None)
