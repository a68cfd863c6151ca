"""Shared test set-up: default settings for every test, and no files left in the work tree."""

import os
import tempfile

import pytest

from procpool import api, settings

# procpool.start() loads persistent tasks; keep the default SQLite file out of the work tree.
if "PROCPOOL_DATABASE" not in os.environ:
    os.environ["PROCPOOL_DATABASE"] = os.path.join(
        tempfile.mkdtemp(prefix="procpool-tests-"), "procpool.sqlite3")


@pytest.fixture(autouse=True)
def _fresh_settings():
    settings.reset()
    api._stopped = False  # another test's procpool.stop() must not leak into this one
    yield
    settings.reset()
