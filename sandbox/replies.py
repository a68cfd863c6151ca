"""
What crosses between the host and a sandboxed child: the request out, the reply back.

The request is one JSON object (``source`` and a JSON-able ``context``); the
reply is one line of strict JSON, parsed in the reactor thread, so its size,
its number of containers and its depth are capped before and during the
parse. Nothing a child sends is ever unpickled (docs/sandbox.md)::

    >>> parse_reply(b'{"ok": true, "result": 3}')
    3
"""

from __future__ import annotations

import json
import keyword
from typing import Any

from procpool._codec import remote_frames
from procpool.errors import PayloadTooLarge, SandboxError, SerializationError
from sandbox.child import MAX_CONTAINERS, count_containers

__all__ = ["MAX_DEPTH", "MAX_REQUEST", "encode_request", "parse_reply"]

MAX_DEPTH = 100  # nesting accepted in a reply
MAX_REQUEST = 16 << 20


def encode_request(source: Any, context: dict[str, Any]) -> bytes:
    """The request for ``source`` with ``context`` as its globals; refuses what cannot cross."""
    if not isinstance(source, str):
        raise TypeError(f"sandboxed source must be a str, got {type(source).__name__}")
    for name, value in context.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) \
                or name.startswith("_"):
            raise SerializationError(
                f"sandbox context name {name!r} is not usable: names must be identifiers "
                "that do not start with '_'")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise SerializationError(
                f"sandbox context value {name!r} is not JSON-able ({e}); only None, bool, "
                "int, float, str, list and dict cross into the sandbox") from None
    data = json.dumps({"source": source, "context": context}).encode("ascii")
    if len(data) > MAX_REQUEST:
        raise PayloadTooLarge("sandboxed request", len(data), MAX_REQUEST)
    return data


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests deeper than ``limit`` (itself at depth 1); level by level."""
    level = [obj]
    for _ in range(limit):
        containers = [c for c in level if c.__class__ is list or c.__class__ is dict]
        if not containers:
            return False
        level = []
        for c in containers:
            level.extend(c if c.__class__ is list else c.values())
    return bool(level)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_unpaired_surrogates(reply: Any) -> bool:
    try:
        json.dumps(reply, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_reply(line: bytes) -> Any:
    """
    The result of one reply line, or raise the SandboxError it describes.

    Strict JSON only: no NaN or infinities, and no text the server could not
    encode again (unpaired surrogates, which the child never sends, since
    it writes UTF-8 and escapes no character above U+007F). At most
    MAX_CONTAINERS lists and dicts, nested at most MAX_DEPTH deep: the parse
    runs in the reactor thread, and a megabyte of ``[[], [], ...]`` would
    hold it for a quarter of a second.
    """
    containers = count_containers(line)
    if containers > MAX_CONTAINERS:  # refused before parsing: parsing them blocks the reactor
        raise SandboxError("SandboxProtocolError",
                           f"reply holds more than {MAX_CONTAINERS} lists and dicts")
    try:
        reply = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise SandboxError("SandboxProtocolError", f"reply is not valid JSON ({e})")
    if containers >= MAX_DEPTH and _too_deep(reply, MAX_DEPTH):  # n of them nest n + 1 deep
        raise SandboxError("SandboxProtocolError", f"reply nests deeper than {MAX_DEPTH}")
    if (b"\\ud" in line or b"\\uD" in line) and _has_unpaired_surrogates(reply):
        raise SandboxError("SandboxProtocolError", "reply holds text that is not valid Unicode")
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise SandboxError("SandboxProtocolError", "reply is not a sandbox reply")
    if reply["ok"]:
        return reply.get("result")
    type_name, message = reply.get("type"), reply.get("message")
    if not isinstance(type_name, str) or not isinstance(message, str):
        raise SandboxError("SandboxProtocolError", "error reply without type and message")
    tb = reply.get("traceback")
    error = SandboxError(type_name[:200], message[:4096], tb[:8192] if isinstance(tb, str) else "")
    # The player's frames ("<player>", line N) become the error's traceback, so
    # a logged Failure shows them.
    raise error.with_traceback(remote_frames(error.remote_traceback))
