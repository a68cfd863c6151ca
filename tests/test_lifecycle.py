"""A worker's one state field and its legal moves; the pool's state; the public surface."""

from __future__ import annotations

import subprocess
import sys

import pytest

import procpool
from procpool import _worker
from procpool._worker import Worker, WorkerState
from procpool.pool import PoolState, ProcessPool

LEGAL = {
    ("starting", "ready"), ("starting", "retiring"), ("starting", "lost"),
    ("starting", "killed"), ("starting", "dead"),
    ("ready", "retiring"), ("ready", "lost"), ("ready", "killed"), ("ready", "dead"),
    ("retiring", "killed"), ("retiring", "dead"),
    ("lost", "killed"), ("lost", "dead"),
    ("killed", "dead"),
}


@pytest.mark.parametrize("old", list(WorkerState), ids=lambda s: s.value)
@pytest.mark.parametrize("new", list(WorkerState), ids=lambda s: s.value)
def test_a_worker_moves_only_as_its_lifecycle_drawing_allows(old, new):
    worker = Worker(pool=None)
    worker.state = old
    if (old.value, new.value) in LEGAL:
        worker.move(new)
        assert worker.state is new
    else:
        with pytest.raises(RuntimeError, match="is not a legal move"):
            worker.move(new)
        assert worker.state is old


def test_the_drawing_in_the_module_docstring_names_every_state():
    for state in WorkerState:
        assert state.name in _worker.__doc__


def test_a_new_pool_is_new_and_its_state_compares_as_text():
    pool = ProcessPool(min_workers=1, max_workers=1)
    assert pool.state is PoolState.NEW
    assert pool.state == "new"
    assert pool.stats()["state"] == "new"


def test_stats_before_any_pool_has_the_same_figures_as_a_pool():
    assert set(ProcessPool.figures_before_start()) == set(ProcessPool().stats())


@pytest.mark.parametrize("bad", [-1, float("nan"), "5", True])
def test_a_bad_timeout_is_refused_by_the_one_rule_wherever_it_is_given(bad):
    pool = ProcessPool(min_workers=1, max_workers=1)
    with pytest.raises(procpool.SettingError):
        pool.submit_call(len, "x", timeout=bad)
    with pytest.raises(procpool.SettingError):
        procpool.run_async(len, "x", proc_timeout=bad)
    with pytest.raises(procpool.SettingError):
        procpool.configure(PROCPOOL_TIMEOUT=bad if bad != "5" else "five")
    assert pool.state is PoolState.NEW  # nothing was queued, nothing started


def test_what_users_hold_is_exported_and_every_error_is_in_one_module():
    from procpool import errors
    assert procpool.AsyncResult.__name__ == "AsyncResult"
    assert procpool.TaskHandle.__name__ == "TaskHandle"
    for name in errors.__all__:
        assert getattr(procpool, name) is getattr(errors, name)
        assert issubclass(getattr(errors, name), errors.ProcPoolError)
    for name in procpool.__all__:
        assert getattr(procpool, name) is not None


def test_the_worker_run_by_hand_says_what_it_is_in_one_line():
    done = subprocess.run([sys.executable, "-m", "workers"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "procpool worker process" in done.stderr


def test_min_above_the_default_max_says_how_to_fix_it():
    with pytest.raises(procpool.SettingError) as caught:
        procpool.configure(PROCPOOL_MIN_NPROC=5)
    text = str(caught.value)
    assert "PROCPOOL_MIN_NPROC (5, given to configure())" in text
    assert "PROCPOOL_MAX_NPROC (4, the default)" in text
    assert "set PROCPOOL_MAX_NPROC to 5 or more" in text
    procpool.configure(PROCPOOL_MIN_NPROC=5, PROCPOOL_MAX_NPROC=5)  # the fix it names


def test_min_above_max_from_the_environment_is_refused_when_a_pool_is_made(monkeypatch):
    monkeypatch.setenv("PROCPOOL_MIN_NPROC", "5")
    monkeypatch.setenv("PROCPOOL_MAX_NPROC", "2")
    with pytest.raises(procpool.SettingError) as caught:
        ProcessPool()
    assert "PROCPOOL_MIN_NPROC (5, from the environment)" in str(caught.value)
    procpool.configure(PROCPOOL_MAX_NPROC=6)  # code may repair what the environment says
    assert ProcessPool().max_workers == 6


def test_a_pool_refuses_a_minimum_above_its_maximum():
    with pytest.raises(procpool.SettingError, match="min_workers"):
        ProcessPool(min_workers=3, max_workers=2)


STOP_SCRIPT = """
import sys, time
import procpool
from twisted.internet import reactor
from tests import core_support
procpool.configure(PROCPOOL_MIN_NPROC=1, PROCPOOL_MAX_NPROC=1, PROCPOOL_STOP_GRACE={setting})
out = []
def go():
    task = procpool.run_async(core_support.sleep, 30)
    task.addErrback(lambda f: out.append(f.type.__name__))
    def stop(_):
        began = time.monotonic()
        d = procpool.stop({argument})
        d.addCallback(lambda _: out.append(round(time.monotonic() - began, 1)))
        d.addBoth(lambda _: reactor.stop())
    procpool.start().addCallback(lambda _: reactor.callLater(0.3, stop, None))
reactor.callWhenRunning(go)
reactor.run()
print(out)
"""


@pytest.mark.parametrize("setting, argument", [("0", ""), ("10", "grace=0.5")],
                         ids=["PROCPOOL_STOP_GRACE=0", "stop(grace=0.5)"])
def test_stop_kills_running_tasks_after_the_grace_they_were_given(setting, argument):
    code = STOP_SCRIPT.format(setting=setting, argument=argument)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    out = eval(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    assert out is not None, done.stderr[-2000:]
    assert out[0] == "PoolStopped"
    assert out[1] <= (0.5 if setting == "0" else 1.5)


@pytest.mark.parametrize("bad", [-1, float("nan"), True, "1"])
def test_stop_refuses_a_grace_that_is_not_seconds(bad):
    with pytest.raises(procpool.SettingError, match="grace"):
        procpool.stop(grace=bad)
