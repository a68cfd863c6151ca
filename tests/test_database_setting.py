"""
``PROCPOOL_DATABASE`` takes a PostgreSQL DSN, a libpq key=value string, a
path or ``sqlite:///path`` and refuses anything else, naming the setting and
what it accepts (docs/persistence.md, "Choosing the database"), without
creating a file for what it refused.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

import pytest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from procpool import settings
from procpool.errors import SettingError
from procpool.storage import open_storage
from procpool.storage.postgres import PostgresStorage
from procpool.storage.sqlite import SQLiteStorage
from procpool.tasks import TaskHandler
from tests import delay_support as support
from tests.delay_support import record

REFUSED = ["mysql://bob:hunter2@db/game", "sqlite://tasks.db", "", "   ",
           "host=db nosuchoption=1"]


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    monkeypatch.delenv("PROCPOOL_DATABASE", raising=False)
    settings.reset()
    yield
    settings.reset()


def libpq_string(dsn: str) -> str:
    """The URL ``dsn`` as a libpq key=value string."""
    from psycopg.conninfo import conninfo_to_dict
    return " ".join(f"{k}={v}" for k, v in conninfo_to_dict(dsn).items())


def test_a_libpq_key_value_string_selects_postgresql_not_a_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_storage("host=db.example dbname=game user=bob password=secret")
    assert isinstance(store, PostgresStorage)
    assert store.name == "PostgreSQL database 'game' on db.example:5432 as bob"
    assert list(tmp_path.iterdir()) == []


def test_sqlite_url_names_a_path_relative_with_three_slashes_absolute_with_four(tmp_path):
    absolute = open_storage(f"sqlite:///{tmp_path}/tasks.sqlite3")
    assert isinstance(absolute, SQLiteStorage)
    assert absolute.path == f"{tmp_path}/tasks.sqlite3"
    relative = open_storage("sqlite:///tasks.sqlite3")
    assert isinstance(relative, SQLiteStorage) and relative.path == "tasks.sqlite3"
    assert open_storage(str(tmp_path / "plain.db")).path == str(tmp_path / "plain.db")


@pytest.mark.parametrize("value", REFUSED)
def test_configure_refuses_what_is_no_database_naming_the_setting_and_the_accepted_forms(value):
    with pytest.raises(SettingError) as caught:
        settings.configure(PROCPOOL_DATABASE=value)
    text = str(caught.value)
    assert "PROCPOOL_DATABASE" in text
    for form in ("postgresql://", "key=value", "SQLite file path", "sqlite:///path"):
        assert form in text
    assert "hunter2" not in text
    assert "SQLite file 'mysql" not in text


def test_a_mysql_url_is_refused_as_mysql_not_described_as_a_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingError, match=r"PROCPOOL_DATABASE names a mysql:// database"):
        open_storage("mysql://bob@db/game")
    assert list(tmp_path.iterdir()) == []


class HandlerOpensTheSetting(TestCase):
    """A bad value in the environment fails start(), and no file is made."""

    def setUp(self):
        settings.reset()
        self.addCleanup(settings.reset)
        path = tempfile.mkdtemp(prefix="procpool-test-")  # not trial's mktemp: the work tree
        self.addCleanup(shutil.rmtree, path, True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(path)

    def _env(self, value):
        old = os.environ.get("PROCPOOL_DATABASE")
        os.environ["PROCPOOL_DATABASE"] = value
        self.addCleanup(lambda: os.environ.pop("PROCPOOL_DATABASE", None) if old is None
                        else os.environ.__setitem__("PROCPOOL_DATABASE", old))

    @inlineCallbacks
    def test_start_fails_with_a_setting_error_for_a_mysql_url_in_the_environment(self):
        self._env("mysql://bob@db/game")
        handler = TaskHandler(clock=Clock())
        with self.assertRaises(SettingError) as caught:
            yield handler.start()
        self.assertIn("PROCPOOL_DATABASE", str(caught.exception))
        self.assertEqual(os.listdir("."), [])
        # The handler still runs tasks that are not persistent.
        self.assertTrue(handler.add(1, record).active())
        yield handler.stop()

    @inlineCallbacks
    def test_start_fails_with_a_setting_error_for_a_bad_storage_string(self):
        handler = TaskHandler(clock=Clock(), storage="redis://cache/0")
        with self.assertRaises(SettingError):
            yield handler.start()
        self.assertEqual(os.listdir("."), [])


@pytest.mark.postgres
class LibpqStringStoresInPostgres(TestCase):
    """A key=value string really stores persistent tasks in the PostgreSQL server."""

    @inlineCallbacks
    def test_a_libpq_string_setting_stores_persistent_tasks_in_postgresql(self):
        try:
            backend = support.PostgresBackend()
        except support.SkipTest as skip:
            raise support.SkipTest(str(skip))
        self.addCleanup(backend.cleanup)
        database = libpq_string(backend.database)
        self.assertNotIn("://", database)
        settings.configure(PROCPOOL_DATABASE=database)
        self.addCleanup(settings.reset)
        handler = TaskHandler(clock=Clock())
        yield handler.start()
        self.addCleanup(handler.stop)
        task = handler.add(60, record, "kept", persistent=True)
        yield handler.flush()
        self.assertEqual(backend.stored_ids(), {task.get_id()})
        self.assertFalse(os.path.exists(database))


def test_the_sqlite_file_of_a_path_setting_is_the_one_written(tmp_path):
    path = tmp_path / "named.sqlite3"
    settings.configure(PROCPOOL_DATABASE=f"sqlite:///{path}")
    store = open_storage(settings.get("PROCPOOL_DATABASE"))
    store.open()
    store.close()
    sqlite3.connect(path).execute("SELECT id FROM procpool_tasks").fetchall()
