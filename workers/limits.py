"""
A worker's memory limit: ``PROCPOOL_MAX_MEMORY`` as ``RLIMIT_DATA``.

``RLIMIT_DATA`` (enforced since Linux 4.7) counts the heap and the private
writable mappings: what a task's allocations take, but not shared
libraries, files mapped read-only or address space only reserved (glibc's
per-thread arenas), so it is close to what a task can make resident. Past
it, malloc fails and Python raises ``MemoryError`` in the task. The worker
then answers with :class:`procpool.errors.MemoryLimitExceeded`, pickled by
name like any exception (no new box on the wire), and exits; the host starts another
(docs/design.md, a worker's life). Soft and hard limits are both set, so a
task cannot lift it; processes a task starts inherit it, each for itself.
Nothing here runs per task.
"""

from __future__ import annotations

import _pickle as pickle  # the C pickler alone: module pickle imports re and enum (~5 ms)
import os
import sys

from workers import wire

__all__ = ["OverTheLimit", "from_environment", "apply", "exceeded", "traceback_text"]


class OverTheLimit(Exception):
    """Raised in the worker, never sent: ``answer`` is the box to write before it exits."""

    def __init__(self, answer: list) -> None:
        super().__init__("a task went past PROCPOOL_MAX_MEMORY")
        self.answer = answer


def from_environment() -> int | None:
    """The limit in bytes the host gave (procpool/_spawn.py), or None for none."""
    text = os.environ.get("PROCPOOL_MAX_MEMORY", "")
    return int(text) if text.strip().isdigit() and int(text) > 0 else None


def apply(limit: int | None) -> None:
    """Set RLIMIT_DATA to ``limit`` (soft and hard; never above a hard limit already set)."""
    if limit is None:
        return
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def traceback_text(exc: BaseException) -> str:
    """The task's traceback, if there is memory left to format it."""
    try:
        import traceback  # here: it costs a worker's start ~3 ms

        return "".join(traceback.format_exception(exc))
    except MemoryError:
        pass
    try:
        return _frames_text(exc)
    except MemoryError:
        return "MemoryError (no memory was left to format its traceback)\n"


def _frames_text(exc: BaseException) -> str:
    """
    The traceback's frames without their source lines, with no import: at
    the limit, importing traceback (or reading a source file) fails for
    want of memory while the task's frames still hold what it took.
    """
    lines = ["Traceback (most recent call last), without source lines:\n"]
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
        tb = tb.tb_next
    lines.append(f"{type(exc).__name__}: {exc}\n")
    return "".join(lines)


def _pickled_error(limit: int) -> bytes:
    """
    A pickle of ``procpool.errors.MemoryLimitExceeded(limit)``, written by
    hand so that the worker need not import the host's package (30 ms).
    """
    number = pickle.dumps(limit, protocol=2)[2:-1]  # the int's opcodes alone
    return (b"\x80\x02cprocpool.errors\nMemoryLimitExceeded\n" + number
            + b"\x85R.")  # TUPLE1, REDUCE, STOP


def exceeded(ask: bytes, limit: int, text: str) -> list:
    """The ``_error`` box answering ``ask``: MemoryLimitExceeded(limit), with the traceback."""
    message = (f"the task went past its worker's memory limit of {limit:,} bytes "
               "(PROCPOOL_MAX_MEMORY)")
    info = wire.ErrorInfo("procpool.errors.MemoryLimitExceeded", message, text,
                          _pickled_error(limit))
    return wire.encode_error(ask, wire.REMOTE, message, pickle.dumps(tuple(info), protocol=5))


# Freed buffers up to this size stay in the heap (glibc's mmap and trim thresholds).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> bool:
    """
    Ask glibc to keep freed buffers of up to 32 MiB in this process's heap.
    By default it returns each big buffer to the kernel and faults it in
    again on the next big payload: about 1,000 page faults per 1 MiB echo,
    half the host's CPU time. Measured: 1 MiB echo 270-320 -> 400-590 MiB/s.
    True if applied. The host and the Ray backend's workers call it; local
    workers get the same through GLIBC_TUNABLES (procpool/_spawn.py).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
                    and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
