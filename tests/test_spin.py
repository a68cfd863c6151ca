"""One worker a core polls for its next task (PROCPOOL_SPIN); the others sleep in read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from twisted.internet import defer

import procpool
from procpool._supply import CORES
from tests import core_support as s
from workers.polling import SHARED_CORE_BACKOFF


def _no_spin(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"--no-spin" in f.read().split(b"\0")


class MoreWorkersThanCores(s.PoolTestCase):
    min_workers = max_workers = CORES + 2

    @defer.inlineCallbacks
    def test_only_as_many_workers_as_cores_poll_and_a_successor_takes_its_place(self):
        pids = procpool.stats()["pids"]
        self.assertEqual(len(pids), CORES + 2)
        quiet = [pid for pid in pids if _no_spin(pid)]
        self.assertEqual(len(quiet), 2)

        # A polling worker that dies is replaced by one that polls.
        polling = next(pid for pid in pids if pid not in quiet)
        os.kill(polling, signal.SIGKILL)
        yield s.wait_until(lambda: polling not in procpool.stats()["pids"]
                           and len(procpool.stats()["pids"]) == CORES + 2, 15)
        now = procpool.stats()["pids"]
        self.assertNotIn(polling, now)
        self.assertEqual(sorted(pid for pid in now if _no_spin(pid)), sorted(quiet))
        self.assertEqual((yield procpool.run_async(s.add, 2, 3)), 5)


class AsManyWorkersAsCores(s.PoolTestCase):
    min_workers = max_workers = CORES

    def test_every_worker_polls(self):
        pids = procpool.stats()["pids"]
        self.assertEqual(len(pids), CORES)
        self.assertEqual([pid for pid in pids if _no_spin(pid)], [])


class RecycledWorkers(s.PoolTestCase):
    min_workers = max_workers = CORES
    extra_settings = {"PROCPOOL_RECYCLE": 10}

    @defer.inlineCallbacks
    def test_the_successor_of_a_recycled_polling_worker_polls(self):
        # The successor starts while the old worker still finishes its tasks:
        # that one's turn to poll must pass to it, not be counted against it.
        first = procpool.stats()["pids"]
        for i in range(20 * CORES):
            yield procpool.run_async(s.add, i, 1)
        yield s.wait_until(lambda: procpool.stats()["workers_recycled"] >= 1
                           and len(procpool.stats()["pids"]) == CORES, 15)
        now = procpool.stats()["pids"]
        self.assertGreaterEqual(procpool.stats()["workers_recycled"], 1)
        self.assertNotEqual(sorted(now), sorted(first))
        self.assertEqual([pid for pid in now if _no_spin(pid)], [])


#: Polls for 5 ms on a pipe nothing is written to, pinned to one core, with
#: (argv[1] == "held") or without a busy process pinned to that core too.
_SHARED_CORE_SCRIPT = """
import os, select, subprocess, sys, time
from workers import polling
cpu = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpu})
busy = None
if sys.argv[1] == "held":
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(busy.pid, {cpu})
    time.sleep(0.05)
r, w = os.pipe()
poller = select.poll()
poller.register(r, select.POLLIN)
polling.wait_briefly(poller, 0.005)
print(polling._no_poll_until > 0)
if busy is not None:
    busy.kill()
"""


def _backs_off(how: str) -> bool:
    done = subprocess.run([sys.executable, "-c", _SHARED_CORE_SCRIPT, how],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_a_poll_that_shares_its_core_gives_way_to_sleeping():
    # Runnable but not running, a polling worker notices its task later than
    # a sleeping one would be woken for it: it sleeps for a while.
    assert SHARED_CORE_BACKOFF > 0.005
    assert _backs_off("held")


def test_a_poll_with_its_core_to_itself_goes_on_polling():
    # The core may be busy for a moment on a loaded machine: one of five
    # tries with the core free is enough.
    assert False in [_backs_off("free") for _ in range(5)]
