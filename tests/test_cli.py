"""
The command line (README, "The command line"): ``procpool --version``,
``procpool demo --help``, ``python -m sandbox`` by hand, and ``procpool
tasks`` on real SQLite and PostgreSQL databases; and what the task handler
does with persistent tasks a later start cannot load (docs/persistence.md,
"Tasks that cannot be loaded"): refused at call time when they come from
``__main__``, otherwise kept, logged once per start, shown and removed by
``procpool tasks``. Every host here is a real script in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import procpool
from tests import delay_support as support

ROOT = Path(__file__).resolve().parent.parent

#: A host script: starts a task handler on argv[2], then per argv[1] schedules
#: a persistent task ("main-callback", "main-argument", "module", "loadable")
#: or only loads ("load"), and prints what happened.
HOST = '''
import sys
from twisted.internet import defer, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from procpool.errors import InvalidTask
from procpool.tasks import TaskHandler


def ring(*args):
    print("ring", args)


class Note:
    pass


@defer.inlineCallbacks
def go():
    mode, database = sys.argv[1], sys.argv[2]
    handler = TaskHandler(storage=database)
    try:
        yield handler.start()
        print("LOADED", len(handler.tasks), sorted(getattr(handler, "unloadable", {})), flush=True)
        if mode == "main-callback":
            what = (ring, "hello")
        elif mode == "main-argument":
            from tests.delay_support import record
            what = (record, Note())
        elif mode == "module":
            import gametimers
            what = (gametimers.ring, "hello")
        elif mode == "loadable":
            from tests.delay_support import record
            what = (record, "hello")
        if mode != "load":
            try:
                task = handler.add(3600, *what, persistent=True)
                print("ACCEPTED", task.get_id(), flush=True)
            except InvalidTask as e:
                print("REFUSED", type(e).__name__, e, flush=True)
        yield handler.flush()
        yield handler.stop()
    finally:
        reactor.stop()


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
reactor.callWhenRunning(go)
reactor.run()
'''


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request):
    try:
        made = support.BACKENDS[request.param]()
    except support.SkipTest as skip:
        pytest.skip(str(skip))
    yield made
    made.cleanup()


def run(args: list[str], cwd: Path, *paths: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PROCPOOL_DATABASE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths)])
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def host(tmp_path: Path, mode: str, database: str, *paths: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    done = run([str(script), mode, database], tmp_path, *paths)
    assert done.returncode == 0, done.stderr
    return done


def tasks_cmd(tmp_path: Path, database: str, *args: str, paths: tuple[Path, ...] = ()
              ) -> subprocess.CompletedProcess:
    return run(["-m", "procpool", "tasks", "--database", database, *args], tmp_path, *paths)


# -- item: the command line ------------------------------------------------

def test_version_prints_the_package_version(tmp_path):
    done = run(["-m", "procpool", "--version"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"procpool {procpool.__version__}"


def test_demo_help_names_the_settings_and_the_demo_database_file(tmp_path):
    done = run(["-m", "procpool", "demo", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("PROCPOOL_DATABASE", "procpool-demo.sqlite3", "PROCPOOL_MAX_NPROC",
                 "docs/demo.md"):
        assert name in done.stdout, done.stdout


def test_python_m_sandbox_by_hand_prints_one_line_not_a_traceback(tmp_path):
    for args in ([], ["not json"]):
        done = run(["-m", "sandbox", *args], tmp_path)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sandbox: "), done.stderr


def test_tasks_list_shows_id_due_callback_and_state(tmp_path, backend):
    made = host(tmp_path, "loadable", backend.database)
    task_id = int(made.stdout.split("ACCEPTED")[1].split()[0])
    listed = tasks_cmd(tmp_path, backend.database, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.split()[:1] == [str(task_id)])
    assert "tests.delay_support.record" in row
    assert "due in 59m" in row or "due in 1h" in row, row
    assert time.strftime("%Y-%m-%d", time.gmtime()) in row
    shown = tasks_cmd(tmp_path, backend.database, "show", str(task_id))
    assert shown.returncode == 0, shown.stderr
    assert "'hello'" in shown.stdout and "tests.delay_support.record" in shown.stdout


def test_tasks_remove_of_a_missing_id_says_so_and_exits_1(tmp_path, backend):
    host(tmp_path, "load", backend.database)
    done = tasks_cmd(tmp_path, backend.database, "remove", "4242")
    assert done.returncode == 1
    assert "no task 4242" in done.stderr
    assert tasks_cmd(tmp_path, backend.database, "show", "4242").returncode == 1


def test_tasks_on_a_missing_sqlite_file_says_so_and_creates_nothing(tmp_path):
    done = tasks_cmd(tmp_path, str(tmp_path / "absent.sqlite3"), "list")
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "absent.sqlite3").exists()


def test_tasks_refuses_a_database_value_naming_what_is_accepted(tmp_path):
    done = tasks_cmd(tmp_path, "mysql://bob@db/game", "list")
    assert done.returncode == 2
    assert "PROCPOOL_DATABASE" in done.stderr and "Traceback" not in done.stderr


# -- item: persistent tasks from __main__, and tasks that cannot be loaded ---

@pytest.mark.parametrize("mode", ["main-callback", "main-argument"])
def test_persistent_delay_of_something_from_main_is_refused_at_call_time(tmp_path, mode):
    database = str(tmp_path / "tasks.sqlite3")
    done = host(tmp_path, mode, database)
    assert "REFUSED InvalidTask" in done.stdout, done.stdout + done.stderr
    assert "__main__" in done.stdout and "module you import" in done.stdout
    assert _at(database).stored_ids() == set()


def test_a_stored_task_that_cannot_be_loaded_is_kept_logged_once_per_start_and_removable(
        tmp_path, backend):
    game = tmp_path / "game"
    game.mkdir()
    (game / "gametimers.py").write_text("def ring(*args):\n    print('ring', args)\n")
    made = host(tmp_path, "module", backend.database, game)
    task_id = int(made.stdout.split("ACCEPTED")[1].split()[0])
    (game / "gametimers.py").unlink()

    for _start in range(2):
        loaded = host(tmp_path, "load", backend.database)
        assert f"LOADED 0 [{task_id}]" in loaded.stdout
        assert loaded.stderr.count("cannot be loaded") == 1, loaded.stderr
        assert "dropping" not in loaded.stderr
        assert backend.stored_ids() == {task_id}

    listed = tasks_cmd(tmp_path, backend.database, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.split()[:1] == [str(task_id)])
    assert "gametimers.ring" in row
    assert "cannot be loaded: ModuleNotFoundError: No module named 'gametimers'" in row
    shown = tasks_cmd(tmp_path, backend.database, "show", str(task_id))
    assert "cannot be loaded" in shown.stdout

    removed = tasks_cmd(tmp_path, backend.database, "remove", str(task_id))
    assert removed.returncode == 0, removed.stderr
    assert f"removed task {task_id}" in removed.stdout
    assert backend.stored_ids() == set()
    again = tasks_cmd(tmp_path, backend.database, "remove", str(task_id))
    assert again.returncode == 1 and f"no task {task_id}" in again.stderr


def _at(database: str) -> support.SQLiteBackend:
    """A SQLiteBackend-shaped reader of an existing file (for stored_ids)."""
    reader = support.SQLiteBackend.__new__(support.SQLiteBackend)
    reader.database = database
    return reader
