"""
A game's own modules named ``workers`` or ``sandbox`` never replace procpool's.

Each test builds a game directory that has its own ``workers`` (a module
or a package) and ``sandbox`` package, then runs a real host process as a
script (``python game.py``) that starts real workers, runs a task defined
in the game's ``game_tasks.py`` and a real sandboxed ``limited_exec``.
Every game module named ``workers`` or ``sandbox`` notes in a file that it
was imported: none may be, except where the game imports its own first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NOTE = ("import os as _os\n"
         "with open(_os.path.join({where!r}, 'imported.log'), 'a') as _f:\n"
         "    _f.write(__name__ + ' ' + __file__ + '\\n')\n"
         "NAME = 'game'\n")

_TASKS = '''
import sys


def double(x):
    return 2 * x


def where():
    """This process's first path entry, working directory and PYTHONPATH."""
    import os
    return sys.path[0], os.getcwd(), os.environ.get("PYTHONPATH", "")


def imported():
    """Where this process's workers, workers.wire and sandbox came from."""
    import workers.wire  # noqa: F401
    return {name: getattr(sys.modules.get(name), "__file__", None)
            for name in ("workers", "workers.wire", "sandbox")}
'''

_GAME = '''
import json
import os
import sys

{first}
from twisted.internet import defer, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

import procpool
import game_tasks


@defer.inlineCallbacks
def main():
    out = {{}}
    try:
        out["double"] = yield procpool.run_async(game_tasks.double, 21)
        out["worker"] = yield procpool.run_async(game_tasks.imported)
        out["where"] = yield procpool.run_async(game_tasks.where)
        out["sandbox"] = yield procpool.limited_exec("_return(1 + 2)")
        import sandbox.host  # noqa: F401
        out["host"] = game_tasks.imported()
        out["host_path"] = sys.path
        {after}
    except Exception as e:
        out["error"] = f"{{type(e).__name__}}: {{e}}"
    finally:
        try:
            yield procpool.stop()
        finally:
            print("RESULT " + json.dumps(out), flush=True)
            reactor.stop()


