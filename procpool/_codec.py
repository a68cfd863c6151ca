"""
The host's side of serialisation: tasks out, results and exceptions back.

The bytes format is shared with the workers (workers/pickling.py, and the
box keys in workers/wire.py); this module adds the host's errors::

    kind, payload = b"c", dumps((len, ("abc",), {}), "len or its arguments")
"""

from __future__ import annotations

import pickle
import re
import sys
import types
from typing import Any

from procpool.errors import PayloadTooLarge, RemoteError, SerializationError
from workers import pickling, wire

__all__ = ["dumps", "load_result", "rebuild_error", "remote_frames"]


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
        exc = RemoteError(info.type_name, info.message, info.traceback)
    else:
        exc.remote_traceback = info.traceback  # type: ignore[attr-defined]
        exc.add_note("Raised in a procpool worker; remote traceback:\n" + info.traceback.rstrip())
    return exc.with_traceback(remote_frames(info.traceback))


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


# --- the worker's frames, as a traceback of this process -------------------------
# A Failure made from an exception takes its __traceback__, and Failure.getTraceback()
# (what twisted.logger and errbacks print), the traceback module and a re-raise in
# inlineCallbacks all read frames from there. So the worker's frames, parsed from its
# formatted traceback, become real frame objects here: one tiny code object per frame,
# named and numbered like the worker's, run once to get its frame. Failures only.

# The final exception's block starts at the last top-level header (chained
# exceptions come first); its frames are the top-level "File" lines (an exception
# group's own frames are prefixed "  | ", its members' are indented deeper).
_HEADER = "Traceback (most recent call last):\n"
_HEADER_PREFIXES = ("", "  + Exception Group ")
_FRAME = re.compile(r'\n(?:  \| )?  File "([^"\n]*)", line (\d+), in ([^\n]+)')
_GET_FRAME = compile("f = _getframe()", "<remote>", "exec")
_MAX_FRAMES = 200


def _last_block(text: str) -> str:
    """The final exception's part of a formatted traceback, from its header's newline."""
    end = len(text)
    while (at := text.rfind(_HEADER, 0, end)) >= 0:
        line_start = text.rfind("\n", 0, at) + 1
        if text[line_start:at] in _HEADER_PREFIXES:
            return text[at + len(_HEADER) - 1:]
        end = at
    return "\n" + text


def remote_frames(text: str) -> types.TracebackType | None:
    """
    A traceback whose frames are the ones a traceback text formatted elsewhere
    names (file, line and function; no variables), innermost last, or None if
    it names none. Source lines are read here by file name, as for local frames::

        exc.with_traceback(remote_frames(exc.remote_traceback))
    """
    try:
        frames = _FRAME.findall(_last_block(text))[-_MAX_FRAMES:]
        tb = None
        for filename, lineno, name in reversed(frames):
            line = int(lineno)
            code = _GET_FRAME.replace(co_filename=filename, co_name=name, co_qualname=name,
                                      co_firstlineno=line)
            namespace = {"_getframe": sys._getframe}
            exec(code, namespace)  # noqa: S102 - runs only the fixed statement above
            # tb_lasti -1: no column markers (they would point into the stand-in code).
            tb = types.TracebackType(tb, namespace.pop("f"), -1, line)
        return tb
    except Exception:  # a traceback that cannot be read is no reason to lose the error
        return None
