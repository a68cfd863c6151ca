"""Shared test set-up: every test starts from default settings."""

import pytest

from procpool import settings


@pytest.fixture(autouse=True)
def _fresh_settings():
    settings.reset()
    yield
    settings.reset()
