"""
The parts of the Evennia integration that stand without a game: a worker's
init function, objects that cross by reference, questions for callers
without get_input, and the game's settings read as procpool's. (The whole,
in a real game: tests/test_evennia.py.)
"""

from __future__ import annotations

import os
import pickle
import types

import pytest
from twisted.internet import defer
from twisted.trial import unittest

import procpool
from procpool import dialogue, settings
from procpool.evennia import _config
from procpool.pool import ProcessPool
from tests import core_support as s
from workers import pickling

INIT_MARK = "PROCPOOL_TEST_INIT_MARK"


def mark_initialised() -> None:
    """A PROCPOOL_WORKER_INIT: leaves a mark the tasks can see."""
    os.environ[INIT_MARK] = f"initialised in {os.getpid()}"


def fail_to_initialise() -> None:
    """A PROCPOOL_WORKER_INIT that cannot set its worker up."""
    raise RuntimeError("the game's database is not there")


class WorkerInit(unittest.TestCase):
    @defer.inlineCallbacks
    def test_each_worker_calls_the_init_function_once_before_its_first_task(self):
        procpool.configure(PROCPOOL_WORKER_INIT="tests.test_evennia_parts:mark_initialised")
        pool = ProcessPool(min_workers=1, max_workers=1)
        self.addCleanup(pool.stop)
        yield pool.start()
        worker_pid = yield pool.submit_call(s.pid)
        mark = yield pool.submit_call(s.env_value, INIT_MARK)
        self.assertEqual(mark, f"initialised in {worker_pid}")

    @defer.inlineCallbacks
    def test_an_init_function_that_fails_is_a_start_error_with_its_traceback(self):
        procpool.configure(PROCPOOL_WORKER_INIT="tests.test_evennia_parts:fail_to_initialise")
        pool = ProcessPool(min_workers=1, max_workers=1)
        self.addCleanup(pool.stop)
        with self.assertRaises(procpool.WorkerStartError) as caught:
            yield pool.start()
        self.assertIn("PROCPOOL_WORKER_INIT", str(caught.exception))
        self.assertIn("the game's database is not there", str(caught.exception))
        self.flushLoggedErrors()


class Room:
    """Stands for a database object: it must never cross as a copy."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __reduce__(self):
        raise TypeError("Can't pickle 'DbHolder'")

    def describe(self) -> str:
        """A method of the object, as Evennia's ``self.msg`` is."""
        return f"room #{self.number}"


def find_room(number: int) -> str:
    """The other side's lookup of a room by its number."""
    return f"room #{number}, looked up"


@pytest.fixture
def rooms_by_reference():
    saved = list(pickling._REFERENCES)
    pickling.register_reference(Room, lambda room: (find_room, (room.number,)))
    yield
    pickling._REFERENCES[:] = saved


def test_a_registered_class_crosses_by_reference_wherever_it_sits(rooms_by_reference):
    call = (s.echo, ({"where": [Room(2)]},), {})
    function, args, kwargs = pickle.loads(pickling.dumps(call))
    assert args == ({"where": ["room #2, looked up"]},)


def test_a_reference_crosses_with_dill_too(rooms_by_reference):
    room = Room(7)
    data = pickling.dumps((lambda r: r, (room,), {}))  # a lambda: the dill path
    function, args, _ = pickle.loads(data)
    assert args == ("room #7, looked up",)


def test_a_stored_delay_stores_a_method_of_a_referenced_object(rooms_by_reference):
    from procpool._task_record import _dump, _load

    payload = _dump(Room(3).describe, (Room(4),), {})
    spec, args, kwargs = pickle.loads(payload)
    # The method's object and the argument were both stored as references, and
    # load back as what the lookup on the other side returns.
    assert spec == ("method", "room #3, looked up", "describe")
    assert args == ("room #4, looked up",)
    with pytest.raises(AttributeError, match="describe"):
        _load(payload)  # a looked-up string has no describe(): the reference was followed


def test_a_bad_worker_init_setting_is_refused_naming_it():
    for bad in ("not a module", "pkg.mod:not-a-name", 3):
        with pytest.raises(procpool.SettingError, match="PROCPOOL_WORKER_INIT"):
            procpool.configure(PROCPOOL_WORKER_INIT=bad)
    procpool.configure(PROCPOOL_WORKER_INIT="workers.evennia:setup")


def test_plain_arguments_pickle_exactly_as_before(rooms_by_reference):
    call = (len, ("abc",), {})
    assert pickling.dumps(call) == pickle.dumps(call, protocol=5)


def test_without_the_reference_the_object_is_refused():
    with pytest.raises(TypeError, match="DbHolder"):
        pickling.dumps((s.echo, (Room(1),), {}))


def test_a_question_reaches_a_caller_through_a_registered_input_provider():
    asked: list = []

    class Character:
        def __init__(self):
            self.seen = []

        def msg(self, text):
            self.seen.append(text)

    def provider(caller):
        if isinstance(caller, Character):
            return lambda prompt, callback: asked.append((prompt, callback))
        return None

    saved = list(dialogue._INPUT_PROVIDERS)
    dialogue.register_input(provider)
    try:
        @procpool.interactive
        def ask(caller):
            name = yield "Name?"
            return name.upper()

        hero = Character()
        result = ask(hero)
        assert hero.seen == ["Name?"] and asked[0][0] == "Name?"
        asked[0][1]("ada")
        assert result.result == "ADA"
    finally:
        dialogue._INPUT_PROVIDERS[:] = saved


def test_an_abandoned_dialogue_just_ends():
    class Caller:
        def msg(self, text):
            pass

        def get_input(self, prompt, callback):
            callback(procpool.DialogueAbandoned("typed quit"))

    reached = []

    @procpool.interactive
    def ask(caller):
        yield "Sure?"
        reached.append("after the question")

    done = ask(Caller())
    assert done.called and done.result is None and reached == []


def _django(**names):
    return types.SimpleNamespace(GAME_DIR="/games/mygame", **names)


def test_the_games_settings_beat_the_environment_which_beats_evennias_defaults(monkeypatch):
    monkeypatch.setenv("PROCPOOL_STOP_GRACE", "2")
    monkeypatch.setenv("PROCPOOL_MAX_NPROC", "3")
    monkeypatch.delenv("PROCPOOL_DATABASE", raising=False)
    warnings = _config.configure_from_django(_django(PROCPOOL_MAX_NPROC=6))
    settings.refresh()
    assert warnings == []
    assert settings.get("PROCPOOL_MAX_NPROC") == 6            # the game's settings
    assert settings.get("PROCPOOL_STOP_GRACE") == 2.0          # the environment
    assert settings.get("PROCPOOL_DATABASE") == "/games/mygame/server/procpool.sqlite3"
    assert settings.get("PROCPOOL_TUNE_MALLOC") is False       # Evennia's defaults
    assert settings.get("PROCPOOL_WORKER_INIT") == "workers.evennia:setup"


def test_an_unknown_procpool_name_in_the_games_settings_is_warned_about():
    warnings = _config.configure_from_django(_django(PROCPOOL_MAX_NPORC=6,
                                                     PROCPOOL_REPLACE_EVENNIA=True))
    assert len(warnings) == 1 and "PROCPOOL_MAX_NPORC" in warnings[0]


def test_a_bad_value_in_the_games_settings_names_the_setting():
    with pytest.raises(procpool.SettingError, match="PROCPOOL_MIN_NPROC"):
        _config.configure_from_django(_django(PROCPOOL_MIN_NPROC="many"))
