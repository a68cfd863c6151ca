"""
The worker process: read a task, run it, answer, repeat.

Started by the host as ``python -P workers/__main__.py`` with AMP on descriptors 3 (in)
and 4 (out). It runs one task at a time, in the order they arrive, and
writes each answer before it starts the next task: so when a worker dies,
the host knows the oldest unanswered task is the one that killed it, and
that the tasks queued behind it never started.

It imports no Twisted (see workers/wire.py). It leads its own process
group, so the host can kill it together with everything it started, and it
asks the kernel to kill it if the host dies; its reaper kills that group
when it dies (workers/reaper.py). It runs under PROCPOOL_MAX_MEMORY
(workers/limits.py) and puts back descriptors a task closed
(workers/hygiene.py). It exits normally (``atexit``
hooks run, e.g. workers.db closes its connection) when the host closes its
input.
"""

from __future__ import annotations

import _pickle as pickle  # the C pickler alone: module pickle imports re and enum (~5 ms)
import io
import os
import select
import sys
import time

from workers import hygiene, limits, pickling, polling, reaper, reporting, shared, wire
from workers.source import run_source

TYPE_CHECKING = False  # not typing's: importing typing costs a worker's start ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["main", "serve"]

FD_IN = 3
FD_OUT = 4
_READ_SIZE = 1 << 20
#: PROCPOOL_MAX_MEMORY in bytes, or None (set by main; workers/limits.py).
_memory_limit: int | None = None
#: The worker's end of the channel big results take (workers/shared.py), or None.
_channel: Any = None


def _write_all(fd: int, parts: list[bytes | memoryview] | bytes) -> None:
    """Write every part, in as few system calls as the pipe allows."""
    if isinstance(parts, (bytes, bytearray)):
        parts = [parts]
    pending = [memoryview(p) for p in parts if len(p)]
    while pending:
        written = os.writev(fd, pending[:1024])
        while written:
            head = pending[0]
            if written >= len(head):
                written -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[written:]
                written = 0


def _describe(exc: BaseException) -> wire.ErrorInfo:
    kind = type(exc)
    type_name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        type_name = f"{kind.__module__}.{type_name}"
    try:
        message = str(exc)
    except Exception:
        message = f"<{type_name} whose str() failed>"
    import traceback  # here, not at the top: it costs a worker's start ~3 ms

    text = "".join(traceback.format_exception(exc))
    try:
        pickled = pickle.dumps(exc, protocol=5)
        pickle.loads(pickled)  # an exception that pickles but won't load is no use
    except Exception:
        pickled = b""
    main_args = b""
    if not pickled and kind.__module__ == "__main__":
        # A class the host defined in its __main__ came here by value (dill)
        # and cannot be pickled by reference: send its arguments, and the
        # host rebuilds it from its own __main__.
        try:
            main_args = pickle.dumps(tuple(exc.args), protocol=5)
        except Exception:
            main_args = b""
    return wire.ErrorInfo(type_name, message, text, pickled, main_args)


def run_task(kind: bytes, payload: bytes) -> Any:
    """Run one task's payload and return its result (exceptions propagate)."""
    if kind == b"c":
        function, args, kwargs = pickle.loads(payload)
        return function(*args, **kwargs)
    if kind == b"s":
        source, env = pickle.loads(payload)
        return run_source(source, env)
    raise ValueError(f"unknown task kind {kind!r}")


# The answer pipe, for progress boxes written while a task runs (set by serve).
_progress_fd = FD_OUT


def _run_reporting(ask: bytes, kind: bytes, payload: bytes, cap: int) -> Any:
    """Run a task whose caller asked for progress (kind C or S): each value goes out at once."""
    def send(value: Any) -> None:
        data = pickling.dumps(value)
        if len(data) > cap:
            raise ValueError(f"a progress value of {len(data):,} bytes is over the payload "
                             f"cap of {cap:,} bytes")
        _write_all(_progress_fd, wire.encode_box({b"_progress": ask, b"p": data}))

    with reporting.reporting(send):
        if kind == b"S":
            source, env = pickle.loads(payload)
            return run_source(source, env, on_return=send)
        return run_task(b"c", payload)


def _raised(ask: bytes, exc: BaseException, cap: int) -> list:
    """The box saying that the task raised ``exc``."""
    info = _describe(exc)
    data = pickle.dumps(tuple(info), protocol=5)
    if len(data) > cap:
        info = info._replace(pickled=b"", traceback=info.traceback[-20000:])
        data = pickle.dumps(tuple(info), protocol=5)
    return wire.encode_error(ask, wire.REMOTE, info.message, data)


