"""
The host's side of serialisation: tasks out, results and exceptions back.

The bytes format is shared with the workers (workers/pickling.py, and the
box keys in workers/wire.py); this module adds the host's errors::

    kind, payload = b"c", dumps((len, ("abc",), {}), "len or its arguments")
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from procpool.errors import PayloadTooLarge, RemoteError, SerializationError
from workers import pickling, wire

__all__ = ["dumps", "load_result", "rebuild_error"]


def dumps(obj: Any, what: str) -> bytes:
    """
    Pickle ``obj`` for a worker (dill for what pickle refuses). Raises
    :class:`SerializationError` saying that ``what`` could not be serialised.
    """
    try:
        return pickling.dumps(obj)
    except Exception as exc:
        raise SerializationError(f"{what} could not be serialised for a worker process: "
                                 f"{type(exc).__name__}: {exc}") from exc


def load_result(payload: bytes | memoryview) -> Any:
    """Unpickle a worker's answer; :class:`SerializationError` if it cannot be."""
    try:
        return pickle.loads(payload)
    except Exception as exc:
        raise SerializationError(
            f"the task's result could not be unpickled here: {exc!r}") from exc


def unloadable_result(exc: Exception) -> SerializationError:
    """The error for a worker's answer that would not unpickle here."""
    return SerializationError(f"the task's result could not be unpickled here: {exc!r}")


def rebuild_error(box: dict[bytes, Any], payload: bytes | memoryview) -> BaseException:
    """
    The exception a worker's ``_error`` box describes: the task's own
    exception type where it unpickles here, else :class:`RemoteError`;
    either carries ``remote_traceback``. Never raises.
    """
    try:
        return _rebuild(box, payload)
    except Exception as exc:  # the task must settle whatever the box held
        return RemoteError("unknown", f"the worker's error could not be read: {exc!r}")


def _rebuild(box: dict[bytes, Any], payload: bytes | memoryview) -> BaseException:
    # Values over 2 KiB arrive as memoryviews (workers/wire.py): copy the small fields.
    code = bytes(box.get(b"_error_code", b""))
    description = bytes(box.get(b"_error_description", b"")).decode("utf-8", "replace")
    if code == wire.TOO_LARGE:
        return PayloadTooLarge("the task's result", int(bytes(box[b"size"])),
                               int(bytes(box[b"cap"])))
    if code == wire.UNSERIALIZABLE:
        return SerializationError(description)
    try:
        info = wire.ErrorInfo(*pickle.loads(payload))
    except Exception:
        return RemoteError("unknown", description)
    exc: BaseException | None = None
    if info.pickled:
        try:
            exc = pickle.loads(info.pickled)
        except Exception:
            exc = None
    elif info.main_args:
        exc = _from_main(info)
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt etc. must not be re-raised in the host.
        return RemoteError(info.type_name, info.message, info.traceback)
    exc.remote_traceback = info.traceback  # type: ignore[attr-defined]
    exc.add_note("Raised in a procpool worker; remote traceback:\n" + info.traceback.rstrip())
    return exc


def _from_main(info: wire.ErrorInfo) -> BaseException | None:
    """An exception of a class the host's ``__main__`` defines, rebuilt from its args."""
    cls: Any = sys.modules.get("__main__")
    for part in info.type_name.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    try:
        return cls(*pickle.loads(info.main_args))
    except Exception:
        return None
