"""
The one-shot confined child: confine, read one request, run it, reply, exit.

Started by :mod:`sandbox.host` with an empty environment, cwd ``/``, fds 0-2
as pipes and its configuration as JSON in ``argv[1]``::

    python -I -S -B -c BOOTSTRAP '{"paths": [...], "limits": {...}, ...}' [CODE]

(``CODE``: the host's compiled code for the modules in PRECOMPILED, so that
no child compiles them again; ``python -m sandbox CONFIG`` does the same
without it, when ``sandbox`` is importable.) It imports only the standard
library, RestrictedPython, pyseccomp and :mod:`workers.source` (standard
library only: the ``_return`` rule), never Twisted or procpool. It confines
itself, and only then writes its ready line and reads. On stdout it writes
exactly two lines of JSON (UTF-8), and closes stdout after the second::

    {"ready": true, "pid": 123, "layers": {"seccomp": "errno", ...}}
    {"ok": true, "result": 3}   or   {"ok": false, "type": "ValueError", "message": "x"}

When a required layer cannot be set up it writes ``{"ready": false,
"error": ...}`` and exits 3, unless the host allowed the degraded mode.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main", "count_containers", "BOOTSTRAP", "MAX_CONTAINERS", "PRECOMPILED", "REPLY_FD"]

# The reply goes out on stdout; the child closes it as soon as the reply is
# written, so the host sees the end of the reply before the process is torn down.
REPLY_FD = 1

# What the host passes to `python -c`; argv[1] is the configuration.
# With a third argument (the host's compiled code for the modules in PRECOMPILED,
# used only by the interpreter build that made it) nothing is compiled here.
BOOTSTRAP = ("import os,sys,json;os.chdir('/');c=json.loads(sys.argv[1]);"
             "sys.path[:0]=c['paths'];p=None\n"
             "if len(sys.argv)>2 and c.get('build')==[sys.hexversion,\n"
             "                                       sys.implementation.cache_tag]:\n"
             " import marshal,binascii;p=marshal.loads(binascii.a2b_base64(sys.argv[2]))\n"
             " for n in ('sandbox','sandbox.child'):\n"
             "  m=sys.modules[n]=type(sys)(n);m.__package__='sandbox';exec(p.pop(n),m.__dict__)\n"
             " sys.modules['sandbox'].__path__=[];sys.modules['sandbox'].child=m\n"
             "from sandbox.child import main;main(c,p)")

# The modules the child takes from this repository, in the order they are
# installed: sandbox.policy imports workers.source, so that comes first.
PRECOMPILED = ("sandbox", "sandbox.child", "sandbox.confine", "workers.source", "sandbox.policy")

# Most lists and dicts in one reply (the host parses replies in its reactor thread).
MAX_CONTAINERS = 10_000

_JSON_STRING = None


def count_containers(line: bytes) -> int:
    """
    The lists and dicts in one line of JSON: its ``[`` and ``{`` outside strings.

    Counting every bracket is quick and never too low; strings are taken out
    only when that count is over MAX_CONTAINERS.
    """
    global _JSON_STRING
    count = line.count(b"[") + line.count(b"{")
    if count <= MAX_CONTAINERS:
        return count
    if _JSON_STRING is None:
        import re

        _JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
    bare = _JSON_STRING.sub(b"", line)
    return bare.count(b"[") + bare.count(b"{")

# Modules that player code may `import` when the language layer is switched
# off for testing, imported before confinement so an attack reaches the syscall.
_ATTACK_MODULES = ("os", "socket", "subprocess", "ctypes", "mmap", "threading", "signal",
                   "resource", "time", "select", "errno", "fcntl", "shutil")

_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _fast_find_library() -> None:
    """
    pyseccomp calls ctypes.util.find_library, which imports subprocess and runs
    ldconfig: answer with the usual sonames when they load, else defer to it.
    """
    import ctypes
    import types

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        import importlib

        del sys.modules["ctypes.util"]
        return importlib.import_module("ctypes.util").find_library(name)

    shim = types.ModuleType("ctypes.util")
    shim.find_library = find_library  # type: ignore[attr-defined]
    sys.modules["ctypes.util"] = shim
    ctypes.util = shim  # type: ignore[attr-defined]


def _write_line(obj: Any) -> None:
    data = json.dumps(obj).encode("ascii") + b"\n"
    while data:
        data = data[os.write(1, data):]


def _read_request(cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise ValueError(f"request larger than {cap} bytes")
        chunks.append(chunk)


def _text(value: str) -> str:
    """``value`` as text the host can always encode: unpaired surrogates are replaced."""
    return value.encode("utf-8", "replace").decode("utf-8")


def _player_frames(exc: BaseException) -> str:
    """The player's own frames of ``exc``'s traceback, formatted like ``traceback`` does."""
    lines = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == "<player>":  # the sandbox's paths are none of its business
            lines.append(f'  File "<player>", line {tb.tb_lineno}, in {code.co_name}\n')
        tb = tb.tb_next
    return "".join(lines[-8:])[-8192:]


def _error_reply(exc: BaseException, type_name: str | None = None) -> dict[str, Any]:
    try:
        message = _text(str(exc)[:4096])
    except BaseException:
        message = "<unprintable error>"
    try:
        text = _player_frames(exc)
    except BaseException:
        text = ""
    return {"ok": False, "type": type_name or type(exc).__name__, "message": message,
            "traceback": text}


def _encode(reply: dict[str, Any]) -> bytes:
    """
    One reply as strict JSON in UTF-8: no NaN or infinities, no unpaired surrogates.

    Raises ValueError (or TypeError) for a result that cannot be sent like that.
    """
    return json.dumps(reply, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _run(data: bytes, config: dict[str, Any]) -> bytes:
    from sandbox.policy import PlayerSyntaxError, run_source

    try:
        request = json.loads(data)
        result = run_source(request["source"], request["context"],
                            restricted=config["restricted"])
        reply = {"ok": True, "result": result}
        try:
            line = _encode(reply)
        except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            reply = {"ok": False, "type": "TypeError",
                     "message": _text(f"result is not JSON-able: {e}"[:4096])}
            line = _encode(reply)
    except PlayerSyntaxError as e:
        line = _encode(_error_reply(e, "SyntaxError"))
    except BaseException as e:  # player code may raise anything, SystemExit included
        line = _encode(_error_reply(e))
    if len(line) > config["max_output"]:
        line = _encode({"ok": False, "type": "OutputTooLarge",
                        "message": f"reply of {len(line)} bytes is over the limit of "
                                   f"{config['max_output']} bytes"})
    elif count_containers(line) > MAX_CONTAINERS:
        line = _encode({"ok": False, "type": "OutputTooLarge",
                        "message": f"result holds more than {MAX_CONTAINERS} lists and dicts"})
    return line + b"\n"


def _ignore_unraisable(unraisable: Any) -> None:
    """
    Errors nobody can catch (a generator's ``finally`` failing when it is
    collected) would each print a traceback on stderr: player code could
    flood the host with them. They are dropped.
    """


def _install(precompiled: dict[str, Any]) -> None:
    """
    Make the host's compiled code the modules it names (all of PRECOMPILED
    after the two the bootstrap installs). A package that is not installed
    yet (``workers``) is an empty one: the child needs ``workers.source``
    only, not whatever the package's ``__init__`` may import.
    """
    for name, code in precompiled.items():
        parent, _, leaf = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is None:
            package = sys.modules[parent] = type(sys)(parent)
            package.__path__ = []  # nothing else of it is importable here
        module = sys.modules[name] = type(sys)(name)
        module.__package__ = parent
        exec(code, module.__dict__)
        setattr(package, leaf, module)


def main(config: dict[str, Any] | None = None,
         precompiled: dict[str, Any] | None = None) -> None:
    """
    Run one sandboxed request as described in the module docstring; never returns.

    ``precompiled`` maps module names to code objects the host compiled from
    the repository's own files (never from anything a player sent).
    """
    if config is None:
        config = json.loads(sys.argv[1])
    _detach(precompiled)
    pid, layers = _confine(config)
    _write_line({"ready": True, "pid": pid, "layers": layers})
    _serve_one(config)


def _detach(precompiled: dict[str, Any] | None) -> None:
    """Leave the host's directory, session and environment; install the compiled modules."""
    os.chdir("/")
    try:
        os.setsid()  # its own process group, so the host can kill all of it
    except OSError:
        pass
    # The host passes an empty environment; Python's own locale coercion (PEP 538)
    # may have added LC_CTYPE. Player code sees none.
    os.environ.clear()
    _fast_find_library()
    if precompiled:
        _install(precompiled)  # after the ctypes.util shim: confine imports pyseccomp


def _confine(config: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """
    Import all the run will need, then confine; return the pid and the layers
    in force. A required layer that cannot be set up ends the child (exit 3)
    unless the host allowed the degraded mode.
    """
    from sandbox import confine as confinement
    from sandbox import policy  # noqa: F401

    if not config["restricted"]:
        for name in _ATTACK_MODULES:
            __import__(name)
    limits = confinement.Limits(**config["limits"])
    pid = os.getpid()  # getpid is denied once confined
    try:
        layers = confinement.confine(limits)
    except confinement.ConfinementError as e:
        if not config["degraded"]:
            _write_line({"ready": False, "error": str(e)})
            os._exit(3)
        layers = {"degraded": str(e)}
        sys.setrecursionlimit(limits.recursion)
    return pid, layers


def _serve_one(config: dict[str, Any]) -> None:
    """Confined and ready: read the one request, write the one reply, exit."""
    # Nothing legitimate writes to stderr from here on.
    sys.unraisablehook = _ignore_unraisable
    sys.stderr = None  # type: ignore[assignment]
    try:
        data = _read_request(config["max_request"])
        line = _run(data, config)
    except BaseException as e:
        line = _encode(_error_reply(e)) + b"\n"
    try:
        while line:
            line = line[os.write(REPLY_FD, line):]
        os.close(REPLY_FD)  # the host may take the reply now; exiting takes longer
    finally:
        os._exit(0)
