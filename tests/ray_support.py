"""
A real local Ray cluster for the Ray backend's tests, on 127.0.0.1 only.

:func:`cluster` starts one with ``ray start --head`` (its own session, its
own temporary folder, free ports) the first time a test asks, and
:func:`stop_cluster` ends it by the processes it started: every process of
that session. Never ``ray stop``, which ends every Ray process on the machine.

Without Ray installed the tests skip, except under CI (``CI`` or
``PROCPOOL_REQUIRE_RAY`` set), where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from procpool import _ray

# Keep the cluster and this test process's driver on loopback (procpool/_ray.py),
# without token authentication: Ray 2.60 turns it on for a new cluster once a
# token file exists in ~/.ray, and writes one there, so two clusters of this
# machine (or a later run) would refuse each other's drivers. The cluster
# listens on 127.0.0.1 only.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def required() -> bool:
    """Must the Ray tests run (CI), rather than skip when Ray is missing?"""
    return bool(os.environ.get("CI") or os.environ.get("PROCPOOL_REQUIRE_RAY"))


def ray_command() -> str | None:
    """The ``ray`` command beside this interpreter, if Ray is installed."""
    path = os.path.join(os.path.dirname(sys.executable), "ray")
    if importlib.util.find_spec("ray") is None:  # not imported here: procpool/_ray.py does
        return None
    return path if os.path.exists(path) else None


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """
    One ``ray start --head`` cluster of this machine; ``address`` is its
    head's, ``client_address`` its Ray Client server's (``ray://``).
    """

    def __init__(self) -> None:
        command = ray_command()
        if command is None:
            message = "Ray is not installed (pip install 'procpool[ray]')"
            if required():
                pytest.fail(message + "; under CI the Ray tests must run")
            pytest.skip(message)
        self.folder = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit
        gcs, client, agent, agent_grpc, metrics, runtime, node, objects = _free_ports(8)
        self.address = f"127.0.0.1:{gcs}"
        self.client_address = f"ray://127.0.0.1:{client}"  # Ray Client's server
        args = [command, "start", "--head", "--node-ip-address", "127.0.0.1",
                "--port", str(gcs), "--ray-client-server-port", str(client),
                "--dashboard-agent-listen-port", str(agent),
                "--dashboard-agent-grpc-port", str(agent_grpc),
                "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime),
                "--node-manager-port", str(node), "--object-manager-port", str(objects),
                "--temp-dir", self.folder, "--include-dashboard", "false",
                "--num-cpus", "2", "--object-store-memory", str(400 * 1024 * 1024),
                "--disable-usage-stats"]
        env = {**os.environ, **LOOPBACK_ENV}
        # Its own session: the session id is `ray start`'s pid, and every process
        # of the cluster (its head, raylet, agents, workers) stays in it.
        starter = subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.session: int | None = starter.pid
        output, _ = starter.communicate(timeout=120)
        if starter.returncode != 0 or not self._head_in_session():
            self.stop()
            pytest.fail(f"`ray start` failed ({starter.returncode}):\n{output[-4000:]}")
        os.environ.update(LOOPBACK_ENV)

    def _head_in_session(self) -> bool:
        return any("gcs_server" in _cmdline(p) and self.folder in _cmdline(p)
                   for p in self.pids())

    def pids(self) -> list[int]:
        """Every live process the cluster started (its session's; never this process's)."""
        if self.session is None or self.session in (0, 1, _session(os.getpid())):
            return []
        return [p for p in _pids() if _session(p) == self.session and _alive(p)]

    def stop(self) -> None:
        """End the cluster's processes (TERM, then KILL) and remove its folder."""
        for sig, patience in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for p in self.pids():
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + patience
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)

    def listening(self) -> list[tuple[str, int]]:
        """(address, pid) of every TCP socket listening in the cluster or this process."""
        ours = set(self.pids()) | {os.getpid()}
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        found = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            for pid in map(int, re.findall(r"pid=(\d+)", line)):
                if pid in ours:
                    found.append((fields[3], pid))
        return found


_cluster: Cluster | None = None


def cluster() -> Cluster:
    """The tests' cluster, started on first use."""
    global _cluster
    if _cluster is None:
        _cluster = Cluster()
    return _cluster


def stop_cluster() -> None:
    """Disconnect this process from Ray, then end the cluster (if one was started)."""
    global _cluster
    _ray._disconnect()
    if _cluster is not None:
        _cluster.stop()
        _cluster = None


class OnRay:
    """Mix into a PoolTestCase: the same tests, on the tests' cluster (PROCPOOL_BACKEND='ray')."""

    backend = "ray"

    def setUp(self) -> Any:
        self.extra_settings = {**getattr(self, "extra_settings", {}), "PROCPOOL_BACKEND": "ray",
                               "PROCPOOL_RAY_ADDRESS": cluster().address}
        return super().setUp()  # type: ignore[misc]


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
