"""Helpers for the core engine's tests: task functions a worker can import, and a base class."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import procpool
from procpool import api


def pid() -> int:
    """The pid of the process running the task."""
    return os.getpid()


def add(a: int, b: int = 0) -> int:
    """a + b."""
    return a + b


def echo(value: Any) -> Any:
    """The value itself."""
    return value


def sized(n: int) -> bytes:
    """n bytes."""
    return b"r" * n


def record_kwargs(*args: Any, **kwargs: Any) -> tuple:
    """The arguments the task received."""
    return args, kwargs


def sleep(seconds: float) -> float:
    """Sleep, then return the seconds."""
    time.sleep(seconds)
    return seconds


def burn(seconds: float) -> int:
    """Spin the CPU for ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def exit_now(code: int) -> None:
    """Leave the worker process at once, without cleanup."""
    os._exit(code)


def kill_self() -> None:
    """SIGKILL the worker from the inside (as the OOM killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    """Read address 0."""
    import ctypes
    ctypes.string_at(0)


def start_grandchild(path: str) -> None:
    """Start `sleep 100`, write its pid to ``path``, and hang."""
    child = subprocess.Popen(["sleep", "100"])
    with open(path, "w") as f:
        f.write(str(child.pid))
    time.sleep(100)


def env_value(name: str) -> str | None:
    """An environment variable as the worker sees it."""
    return os.environ.get(name)


class Unpicklable(Exception):
    """An exception that pickles but cannot be rebuilt (its __init__ needs two arguments)."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    """Raise an exception the host cannot rebuild."""
    raise Unpicklable("left", "right")


def raise_keyerror() -> None:
    """Raise KeyError('missing')."""
    raise KeyError("missing")


def alive(p: int) -> bool:
    """Is process ``p`` alive (and not a zombie)?"""
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(parent: int) -> list[tuple[int, str]]:
    """(pid, state) of every direct child of ``parent``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent:
            out.append((int(entry), fields[0]))
    return out


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> defer.Deferred:
    """Fire True once ``predicate()`` holds, or False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    @defer.inlineCallbacks
    def loop() -> Any:
        while time.monotonic() < deadline:
            if predicate():
                return True
            yield task.deferLater(reactor, interval, lambda: None)
        return bool(predicate())

    return loop()


class PoolTestCase(unittest.TestCase):
    """Runs each test with a fresh process-wide pool of 1 to 2 workers, stopped after."""

    min_workers = 1
    max_workers = 2
    extra_settings: dict[str, Any] = {}

    def setUp(self) -> defer.Deferred:
        procpool.configure(PROCPOOL_MIN_NPROC=self.min_workers,
                           PROCPOOL_MAX_NPROC=self.max_workers, **self.extra_settings)
        self.addCleanup(procpool.stop)
        return procpool.start()

    @property
    def pool(self) -> Any:
        return api.get_pool()

    def mktemp(self) -> str:
        """A fresh path in a temporary folder removed after the test (not in the work tree)."""
        folder = tempfile.mkdtemp(prefix="procpool-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        return os.path.join(folder, "tmp")


def raise_long_message(n: int) -> None:
    """Raise a ValueError whose message is ``n`` characters long."""
    raise ValueError("x" * n)


def start_sleeper(seconds: int, new_session: bool = False) -> int:
    """Start `sleep` (it inherits the worker's stdout/stderr) and return its pid."""
    child = subprocess.Popen(["sleep", str(seconds)], start_new_session=new_session)
    return child.pid


def write_without_newlines(n: int) -> int:
    """Write ``n`` bytes to stdout with no newline, like a progress bar."""
    import sys
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    chunk = b"#" * 65536
    for _ in range(n // len(chunk)):
        out.write(chunk)
    out.flush()
    return n


def fork_sleeper(seconds: int) -> int:
    """Fork a child that sleeps ``seconds`` (it never execs) and return its pid."""
    child = os.fork()
    if child == 0:
        time.sleep(seconds)
        os._exit(0)
    return child


def fork_grandchild(path: str) -> None:
    """Fork a child that sleeps 100 s, write its pid to ``path``, and hang."""
    child = fork_sleeper(100)
    with open(path, "w") as f:
        f.write(str(child))
    time.sleep(100)


def in_a_multiprocessing_child(method: str) -> int:
    """abs(-3), worked out in a child of a multiprocessing pool started with ``method``."""
    import multiprocessing
    with multiprocessing.get_context(method).Pool(1) as pool:
        return pool.apply_async(abs, (-3,)).get(timeout=30)


def allocate(n: int) -> int:
    """Allocate ``n`` bytes at once and return how many."""
    return len(bytearray(n))


def allocate_gradually(n: int, step: int = 1 << 20) -> int:
    """Allocate ``n`` bytes ``step`` bytes at a time, keeping all of it, and return how many."""
    kept = [bytearray(step) for _ in range(n // step)]
    return sum(len(b) for b in kept)


def data_limit() -> tuple[int, int]:
    """The worker's RLIMIT_DATA (soft, hard)."""
    import resource
    return resource.getrlimit(resource.RLIMIT_DATA)


def close_standard_fds() -> None:
    """Close descriptors 0, 1 and 2, as a daemonising script would."""
    for fd in (0, 1, 2):
        os.close(fd)


def print_line(text: str) -> bool:
    """Print ``text`` to stdout and stderr; True if both worked."""
    import sys
    print(text)
    print(text, file=sys.stderr)
    return True


_hijacked: list[int] = []


def put_a_pipe_on_fds_3_and_4() -> bool:
    """Close descriptors 3 and 4 and put a pipe of the task's own there (kept open)."""
    for fd in (3, 4):
        try:
            os.close(fd)
        except OSError:
            pass
    read_end, write_end = os.pipe()
    for fd, target in ((read_end, 3), (write_end, 4)):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    _hijacked.extend((3, 4))
    return True


def report(values: int, gap: float) -> str:
    """Report ``values`` progress values ``gap`` seconds apart, each with its send time."""
    from workers import progress
    for i in range(values):
        if i:
            time.sleep(gap)
        progress((i, time.time()))
    return "done"


def sleep_after_writing_pid(path: str, seconds: float) -> None:
    """Write this process's pid to ``path``, then sleep ``seconds``."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


def pid_in(path: str) -> int | None:
    """The pid written in ``path`` by :func:`sleep_after_writing_pid`, once it is there."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def identity() -> tuple[int, int, int]:
    """This process's pid, process group and session."""
    return os.getpid(), os.getpgid(0), os.getsid(0)


def write_at_exit(path: str, text: str) -> bool:
    """Register an atexit hook that writes ``text`` to ``path`` when this process leaves."""
    import atexit

    def write() -> None:
        with open(path, "w") as f:
            f.write(text)

    atexit.register(write)
    return True


def parent_of(p: int) -> int | None:
    """The parent pid of process ``p``, or None if it is gone."""
    try:
        with open(f"/proc/{p}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone_within(p: int, seconds: float) -> bool:
    """Wait (blocking, up to ``seconds``) for process ``p`` to be gone or a zombie."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(p):
            return True
        time.sleep(0.05)
    return not alive(p)


def pid_in_within(path: str, seconds: float) -> int | None:
    """Wait (blocking, up to ``seconds``) for a pid to be written in ``path``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = pid_in(path)
        if found is not None:
            return found
        time.sleep(0.05)
    return None


def write_from_a_thread(path: str, text: str, delay: float) -> bool:
    """Start a non-daemon thread that writes ``text`` to ``path`` after ``delay`` seconds."""
    import threading

    def write() -> None:
        time.sleep(delay)
        with open(path, "w") as f:
            f.write(text)

    threading.Thread(target=write, daemon=False).start()
    return True
