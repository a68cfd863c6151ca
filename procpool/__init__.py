"""
procpool: a process pool for Twisted servers.

One call's path (drawn in full at the top of procpool/pool.py, and in
docs/design.md), beside the sandbox's::

    run_async(f, *args, **kw)            limited_exec(source, **globals)
      -> pickle (dill if need be)          -> JSON request, per-caller quota
      -> queue -> AMP worker process       -> a warm, confined child
      -> answer, in order                  -> one JSON reply, then exit
      -> AsyncResult: at_return / at_err, in the reactor thread

Public API (``__all__``): ``run_async``, ``limited_exec``, ``delay``,
``interactive``/``returnValue``, ``start``/``stop``/``stats``/``configure``,
what they hand back (``AsyncResult``, ``TaskHandle``, ``ProcessPool`` from
``get_pool()``) and every error class (all in :mod:`procpool.errors`)::

    >>> import procpool
    >>> d = procpool.run_async("_return(1 + 2)")   # a Deferred that fires with 3

Importing procpool starts nothing and installs no reactor; names are loaded
when first used.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from procpool.errors import (
    DialogueAbandoned,
    HandlerNotStarted,
    InvalidTask,
    MemoryLimitExceeded,
    PayloadTooLarge,
    PoolBusy,
    PoolStopped,
    ProcPoolError,
    ProcPoolTimeout,
    RemoteError,
    SandboxBusy,
    SandboxError,
    SandboxUnavailable,
    SerializationError,
    SettingError,
    StorageError,
    StorageUnavailable,
    TaskNotStored,
    WorkerCrashed,
    WorkerProtocolError,
    WorkerStartError,
)
from procpool.settings import configure


def _claim_own_packages() -> None:
    """
    Make the top-level ``workers`` and ``sandbox`` procpool's own packages (the
    ones beside ``procpool/``) in this process, whatever a game has on its path
    or in its working directory: docs/design.md, "A game's own workers or sandbox".

    A game module of either name imported before procpool is dropped from
    ``sys.modules`` (the references the game took keep working) with a warning.
    """
    import importlib.machinery
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("workers", "sandbox"):
        home = os.path.join(root, name, "__init__.py")
        module = sys.modules.get(name)
        if module is not None:
            found = getattr(module, "__file__", None)
            if found == home or (found and os.path.realpath(found) == os.path.realpath(home)):
                continue
            import warnings
            warnings.warn(f"procpool: the top-level name {name!r} is procpool's own package "
                          f"({home}); the module {module!r} imported before procpool no longer "
                          f"answers to it: move it into a package of the game",
                          RuntimeWarning, stacklevel=3)
            for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
                del sys.modules[loaded]
        spec = importlib.machinery.PathFinder.find_spec(name, [root])
        if spec is None or spec.loader is None:
            raise ImportError(f"procpool's own package {name!r} is missing beside {root}")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise


_claim_own_packages()

__version__ = "0.1.0"

# name -> module that defines it; imported on first access so that
# `import procpool` stays light and never touches the reactor.
_LAZY = {
    "run_async": "procpool.api",
    "start": "procpool.api",
    "stop": "procpool.api",
    "stats": "procpool.api",
    "get_pool": "procpool.api",
    "ProcessPool": "procpool.pool",
    "AsyncResult": "procpool.results",
    "delay": "procpool.tasks",
    "TaskHandle": "procpool.tasks",
    "interactive": "procpool.dialogue",
    "returnValue": "procpool.dialogue",
    "limited_exec": "sandbox.host",
}

__all__ = [
    # running work
    "run_async",
    "limited_exec",
    "AsyncResult",
    "ProcessPool",
    "get_pool",
    "start",
    "stop",
    "stats",
    "configure",
    # later, and in dialogue
    "delay",
    "TaskHandle",
    "interactive",
    "returnValue",
    # errors (all in procpool.errors)
    "ProcPoolError",
    "ProcPoolTimeout",
    "WorkerCrashed",
    "WorkerStartError",
    "PoolStopped",
    "PayloadTooLarge",
    "MemoryLimitExceeded",
    "PoolBusy",
    "WorkerProtocolError",
    "RemoteError",
    "SerializationError",
    "SettingError",
    "InvalidTask",
    "HandlerNotStarted",
    "DialogueAbandoned",
    "StorageError",
    "StorageUnavailable",
    "TaskNotStored",
    "SandboxError",
    "SandboxUnavailable",
    "SandboxBusy",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'procpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
