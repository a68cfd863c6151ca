"""
The fork server: one process per pool that has imported everything a worker
needs at start, and forks a ready worker whenever the host asks.

A worker started as a fresh interpreter is ready after about 20-25 ms of
CPU (the interpreter, site, these modules, ctypes and resource); forked from
here, after about 3 ms. Recycling and replacing workers then take little
from a burst's throughput (docs/design.md, "The fork server"). The host
itself is never forked: it runs Twisted and threads.

The host spawns this process as ``workers/__main__.py --forker`` with one end
of a ``SOCK_SEQPACKET`` socket pair on fd 3 (procpool/_forker.py). Messages,
one per packet::

    server -> host   ready                  the modules are imported
    host -> server   fork s | fork n        with the worker's descriptors 0-5
                                            attached (SCM_RIGHTS); s: it polls
                                            for tasks (PROCPOOL_SPIN), n: it does not
    server -> host   pid <pid> | error <text>    the answer to each fork
    server -> host   exit <pid> <status>    a worker ended (its waitpid status)

The server reaps its workers and reports their ends, since the host cannot
wait for a process that is not its child. It leads a session of its own (a
Ctrl-C at the host's terminal reaches the host, which stops the pool; the
workers leave their own groups anyway) and dies with the host
(``PR_SET_PDEATHSIG``); its workers die with it the same way. It exits when
the host closes its end of the socket.

:func:`serve` returns only in a forked worker, with that worker's
descriptors in place: the script then runs the worker's ``main`` in a clean
frame, exactly as a spawned worker does, so it exits the same way too
(``atexit`` hooks and all).
"""

from __future__ import annotations

# What a worker runs at start, imported once here for every worker forked.
import ctypes  # the reaper's and PDEATHSIG's prctl, and run_worker's fflush
import fcntl
import gc
import os
import resource  # noqa: F401 - the memory limit
import select
import signal
import socket
import sys

from workers import worker

TYPE_CHECKING = False  # not typing's: a worker's start does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

__all__ = ["CONTROL_FD", "WORKER_FDS", "run_worker", "serve"]

#: The descriptor of the server's end of the control socket.
CONTROL_FD = 3
#: A worker's descriptors, sent with each fork request: stdin, stdout,
#: stderr, the task pipe, the answer pipe and the shared-memory socket.
WORKER_FDS = 6
_MESSAGE = 64


def serve() -> None:
    """
    Answer fork requests until the host closes the control socket, then
    exit; return only in a forked worker, whose descriptors 0-5 are in place.
    """
    os.setsid()
    worker._die_with_parent()
    control = socket.socket(fileno=CONTROL_FD)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, _nothing)
    signal.set_wakeup_fd(wake_w)
    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    gc.freeze()  # what is imported stays shared with every worker forked
    _tell(control, b"ready")
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                _drain(wake_r)
                _report_exits(control)
                continue
            message, fds, _, _ = socket.recv_fds(control, _MESSAGE, WORKER_FDS)
            if not message:
                sys.exit(0)  # the host closed its end: the pool has stopped
            if _fork(control, message, fds):
                _become_worker(control, fds, (wake_r, wake_w), spin=message == b"fork s")
                return


def run_worker(main: Callable[[], object]) -> NoReturn:
    """
    Run a forked worker's ``main`` and end the process as a normal exit
    would, but without tearing down the interpreter: the heap it shares with
    the server would be copied page by page only to be freed (a clean exit
    cost a forked worker 3.7 ms of CPU, this 0.3 ms). What a normal exit does
    first, it does too, in the same order: wait for non-daemon threads, run
    ``atexit`` hooks (workers.db closes its connection there), flush stdout
    and stderr, Python's and C's. What it skips is the interpreter's
    teardown: objects still alive at exit are not finalised (a module-level
    file object left unflushed, a ``__del__``), as Python never promised.
    """
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    threading = sys.modules.get("threading")
    if threading is not None and hasattr(threading, "_shutdown"):
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # C stdio too (what C extensions printf'd)
    except Exception:
        pass
    os._exit(code)


def _exit_code(code: object) -> int:
    """The status ``sys.exit(code)`` ends a process with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _tell(control: socket.socket, message: bytes) -> None:
    """Send the host one message; if its end is gone, the pool has stopped: leave quietly."""
    try:
        control.send(message)
    except OSError:
        sys.exit(0)


def _nothing(signum: int, frame: object) -> None:
    """SIGCHLD's handler: the wake-up descriptor is what wakes the loop."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _report_exits(control: socket.socket) -> None:
    """Reap every worker that has ended and tell the host its status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        _tell(control, b"exit %d %d" % (pid, status))


def _fork(control: socket.socket, message: bytes, fds: list[int]) -> bool:
    """Fork one worker; True in the worker, False here once the host has its answer."""
    if message not in (b"fork s", b"fork n") or len(fds) != WORKER_FDS:
        _close(fds)
        _tell(control, b"error a fork request needs 'fork s' or 'fork n' and %d descriptors, "
                       b"got %r with %d" % (WORKER_FDS, message[:32], len(fds)))
        return False
    try:
        pid = os.fork()
    except OSError as exc:
        _close(fds)
        _tell(control, b"error " + str(exc).encode("utf-8", "replace"))
        return False
    if pid == 0:
        return True
    _close(fds)
    _tell(control, b"pid %d" % pid)
    return False


def _become_worker(control: socket.socket, fds: list[int], own: tuple[int, int],
                   spin: bool) -> None:
    """In the forked worker: the server's handlers and descriptors out, the worker's in."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    _close(list(own))
    # Out of the way of 0-5 first, so no dup2 below lands on one still to be moved.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, WORKER_FDS) for fd in fds]
    _close(fds)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv[1:] = [] if spin else ["--no-spin"]


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
