"""
procpool inside a real Evennia game: one settings line, checked over telnet.

A throwaway game (tests/evennia_harness.py) is made in a Python 3.12
virtualenv holding Evennia and this checkout (``make evennia-venv``; the
path is ``PROCPOOL_EVENNIA_VENV``, default ``.venv-evennia``), with::

    SERVER_SERVICES_PLUGIN_MODULES += ["procpool.evennia"]
    PROCPOOL_REPLACE_EVENNIA = True

It runs on free loopback ports; the tests log in as its superuser and use
the game's own ``py`` command. Without the virtualenv they skip, except
under ``PROCPOOL_REQUIRE_EVENNIA=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.evennia_harness import Game

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("PROCPOOL_EVENNIA_VENV", ROOT / ".venv-evennia"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SETTINGS = textwrap.dedent("""
    SERVER_SERVICES_PLUGIN_MODULES += ["procpool.evennia"]
    PROCPOOL_REPLACE_EVENNIA = True
    PROCPOOL_MIN_NPROC = 2
""")

# Game code the checks call: a module of the game, importable by the workers too.
CHECKS = textwrap.dedent('''
    import time

    from procpool import interactive


    def burn(seconds):
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return n


    def key_of(obj):
        return f"key={obj.key} pid-differs={__import__('os').getpid()}"


    def find_key(dbref):
        import evennia
        return "found " + evennia.search_object(dbref)[0].key


    @interactive
    def quiz(caller):
        answer = yield "What is 6 times 7?"
        sure = yield f"You said {answer}. Sure?"
        caller.msg(f"Final: {answer} ({sure})")
''')


def _require_venv() -> None:
    if (VENV / "bin" / "evennia").exists():
        return
    why = (f"no Evennia virtualenv at {VENV} (make evennia-venv builds it, with a Python 3.12)")
    if os.environ.get("PROCPOOL_REQUIRE_EVENNIA") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def game():
    _require_venv()
    workdir = tempfile.mkdtemp(prefix="procpool-evennia-")
    g = Game(str(VENV), workdir, settings_extra=SETTINGS, log=lambda _: None)
    try:
        g.create()
        (Path(g.gamedir) / "world" / "ppchecks.py").write_text(CHECKS)
        g.start()
        state = [g, g.connect()]  # a test that logs in anew puts its connection here
        yield state
        state[1].close()
    finally:
        try:
            g.stop()
            left = g.wait_no_processes(30)
        finally:
            g.kill_leftovers()
            shutil.rmtree(workdir, ignore_errors=True)
    assert left == [], f"processes of the game left after evennia stop: {left}"


def _py(conn, code: str) -> None:
    conn.send("py " + code)


def test_the_seeds_line_prints_3(game):
    _, conn = game
    _py(conn, 'from procpool import run_async; run_async("_return(1+2)", at_return=self.msg)')
    out = conn.read_until(r"(?m)^3\s*$", timeout=30)
    assert re.search(r"(?m)^3\s*$", out)


def test_evennia_own_names_are_procpools_when_the_setting_asks(game):
    _, conn = game
    _py(conn, "import procpool, evennia.utils, evennia.utils.utils as u; "
              "self.msg('switched=%s' % (evennia.utils.run_async is procpool.run_async "
              "and u.delay is procpool.delay and u.interactive is procpool.interactive))")
    assert "switched=True" in conn.read_until(r"switched=\w+", timeout=30)
    # Evennia's own run_async refuses source strings; procpool's runs them.
    _py(conn, 'from evennia.utils import run_async; run_async("_return(6*7)", at_return=self.msg)')
    assert re.search(r"(?m)^42\s*$", conn.read_until(r"(?m)^42\s*$", timeout=30))


def test_a_3s_cpu_task_leaves_look_answering_within_100ms(game):
    _, conn = game
    _py(conn, "from world.ppchecks import burn; from procpool import run_async; "
              "run_async(burn, 3, at_return=self.msg)")
    conn.read_until(r"run_async\(burn", timeout=30)  # the py echo: the task is on its way
    time.sleep(0.5)  # well inside the 3 s burn
    slowest = 0.0
    for _ in range(3):
        began = time.monotonic()
        conn.send("look")
        conn.read_until(r"Limbo\(#2\)", timeout=30)
        slowest = max(slowest, time.monotonic() - began)
    out = conn.read_until(r"(?m)^\d{4,}\s*$", timeout=30)  # burn's count of loops
    assert re.search(r"(?m)^\d{4,}\s*$", out)
    assert slowest < 0.1, f"look took {slowest * 1000:.0f} ms while a task burnt CPU"


def test_a_worker_task_reads_the_game_database_and_gets_objects_by_reference(game):
    _, conn = game
    _py(conn, "from world.ppchecks import find_key; from procpool import run_async; "
              "run_async(find_key, '#2', at_return=self.msg, at_err=self.msg)")
    assert "found Limbo" in conn.read_until(r"found \w+|Error|error", timeout=60)
    # A character given to run_async crosses as a reference, not as a pickled copy.
    _py(conn, "from world.ppchecks import key_of; from procpool import run_async; "
              "run_async(key_of, me, at_return=self.msg, at_err=self.msg)")
    out = conn.read_until(r"key=\w+|Error|error", timeout=60)
    assert f"key={game[0].username}" in out, out


def test_an_interactive_dialogue_with_a_character_completes(game):
    _, conn = game
    _py(conn, "from world.ppchecks import quiz; quiz(me)")
    first = conn.read_until(r"What is 6 times 7\?", timeout=30)
    conn.send("42")
    second = conn.read_until(r"Sure\?", timeout=30)
    conn.send("yes")
    last = conn.read_until(r"Final: .*\)", timeout=30)
    assert "Final: 42 (yes)" in last
    assert first.count("What is 6 times 7?") == 1 and "What is 6 times 7?" not in second
    # The dialogue gave the input back: a command is a command again.
    assert "Limbo(#2)" in conn.command("look")


def test_quit_ends_a_dialogue_and_gives_the_commands_back(game):
    _, conn = game
    _py(conn, "from world.ppchecks import quiz; quiz(me)")
    conn.read_until(r"What is 6 times 7\?", timeout=30)
    conn.send("quit")
    time.sleep(0.5)
    out = conn.command("look")
    assert "Limbo(#2)" in out and "Sure?" not in out


def test_a_disconnect_ends_a_dialogue_and_the_next_login_has_its_commands(game):
    g, conn = game
    _py(conn, "from world.ppchecks import quiz; quiz(me)")
    conn.read_until(r"What is 6 times 7\?", timeout=30)
    conn.close()
    time.sleep(1.0)
    game[1] = conn = g.connect()
    out = conn.command("look")
    assert "Limbo(#2)" in out and "Sure?" not in out, out
    assert "Traceback" not in g.server_log().split("Server successfully")[-1]


def test_reload_with_a_task_running_comes_back_with_a_pool_and_fires_a_stored_delay_once(game):
    g, conn = game
    token = f"delayed-{os.getpid()}"
    # Evennia's habit: a character's method as the callback of a persistent delay
    # (through evennia.utils.delay, which is procpool's here).
    _py(conn, f"from evennia.utils import delay; delay(6, self.msg, '{token}', persistent=True)")
    conn.read_until(r"persistent=True\)", timeout=30)
    _py(conn, "from world.ppchecks import burn; from procpool import run_async; "
              "run_async(burn, 60, at_return=self.msg)")
    conn.read_until(r"run_async\(burn", timeout=30)
    time.sleep(0.5)
    try:
        out, seconds = g.reload(conn, timeout=90)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n--- server.log ---\n{g.server_log()[-4000:]}") from None
    assert "Server restarted" in out
    _py(conn, 'from procpool import run_async; run_async("_return(5*5)", at_return=self.msg)')
    seen = conn.read_until(r"(?m)^25\s*$", timeout=60)
    assert re.search(r"(?m)^25\s*$", seen)
    if token not in out + seen:
        seen += conn.read_until(re.escape(token), timeout=60)
    seen += conn.read_for(8)  # long enough for a second firing to show
    assert (out + seen).count(token) == 1, out + seen
    assert "Traceback" not in g.server_log().split("Server successfully reloaded")[-1]


def test_a_stored_delay_fires_once_after_the_server_is_sigkilled(game):
    g, conn = game
    token = f"killed-{os.getpid()}"
    _py(conn, f"from procpool import delay; delay(5, self.msg, '{token}', persistent=True)")
    conn.read_until(r"persistent=True\)", timeout=30)
    time.sleep(1.0)  # the delay's row is written within a few ms
    server = g.pidfile("server")
    workers = g.worker_pids()
    assert server and workers
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_alive(server) or any(map(_alive, workers))):
        time.sleep(0.2)
    assert not _alive(server) and not any(map(_alive, workers)), "the workers died with it"
    g.run("start", timeout=120)  # the Portal kept the session; a new Server takes it back
    seen = conn.read_until(re.escape(token), timeout=90)
    seen += conn.read_for(8)
    assert seen.count(token) == 1, seen


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def test_shutdown_with_a_task_running_leaves_no_process(game):
    g, conn = game
    _py(conn, "from world.ppchecks import burn; from procpool import run_async; "
              "run_async(burn, 60)")
    conn.read_until(r"run_async\(burn", timeout=30)
    assert g.worker_pids(), "the game has procpool workers"
    began = time.monotonic()
    g.stop()
    assert g.wait_no_processes(30) == []
    assert time.monotonic() - began < 30
