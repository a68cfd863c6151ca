"""
What an operator sees: the demo's ``stats`` command on a real server (its own
worker processes, the watchdog and the metrics port on), after real tasks, a
real stall of the reactor and one player's backlog (README, docs/operations.md).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest

from procpool.demo.commands import stats_lines
from tests.demo_support import DemoServer

PASSWORD = "letmebuild"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stats_text(tmp_path_factory):
    """The ``stats`` output after 3 tasks, a 0.6 s stall and 6 slow tasks of one caller."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PROCPOOL_WATCHDOG", "0.25")
    mp.setenv("PROCPOOL_METRICS_PORT", str(free_port()))
    try:
        with DemoServer(tmp_path_factory.mktemp("operator"), "--builder-password",
                        PASSWORD) as server:
            ada = server.connect("Ada")
            ada.command(f"builder {PASSWORD}", "You are now a builder")
            for i in range(3):
                ada.send(f'py from procpool import run_async; '
                         f'run_async("_return({i} + 40)", at_return=self.msg)')
                ada.read_until(")\r\n")
                assert ada.read_until("\r\n", timeout=30).strip() == str(i + 40)
            ada.send("py import time; time.sleep(0.6)")  # blocks the server's reactor
            ada.read_until("time.sleep(0.6)\r\n")
            ada.send('py [run_async("import time; time.sleep(5)", caller="Ada") '
                     'for _ in range(6)]')
            ada.read_until("AsyncResult")
            deadline = time.monotonic() + 10
            while True:  # until both of Ada's share run (the workers answer) and 4 wait
                ada.send("stats")
                text = ada.read_until("metrics:") + ada.read_until("\n")
                if "2 in flight" in text or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            url = re.search(r"metrics:\s+(\S+)", text).group(1)
            with urllib.request.urlopen(url, timeout=10) as page:
                scraped = page.read().decode()
            yield text, scraped
    finally:
        mp.undo()


def line(text: str, label: str) -> str:
    return next(row.strip() for row in text.splitlines() if row.strip().startswith(label))


def test_workers_and_queue_are_real_figures(stats_text):
    text, _ = stats_text
    assert re.search(r"Pool figures \(running(, local backend)?\):", text)
    assert re.fullmatch(r"workers:\s+2 \(busy 2, idle 0, starting 0; pids \d+, \d+\)",
                        line(text, "workers:"))
    assert line(text, "queue:") == "queue:     0 waiting for a worker (0 bytes), 2 in flight"


def test_tasks_are_counted_by_outcome(stats_text):
    text, _ = stats_text
    assert line(text, "tasks:") == ("tasks:     done 3, failed 0, timed out 0, crashed 0, "
                                    "cancelled 0, rejected 0, moved 0")
    assert line(text, "processes:").startswith("processes: started 2, crashed 0")
    p50, p99 = re.fullmatch(r"latency:\s+p50 ([\d.]+) ms, p99 ([\d.]+) ms .*",
                            line(text, "latency:")).groups()
    assert 0 < float(p50) <= float(p99) < 5000


def test_shares_show_the_caller_waiting_and_its_tasks(stats_text):
    text, _ = stats_text
    assert line(text, "shares:") == ("shares:    at most 2 per caller; 1 caller in the pool, "
                                     "1 caller waiting with 4 tasks")


def test_the_watchdog_is_on_and_names_the_stall(stats_text):
    text, _ = stats_text
    found = re.fullmatch(r"watchdog:\s+on at 0.25 s; 1 stall logged, the last ([\d.]+) s in "
                         r"<module> \(<py>:1\)", line(text, "watchdog:"))
    assert found, line(text, "watchdog:")
    assert 0.55 <= float(found.group(1)) < 2


def test_the_metrics_url_is_served_and_agrees(stats_text):
    _, scraped = stats_text
    assert 'procpool_tasks_total{outcome="done"} 3.0' in scraped


def test_figures_of_a_pool_not_started_read_as_off():
    from procpool.pool import ProcessPool
    figures = {**ProcessPool.figures_before_start(), "per_caller_limit": 0,
               "watchdog_threshold": None, "metrics_url": None, "something_new": 7}
    lines = stats_lines(figures)
    assert lines[0].startswith("Pool figures (not started")
    assert "  latency:   p50 -, p99 - (submit to answer, recent tasks)" in lines
    assert "  shares:    off (PROCPOOL_PER_CALLER=0)" in lines
    assert "  watchdog:  off (PROCPOOL_WATCHDOG)" in lines
    assert "  metrics:   off (PROCPOOL_METRICS_PORT)" in lines
    assert lines[-1] == "  something_new: 7"  # a figure added later is still shown
