"""
Settings: one table, read from ``procpool.configure(...)`` and the environment.

Every setting has the historical ``PROCPOOL_*`` name. A value given to
:func:`configure` wins over the environment variable of the same name, which
wins over the default. Values are validated when they are given; the error
always names the setting::

    >>> import procpool
    >>> procpool.configure(PROCPOOL_MAX_NPROC=3)
    >>> procpool.settings.get("PROCPOOL_MAX_NPROC")
    3

This module imports nothing from Twisted, so anything may read it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from procpool.errors import SettingError

__all__ = ["SettingError", "Setting", "SETTINGS", "configure", "get", "cached", "refresh",
           "reset", "snapshot", "check_timeout"]


def check_timeout(value: Any, name: str = "proc_timeout") -> float | None:
    """
    The one rule for every time limit: seconds as a float, or None for no limit.

    None, 0 and infinity mean no limit (ampoule killed at once on 0: ampoule
    defect 3 in docs/design.md). A negative number, NaN, a bool or anything
    that is not a number raises :class:`SettingError` (a ValueError) naming
    ``name``::

        >>> check_timeout(2), check_timeout(0), check_timeout(None)
        (2.0, None, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(f"{name} must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value < 0:
        raise SettingError(f"{name} must be zero or more seconds, got {value!r}")
    if value == 0 or math.isinf(value):
        return None
    return float(value)


def _timeout(name: str, value: Any) -> float | None:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "off"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise SettingError(f"{name} must be a number of seconds, got {value!r}") from None
    return check_timeout(value, name)


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
    raise SettingError(f"{name} must be true or false, got {value!r}")


def _number(name: str, value: Any, *, integer: bool, minimum: float, optional: bool) -> Any:
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in
                                       ("", "none", "off"))):
        return None
    if isinstance(value, bool):
        raise SettingError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise SettingError(f"{name} must be a number, got {value!r}")
    if integer and not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SettingError(f"{name} must be a whole number, got {value!r}")
    if not isinstance(value, (int, float)):
        raise SettingError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{name} must be a finite number, got {value!r}")
    if value < minimum:
        raise SettingError(f"{name} must be at least {minimum:g}, got {value!r}")
    return value


