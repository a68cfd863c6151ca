"""
One delayed task: the handler's record of it, the handle ``delay()`` returns,
and how a persistent call is stored (pickled by name, checked at call time).

See procpool/tasks.py for the drawing of a task's path, and
docs/persistence.md for what can be stored.
"""

from __future__ import annotations

import inspect
import io
import math
import numbers
import pickle
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool.errors import InvalidTask
from workers import pickling

__all__ = ["TaskHandle"]

log = Logger()


class _Task:
    """One scheduled call, as the handler keeps it."""

    __slots__ = ("task_id", "due", "callback", "args", "kwargs", "payload", "deferred",
                 "timer", "running", "cancelled", "watched")

    def __init__(self, task_id: int, due: float, callback: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any], payload: bytes | None) -> None:
        self.task_id = task_id
        self.due = due
        self.callback = callback
        self.args = args
        self.kwargs = kwargs
        self.payload = payload
        self.deferred: Deferred[Any] = Deferred()
        self.timer: Any = None
        self.running = False
        self.cancelled = False
        self.watched = False     # someone asked for the Deferred: failures are theirs

    @property
    def persistent(self) -> bool:
        return self.payload is not None


class TaskHandle:
    """
    What ``delay()`` returns: a handle on one task, with Evennia's methods.

    >>> task = procpool.delay(60, print, "later")
    >>> task.cancel(), task.active(), task.exists()
    (True, False, True)

    A handle is bound to its own task. Once that task is gone (run, removed,
    cleaned as stale) the handle answers ``False`` (or ``None`` where a value
    is asked for) and never touches any other task.
    """

    __slots__ = ("_handler", "_task")

    def __init__(self, handler: Any, task: _Task) -> None:  # a procpool.tasks.TaskHandler
        self._handler = handler
        self._task = task

    def __repr__(self) -> str:
        state = "active" if self.active() else "known" if self.exists() else "gone"
        return f"<TaskHandle {self._task.task_id} {state} due={self._task.due:.3f}>"

    def get_id(self) -> int:
        """The task's id, unique for the life of the database: ``task.get_id()``."""
        return self._task.task_id

    @property
    def due(self) -> float:
        """When the task is (or was) due, in the handler clock's seconds: ``task.due``."""
        return self._task.due

    @property
    def persistent(self) -> bool:
        """True for a task kept in storage across restarts: ``task.persistent``."""
        return self._task.persistent

    @property
    def callback(self) -> Callable[..., Any]:
        """What the task calls: ``task.callback``."""
        return self._task.callback

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments the callback gets: ``task.args``."""
        return self._task.args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the callback gets (a copy): ``task.kwargs``."""
        return dict(self._task.kwargs)

    def exists(self) -> bool:
        """True while the handler knows the task (pending, or cancelled and not yet removed)."""
        return self._handler._owns(self._task)

    def active(self) -> bool:
        """True while the task is still waiting for its due time: ``task.active()``."""
        return self.exists() and not self._task.deferred.called

    def cancel(self) -> bool:
        """Stop the task from running; it stays known until removed or stale: ``task.cancel()``."""
        return self._handler._cancel(self._task)

    def remove(self) -> bool:
        """Cancel the task and forget it (and its stored row): ``task.remove()``."""
        return self._handler._remove(self._task)

    def call(self) -> Any:
        """Run the callback now and return its value; the task stays scheduled: ``task.call()``."""
        if not self.exists():
            return None
        task = self._task
        return task.callback(*task.args, **task.kwargs)

    def do_task(self) -> Any:
        """Run the callback now, unschedule and forget the task, return the value."""
        return self._handler._do_task(self._task)

    def pause(self) -> None:
        """Hold the task: at its due time nothing runs until ``task.unpause()``."""
        if self.exists():
            self._task.deferred.pause()

    def unpause(self) -> None:
        """Release a paused task; if its due time has passed it runs at once."""
        if self.exists() and self._task.deferred.paused:
            self._task.deferred.unpause()

    @property
    def paused(self) -> int:
        """How many times the task is paused (truthy when paused): ``task.paused``."""
        return self._task.deferred.paused

    @property
    def called(self) -> bool:
        """True once the task fired or was cancelled: ``task.called``."""
        return self._task.deferred.called

    def get_deferred(self) -> Deferred[Any] | None:
        """
        The Deferred that fires with the callback's value, while the task exists.

        ``task.get_deferred().addCallback(print)``. For a persistent task whose
        row could not be written it fails with :class:`TaskNotStored` (which is
        also logged; without a ``get_deferred()`` it is logged only, once).
        """
        if not self.exists():
            return None
        self._task.watched = True
        return self._task.deferred


def _fire_overdue(tasks: list[_Task]) -> None:
    # One call for all of them: the reactor does not promise an order among
    # calls due at the same moment, and overdue tasks run in due order.
    for task in tasks:
        if not task.deferred.called:
            task.deferred.callback(None)