def answer(ask: bytes, kind: bytes, payload: bytes, cap: int) -> list:
    """
    Run a task and build the box that answers it. A MemoryError under
    PROCPOOL_MAX_MEMORY raises :class:`limits.OverTheLimit` instead, once the
    task's frames (and what they held) are gone.
    """
    data, failed = outcome(ask, kind, payload, cap, apart=_channel is not None)
    if data is None:
        return failed
    if type(data) is shared.Apart:
        spec = shared.send(_channel, ask, data)
        if spec is not None:
            return wire.encode_box({b"_answer": ask, b"_shm": spec})
        data = data.value if data.pickled else pickling.dumps(data.value)
    return wire.encode_box({b"_answer": ask, b"p": data})


def outcome(ask: bytes, kind: bytes, payload: Any, cap: int,
            apart: bool = False) -> tuple[Any, list | None]:
    """
    Run a task: ``(its pickled result, None)``, or ``(None, the error box's
    parts)`` when it raised, its result does not pickle or is over ``cap``
    bytes. With ``apart``, a result of ``shared.APART`` bytes or more comes
    as a :class:`shared.Apart` to send through shared memory. :func:`answer`
    frames the result; the Ray backend sends it bare.
    """
    try:
        result = run_task(kind, payload) if kind in b"cs" else _run_reporting(ask, kind, payload,
                                                                               cap)
    except MemoryError as exc:
        if _memory_limit is None:
            return None, _raised(ask, exc, cap)
        text = limits.traceback_text(exc)
    except BaseException as exc:  # noqa: BLE001 - a task's SystemExit must not end the worker
        return None, _raised(ask, exc, cap)
    else:
        if apart and type(result) is bytes and shared.APART <= len(result) <= cap:
            return shared.Apart(result, pickled=False), None  # no pickle, no copy
        try:
            data = pickling.dumps(result)
        except Exception as exc:
            return None, wire.encode_error(ask, wire.UNSERIALIZABLE,
                                           f"the result, of type {type(result).__name__}, "
                                           f"could not be serialised: {exc}")
        if len(data) > cap:
            return None, wire.encode_error(ask, wire.TOO_LARGE,
                                           "the task's result is over the payload cap",
                                           size=len(data), cap=cap)
        return (shared.Apart(data, pickled=True) if apart and len(data) >= shared.APART
                else data), None
    raise limits.OverTheLimit(limits.exceeded(ask, _memory_limit, text))


def serve(cap: int, spin: float, fd_in: int = FD_IN, fd_out: int = FD_OUT,
          guard: hygiene.Descriptors | None = None) -> None:
    """
    Answer ``run`` boxes from ``fd_in`` on ``fd_out`` until ``fd_in`` closes.

    ``cap`` is the largest result in bytes, ``spin`` the seconds to poll
    for the next task before sleeping (0: never poll). ``guard`` checks the
    descriptors after each answer (workers/hygiene.py); it returns early
    when the wire is broken or a task went past PROCPOOL_MAX_MEMORY.
    """
    global _progress_fd
    _progress_fd = fd_out
    _write_all(fd_out, wire.encode_box({b"_command": b"ready",
                                        b"pid": str(os.getpid()).encode()}))
    parser = wire.BoxParser()
    poller = select.poll()
    poller.register(fd_in, select.POLLIN)
    watch = guard.watch if guard is not None else _nothing_wrong
    while True:
        if spin:
            polling.wait_briefly(poller, spin)
        data = os.read(fd_in, _READ_SIZE)
        if not data:
            return
        boxes = parser.feed(data)
        for box in boxes:
            if box.get(b"_command") != b"run":
                continue
            ask = box.get(b"_ask", b"")
            try:
                reply = answer(ask, box.get(b"k", b""), _payload_of(box, ask), cap)
            except limits.OverTheLimit as over:
                _last_answers(over.answer, boxes, parser, fd_in, fd_out, cap)
                return
            _write_all(fd_out, reply)
            bad = watch(0)
            if bad and not guard.repair(bad):  # type: ignore[union-attr]
                sys.stderr.write("workers: a task closed this worker's pipes to the host; "
                                 "it exits and the pool starts another\n")
                return


def _payload_of(box: dict, ask: bytes) -> bytes:
    """A ``run`` box's payload: its ``p``, or the memfd its ``_shm`` says came with it."""
    spec = box.get(b"_shm")
    if spec is None:
        return wire.join_value(box, b"p")
    return shared.receive(_channel, ask, bytes(spec))


def _nothing_wrong(timeout: int) -> list:
    return []


def _last_answers(first: list, rest: Iterator[dict], parser: wire.BoxParser, fd_in: int,
                  fd_out: int, cap: int) -> None:
    """
    A task went past PROCPOOL_MAX_MEMORY. Take in the tasks already sent and
    close the input first (the host's next write then fails, and it sends
    its tasks elsewhere), write ``first``, answer the tasks taken in, in
    order; the worker then exits and the host starts a fresh one.
    """
    pending = [*rest, *_drain(fd_in, parser)]
    os.close(fd_in)
    _write_all(fd_out, first)
    for box in pending:
        if box.get(b"_command") != b"run":
            continue
        try:
            ask = box.get(b"_ask", b"")
            reply = answer(ask, box.get(b"k", b""), _payload_of(box, ask), cap)
        except limits.OverTheLimit as over:
            reply = over.answer
        _write_all(fd_out, reply)
    sys.stderr.write(f"workers: a task went past PROCPOOL_MAX_MEMORY ({_memory_limit} bytes); "
                     "this worker exits and the pool starts a fresh one\n")


