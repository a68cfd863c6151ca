"""
Starting worker processes: the command, the environment, and malloc.

A worker is ``python -P .../workers/__main__.py`` (the script, not
``-m workers``: runpy would cost every start ~4 ms) with the task pipe on
fd 3, the answer pipe on fd 4 and a Unix socket for big results on fd 5,
started through ampoule's ``ProcessStarter`` with an injected reactor. It
inherits the host's environment and import path (ampoule replaced the
environment and rewrote PYTHONPATH: ampoule defect 4 in docs/design.md),
plus every setting given to ``procpool.configure()``, the pool's payload
cap, its spin time and its memory limit, each written once here.

``-P`` and the directory holding procpool's own ``workers`` package first on
PYTHONPATH make the script's ``import workers`` find that package, never a
game's ``workers`` in the working directory or on the host's path; the
worker then puts its working directory back in that first place
(workers/__main__.py, and docs/design.md, "A game's own workers or sandbox").
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from procpool import settings
from procpool._forker import ForkFailed, ForkServer
from workers.limits import MMAP_THRESHOLD, TRIM_THRESHOLD, tune_malloc

__all__ = ["make_starter", "tune_malloc"]

log = Logger()

#: What a worker's descriptors are: fd 3 carries tasks to it, fd 4 answers back.
CHILD_FDS = {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}
#: The directory holding procpool's own ``procpool``, ``workers`` and ``sandbox``.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What a worker runs (workers/__main__.py).
WORKER_SCRIPT = os.path.join(_ROOT, "workers", "__main__.py")


class _ForkServing:
    """The starter's fork server (procpool/_forker.py): its launch, its start and its stop."""

    #: The pool's fork server, or None: spawn every worker.
    fork_server: Any = None
    #: The delayed call that starts it (begin_forking), once asked for.
    _beginning: Any = None
    reactor: Any
    env: dict[str, str]
    path: str | None

    def launch_fork_server(self, prot: Any, control_fd: int) -> Any:
        """Spawn the fork server (workers/forker.py) with its control socket on fd 3."""
        return self.reactor.spawnProcess(
            prot, sys.executable, (sys.executable, "-P", WORKER_SCRIPT, "--forker"),
            env=self.env, path=self.path, usePTY=False,
            childFDs={0: "w", 1: "r", 2: "r", 3: control_fd})

    def begin_forking(self, clock: Any, delay: float) -> None:
        """Start the fork server, if any, ``delay`` seconds from now; once only."""
        if self.fork_server is not None and self._beginning is None:
            self._beginning = clock.callLater(delay, self.fork_server.begin)

    def stop(self) -> defer.Deferred:
        """Stop the fork server, if any; fires once it has ended."""
        if self._beginning is not None and self._beginning.active():
            self._beginning.cancel()
        if self.fork_server is None:
            return defer.succeed(None)
        return self.fork_server.stop()


def _starter_class() -> type:
    # ampoule is imported only when a pool starts: `import ampoule` installs
    # the default reactor (ampoule defect 8).
    from ampoule.main import ProcessStarter

    class WorkerStarter(ProcessStarter, _ForkServing):
        """ampoule's starter, spawning a worker (WORKER_SCRIPT) with the given environment."""

        def startPythonProcess(self, prot: Any, *args: Any) -> Any:  # noqa: N802 - ampoule's name
            # fd 5: the worker's end of the channel its big results take
            # (workers/shared.py); the host's end is the worker's ``shared``.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            prot.shared = ours
            child_fds = {**CHILD_FDS, 5: theirs.fileno()}
            try:
                if self.fork_server is not None and self.fork_server.ready:
                    try:
                        return self.fork_server.fork(prot, child_fds, "--no-spin" not in args)
                    except ForkFailed as exc:
                        log.warn("procpool: {error}; spawning the worker instead",
                                 error=str(exc))
                return self.reactor.spawnProcess(
                    prot, sys.executable,
                    (sys.executable, "-P", WORKER_SCRIPT, *self.args, *args),
                    env=self.env, path=self.path, usePTY=False, childFDs=child_fds)
            except BaseException:
                prot.shared = None
                ours.close()
                raise
            finally:
                theirs.close()

    return WorkerStarter


def _environment(max_payload: int, uid: int | None, gid: int | None) -> dict[str, str]:
    """The environment a worker starts with."""
    env = dict(os.environ)
    path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    # First, kept even if also further on: the worker takes this first entry out.
    env["PYTHONPATH"] = os.pathsep.join([_ROOT, *dict.fromkeys(path)])
    for name, value in settings.snapshot().items():
        if name in settings._given:
            env[name] = "" if value is None else str(value)
    env["PROCPOOL_MAX_PAYLOAD"] = str(max_payload)
    env["PROCPOOL_SPIN"] = str(settings.get("PROCPOOL_SPIN"))
    memory = settings.get("PROCPOOL_MAX_MEMORY")  # the worker's RLIMIT_DATA (workers/limits.py)
    env["PROCPOOL_MAX_MEMORY"] = "" if memory is None else str(memory)
    if settings.get("PROCPOOL_TUNE_MALLOC") and "GLIBC_TUNABLES" not in env:
        env["GLIBC_TUNABLES"] = (f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:"
                                 f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}")
    # The worker drops to PROCPOOL_UID/GID itself once it has started:
    # switching before exec fails wherever that user cannot read the
    # interpreter (a Python under /root, a private virtualenv).
    for key, value in (("PROCPOOL_WORKER_UID", uid), ("PROCPOOL_WORKER_GID", gid)):
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def make_starter(reactor: Any, *, max_payload: int, uid: int | None, gid: int | None,
                 directory: str | None, clock: Any = None, fork_server: bool = False,
                 start_timeout: float = 30.0) -> Any:
    """
    A starter whose ``startPythonProcess(protocol)`` starts one worker; the
    environment is fixed now, when the pool starts. With ``fork_server``,
    workers are forked by a fork server once it is ready (spawned before
    that, or while it cannot fork); ``begin_forking()`` starts it (the pool
    does once its first workers answer), ``stop()`` ends it.
    """
    env = _environment(max_payload, uid, gid)
    _warn_of_hidden_modules([directory or os.getcwd(), *env["PYTHONPATH"].split(os.pathsep)])
    starter = _starter_class()(env=env, path=directory)
    starter.reactor = reactor
    if fork_server:
        starter.fork_server = ForkServer(reactor, clock if clock is not None else reactor,
                                         starter.launch_fork_server, start_timeout)
    return starter


def _warn_of_hidden_modules(path: list[str]) -> None:
    """
    Log, once per pool start, each module or package a game has under the names
    ``workers`` and ``sandbox``: procpool's own packages take those names, so
    ``import workers`` would not give the game its own (docs/design.md, "A
    game's own workers or sandbox"). A few stat calls per path entry.
    """
    for entry in dict.fromkeys(path):
        if not entry or os.path.abspath(entry) == _ROOT:
            continue
        for name in ("workers", "sandbox"):
            for found in (os.path.join(entry, name + ".py"),
                          os.path.join(entry, name, "__init__.py")):
                if os.path.isfile(found):
                    log.warn("procpool: {found} is hidden: the top-level name {name!r} is "
                             "procpool's own package in the host and its workers; move it "
                             "into a package of the game or rename it", found=found, name=name)
