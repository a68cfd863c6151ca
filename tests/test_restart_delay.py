"""
Persistent delays survive a real restart of the host process, SIGKILL or
clean stop, on both backends: every callback runs exactly once, none before
its due time, the overdue ones at once and in due order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import delay_support as support
from tests.scripts_delay.host import COUNT, EARLY, LATE

ROOT = Path(__file__).resolve().parent.parent


def host(mode: str, database: str, record: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.scripts_delay.host", mode, database,
                             str(record)], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen, prefix: str) -> str:
    line = proc.stdout.readline().strip()
    assert line.startswith(prefix), f"host said {line!r}, expected {prefix}..."
    return line


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request):
    try:
        made = support.BACKENDS[request.param]()
    except support.SkipTest as skip:
        pytest.skip(str(skip))
    yield made
    made.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "clean stop"])
def test_each_persistent_callback_runs_exactly_once_across_a_restart(backend, how, tmp_path):
    record = tmp_path / "record.txt"
    first = host("schedule", backend.database, record)
    try:
        scheduled = float(read_line(first, "READY").split()[1])
        assert time.time() < scheduled + LATE - 0.5, "host too slow to test the restart"
        first.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
        code = first.wait(timeout=30)
    finally:
        first.kill()
    assert code == (-signal.SIGKILL if how == "SIGKILL" else 0)
    assert len(backend.stored_ids()) == COUNT - EARLY

    # Start again once some of the remaining tasks are overdue.
    time.sleep(max(0.0, scheduled + LATE + 0.5 - time.time()))
    restarted = time.time()
    second = host("resume", backend.database, record)
    try:
        assert read_line(second, "LOADED") == f"LOADED {COUNT - EARLY}"
        read_line(second, "DONE")
        assert second.wait(timeout=30) == 0
    finally:
        second.kill()

    runs = [line.split() for line in record.read_text().splitlines()]
    numbers = sorted(int(r[0]) for r in runs)
    assert numbers == list(range(COUNT)), "some callback ran twice or never"
    assert all(float(fired) >= float(due) - 0.05 for _, due, fired, _ in runs), "ran early"
    pids = {int(n): int(pid) for n, _, _, pid in runs}
    assert {pids[n] for n in range(EARLY)} == {first.pid}
    assert {pids[n] for n in range(EARLY, COUNT)} == {second.pid}
    later = [(float(due), float(fired)) for n, due, fired, pid in runs if int(pid) == second.pid]
    overdue = [(due, fired) for due, fired in later if due < restarted]
    assert len(overdue) >= 5, "the restart found too few overdue tasks to test"
    assert [d for d, _ in overdue] == sorted(d for d, _ in overdue), "overdue not in due order"
    assert [d for d, _ in later[:len(overdue)]] == [d for d, _ in overdue], \
        "a not-yet-due task ran before an overdue one"
    assert backend.stored_ids() == set()