def _drain(fd: int, parser: wire.BoxParser, patience: float = 1.0) -> list[dict]:
    """The boxes readable from ``fd`` now (waiting up to ``patience`` s for a box's end)."""
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    boxes: list[dict] = []
    deadline = time.monotonic() + patience
    while True:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            if not parser.pending() or time.monotonic() > deadline:
                return boxes
            poller.poll(50)
            continue
        if not data:
            return boxes
        boxes.extend(parser.feed(data))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the host goes away (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, 9, 0, 0, 0)
    except Exception:
        return
    if os.getppid() == 1:  # the host died before we asked
        os._exit(1)


def _widen_pipes() -> None:
    """1 MiB pipe buffers: a big payload then crosses in a few wake-ups, not one per 64 KiB."""
    import fcntl
    for fd in (FD_IN, FD_OUT):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError):
            pass


def _drop_privileges() -> None:
    """Become PROCPOOL_WORKER_UID/GID (set by the host from PROCPOOL_UID/GID)."""
    uid = os.environ.get("PROCPOOL_WORKER_UID")
    gid = os.environ.get("PROCPOOL_WORKER_GID")
    if uid or gid:
        # What the worker imports only when first needed (a source string,
        # an error's traceback and its non-ASCII text, a big result,
        # PROCPOOL_WORKER_INIT, a call only dill can pickle, the prctl of
        # _die_with_parent), now: that user may not be able to read the
        # interpreter's library.
        import ast  # noqa: F401
        import ctypes  # noqa: F401
        import importlib  # noqa: F401
        import socket  # noqa: F401
        import traceback  # noqa: F401
        import unicodedata  # noqa: F401
        import warnings  # noqa: F401

        import dill  # noqa: F401
    if gid:
        if os.getuid() == 0:
            os.setgroups([])
        os.setgid(int(gid))
    if uid:
        if not gid and os.getuid() == 0:
            import pwd
            os.setgroups([])
            os.setgid(pwd.getpwuid(int(uid)).pw_gid)
        os.setuid(int(uid))


def _started_by_a_host() -> bool:
    """Are the wire's descriptors and the host's settings there?"""
    if "PROCPOOL_MAX_PAYLOAD" not in os.environ or "PROCPOOL_SPIN" not in os.environ:
        return False
    try:
        os.fstat(FD_IN)
        os.fstat(FD_OUT)
    except OSError:
        return False
    return True


def _call_init(spec: str | None) -> None:
    """
    Call PROCPOOL_WORKER_INIT ('module:function') before the worker says it
    is ready; if it fails, its traceback on stderr becomes the host's
    WorkerStartError.
    """
    if not spec:
        return
    module, _, name = spec.partition(":")
    try:
        import importlib
        function = getattr(importlib.import_module(module), name or "setup")
        function()
    except BaseException:
        import traceback
        sys.stderr.write(f"workers: PROCPOOL_WORKER_INIT {spec!r} failed:\n")
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def main() -> None:
    """Entry point of a worker (workers/__main__.py)."""
    if not _started_by_a_host():
        sys.stderr.write("workers: this is a procpool worker process; procpool's pool starts it "
                         "with its pipes on fds 3 and 4 (there is nothing to run by hand)\n")
        sys.exit(2)
    try:
        os.setsid()
    except OSError:
        pass
    _widen_pipes()
    global _channel, _memory_limit
    _channel = shared.open_channel()  # 3, 4 and 5 are the tasks' from now on
    wire_fds = hygiene.Descriptors(FD_IN, FD_OUT, None if _channel is None else _channel.fd)
    # Nothing a task starts outlives this worker, and no task takes more
    # than PROCPOOL_MAX_MEMORY. Both before the user changes: they import
    # ctypes and resource, which that user may not be able to read.
    reaper.start()
    _memory_limit = limits.from_environment()
    limits.apply(_memory_limit)
    _drop_privileges()  # before PDEATHSIG: a change of credentials clears it
    _die_with_parent()
    # What tasks print goes to the host's log; keep it line-buffered.
    sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False),
                                  line_buffering=True)
    # The host always sets both (procpool/_spawn.py); the defaults live there.
    cap = int(os.environ["PROCPOOL_MAX_PAYLOAD"])
    # --no-spin: one of more workers than cores, which would take a core from the others.
    spin = 0.0 if "--no-spin" in sys.argv[1:] else float(os.environ["PROCPOOL_SPIN"])
    _call_init(os.environ.get("PROCPOOL_WORKER_INIT"))
    try:
        serve(cap, spin, wire_fds.fd_in, wire_fds.fd_out, wire_fds)
    except BrokenPipeError:
        pass
    sys.exit(0)
