"""
``delay`` and the task handler: call something later, optionally surviving a restart.

    >>> import procpool
    >>> task = procpool.delay(5, print, "five seconds later")
    >>> task.active(), task.exists()
    (True, True)

The path of one task::

    delay(t, f, *args, persistent=...)           reactor thread, returns at once
      |  check t, f and (if persistent) pickle f, args, kwargs: ValueError here
      v
    TaskHandler.add -> _Task(id, due, Deferred) + clock.callLater(t)
      |                     \\__ persistent: Writer queue --(one thread, batched
      |                                      transactions)--> Storage (SQLite | PostgreSQL)
      v  at the due time
    Deferred fires -> f(*args, **kwargs) -> (its Deferred, if it returned one)
      -> the task is forgotten -> persistent: its row is deleted (only now)

    TaskHandler.start(): Storage.load -> overdue tasks fire at once in due
    order, the others after their remaining time.

Beside it: procpool/_task_record.py (one task, its handle, how a call is
stored), procpool/_task_writer.py (the storage thread), procpool/storage/.

Ids are never reused: a high-water mark is stored beside the rows, and a
:class:`TaskHandle` is bound to its own task, so an old handle can never act
on a newer task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool import settings
from procpool._task_record import (
    TaskHandle,
    _check_delay,
    _dump,
    _ended_badly,
    _fire_overdue,
    _load_rows,
    _short,
    _Task,
)
from procpool._task_writer import Writer
from procpool.errors import (
    HandlerNotStarted,
    InvalidTask,
    SettingError,
    StorageUnavailable,
    TaskNotStored,
)
from procpool.storage import Storage, StoredTask, open_storage

__all__ = ["delay", "TaskHandle", "TaskHandler", "get_handler", "set_handler",
           "InvalidTask", "HandlerNotStarted", "TaskNotStored", "StorageUnavailable"]

log = Logger()


class TaskHandler:
    """
    Keeps every delayed task of a process, and the persistent ones in storage.

    >>> from twisted.internet.task import Clock
    >>> handler = TaskHandler(clock=Clock(), storage="tasks.sqlite3", stale_timeout=60)
    >>> d = handler.start()          # opens the database, loads stored tasks
    >>> task = handler.add(5, print, "hi", persistent=True)

    ``clock`` is any ``IReactorTime`` (the global reactor when ``None``);
    ``storage`` a :class:`~procpool.storage.Storage`, a path or DSN, or ``None``
    for the ``PROCPOOL_DATABASE`` setting; ``stale_timeout`` defaults to
    ``PROCPOOL_STALE_TIMEOUT``. Non-persistent tasks work without ``start()``
    and never touch the database.
    """

    def __init__(self, clock: Any = None, storage: Storage | str | None = None,
                 stale_timeout: float | None = None) -> None:
        self._clock = clock
        self._storage_spec = storage
        if stale_timeout is None:
            stale_timeout = settings.get("PROCPOOL_STALE_TIMEOUT")
        self.stale_timeout = _check_delay(stale_timeout)
        self.tasks: dict[int, _Task] = {}
        self.storage: Storage | None = None
        #: stored tasks whose call cannot be loaded (id: reason): kept in storage, never run
        self.unloadable: dict[int, str] = {}
        self._next_id = 1
        self._writer: Writer | None = None
        self._loaded = False
        self._start_waiters: list[Deferred[None]] = []
        self._closing: Deferred[None] | None = None
        self._shutdown_trigger: Any = None

    @property
    def clock(self) -> Any:
        """The ``IReactorTime`` that times every task (the global reactor by default)."""
        if self._clock is None:
            from twisted.internet import reactor
            self._clock = reactor
        return self._clock

    # -- life cycle ------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Open the storage and load stored tasks: ``yield handler.start()``.

        Fails with :class:`SettingError` when ``PROCPOOL_DATABASE`` (or
        ``storage``) names no database procpool can use, and with
        :class:`StorageUnavailable` (naming the database, never its
        password) when the database cannot be opened; the handler then stays
        usable for non-persistent tasks and ``start()`` may be tried again.
        """
        waiter: Deferred[None] = Deferred()
        if self._loaded:
            waiter.callback(None)
            return waiter
        if self._writer is None:
            try:
                storage = self._open_storage()
            except SettingError:    # PROCPOOL_DATABASE names no database: say so, open nothing
                return fail()
        self._start_waiters.append(waiter)
        if self._writer is not None:
            return waiter           # already opening: this call waits for the same load
        attempt = self._start_waiters
        writer = self._writer = Writer(storage, lambda: self._next_id, self.clock)
        loading = self._after_closing().addCallback(lambda _: writer.open_and_load())
        loading.addCallbacks(self._on_loaded, self._load_failed,
                             callbackArgs=(writer,), errbackArgs=(writer,))
        loading.addBoth(self._tell_waiters, attempt)
        return waiter

    def _open_storage(self) -> Storage:
        """The storage asked for (or the PROCPOOL_DATABASE setting's), not yet opened."""
        spec = self._storage_spec
        if spec is None:
            spec = settings.get("PROCPOOL_DATABASE")
        self.storage = open_storage(spec) if isinstance(spec, str) else spec
        return self.storage

    def _after_closing(self) -> Deferred[None]:
        """
        Fires once a stop() still writing (its last rows, the id mark) is done:
        a load that read the database before then could miss or revive a row.
        """
        ready: Deferred[None] = Deferred()
        if self._closing is not None:
            self._closing.addBoth(lambda result: ready.callback(None) or result)
        else:
            ready.callback(None)
        return ready

    def _on_loaded(self, result: tuple[list[StoredTask], int], writer: Writer) -> None:
        if self._writer is not writer:
            raise HandlerNotStarted("the task handler was stopped before its storage "
                                    "was loaded")
        self._load_tasks(result)
        from twisted.internet import reactor
        self._shutdown_trigger = reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        log.info("task handler started on {database}: {count} stored tasks loaded",
                 database=writer.storage.name, count=len(self.tasks))

    def _load_failed(self, failure: Failure, writer: Writer) -> Failure:
        if self._writer is writer:
            self._writer = None
            writer.close(write_mark=False)
        return failure

    def _tell_waiters(self, result: Any, attempt: list[Deferred[None]]) -> None:
        if self._start_waiters is attempt:
            self._start_waiters = []
        for w in attempt:
            w.callback(None) if not isinstance(result, Failure) else w.errback(result)

    def stop(self) -> Deferred[None]:
        """
        Cancel every pending call (stored tasks stay stored) and close the storage.

        ``yield handler.stop()``; calling it on a handler never started is harmless.
        """
        for task in list(self.tasks.values()):
            if not task.deferred.called:
                task.deferred.cancel()
        self.tasks.clear()
        self._loaded = False
        if self._shutdown_trigger is not None:
            from twisted.internet import reactor
            try:
                reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass
            self._shutdown_trigger = None
        self._start_waiters = []        # a load in progress reports to its own callers
        writer, self._writer = self._writer, None
        if writer is None:
            return succeed(None)
        closing = self._closing = writer.close()

        def closed(result: Any) -> Any:
            if self._closing is closing:
                self._closing = None
            return result
        return closing.addBoth(closed)

    def flush(self) -> Deferred[None]:
        """Fires once every storage write asked for so far is done: ``yield handler.flush()``."""
        if self._writer is None:
            return succeed(None)
        return self._writer.flush()

    def _load_tasks(self, loaded: tuple[list[StoredTask], int]) -> None:
        stored, next_id = loaded
        writer = self._writer
        assert writer is not None
        self._next_id = max(self._next_id, next_id)
        built: list[_Task] = []
        loaded, self.unloadable = _load_rows(stored, writer.storage.name)
        for row, (callback, args, kwargs) in loaded:
            task_id = row.task_id
            if task_id in self.tasks:
                # Only a task added before start() can hold this id, and no handle
                # of this process knows the stored one yet: give it a fresh id.
                task_id = self._new_id()
                writer.put(StoredTask(task_id, row.due, row.payload))
                writer.delete(row.task_id)
            task = _Task(task_id, row.due, callback, args, kwargs, row.payload)
            self.tasks[task_id] = task
            built.append(task)
        # The one call that fires the overdue tasks is scheduled before any
        # timer is armed: a timer armed while a slow load runs on could
        # otherwise come due first, and a later task would run before an
        # overdue one. Once one task has a timer, every later-due task gets a
        # timer too (armed later, so it cannot run ahead of the earlier one).
        overdue: list[_Task] = []
        self.clock.callLater(0, _fire_overdue, overdue)
        timers = False
        for task in built:
            remaining = task.due - self.clock.seconds()
            if remaining <= 0 and not timers:
                self._arm(task, None)
                overdue.append(task)
            else:
                timers = True
                self._arm(task, max(remaining, 0.0))
        self._loaded = True

    # -- adding and running ----------------------------------------------

    def add(self, timedelay: float, callback: Callable[..., Any], *args: Any,
            persistent: bool = False, **kwargs: Any) -> TaskHandle:
        """
        Call ``callback(*args, **kwargs)`` in ``timedelay`` seconds; see :func:`delay`.

        ``handler.add(5, print, "hi")``
        """
        seconds = _check_delay(timedelay)
        if not callable(callback):
            raise InvalidTask(f"delay needs a callable, got {_short(callback)}")
        payload = None
        if persistent:
            if not self._loaded:
                raise HandlerNotStarted(
                    "persistent delays need a started task handler (procpool.start(), or "
                    "yield get_handler().start()); this one has not loaded its storage yet")
            payload = _dump(callback, args, kwargs)
        if self.stale_timeout > 0:
            self.clean_stale_tasks()
        task = _Task(self._new_id(), self.clock.seconds() + seconds, callback, args, kwargs,
                     payload)
        self._arm(task, seconds)
        self.tasks[task.task_id] = task
        if payload is not None:
            assert self._writer is not None
            self._writer.put(StoredTask(task.task_id, task.due, payload)).addErrback(
                self._not_stored, task)
        return TaskHandle(self, task)

    def get(self, task_id: int) -> TaskHandle | None:
        """A handle on a known task, or ``None``: ``handler.get(7)``."""
        task = self.tasks.get(task_id)
        return TaskHandle(self, task) if task is not None else None

    def handles(self, callback: Callable[..., Any] | None = None) -> list[TaskHandle]:
        """
        Handles on every known task in id order, or only those calling ``callback``.

        ``[t.get_id() for t in handler.handles(tell) if t.active()]``
        """
        return [TaskHandle(self, task) for task_id, task in sorted(self.tasks.items())
                if callback is None or task.callback == callback]

    def _new_id(self) -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        return task_id

    def _arm(self, task: _Task, seconds: float | None) -> None:
        def cancel_timer(_: Deferred[Any]) -> None:
            if task.timer is not None and task.timer.active():
                task.timer.cancel()
            task.timer = None

        task.deferred = Deferred(cancel_timer)
        if seconds is not None:
            task.timer = self.clock.callLater(seconds, self._due, task)
        task.deferred.addCallback(self._run, task)
        task.deferred.addErrback(_ended_badly, task)

    @staticmethod
    def _due(task: _Task) -> None:
        task.timer = None
        task.deferred.callback(None)

    def _run(self, _: None, task: _Task) -> Any:
        task.running = True
        try:
            result = task.callback(*task.args, **task.kwargs)
        except Exception:
            log.failure("delayed task {task_id} ({callback}) raised", task_id=task.task_id,
                        callback=_short(task.callback))
            self._finish(task)
            return None
        if isinstance(result, Deferred):
            def failed(failure: Failure) -> None:
                log.failure("delayed task {task_id} ({callback}) failed", failure,
                            task_id=task.task_id, callback=_short(task.callback))

            def finished(value: Any) -> Any:
                self._finish(task)
                return value
            return result.addErrback(failed).addBoth(finished)
        self._finish(task)
        return result

    def _finish(self, task: _Task) -> None:
        """Forget a task that ran; delete its row only now that the callback returned."""
        task.running = False
        if self.tasks.get(task.task_id) is task:
            del self.tasks[task.task_id]
        if task.persistent and self._writer is not None:
            self._writer.delete(task.task_id)

    def _not_stored(self, failure: Failure, task: _Task) -> None:
        database = self.storage.name if self.storage is not None else "the task database"
        error = TaskNotStored(task.task_id, database, failure.getErrorMessage())
        log.error("{error}", error=error)
        if self.tasks.get(task.task_id) is task:
            del self.tasks[task.task_id]
        if self._writer is not None:    # a failed commit may have stored it after all
            self._writer.delete(task.task_id)
        if not task.deferred.called:
            if task.timer is not None and task.timer.active():
                task.timer.cancel()
            task.timer = None
            task.deferred.errback(error)

    # -- the handle's operations ------------------------------------------

    def _owns(self, task: _Task) -> bool:
        return self.tasks.get(task.task_id) is task

    def _cancel(self, task: _Task) -> bool:
        if not self._owns(task) or task.deferred.called:
            return False
        task.cancelled = True
        task.deferred.cancel()
        if task.persistent and self._writer is not None:
            # Evennia keeps a cancelled persistent task stored and runs it after a
            # restart; a cancelled task must never run.
            self._writer.delete(task.task_id)
        return True

    def _remove(self, task: _Task) -> bool:
        if not self._owns(task):
            return False
        if not task.deferred.called:
            task.deferred.cancel()
        del self.tasks[task.task_id]
        if task.persistent and self._writer is not None:
            self._writer.delete(task.task_id)
        return True

    def _do_task(self, task: _Task) -> Any:
        if not self._owns(task):
            return None
        if not task.deferred.called:
            task.deferred.cancel()
        try:
            return task.callback(*task.args, **task.kwargs)
        finally:
            self._finish(task)

    def clean_stale_tasks(self) -> int:
        """
        Forget tasks that no longer run (cancelled) once their due time plus the
        stale timeout has passed; returns how many went. ``handler.clean_stale_tasks()``

        A paused task is not stale, however long past its due time: it still
        runs when unpaused (Evennia drops it, and its stored row, unrun).
        """
        now = self.clock.seconds()
        stale = [task for task in self.tasks.values()
                 if task.cancelled and not task.running
                 and now > task.due + self.stale_timeout]
        for task in stale:
            self._remove(task)
        return len(stale)