def _int(minimum: int = 0, optional: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, v: _number(name, v, integer=True, minimum=minimum, optional=optional)


def _float(minimum: float = 0.0, optional: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, v: _number(name, v, integer=False, minimum=minimum, optional=optional)


def _function_path(name: str, value: Any) -> str | None:
    """'module:function' (or 'module', meaning its setup()), checked for shape only."""
    value = _str(optional=True)(name, value)
    if value is None:
        return None
    module, _, function = value.partition(":")
    dotted = all(part.isidentifier() for part in module.split("."))
    if not dotted or (function and not function.isidentifier()):
        raise SettingError(f"{name} must name a function as 'package.module:function', "
                           f"got {value!r}")
    return value


def _str(optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise SettingError(f"{name} must be a string, got {value!r}")
        if optional and value == "":
            return None
        return value
    return check


def _choice(*allowed: str) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if not isinstance(value, str) or value.lower() not in allowed:
            raise SettingError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                               f"got {value!r}")
        return value.lower()
    return check


def _database(name: str, value: Any) -> str:
    """A PROCPOOL_DATABASE value: one of the forms procpool/storage/spec.py accepts."""
    value = _str()(name, value)
    from procpool.storage.spec import parse_database
    parse_database(value)
    return value


def _id(name: str, value: Any) -> int | None:
    """A uid or gid: a number, or a user/group name resolved on this machine."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not value.strip().isdigit():
        import grp
        import pwd
        try:
            if name.endswith("GID") or name.endswith("GROUP"):
                return grp.getgrnam(value).gr_gid
            return pwd.getpwnam(value).pw_uid
        except KeyError:
            raise SettingError(f"{name}: no such user or group {value!r} on this machine")
    return _number(name, value, integer=True, minimum=0, optional=False)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _memory(name: str, value: Any) -> int | None:
    """Bytes, or a size such as "300M" or "2GiB"; none, off or 0 mean no limit."""
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("ib").removesuffix("b")
        if text in ("", "none", "off"):
            return None
        unit = text[-1:] if text[-1:] in _UNITS else ""
        try:
            value = int(float(text[:len(text) - len(unit)]) * _UNITS[unit])
        except ValueError:
            raise SettingError(f"{name} must be bytes or a size like 512M or 2G, "
                               f"got {value!r}") from None
    if value is None or (value == 0 and not isinstance(value, bool)):
        return None
    value = _number(name, value, integer=True, minimum=0, optional=False)
    if value < 64 * 1024 * 1024:
        raise SettingError(f"{name} must be at least 64M (a worker needs that much to "
                           f"start), or 0 for no limit; got {value!r}")
    return value


def _half_the_memory() -> int | None:
    """Half of this machine's physical memory, in bytes (None where it cannot be read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str


_MiB = 1024 * 1024

SETTINGS: dict[str, Setting] = {s.name: s for s in [
    # The worker pool.
    Setting("PROCPOOL_ENABLED", True, _bool,
            "Run work in worker processes; false runs everything in the reactor's thread pool."),
    Setting("PROCPOOL_MIN_NPROC", 2, _int(1), "Workers kept running at all times."),
    Setting("PROCPOOL_MAX_NPROC", 4, _int(1), "Most workers running at once."),
    Setting("PROCPOOL_TIMEOUT", None, _timeout,
            "Default proc_timeout in seconds for each run; none or 0 means no limit."),
    Setting("PROCPOOL_IDLE", 20.0, _float(0.0),
            "Seconds an idle worker above the minimum lives before it stops; 0 keeps them."),
    Setting("PROCPOOL_DIRECTORY", None, _str(optional=True),
            "Working directory of the workers; none keeps the host's."),
    Setting("PROCPOOL_UID", None, _id, "Run workers as this user (needs root)."),
    Setting("PROCPOOL_GID", None, _id, "Run workers as this group (needs root)."),
    Setting("PROCPOOL_RECYCLE", 10_000, _int(0),
            "Replace a worker after this many tasks; 0 never replaces."),
    Setting("PROCPOOL_MAX_PAYLOAD", 256 * _MiB, _int(1),
            "Largest argument or result, in bytes, that may cross to or from a worker."),
    Setting("PROCPOOL_MAX_QUEUE", 100_000, _int(1),
            "Most tasks waiting for a worker; past it run_async fails at once with PoolBusy."),
    Setting("PROCPOOL_MAX_QUEUED_BYTES", 512 * _MiB, _int(1),
            "Most bytes of arguments waiting for a worker; past it run_async fails at once "
            "with PoolBusy (a task that finds the queue empty is always taken)."),
    Setting("PROCPOOL_WORKER_INIT", None, _function_path,
            "A function each worker calls once before its first task, as 'module:function' "
            "(procpool.evennia sets it to set the game's Django up)."),
    Setting("PROCPOOL_BACKEND", "local", _choice("local", "ray"),
            "Where run_async's tasks run: 'local' (this machine's worker processes) or "
            "'ray' (a Ray cluster, the ray extra; docs/scale-out.md)."),
    Setting("PROCPOOL_RAY_ADDRESS", "local", _str(),
            "The Ray cluster of PROCPOOL_BACKEND='ray': 'local' (start one on 127.0.0.1), "
            "'auto' (the one `ray start` began here), 'host:port' or 'ray://host:10001'."),
    Setting("PROCPOOL_RAY_GC_FREEZE", True, _bool,
            "Once connected to Ray, move the objects alive then (Ray's modules among them) "
            "out of the garbage collector's full passes (gc.freeze), which otherwise pause "
            "every thread 50-100 ms; false leaves the collector alone."),
    Setting("PROCPOOL_WATCHDOG", None, _timeout,
            "Seconds the reactor thread may go without a turn before the watchdog logs "
            "the stall with the blocking call's stack (none or 0: off)."),
    Setting("PROCPOOL_METRICS_PORT", None, _int(0, optional=True),
            "Serve Prometheus metrics on 127.0.0.1 at this port (needs the metrics extra; "
            "docs/operations.md); none or 0: off."),
    Setting("PROCPOOL_PER_CALLER", 2, _int(0),
            "Most tasks of one caller (run_async's caller=...) in the pool at once; the "
            "rest wait their turn, so one player cannot fill the pool (0: no limit)."),
    Setting("PROCPOOL_STOP_GRACE", 10.0, _float(0.0),
            "Seconds running tasks get to finish when the pool stops, before their "
            "workers are killed (0: kill at once)."),
    Setting("PROCPOOL_START_TIMEOUT", 30.0, _float(0.1),
            "Seconds a new worker has to answer before it counts as failed to start."),
    Setting("PROCPOOL_FORK_SERVER", True, _bool,
            "Start workers by forking them from a fork server that has imported their "
            "modules (about 3 ms each) instead of as fresh interpreters (about 20-25 ms): "
            "recycling and replacing workers then cost little. The first workers are "
            "spawned, and so is any while the server cannot fork; false spawns each."),
    Setting("PROCPOOL_SPIN", 0.0002, _float(0.0),
            "Seconds an idle worker polls for its next task before it sleeps (halves the "
            "round trip on an idle machine; costs at most this much CPU per task); one "
            "worker a core polls, the others sleep at once; 0: off."),
    Setting("PROCPOOL_TUNE_MALLOC", True, _bool,
            "Keep freed buffers of up to 32 MiB in the heap (glibc), in the host and the "
            "workers, so big payloads do not page-fault; false leaves malloc alone."),
    Setting("PROCPOOL_MAX_MEMORY", _half_the_memory(), _memory,
            "Memory each worker may take (RLIMIT_DATA: heap and private mappings), in bytes "
            "or as 512M/2G; a task past it fails with MemoryLimitExceeded and its worker is "
            "replaced. Default: half the machine's memory; none or 0: no limit."),
    # Persistent tasks and the workers' database.
    Setting("PROCPOOL_DATABASE", "procpool.sqlite3", _database,
            "Where persistent delays live: a SQLite file path or sqlite:///path, a "
            "postgresql:// DSN or a libpq key=value string; anything else is refused."),
    Setting("PROCPOOL_STALE_TIMEOUT", 60.0, _float(0.0),
            "Seconds after its due time a cancelled task is forgotten; 0 never cleans."),
    # The sandbox for untrusted source.
    Setting("PROCPOOL_SANDBOX_TIMEOUT", 5.0, _float(0.01),
            "Wall-clock seconds a sandboxed run may take before it is killed."),
    Setting("PROCPOOL_SANDBOX_CPU", 2, _int(1), "CPU seconds a sandboxed run may use."),
    Setting("PROCPOOL_SANDBOX_MEMORY", 256 * _MiB, _int(16 * _MiB),
            "Address space, in bytes, of a sandboxed child."),
    Setting("PROCPOOL_SANDBOX_MAX_OUTPUT", 1 * _MiB, _int(1024),
            "Most bytes read back from one sandboxed run."),
    Setting("PROCPOOL_SANDBOX_WARM", 2, _int(0),
            "Sandboxed children kept started and confined, waiting for a request."),
    Setting("PROCPOOL_SANDBOX_MAX_RUNS", 8, _int(1), "Most sandboxed runs at once, all callers."),
    Setting("PROCPOOL_SANDBOX_PER_CALLER", 2, _int(1), "Most sandboxed runs at once per caller."),
    Setting("PROCPOOL_SANDBOX_USER", "nobody", _str(),
            "User a sandboxed child runs as when the host runs as root."),
    Setting("PROCPOOL_SANDBOX_GROUP", "nogroup", _str(),
            "Group a sandboxed child runs as when the host runs as root."),
    Setting("PROCPOOL_SANDBOX_PYTHON", None, _str(optional=True),
            "Interpreter for sandboxed children; none picks one the sandbox user can run."),
    Setting("PROCPOOL_SANDBOX_DEGRADED", False, _bool,
            "Allow sandboxed runs without OS confinement when it cannot be set up (warns)."),
    Setting("PROCPOOL_SANDBOX_RESTRICTED", True, _bool,
            "Testing switch: false runs player code without the language layer (warns)."),
]}

_given: dict[str, Any] = {}
_from_env: dict[str, tuple[str | None, Any]] = {}


def _check(name: str, value: Any) -> Any:
    try:
        row = SETTINGS[name]
    except KeyError:
        raise SettingError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    return row.check(name, value)


def _origin(name: str, giving: Mapping[str, Any]) -> str:
    if name in giving or name in _given:
        return "given to configure()"
    if name in os.environ:
        return "from the environment"
    return "the default"


def _validate_together(values: Mapping[str, Any], giving: Mapping[str, Any] = {}) -> None:
    """The rules between settings; the same whether they came from code or the environment."""
    low, high = values["PROCPOOL_MIN_NPROC"], values["PROCPOOL_MAX_NPROC"]
    if low > high:
        raise SettingError(
            f"PROCPOOL_MIN_NPROC ({low}, {_origin('PROCPOOL_MIN_NPROC', giving)}) must not exceed "
            f"PROCPOOL_MAX_NPROC ({high}, {_origin('PROCPOOL_MAX_NPROC', giving)}): set "
            f"PROCPOOL_MAX_NPROC to {low} or more as well, or PROCPOOL_MIN_NPROC to {high} "
            "or less")


def configure(**values: Any) -> None:
    """
    Set one or more settings in code; each is validated before any is kept.

    Example: ``procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_TIMEOUT=10)``.
    ``run_async`` reads ``PROCPOOL_ENABLED`` and ``PROCPOOL_TIMEOUT`` per
    call; the pool's own settings (sizes, payload cap, ...) take effect when
    a pool starts.
    """
    checked = {name: _check(name, value) for name, value in values.items()}
    merged = {name: get(name) for name in SETTINGS}
    merged.update(checked)
    _validate_together(merged, checked)
    _given.update(checked)
    _from_env.clear()


def get(name: str) -> Any:
    """The value in force for one setting: configured, else environment, else default."""
    if name in _given:
        return _given[name]
    row = SETTINGS[name]
    raw = os.environ.get(name)
    if raw is None:
        return row.default
    return _check(name, raw)


def cached(name: str) -> Any:
    """
    :func:`get` for the hot path: the environment is read once per setting,
    until :func:`configure`, :func:`reset` or :func:`refresh` is called.
    """
    if name in _given:
        return _given[name]
    hit = _from_env.get(name)
    if hit is None:
        hit = _from_env[name] = (None, get(name))
    return hit[1]


def refresh() -> None:
    """Read the environment again on the next :func:`cached` call."""
    _from_env.clear()


def snapshot() -> dict[str, Any]:
    """
    Every setting's value in force, as a new dict; each is checked, and so
    are the rules between them (a pool reads its settings through this).
    """
    values = {name: get(name) for name in SETTINGS}
    _validate_together(values)
    return values


def reset() -> None:
    """Forget everything given to :func:`configure` (the environment still counts)."""
    _given.clear()
    _from_env.clear()
