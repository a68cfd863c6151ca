"""workers/pickling.py: which values are scanned for ``__main__`` and go through dill."""

from __future__ import annotations

import pickle

import pytest

from tests import core_support as s
from workers import pickling


def _no_dill(obj):
    raise AssertionError(f"dill was asked to pickle a {type(obj).__name__}")


@pytest.mark.parametrize("value", [b"a __main__ in the bytes" * 1000, "__main__.thing", 7, None])
def test_a_plain_result_is_a_plain_pickle_without_a_scan(monkeypatch, value):
    # A result's pickle was scanned for "__main__" (and bytes that held it sent to
    # dill): for a 1 MiB result the scan cost more than the pickling.
    monkeypatch.setattr(pickling, "_dill_by_reference", _no_dill)
    assert pickling.dumps(value) == pickle.dumps(value, protocol=5)


def test_a_nested_function_still_goes_through_dill():
    def local(x):  # pickle refuses a nested function: dill takes it by value
        return x * 2

    function, args, _ = pickle.loads(pickling.dumps((local, (21,), {})))
    assert function(*args) == 42


def test_a_result_that_names_main_still_goes_through_dill(monkeypatch):
    main_class = type("Found", (), {"__module__": "__main__"})
    asked = []
    monkeypatch.setattr(pickling, "_dill_by_reference", lambda obj: asked.append(obj) or b"")
    pickling.dumps([main_class])  # pickles by name, "__main__.Found": dill is asked
    assert asked == [[main_class]]
    pickling.dumps((s.echo, (1,), {}))
    assert len(asked) == 1
