"""
Helpers for the demo's end-to-end tests: the real server as a subprocess
(``python -m procpool demo --port 0``) and a small blocking telnet client.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READY = re.compile(r"procpool demo ready: telnet (\S+) (\d+)")


class DemoServer:
    """
    One run of the demo server in ``workdir`` (its database lives there).

    ``with DemoServer(tmp_path) as server: client = server.connect("Ada")``
    """

    def __init__(self, workdir: Path, *args: str, start_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.args = args
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.clients: list[TelnetClient] = []
        self.run_number = 0

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"server-{self.run_number}.out"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"server-{self.run_number}.err"

    def start(self) -> DemoServer:
        self.run_number += 1
        env = dict(os.environ)
        env["PROCPOOL_DATABASE"] = str(self.workdir / "demo.sqlite3")
        env.pop("PROCPOOL_ENABLED", None)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "procpool", "demo", "--port", "0", *self.args],
                cwd=self.workdir, env=env, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            match = READY.search(self.stdout_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.log()
        self.kill()
        raise AssertionError(f"demo server did not become ready:\n{log}")

    def log(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout\n{out}\n--- stderr\n{err}"

    def connect(self, name: str | None = None, timeout: float = 10.0) -> TelnetClient:
        """A connected client, logged in as ``name`` unless it is None."""
        client = TelnetClient("127.0.0.1", self.port, timeout=timeout)
        self.clients.append(client)
        client.read_until("What is your name?")
        if name is not None:
            client.send(name)
            client.read_until(f"Welcome, {name}!")
            client.read_until("Here with you:")
        return client

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the server with ``sig`` and wait; returns its exit code."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"demo server did not stop on {sig!r}:\n{self.log()}")
        self._reap_group()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap_group()

    def _reap_group(self) -> None:
        # The server ran in its own session; whatever it started must not outlive the test.
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


class TelnetClient:
    """A blocking line client: ``send(line)``, ``read_until(text)``."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""
        self.transcript: list[str] = []

    def send(self, line: str) -> None:
        self.transcript.append(f"> {line}")
        self.sock.sendall(line.encode() + b"\r\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, text: str | re.Pattern[str], timeout: float | None = None) -> str:
        """Read until ``text`` (a string or regex) appears; returns everything read up to it."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            decoded = self.buffer.decode("utf-8", "replace")
            if isinstance(text, str):
                index = decoded.find(text)
                end = index + len(text) if index >= 0 else -1
            else:
                match = text.search(decoded)
                end = match.end() if match else -1
            if end >= 0:
                # keep the rest of the line and what follows for the next read
                consumed = decoded[:end]
                self.buffer = decoded[end:].encode("utf-8")
                self.transcript.append(consumed)
                return consumed
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; got {decoded!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"connection closed waiting for {text!r}; got {decoded!r}")
            self.buffer += chunk

    def read_line_with(self, text: str, timeout: float | None = None) -> str:
        """The whole line that contains ``text``."""
        pattern = re.compile(r"[^\n]*" + re.escape(text) + r"[^\n]*\r?\n")
        return self.read_until(pattern, timeout).splitlines()[-1]

    def command(self, line: str, expect: str, timeout: float | None = None) -> str:
        self.send(line)
        return self.read_line_with(expect, timeout)

    def is_open(self) -> bool:
        """True while the server keeps the connection (checked with a harmless command)."""
        try:
            self.send("look")
            self.read_until("Here with you:", timeout=5)
            return True
        except (ConnectionError, OSError, AssertionError):
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
