"""
The wire between the host and a worker: AMP boxes, with values of any size.

This is the protocol both sides import; it needs nothing but the standard
library, so a worker starts without importing Twisted (that import alone
costs about 200 ms, paid again at every recycle).

An AMP box is a run of ``key, value`` pairs, each length-prefixed with two
big-endian bytes, closed by an empty key::

    00 08 "_command" 00 03 "run" 00 04 "_ask" 00 01 "1" ... 00 00

AMP caps a value at 65,535 bytes. A larger value is cut into pieces under
the keys ``p``, ``p.1``, ``p.2``, ... and joined again on arrival, so one
box can carry a payload of any size; the sender checks the size against
``PROCPOOL_MAX_PAYLOAD`` first.

Boxes used:

==========  ===========================================  ===================
direction   keys                                         meaning
==========  ===========================================  ===================
worker ->   ``_command=ready``, ``pid``                  started, waiting
host ->     ``_command=run``, ``_ask``, ``k``, ``p``     run payload ``p``
host ->     ``_command=run``, ``_ask``, ``k``, ``_shm``  the same, ``p`` in a memfd
worker ->   ``_answer``, ``_shm``                        the result in a memfd
worker ->   ``_answer``, ``p``                           pickled result
worker ->   ``_error``, ``_error_code``,                 the task raised, or
            ``_error_description``, ``p``,               its result could
            ``size``, ``cap`` (``TOO_LARGE`` only)       not be sent
==========  ===========================================  ===================

``k`` is ``c`` (a pickled ``(callable, args, kwargs)``) or ``s`` (a pickled
``(source, globals)``). Error codes: ``REMOTE`` (``p`` is a pickled
:class:`ErrorInfo` tuple), ``TOO_LARGE`` (the result's ``size`` is over the
``cap``, both decimal) and ``UNSERIALIZABLE``.
The host closes the worker's input to ask it to exit.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from collections.abc import Iterator

__all__ = [
    "MAX_VALUE",
    "REMOTE",
    "TOO_LARGE",
    "UNSERIALIZABLE",
    "ErrorInfo",
    "encode_box",
    "encode_error",
    "encode_run",
    "encode_run_apart",
    "BoxParser",
    "join_value",
]

MAX_VALUE = 0xFFFF

#: Error codes of an ``_error`` box.
REMOTE = b"REMOTE"
TOO_LARGE = b"TOO_LARGE"
UNSERIALIZABLE = b"UNSERIALIZABLE"
_pack = struct.Struct(">H").pack


# A namedtuple, not a typing.NamedTuple: importing typing costs a worker's start ~3 ms.
ErrorInfo = namedtuple("ErrorInfo", "type_name message traceback pickled main_args",
                       defaults=(b"",), module=__name__)
ErrorInfo.__doc__ = """
What a worker sends back about an exception raised by a task: ``type_name``
("module.QualName"), ``message`` (``str(exc)``), ``traceback`` (formatted in
the worker), ``pickled`` (the exception's pickle, or b"" if it would not
pickle) and ``main_args`` (for a class of the host's __main__: the pickle
of ``exc.args``; b"" otherwise).
"""


def _pairs(key: bytes, value: bytes | memoryview) -> list[bytes | memoryview]:
    """The encoded pairs for one value, cut into AMP-sized pieces if needed."""
    size = len(value)
    if size <= MAX_VALUE:
        return [_pack(len(key)), key, _pack(size), value]
    view = memoryview(value)
    out: list[bytes | memoryview] = []
    for n, start in enumerate(range(0, size, MAX_VALUE)):
        name = key if n == 0 else key + b"." + str(n).encode()
        piece = view[start:start + MAX_VALUE]
        out += [_pack(len(name)), name, _pack(len(piece)), piece]
    return out


def encode_box(items: dict[bytes, bytes | memoryview]) -> list[bytes | memoryview]:
    """A box as a list of byte strings to write in order (no copy of big values)."""
    out: list[bytes | memoryview] = []
    for key, value in items.items():
        out += _pairs(key, value)
    out.append(b"\x00\x00")
    return out


def encode_error(ask: bytes, code: bytes, description: str, payload: bytes = b"",
                 **numbers: int) -> list[bytes | memoryview]:
    """The ``_error`` box answering ``ask``; ``numbers`` are extra decimal fields."""
    items: dict[bytes, bytes | memoryview] = {
        b"_error": ask,
        b"_error_code": code,
        b"_error_description": description.encode("utf-8", "replace")[:4000],
        b"p": payload,
    }
    for key, value in numbers.items():
        items[key.encode()] = str(value).encode()
    return encode_box(items)


_RUN_HEAD = b"".join([_pack(8), b"_command", _pack(3), b"run", _pack(4), b"_ask"])
# c: a pickled call, s: a pickled source string; C and S: the same, reporting progress.
_KIND = {kind: _pack(1) + b"k" + _pack(1) + kind for kind in (b"c", b"s", b"C", b"S")}


def encode_run(ask: bytes, kind: bytes, payload: bytes) -> bytes | list[bytes | memoryview]:
    """The ``run`` box; small ones come back as one bytes object (the hot path)."""
    head = _RUN_HEAD + _pack(len(ask)) + ask + _KIND[kind]
    if len(payload) <= MAX_VALUE:
        return b"".join((head, b"\x00\x01p", _pack(len(payload)), payload, b"\x00\x00"))
    return [head, *_pairs(b"p", payload), b"\x00\x00"]


def encode_run_apart(ask: bytes, kind: bytes, spec: bytes) -> bytes:
    """The ``run`` box of a task whose payload crossed in shared memory (workers/shared.py)."""
    return _RUN_HEAD + _pack(len(ask)) + ask + _KIND[kind] + b"\x00\x04_shm" + \
        _pack(len(spec)) + spec + b"\x00\x00"


def join_value(box: dict[bytes, bytes | memoryview], key: bytes) -> bytes | memoryview:
    """The whole value of ``key``, joining the pieces ``key.1``, ``key.2``, ... if any."""
    first = box.get(key, b"")
    name = key + b".1"
    if name not in box:
        return first
    parts = [first]
    n = 1
    while name in box:
        parts.append(box[name])
        n += 1
        name = key + b"." + str(n).encode()
    return b"".join(parts)


_SMALL = 2048


def _pair_size(head: bytes) -> int | None:
    """Bytes in the key/value pair that ``head`` starts, or None if its lengths are not all in."""
    if len(head) < 2:
        return None
    klen = (head[0] << 8) | head[1]
    if len(head) < 4 + klen:
        return None
    return 4 + klen + ((head[2 + klen] << 8) | head[3 + klen])


class BoxParser:
    """
    Turns a stream of bytes into AMP boxes.

    Values over 2 KiB come back as memoryviews into the bytes that were read
    (no copy); a value cut by a read boundary is joined once. Only the tail
    of an unfinished pair is kept between calls.

    >>> p = BoxParser()
    >>> [dict(b) for b in p.feed(b"\x00\x01a\x00\x01b\x00\x00")]
    [{b'a': b'b'}]
    """

    __slots__ = ("_left", "_box")

    def __init__(self) -> None:
        self._left = b""
        self._box: dict[bytes, bytes | memoryview] = {}

    def feed(self, data: bytes) -> Iterator[dict[bytes, bytes | memoryview]]:
        """Add ``data``; yield every box it completes."""
        left = self._left
        if left:
            need = _pair_size(left)
            if need is None:
                data = left + data
            else:
                missing = need - len(left)
                if len(data) < missing:
                    self._left = left + data
                    return
                pair = left + data[:missing]
                klen = (pair[0] << 8) | pair[1]
                self._box[pair[2:2 + klen]] = pair[4 + klen:]
                data = memoryview(data)[missing:] if missing else data
            self._left = b""
        view = memoryview(data)
        end = len(view)
        pos = 0
        box = self._box
        while end - pos >= 2:
            klen = (view[pos] << 8) | view[pos + 1]
            if klen == 0:
                pos += 2
                self._box = {}
                yield box
                box = self._box
                continue
            vstart = pos + 2 + klen
            if vstart + 2 > end:
                break
            vlen = (view[vstart] << 8) | view[vstart + 1]
            vend = vstart + 2 + vlen
            if vend > end:
                break
            value = view[vstart + 2:vend]
            box[bytes(view[pos + 2:vstart])] = bytes(value) if vlen <= _SMALL else value
            pos = vend
        if pos < end:
            self._left = bytes(view[pos:])

    def pending(self) -> int:
        """Bytes received but not yet part of a whole box."""
        return len(self._left) + sum(len(v) for v in self._box.values())
