"""
The demo game server: a line-based telnet server whose players share one room.

Start-up, in order: settings (a pool of 2 workers and a SQLite file unless the
environment says otherwise) -> ``procpool.start()`` (starts the workers and
loads persistent delays) -> listen -> print the ready line. Ctrl-C or SIGTERM
stops the listener, then ``procpool.stop()``.

Example::

    $ procpool demo --port 4000
    procpool demo ready: telnet 127.0.0.1 4000
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool.demo import commands
from procpool.demo.world import Character, World, set_current
from procpool.dialogue import interactive

log = Logger()

# Telnet bytes (RFC 854): IAC starts a command; WILL/WONT/DO/DONT take one
# option byte; SB ... IAC SE is a subnegotiation.
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{1,19}$")
MAX_LINE = 8192

DEMO_DEFAULTS = {
    "PROCPOOL_MIN_NPROC": 2,
    "PROCPOOL_MAX_NPROC": 2,
    "PROCPOOL_DATABASE": "procpool-demo.sqlite3",
}


class TelnetLineProtocol(Protocol):
    """
    Lines in, lines out, for telnet clients and plain sockets alike.

    Telnet negotiation is read and politely refused (WONT/DONT), never shown
    as text; lines may end in CRLF, LF or CR NUL. Control characters (escape
    sequences that would repaint other players' terminals) are dropped. A line
    longer than MAX_LINE bytes is dropped whole, up to its end, with one error.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "data"  # data, iac, option, sb, sb_iac
        self._verb = 0
        self._overlong = False  # dropping the rest of a line that was too long

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        for byte in data:
            self._feed(byte)

    def _data_byte(self, byte: int) -> None:
        if byte == 0x0A:
            raw, self._buffer = bytes(self._buffer), bytearray()
            if self._overlong:
                self._overlong = False
            elif self.transport is not None:
                self.line_received(_clean(raw))
        elif not self._overlong:
            self._buffer.append(byte)
            if len(self._buffer) > MAX_LINE:
                self._buffer.clear()
                self._overlong = True
                self.send_line(f"Error: line too long (most is {MAX_LINE} bytes); dropped.")

    def _feed(self, byte: int) -> None:
        state = self._state
        if state == "data":
            if byte == IAC:
                self._state = "iac"
            else:
                self._data_byte(byte)
        elif state == "iac":
            if byte == IAC:  # an escaped 255 data byte
                self._data_byte(byte)
                self._state = "data"
            elif byte in (WILL, WONT, DO, DONT):
                self._verb = byte
                self._state = "option"
            elif byte == SB:
                self._state = "sb"
            else:  # NOP, AYT, GA and friends: nothing to do
                self._state = "data"
        elif state == "option":
            self._refuse(self._verb, byte)
            self._state = "data"
        elif state == "sb":
            if byte == IAC:
                self._state = "sb_iac"
        elif state == "sb_iac":
            self._state = "data" if byte == SE else "sb"

    def _refuse(self, verb: int, option: int) -> None:
        if self.transport is None:
            return
        if verb == DO:
            self.transport.write(bytes([IAC, WONT, option]))
        elif verb == WILL:
            self.transport.write(bytes([IAC, DONT, option]))

    def send_line(self, text: str) -> None:
        """Write one line of text to the client."""
        if self.transport is not None:
            data = text.encode("utf-8", "replace").replace(b"\xff", b"\xff\xff")
            self.transport.write(data + b"\r\n")

    def disconnect(self) -> None:
        """Close the connection after what was written has gone out."""
        if self.transport is not None:
            self.transport.loseConnection()

    def line_received(self, line: str) -> None:
        raise NotImplementedError


def _clean(raw: bytes) -> str:
    """One received line as text: decoded, tabs as spaces, control characters gone."""
    text = raw.decode("utf-8", "replace").replace("\t", " ")
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc")


@interactive
def login(caller: Character, world: World) -> Any:
    """Ask for a name until a free, well-formed one is given."""
    while True:
        name = (yield "What is your name?").strip()
        if not NAME_RE.match(name):
            caller.msg("Names are 2 to 20 letters, digits, '-' or '_', starting with a letter.")
        elif world.find(name) is not None:
            caller.msg(f"{name} is already playing; pick another name.")
        else:
            return name


class PlayerConnection(TelnetLineProtocol):
    """One player's connection: logs in, then runs each line as a command."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.character = Character(self, world)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        peer = self.transport.getPeer()
        log.info("connection from {host}:{port}", host=getattr(peer, "host", "?"),
                 port=getattr(peer, "port", "?"))
        for line in banner(self.world):
            self.send_line(line)
        self.character.follow(login(self.character, self.world)).addCallbacks(
            self._logged_in, lambda _f: None)

    def _logged_in(self, name: str) -> None:
        self.world.enter(self.character, name)
        log.info("{name} logged in", name=name)
        role = "a builder" if self.character.is_builder else "a player"
        self.send_line(f"Welcome, {name}! You are {role}. Type 'help' for the commands.")
        commands.execute(self.character, "look")
        # after the welcome: e.g. a delay that came due while the server was down
        self.world.deliver_kept(self.character)

    def line_received(self, line: str) -> None:
        """
        One line from the player: a dialogue's input while one runs (even
        during its pauses), else a command; ``quit`` always quits (docs/demo.md).
        """
        character = self.character
        if character.in_dialogue and commands.runs_during_dialogue(
                line, pausing=character.waiting_for_input is None):
            commands.execute(character, line)
            return
        if character.take_input(line):
            return
        if character.name is None:
            return  # not logged in: only the login dialogue reads lines
        commands.execute(character, line)

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        log.info("{name} disconnected", name=self.character.name or "a visitor")
        self.world.leave(self.character)


class DemoFactory(Factory):
    """Makes a :class:`PlayerConnection` for each client of one :class:`World`."""

    def __init__(self, world: World) -> None:
        self.world = world

    def buildProtocol(self, addr: Any) -> PlayerConnection:  # noqa: N802
        conn = PlayerConnection(self.world)
        conn.factory = self
        return conn


def banner(world: World) -> list[str]:
    """The lines a new connection sees first."""
    if world.builder_password is None:
        who = "the first player to log in is the builder (no --builder-password set)"
    else:
        who = "builders type 'builder <password>' (set with --builder-password)"
    return [
        "=" * 64,
        " procpool demo: a Twisted game server with a process pool",
        " py run_async(...) runs in a worker process; eval runs in a sandbox;",
        " delay sets timers (persistent ones survive a restart); quiz asks.",
        f" Builders: {who}.",
        "=" * 64,
    ]


def apply_defaults() -> None:
    """Use the demo's settings unless the environment already sets them."""
    import procpool

    procpool.configure(**{name: value for name, value in DEMO_DEFAULTS.items()
                          if name not in os.environ})


