"""
A worker's answer stream as the host reads it: the wire's box parser, plus
what tells that the stream lost its framing (a killed or confused worker),
and what is read back from such a stream.
"""

from __future__ import annotations

import struct
from itertools import islice
from typing import Any

from workers import wire

__all__ = ["AnswerParser", "raw_box", "answered_in"]

#: AMP's longest key; a longer one means the answer stream lost its framing.
_MAX_KEY = 255
_LENGTH = struct.Struct(">H").pack
#: The first key of every box a worker sends (workers/wire.py).
_OPENING = frozenset([b"_answer", b"_error", b"_command", b"_progress"])


def _plausible_key(key: bytes) -> bool:
    """Keys of the wire are short names of letters, digits, '_' and '.' (workers/wire.py)."""
    return 0 < len(key) <= _MAX_KEY and key.translate(None, b"_.").isalnum()


class AnswerParser(wire.BoxParser):
    """
    The wire's parser, plus what the host needs to see that the stream lost its
    framing; each key of an unfinished box is checked once (128 MiB: 2,000 keys).
    """

    __slots__ = ("_checked_box", "_checked")  # the box, how many of its keys were checked

    def __init__(self) -> None:
        super().__init__()
        self._checked_box, self._checked = None, 0

    def lost(self, max_pairs: int) -> str | None:
        """Why the unfinished box cannot be the start of a real answer, or None."""
        left, box = self._left, self._box
        if self._checked_box is not box:
            self._checked_box, self._checked = box, 0
        keys, whole, cut = list(islice(box, self._checked, None)), len(box), 0
        if len(left) >= 2:  # a pair cut in its value: its key may have come
            klen = (left[0] << 8) | left[1]
            if klen > _MAX_KEY:
                return f"a key of {klen} bytes (AMP allows {_MAX_KEY})"
            cut = int(len(left) >= 2 + klen)
            keys += [bytes(left[2:2 + klen])] * cut
        if whole + cut > max_pairs:
            return f"an answer of more than {max_pairs} values"
        first = next(iter(box), None) if whole else (keys[0] if keys else None)
        if first is not None and first not in _OPENING:
            return f"a box opening with {first[:40]!r}"
        for key in keys:
            if not _plausible_key(key):
                return f"an unknown key {key[:40]!r}"
        self._checked = whole
        return None

    def unreadable(self) -> bytes:
        """The bytes received and not part of a whole box (to look for answers in them)."""
        return raw_box(self._box)[:-2] + self._left  # without the box's end


def raw_box(box: dict[bytes, Any]) -> bytes:
    """A parsed box back as the bytes it came in."""
    pairs = (_LENGTH(len(k)) + k + _LENGTH(len(v)) + bytes(v) for k, v in box.items())
    return b"".join([*pairs, b"\x00\x00"])


def answered_in(seen: bytes, ask: bytes) -> bool:
    """Does an answer (or error) box for ``ask`` show in the bytes ``seen``?"""
    value = _LENGTH(len(ask)) + ask
    return (b"\x00\x07_answer" + value) in seen or (b"\x00\x06_error" + value) in seen