def _ended_badly(failure: Failure, task: _Task) -> Failure | None:
    """A task's Deferred failed: a cancel ends quietly; TaskNotStored goes to its watchers."""
    if failure.check(CancelledError):
        return None
    # TaskNotStored, already logged: the errbacks of whoever asked for the
    # Deferred should see it; if nobody did, passing it on would only log it
    # a second time as "Unhandled error in Deferred".
    return failure if task.watched else None


def _check_delay(timedelay: Any) -> float:
    if isinstance(timedelay, bool) or not isinstance(timedelay, numbers.Real):
        raise InvalidTask(f"delay needs a number of seconds, got {timedelay!r} "
                          f"({type(timedelay).__name__})")
    seconds = float(timedelay)
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidTask(f"delay needs a finite number of seconds, got {timedelay!r}")
    if seconds < 0:
        raise InvalidTask(f"delay cannot be negative, got {timedelay!r}")
    return seconds


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dump(callback: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a persistent call, refusing (with the reason) whatever could not be loaded back."""
    if inspect.ismethod(callback):
        target, name = callback.__self__, callback.__name__
        what = f"the object {_short(target)} whose method {name!r} is the callback"
        spec: tuple[Any, ...] = ("method", target, name)
    else:
        qualname = getattr(callback, "__qualname__", "")
        if "<lambda>" in qualname:
            raise InvalidTask(f"a persistent callback cannot be a lambda ({_short(callback)}): "
                              "it has no importable name to store; use a module-level function "
                              "or a method of a picklable object")
        if "<locals>" in qualname:
            raise InvalidTask(f"a persistent callback cannot be a nested function ({qualname}): "
                              "it has no importable name to store; use a module-level function "
                              "or a method of a picklable object")
        target, what, spec = callback, f"the callback {_short(callback)}", ("call", callback)
    _refuse_main(what, target)
    parts: list[tuple[str, Any]] = [(what, target)]
    parts += [(f"argument {i + 1} ({_short(a)})", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k}={_short(v)}", v) for k, v in kwargs.items()]
    for label, value in parts:
        try:
            data = pickling.dumps_by_name(value)
            if b"__main__" in data:     # rare: only then is the pickle read for its names
                _MainFinder(io.BytesIO(data)).load()
            else:
                pickle.loads(data)
        except _FromMain as e:
            raise InvalidTask(f"{label} is (or holds) {e}, defined in __main__: "
                              + _MAIN_WHY) from None
        except Exception as e:
            raise InvalidTask(f"{label} cannot be stored for a persistent delay: "
                              f"{type(e).__name__}: {e}") from e
    return pickling.dumps_by_name((spec, args, kwargs))


_MAIN_WHY = ("it is stored by the name '__main__.<name>', and the next start, run from "
             "another script, cannot load it; define it in a module you import (a "
             "mygame/timers.py, say) and schedule it from there")


def _refuse_main(what: str, target: Any) -> None:
    """A callback (or the object owning it) from ``__main__`` would be stored by a lost name."""
    owner = target if inspect.isroutine(target) or inspect.isclass(target) else type(target)
    if getattr(owner, "__module__", None) == "__main__":
        raise InvalidTask(f"a persistent callback cannot be defined in __main__ ({what}): "
                          + _MAIN_WHY)


class _FromMain(Exception):
    """A pickle names a global of ``__main__``; the message is its name."""


class _MainFinder(pickle.Unpickler):
    """Loads a pickle as ``pickle.loads`` does, but stops at any global of ``__main__``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__":
            raise _FromMain(f"__main__.{name}")
        return super().find_class(module, name)


def _load_rows(rows: list[Any], database: str) -> tuple[list[tuple[Any, tuple]], dict[int, str]]:
    """
    The stored rows (``StoredTask``) in due order, each with its loaded call, and
    the ones that cannot be loaded, by id, with the reason. Those are kept in
    storage (a module back in place loads them at the next start) and logged
    here once each; ``procpool tasks`` shows and removes them.
    """
    loaded: list[tuple[Any, tuple]] = []
    unloadable: dict[int, str] = {}
    for row in sorted(rows, key=lambda r: (r.due, r.task_id)):
        try:
            loaded.append((row, _load(row.payload)))
        except Exception as e:
            unloadable[row.task_id] = reason = f"{type(e).__name__}: {e}"
            log.failure("stored task {task_id} in {database} cannot be loaded ({reason}); it "
                        "is kept, not run: `procpool tasks show {task_id}` shows it, `procpool "
                        "tasks remove {task_id}` deletes it", task_id=row.task_id,
                        database=database, reason=reason)
    return loaded, unloadable


def _load(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    spec, args, kwargs = pickle.loads(payload)
    if spec[0] == "method":
        return getattr(spec[1], spec[2]), args, kwargs
    return spec[1], args, kwargs
