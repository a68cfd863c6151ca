#!/usr/bin/env python3
"""
Standalone Evennia test harness (groundwork for the Evennia integration tests).

It creates a throwaway Evennia game in WORKDIR with the Evennia installed in VENV,
makes it listen only on free 127.0.0.1 ports (telnet + AMP; web server, webclient
and websocket disabled, LOCKDOWN_MODE on), migrates, creates the superuser
non-interactively (EVENNIA_SUPERUSER_* environment variables read by
`evennia start`'s check_database()), starts it, logs in over raw-socket telnet,
sends commands, optionally reloads, stops it, and verifies that no process of
this game is left.

CLI:
    python harness.py --venv VENV --workdir WORKDIR \
        [--cmd 'look' --cmd 'py 1+2' ...] [--reload] [--after-reload-cmd ...] \
        [--settings-extra FILE] [--keep] [--json out.json]

As a library (run with any Python >= 3.8; the game itself runs in VENV):
    from harness import Game
    g = Game(venv, workdir)
    g.create(); g.start(); c = g.connect()
    print(c.command("look")); g.reload(c); g.stop(); g.assert_no_processes()

The superuser password is random per run, kept only in memory (and in the
returned Game object); it is never written to disk by this harness.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Telnet:
    """Minimal telnet client: refuses every option, strips IAC sequences and ANSI."""

    def __init__(self, host, port, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.settimeout(0.2)
        self.buf = b""
        self.text = ""  # everything received (decoded, cleaned)
        self._sentinel_n = 0

    def _feed(self, data):
        out = bytearray()
        data = self.buf + data
        self.buf = b""
        i = 0
        while i < len(data):
            b = data[i]
            if b != IAC:
                out.append(b)
                i += 1
                continue
            if i + 1 >= len(data):
                self.buf = data[i:]
                break
            cmd = data[i + 1]
            if cmd in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self.buf = data[i:]
                    break
                opt = data[i + 2]
                if cmd == DO:
                    self.sock.sendall(bytes([IAC, WONT, opt]))
                elif cmd == WILL:
                    self.sock.sendall(bytes([IAC, DONT, opt]))
                i += 3
            elif cmd == SB:
                end = data.find(bytes([IAC, SE]), i)
                if end < 0:
                    self.buf = data[i:]
                    break
                i = end + 2
            elif cmd == IAC:
                out.append(IAC)
                i += 2
            else:
                i += 2
        txt = ANSI_RE.sub("", out.decode("utf-8", "replace")).replace("\r", "")
        self.text += txt
        return txt

    def read_for(self, seconds):
        got = ""
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError("telnet connection closed")
            got += self._feed(data)
        return got

    def read_until(self, pattern, timeout=30):
        """Read until regex `pattern` matches the text received since the call."""
        got = ""
        end = time.time() + timeout
        rx = re.compile(pattern)
        while time.time() < end:
            if rx.search(got):
                return got
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError("telnet connection closed; got so far:\n" + got)
            got += self._feed(data)
        raise TimeoutError(f"pattern {pattern!r} not seen in {timeout}s; got:\n{got}")

    def send(self, line):
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def command(self, line, timeout=30):
        """Send `line`, then an unknown 'sentinel' command; return all output up to the
        sentinel's "Command ... is not available" answer (i.e. the command's own output)."""
        self._sentinel_n += 1
        tag = f"zzsentinel{os.getpid()}x{self._sentinel_n}"
        self.send(line)
        self.send(tag)
        out = self.read_until(re.escape(tag), timeout=timeout)
        # cut at the line that carries the sentinel
        idx = out.find(tag)
        cut = out.rfind("\n", 0, idx)
        return out[: cut if cut >= 0 else idx].strip("\n")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Game:
    def __init__(self, venv, workdir, name="gamedir", settings_extra="", log=print):
        self.venv = os.path.abspath(venv)
        self.workdir = os.path.abspath(workdir)
        self.name = name
        self.gamedir = os.path.join(self.workdir, name)
        self.evennia = os.path.join(self.venv, "bin", "evennia")
        self.settings_extra = settings_extra
        self.username = "harnessadmin"
        self.password = secrets.token_urlsafe(16)
        self.telnet_port = None
        self.amp_port = None
        self.timings = {}
        self.log = log

    # ---- process helpers -------------------------------------------------
    def _env(self):
        env = dict(os.environ)
        env["PATH"] = os.path.join(self.venv, "bin") + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = self.venv
        env.pop("PYTHONPATH", None)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env["EVENNIA_SUPERUSER_USERNAME"] = self.username
        env["EVENNIA_SUPERUSER_PASSWORD"] = self.password
        env["EVENNIA_SUPERUSER_EMAIL"] = ""
        return env

    def run(self, *args, cwd=None, timeout=300, check=True, stdin_text=None):
        cmd = [self.evennia, *args]
        t0 = time.time()
        p = subprocess.run(
            cmd,
            cwd=cwd or self.gamedir,
            env=self._env(),
            input=stdin_text if stdin_text is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        dt = time.time() - t0
        self.log(f"$ evennia {' '.join(args)}  -> rc={p.returncode} ({dt:.2f}s)")
        if check and p.returncode != 0:
            raise RuntimeError(f"evennia {args} failed rc={p.returncode}\n{p.stdout}\n{p.stderr}")
        return p, dt

    def game_pids(self):
        """PIDs of processes whose command line mentions this game dir (twistd server/portal)."""
        pids = []
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if self.gamedir in cmd and ("twistd" in cmd or "evennia" in cmd):
                pids.append((int(d), cmd.strip()))
        return pids

    def worker_pids(self):
        """PIDs of procpool worker processes started for this game (its dir is on their path)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            is_worker = any(arg.endswith(b"/workers/__main__.py") for arg in cmd)
            if is_worker and self.gamedir.encode() in env:
                pids.append(int(d))
        return pids

    def pidfile(self, which):
        path = os.path.join(self.gamedir, "server", f"{which}.pid")
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    # ---- lifecycle -------------------------------------------------------
    def create(self):
        os.makedirs(self.workdir, exist_ok=True)
        if os.path.exists(self.gamedir):
            shutil.rmtree(self.gamedir)
        _, dt_init = self.run("--init", self.name, cwd=self.workdir)
        self.telnet_port, self.amp_port = free_port(), free_port()
        while self.amp_port == self.telnet_port:
            self.amp_port = free_port()
        with open(os.path.join(self.gamedir, "server", "conf", "settings.py"), "a") as f:
            f.write(
                "\n# ---- added by harness.py: loopback only, no web ----\n"
                "LOCKDOWN_MODE = True\n"
                f"TELNET_PORTS = [{self.telnet_port}]\n"
                'TELNET_INTERFACES = ["127.0.0.1"]\n'
                f"AMP_PORT = {self.amp_port}\n"
                'AMP_HOST = "127.0.0.1"\n'
                'AMP_INTERFACE = "127.0.0.1"\n'
                "WEBSERVER_ENABLED = False\n"
                "WEBCLIENT_ENABLED = False\n"
                "WEBSOCKET_CLIENT_ENABLED = False\n"
                'WEBSERVER_INTERFACES = ["127.0.0.1"]\n'
                'WEBSOCKET_CLIENT_INTERFACE = "127.0.0.1"\n'
                f"WEBSERVER_PORTS = [({free_port()}, {free_port()})]\n"
                f"WEBSOCKET_CLIENT_PORT = {free_port()}\n"
                "SSL_ENABLED = False\nSSH_ENABLED = False\n"
                'SSL_INTERFACES = ["127.0.0.1"]\nSSH_INTERFACES = ["127.0.0.1"]\n'
                "GAME_INDEX_ENABLED = False\n"
                + (self.settings_extra or "")
                + "\n"
            )
        _, dt_mig = self.run("migrate", timeout=600)
        self.timings["init_s"] = round(dt_init, 2)
        self.timings["migrate_s"] = round(dt_mig, 2)

    def start(self):
        t0 = time.time()
        p, dt = self.run("start", timeout=300)
        self.timings["start_cmd_s"] = round(dt, 2)
        if "Evennia running" not in p.stdout and "Server started" not in p.stdout:
            raise RuntimeError("evennia start did not report running:\n" + p.stdout + p.stderr)
        # The very first start runs initial_setup, which ends with a 'reset' restart of the
        # Server ("Initial setup complete. Restarting Server once."). Wait for it to finish.
        end = time.time() + 120
        while time.time() < end:
            log = self.server_log()
            i = log.rfind("Initial setup complete")
            if i < 0 or "successfully restarted in 'reset' mode" in log[i:]:
                break
            time.sleep(0.3)
        else:
            raise RuntimeError("initial-setup restart did not finish")
        self.timings.setdefault("start_total_s", round(time.time() - t0, 2))
        return p.stdout

    def connect(self, timeout=60):
        t0 = time.time()
        c = Telnet("127.0.0.1", self.telnet_port, timeout=timeout)
        c.read_until(r"connect", timeout=timeout)  # connection screen
        c.read_for(0.5)
        c.login_output = c.command(f"connect {self.username} {self.password}", timeout=timeout)
        self.timings["login_s"] = round(time.time() - t0, 2)
        return c

    def reload(self, c, timeout=120, restarted_msg=r"Server restarted"):
        """In-game `reload`; returns (output, seconds until the *new* Server answers).

        Waits for settings.SERVER_RESTART_MSG (" ... Server restarted.", broadcast by the
        new Server after its portal sync), then checks a command is answered."""
        t0 = time.time()
        c.send("reload")
        out = c.read_until(restarted_msg, timeout=timeout)
        t_msg = time.time() - t0
        out += c.command("", timeout=timeout)
        dt = time.time() - t0
        self.timings.setdefault("reload_s", []).append(round(dt, 2))
        self.timings.setdefault("reload_until_restarted_msg_s", []).append(round(t_msg, 2))
        return out, dt

    def stop(self):
        p, dt = self.run("stop", timeout=120, check=False)
        self.timings["stop_cmd_s"] = round(dt, 2)
        return p.stdout + p.stderr

    def wait_no_processes(self, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            if not self.game_pids() and not self.worker_pids():
                return []
            time.sleep(0.3)
        return self.game_pids() + [(pid, "procpool worker") for pid in self.worker_pids()]

    def assert_no_processes(self, timeout=20):
        left = self.wait_no_processes(timeout)
        if left:
            raise RuntimeError(f"Evennia processes left: {left}")
        for which in ("server", "portal"):
            if self.pidfile(which):
                raise RuntimeError(f"{which}.pid still present")
        return True

    def kill_leftovers(self):
        """Last resort: SIGKILL only the processes of *this* game (by exact pid)."""
        for pid in [p for p, _ in self.game_pids()] + self.worker_pids():
            try:
                os.kill(pid, 9)
            except OSError:
                pass

    def server_log(self):
        try:
            with open(os.path.join(self.gamedir, "server", "logs", "server.log")) as f:
                return f.read()
        except OSError:
            return ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--cmd", action="append", default=None, help="in-game command (repeatable)")
    ap.add_argument("--reload", action="store_true", help="run in-game `reload` after the commands")
    ap.add_argument("--after-reload-cmd", action="append", default=[])
    ap.add_argument("--settings-extra", help="file whose text is appended to settings.py")
    ap.add_argument("--keep", action="store_true", help="leave the game running (no stop)")
    ap.add_argument("--json", help="write results as JSON here")
    a = ap.parse_args(argv)
    extra = open(a.settings_extra).read() if a.settings_extra else ""
    cmds = a.cmd if a.cmd is not None else ["look", "py 1+2"]

    g = Game(a.venv, a.workdir, settings_extra=extra, log=lambda m: print(m, file=sys.stderr))
    result = {"outputs": [], "ok": False}
    c = None
    try:
        g.create()
        t0 = time.time()
        g.start()
        c = g.connect()
        g.timings["start_to_login_s"] = round(time.time() - t0, 2)
        for cmd in cmds:
            result["outputs"].append({"cmd": cmd, "out": c.command(cmd)})
        if a.reload:
            out, dt = g.reload(c)
            result["outputs"].append({"cmd": "reload", "out": out, "seconds": round(dt, 2)})
            for cmd in a.after_reload_cmd:
                result["outputs"].append({"cmd": cmd, "out": c.command(cmd)})
        result["ok"] = True
    except Exception as e:  # report, then still stop
        result["error"] = repr(e)
    finally:
        if c:
            c.close()
        if not a.keep:
            result["stop"] = g.stop()
            left = g.wait_no_processes()
            if left:
                result["leftover_processes"] = left
                g.kill_leftovers()
                result["ok"] = False
            result["no_processes_left"] = not left
    result["timings"] = g.timings
    result["ports"] = {"telnet": g.telnet_port, "amp": g.amp_port}
    result["gamedir"] = g.gamedir
    txt = json.dumps(result, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(txt)
    print(txt)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
