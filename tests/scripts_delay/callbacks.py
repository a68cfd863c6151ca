"""Storable callbacks for the restart test: each run appends one line to a record file."""

from __future__ import annotations

import os
import time


def note(path: str, number: int, due: float) -> None:
    """Append ``number due fired pid`` to ``path`` (one write, O_APPEND)."""
    line = f"{number} {due:.6f} {time.time():.6f} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
