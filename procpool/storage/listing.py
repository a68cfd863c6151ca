"""
``procpool tasks``: look at and clean the persistent tasks of a database, no code needed.

    procpool tasks [--database D] list        # id, due time, callback, state
    procpool tasks [--database D] show ID     # one task, arguments included
    procpool tasks [--database D] remove ID   # delete its row (exit 1: no such task)

``D`` defaults to the ``PROCPOOL_DATABASE`` setting. Loading a task's call
imports the modules it names, from the current directory too, so run it where
the server runs. A task that cannot be loaded is listed with the reason;
``remove`` is how it goes. A server running on the same database keeps
running the tasks it loaded: stop it before removing (docs/persistence.md).
"""

from __future__ import annotations

import os
import pickletools
import sys
import time
from typing import Any, TextIO

from procpool.errors import SettingError, StorageError
from procpool.storage.base import Storage, StoredTask

__all__ = ["run_tasks_command"]


def _callback_name(payload: bytes) -> str:
    """``module.name`` of the stored callback, read from the pickle without loading it."""
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(payload):
            if op.name == "GLOBAL":
                return str(arg).replace(" ", ".")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:       # a truncated or foreign payload: say so rather than fail
        pass
    return "(unreadable)"


def _describe(row: StoredTask, now: float) -> dict[str, Any]:
    """What is known of one row: its callback, arguments and state."""
    from procpool._task_record import _load
    info: dict[str, Any] = {"id": row.task_id, "due": row.due, "bytes": len(row.payload)}
    try:
        callback, args, kwargs = _load(row.payload)
    except Exception as e:
        info.update(callback=_callback_name(row.payload), args=None, kwargs=None,
                    state=f"cannot be loaded: {type(e).__name__}: {e}")
        return info
    owner = getattr(callback, "__self__", None)
    name = f"{getattr(callback, '__module__', '?')}.{getattr(callback, '__qualname__', callback)}"
    info["object"] = None if owner is None or isinstance(owner, type(sys)) else _short(owner)
    left = row.due - now
    state = f"due in {_span(left)}" if left > 0 else f"overdue by {_span(-left)} (runs at start)"
    info.update(callback=name, args=args, kwargs=kwargs, state=state)
    return info


def _short(value: Any, most: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."


def _span(seconds: float) -> str:
    """``"3s"``, ``"59m 58s"``, ``"2h 5m"``, ``"3d 4h"``."""
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                     ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // subsize}{sub}"
    return f"{s}s"


def _when(due: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(due))


def _list(store: Storage, rows: list[StoredTask], out: TextIO) -> int:
    now = time.time()
    out.write(f"{store.name}: {len(rows)} stored task(s)\n")
    if rows:
        out.write(f"{'ID':>6}  {'DUE':<23}  {'CALLBACK':<40}  STATE\n")
    for row in rows:
        info = _describe(row, now)
        out.write(f"{info['id']:>6}  {_when(info['due']):<23}  {info['callback']:<40}  "
                  f"{info['state']}\n")
    return 0


def _show(store: Storage, row: StoredTask, out: TextIO) -> int:
    info = _describe(row, time.time())
    out.write(f"task {row.task_id} in {store.name}\n"
              f"  due:       {_when(row.due)}\n"
              f"  callback:  {info['callback']}\n")
    if info["args"] is not None:
        if info["object"] is not None:
            out.write(f"  of object: {info['object']}\n")
        out.write(f"  args:      {info['args']!r}\n  kwargs:    {info['kwargs']!r}\n")
    out.write(f"  state:     {info['state']}\n  stored:    {info['bytes']} bytes\n")
    return 0


def _remove(store: Storage, row: StoredTask, next_id: int, out: TextIO) -> int:
    store.apply(puts=[], deletes=[row.task_id], next_id=next_id)
    out.write(f"removed task {row.task_id} ({_callback_name(row.payload)}) from {store.name}\n")
    return 0


def _open(database: str) -> Storage:
    from procpool.storage import open_storage
    from procpool.storage.spec import parse_database
    kind, where = parse_database(database)
    if kind == "sqlite" and not os.path.exists(where):
        raise StorageError(f"SQLite file {where!r} does not exist: no task database there "
                           "(give --database, or run where the server runs)")
    store = open_storage(database)
    store.open()
    return store


def run_tasks_command(database: str | None, action: str, task_id: int | None,
                      out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    Run ``procpool tasks ACTION [ID]`` on ``database`` (``None``: the setting);
    returns the exit code: ``run_tasks_command("tasks.sqlite3", "list", None)``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # the game's modules, as the server sees them
    try:
        if database is None:
            from procpool import settings
            database = settings.get("PROCPOOL_DATABASE")
        store = _open(database)
    except SettingError as e:
        err.write(f"procpool tasks: {e}\n")
        return 2
    except StorageError as e:
        err.write(f"procpool tasks: {e}\n")
        return 1
    try:
        rows, next_id = store.load()
        if action == "list":
            return _list(store, rows, out)
        row = next((r for r in rows if r.task_id == task_id), None)
        if row is None:
            err.write(f"procpool tasks: no task {task_id} in {store.name}\n")
            return 1
        if action == "show":
            return _show(store, row, out)
        return _remove(store, row, next_id, out)
    except StorageError as e:
        err.write(f"procpool tasks: {e}\n")
        return 1
    finally:
        store.close()
