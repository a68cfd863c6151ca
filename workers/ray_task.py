"""
The worker side of the Ray backend: one task, run in a Ray worker process.

The host (procpool/_ray.py) sends the same ``kind`` and ``payload`` bytes
it would write into a local worker's pipe; :func:`run` answers with the
bytes of the same ``_answer`` or ``_error`` box a local worker writes
(workers/worker.py), so the ``_return`` rules, the payload cap and the
rebuilding of a remote exception are the local pool's own. Ray needs this
module importable on every node of its cluster (install procpool there, the
same version as the game's).
"""

from __future__ import annotations

import importlib
from typing import Any

from workers import worker

__all__ = ["run"]

_initialised: set[str] = set()


def run(kind: bytes, payload: bytes, cap: int, init: str | None = None) -> bytes:
    """
    Run one task (``kind`` b"c" or b"s", ``payload`` as in workers/wire.py)
    and return its answer box's bytes; results over ``cap`` bytes become a
    ``TOO_LARGE`` error. ``init`` ('module:function', PROCPOOL_WORKER_INIT)
    runs once per Ray worker process, before its first task; if it raises,
    the task fails with that error and the next task tries it again.
    """
    if init is not None and init not in _initialised:
        try:
            _call(init)
        except BaseException as exc:  # noqa: BLE001 - reported like the task's own error
            return b"".join(worker._raised(b"", exc, cap))
        _initialised.add(init)
    return b"".join(worker.answer(b"", kind, payload, cap))


def _call(path: str) -> Any:
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function or "setup")()