@inlineCallbacks
def start(reactor: Any, host: str, port: int,
          builder_password: str | None) -> Any:
    """
    Start the pool, the task handler and the listener; fires with the
    listening port. Example: ``start(reactor, "127.0.0.1", 0, None)``.
    """
    import procpool

    apply_defaults()
    world = World(builder_password)
    set_current(world)
    log.info("starting the worker pool and loading persistent tasks")
    yield procpool.start()
    listening: IListeningPort = reactor.listenTCP(port, DemoFactory(world), interface=host)
    return listening


@inlineCallbacks
def stop(listening: IListeningPort | None) -> Any:
    """Stop listening, then the pool, the sandbox and the task handler."""
    import procpool

    if listening is not None:
        yield listening.stopListening()
    yield procpool.stop()
    set_current(None)


def run(host: str = "127.0.0.1", port: int = 4000, builder_password: str | None = None) -> int:
    """Run the demo server until Ctrl-C or SIGTERM; returns the exit code."""
    from twisted.internet import reactor

    outcome = {"code": 0}
    listening: list[IListeningPort] = []

    def ready(port_: IListeningPort) -> None:
        listening.append(port_)
        address = port_.getHost()
        print(f"procpool demo ready: telnet {address.host} {address.port}", flush=True)
        log.info("listening on {host}:{port}", host=address.host, port=address.port)

    def failed(failure: Failure) -> None:
        outcome["code"] = 1
        from twisted.internet.error import CannotListenError

        if failure.check(CannotListenError):
            print(f"procpool demo: cannot listen on {host}:{port}: "
                  f"{failure.value.socketError}; choose another with --port",
                  file=sys.stderr, flush=True)
        else:
            log.failure("the demo server could not start", failure=failure)
        reactor.stop()

    def shutting_down() -> Deferred[Any]:
        log.info("shutting down")
        return stop(listening[0] if listening else None)

    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    reactor.callWhenRunning(
        lambda: start(reactor, host, port, builder_password).addCallbacks(ready, failed))
    reactor.run()
    return outcome["code"]