_handler: TaskHandler | None = None


def get_handler() -> TaskHandler:
    """The process-wide task handler, made from the settings on first use: ``get_handler()``."""
    global _handler
    if _handler is None:
        _handler = TaskHandler()
    return _handler


def set_handler(handler: TaskHandler | None) -> None:
    """Install the process-wide handler (``None``: make a new one on next use)."""
    global _handler
    _handler = handler


def delay(timedelay: float, callback: Callable[..., Any], *args: Any,
          persistent: bool = False, **kwargs: Any) -> TaskHandle:
    """
    Call ``callback(*args, **kwargs)`` after ``timedelay`` seconds, without blocking.

    >>> task = procpool.delay(10, caller.msg, "Ten seconds later.")
    >>> task = procpool.delay(3600, Timer.ring, persistent=True)   # survives a restart

    ``persistent`` is never passed on to the callback. A persistent task needs a
    started handler (``procpool.start()``), a module-level function or a
    method of a picklable object as callback, and picklable arguments; anything
    else raises :class:`InvalidTask` (a ``ValueError``) at once, saying why.
    If the database cannot take the row, the task is cancelled, an error is
    logged and ``task.get_deferred()`` fails with :class:`TaskNotStored`.
    """
    return get_handler().add(timedelay, callback, *args, persistent=persistent, **kwargs)