reactor.callWhenRunning(main)
reactor.run()
'''


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _shadows(directory: str, log_dir: str, workers_as: str) -> None:
    """The game's own ``workers`` (a module, a package or none) and ``sandbox`` package."""
    note = _NOTE.format(where=log_dir)
    if workers_as == "module":
        _write(os.path.join(directory, "workers.py"), note)
    elif workers_as == "package":
        for name in ("__init__", "__main__", "wire", "worker", "source", "db"):
            _write(os.path.join(directory, "workers", name + ".py"), note)
    for name in ("__init__", "host", "child", "policy"):
        _write(os.path.join(directory, "sandbox", name + ".py"), note)


def _script(directory: str, first: str = "", after: str = "") -> str:
    _write(os.path.join(directory, "game_tasks.py"), _TASKS)
    path = os.path.join(directory, "game.py")
    _write(path, _GAME.format(first=first, after=after))
    return path


def _run(script: str, cwd: str, **env: str) -> dict:
    environ = dict(os.environ)
    environ.pop("PYTHONPATH", None)
    environ.update(PROCPOOL_MIN_NPROC="1", PROCPOOL_SANDBOX_WARM="1",
                   PROCPOOL_SANDBOX_DEGRADED="true", **env)
    done = subprocess.run([sys.executable, script], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    out = json.loads(lines[-1][len("RESULT "):])
    out["stderr"] = done.stderr
    return out


def _ours(found: dict) -> None:
    assert found["workers"] == os.path.join(ROOT, "workers", "__init__.py")
    assert found["workers.wire"] == os.path.join(ROOT, "workers", "wire.py")
    if found["sandbox"] is not None:
        assert found["sandbox"] == os.path.join(ROOT, "sandbox", "__init__.py")


def _hidden(out: dict, directory: str, workers_as: str) -> None:
    """The host warned of each game module it hides."""
    shown = {"module": "workers.py", "package": os.path.join("workers", "__init__.py")}
    for name in ([shown[workers_as]] if workers_as in shown else []) + ["sandbox"]:
        found = os.path.join(directory, name)
        if name == "sandbox":
            found = os.path.join(found, "__init__.py")
        assert f"procpool: {found} is hidden" in out["stderr"], out["stderr"]
    if workers_as == "none":
        assert "workers.py is hidden" not in out["stderr"]


def _check(out: dict, log_dir: str) -> None:
    assert "error" not in out, out["error"]
    assert out["double"] == 42
    assert out["sandbox"] == 3
    _ours(out["worker"])
    _ours(out["host"])
    assert out["host"]["sandbox"] is not None
    first, cwd, pythonpath = out["where"]
    assert first == cwd  # the worker's working directory comes first, as with -m
    # What its tasks start inherits the host's path: procpool's directory is
    # on it only where the host's own path has it (an editable install's .pth).
    assert (ROOT in pythonpath.split(os.pathsep)) == (ROOT in out["host_path"]), pythonpath
    log = os.path.join(log_dir, "imported.log")
    assert not os.path.exists(log), open(log).read()


@pytest.fixture
def place():
    with tempfile.TemporaryDirectory(prefix="procpool-names-") as top:
        yield top


@pytest.mark.parametrize("workers_as", ["module", "package", "none"])
def test_a_game_beside_its_own_workers_and_sandbox_runs_tasks_and_the_sandbox(place, workers_as):
    game = os.path.join(place, "game")
    _shadows(game, place, workers_as)
    out = _run(_script(game), cwd=game)
    _check(out, place)
    _hidden(out, game, workers_as)


@pytest.mark.parametrize("workers_as", ["module", "package"])
def test_a_workers_module_in_the_working_directory_is_not_what_workers_run(place, workers_as):
    game, cwd = os.path.join(place, "game"), os.path.join(place, "cwd")
    _shadows(cwd, place, workers_as)
    out = _run(_script(game), cwd=cwd)
    _check(out, place)
    _hidden(out, cwd, workers_as)


@pytest.mark.parametrize("workers_as", ["module", "package"])
def test_a_workers_module_in_procpool_directory_is_not_what_workers_run(place, workers_as):
    game, directory = os.path.join(place, "game"), os.path.join(place, "dir")
    _shadows(directory, place, workers_as)
    os.makedirs(os.path.join(place, "cwd"))
    out = _run(_script(game), cwd=os.path.join(place, "cwd"), PROCPOOL_DIRECTORY=directory)
    _check(out, place)
    _hidden(out, directory, workers_as)


def test_a_game_that_imports_its_own_workers_first_keeps_it_and_procpool_still_works(place):
    game = os.path.join(place, "game")
    _shadows(game, place, "module")
    after = ('import workers as now\n'
             '        out["mine"] = mine.NAME\n'
             '        out["now"] = now.__file__')
    out = _run(_script(game, first="import workers as mine", after=after), cwd=game)
    assert "error" not in out, out["error"]
    assert out["double"] == 42 and out["sandbox"] == 3
    _ours(out["worker"])
    _ours(out["host"])
    assert out["mine"] == "game"  # the module it took keeps working
    assert "RuntimeWarning: procpool: the top-level name 'workers'" in out["stderr"]
    assert out["now"] == os.path.join(ROOT, "workers", "__init__.py")  # the name is procpool's
    with open(os.path.join(place, "imported.log")) as f:
        assert f.read().splitlines() == [f"workers {os.path.join(game, 'workers.py')}"]


def test_a_workers_package_elsewhere_on_the_path_is_not_what_procpool_imports(place):
    # Like the unrelated ``workers`` on PyPI, installed where the game's path finds it first.
    game, site = os.path.join(place, "game"), os.path.join(place, "site")
    _shadows(site, place, "package")
    out = _run(_script(game), cwd=game, PYTHONPATH=site)
    _check(out, place)
    _hidden(out, site, "package")
