"""
The worker side of the Ray backend: one task, run in a Ray worker process.

The host (procpool/_ray.py) sends the same ``kind`` and ``payload`` bytes
it would write into a local worker's pipe, behind a short header; the task
runs as in a local worker (workers/worker.py's :func:`~workers.worker.outcome`),
and :func:`run` answers with its pickled result, or with the bytes of the
``_error`` box a local worker would write, so the ``_return`` rules, the
payload cap and the rebuilding of a remote exception are the local pool's own. Ray needs this
module importable on every node of its cluster (install procpool there, the
same version as the game's).
"""

from __future__ import annotations

import importlib
import struct
from typing import Any

from workers import limits, worker

__all__ = ["RESULT", "header", "run"]

# A small task is one bytes argument (Ray serialises each argument of a remote
# call on its own; one instead of five was 10% more tasks a second): the pool's
# settings, then the task's kind and payload. A big payload comes as a second
# argument, so that neither side copies it into one bytes object with the rest.
#   tune (1 byte: 0/1) | cap (8 bytes, little-endian) | len(init) (2 bytes) | init (UTF-8)
#   | kind (1 byte: b"c" or b"s") [| payload (workers/wire.py's)]
_FIXED = struct.Struct("<BQH")
# The answer is the pickled result as it is (a pickle's first byte is PROTO,
# 0x80: protocol 5), or an error box (workers/wire.py's, which starts with a
# key's length: its first byte is always 0). No marker byte, so no copy.
RESULT = b"\x80"

_initialised: set[str] = set()
_tuned = False


def header(cap: int, init: str | None, tune: bool) -> bytes:
    """The part of every task's argument that a pool fixes when it starts."""
    named = (init or "").encode()
    return _FIXED.pack(int(tune), cap, len(named)) + named


def run(task: bytes, payload: bytes | None = None) -> bytes:
    """
    Run one task (``header(...) + kind + payload``, or ``header(...) + kind``
    and ``payload`` apart) and return its answer: the pickled result (its
    first byte is :data:`RESULT`), or the bytes of the error box a local
    worker writes (workers/wire.py). Results
    over the header's ``cap`` bytes become a ``TOO_LARGE`` error. ``init``
    ('module:function', PROCPOOL_WORKER_INIT) runs once per Ray worker
    process, before its first task; if it raises, the task fails with that
    error and the next task tries it again. ``tune`` (PROCPOOL_TUNE_MALLOC)
    keeps big buffers in this process's heap, once per process: a 1 MiB
    payload is copied several times here, and each fresh copy page-faults
    without it.
    """
    global _tuned
    tune, cap, size = _FIXED.unpack_from(task)
    at = _FIXED.size + size
    init = task[_FIXED.size:at].decode() or None
    kind = task[at:at + 1]
    body = memoryview(task)[at + 1:] if payload is None else payload
    if tune and not _tuned:
        _tuned = True
        limits.tune_malloc()
    if init is not None and init not in _initialised:
        try:
            _call(init)
        except BaseException as exc:  # noqa: BLE001 - reported like the task's own error
            return b"".join(worker._raised(b"", exc, cap))
        _initialised.add(init)
    data, failed = worker.outcome(b"", kind, body, cap)
    return data if failed is None else b"".join(failed)


def _call(path: str) -> Any:
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function or "setup")()
