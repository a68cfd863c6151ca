"""
The demo's tiny world: one room, and a character for each connected player.

A :class:`Character` is what procpool's APIs see as a ``caller``: it offers
``msg(text)`` for output and ``get_input(prompt, callback)`` for
``@interactive`` questions (see :mod:`procpool.dialogue`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger

log = Logger()

# Lines a player may type ahead of a pausing dialogue's next question.
MAX_HELD_LINES = 20


class Output(Protocol):
    """Where a character's text goes: the player's connection."""

    def send_line(self, text: str) -> None: ...
    def disconnect(self) -> None: ...
    def line_received(self, line: str) -> None: ...


class Room:
    """A place with a description and the characters in it."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.contents: list[Character] = []

    def msg_contents(self, text: Any, exclude: Character | None = None) -> None:
        """Send ``text`` to everyone here but ``exclude``; e.g. ``here.msg_contents("Boom!")``."""
        for character in list(self.contents):
            if character is not exclude:
                character.msg(text)

    def __repr__(self) -> str:
        return f"<Room {self.name!r}>"


class Character:
    """
    A connected player. ``msg`` sends a line; ``get_input`` routes the next
    line to a callback instead of the command parser.

    While a dialogue this character follows runs, every line is its input: a
    line typed during one of its pauses is held for its next question. Lines
    still held when the last dialogue ends are then run as typed (commands).

    Example (in the demo's ``py``): ``self.msg("hello")``, ``here.msg_contents("hi all")``.
    """

    def __init__(self, output: Output, world: World) -> None:
        self.output = output
        self.world = world
        self.name: str | None = None
        self.is_builder = False
        self.room: Room | None = None
        self._input: tuple[str, Callable[[Any], None]] | None = None
        self._held: deque[str] = deque()  # typed during a dialogue's pause
        self.dialogues: set[Deferred[Any]] = set()

    # --- the caller protocol ------------------------------------------------

    def msg(self, text: Any = "", **_ignored: Any) -> None:
        """Send ``text`` (anything; it is turned into a string) to the player."""
        if not isinstance(text, str):
            text = repr(text) if isinstance(text, bytes) else str(text)
        for line in text.splitlines() or [""]:
            self.output.send_line(line)

    def get_input(self, prompt: str, callback: Callable[[Any], None]) -> None:
        """Give the player's next line to ``callback`` instead of running it as a command."""
        if self._held:  # typed ahead, during the dialogue's pause
            callback(self._held.popleft())
            return
        self._input = (prompt, callback)

    # --- used by the server ---------------------------------------------------

    @property
    def waiting_for_input(self) -> str | None:
        """The prompt of the question the player is answering, if any."""
        return self._input[0] if self._input else None

    @property
    def in_dialogue(self) -> bool:
        """True while a question waits or a followed dialogue runs (its lines are its own)."""
        return self._input is not None or bool(self.dialogues)

    def take_input(self, line: str) -> bool:
        """
        Hand ``line`` to a pending ``get_input`` callback, or hold it for the
        next question while a followed dialogue pauses; False when no dialogue
        wants it (then it is a command).
        """
        if self._input is None:
            if not self.dialogues:
                return False
            if len(self._held) >= MAX_HELD_LINES:
                self.msg(f"Too many lines typed ahead (most is {MAX_HELD_LINES}); "
                         "this one is dropped.")
            else:
                self._held.append(line)
            return True
        _prompt, callback = self._input
        self._input = None
        callback(line)
        return True

    def follow(self, dialogue: Deferred[Any]) -> Deferred[Any]:
        """Remember a running dialogue so that it is cancelled if the player leaves."""
        self.dialogues.add(dialogue)

        def done(result: Any) -> Any:
            self.dialogues.discard(dialogue)
            if not self.dialogues:
                self._run_held()
            return result

        return dialogue.addBoth(done)

    def _run_held(self) -> None:
        # No dialogue is left to answer: lines typed ahead are commands after all.
        while self._held and not self.in_dialogue:
            self.output.line_received(self._held.popleft())

    def left(self) -> None:
        """
        The connection closed: cancel the dialogues this character follows, and
        answer a question still waiting for input with ``ConnectionDone`` (raised
        at the dialogue's ``yield``), so that no dialogue waits forever.
        """
        self._held.clear()  # never run lines for someone who has gone
        for dialogue in list(self.dialogues):
            dialogue.cancel()
        pending, self._input = self._input, None
        if pending is not None:
            pending[1](ConnectionDone("the player disconnected"))

    def __repr__(self) -> str:
        return f"<Character {self.name or '(logging in)'}>"


class World:
    """Everyone connected, the one room, and messages kept for absent players."""

    def __init__(self, builder_password: str | None = None) -> None:
        self.builder_password = builder_password
        self.lobby = Room(
            "The Lobby",
            "A bright hall with a humming rack of worker processes along one wall. "
            "Type 'help' for what you can do here.")
        self.characters: dict[str, Character] = {}
        self.mailbox: dict[str, list[str]] = {}
        self.first_builder_taken = False

    def find(self, name: str) -> Character | None:
        """The connected character called ``name`` (any case), or None."""
        return self.characters.get(name.lower())

    def __iter__(self) -> Iterator[Character]:
        return iter(list(self.characters.values()))

    def enter(self, character: Character, name: str) -> None:
        """
        Log ``character`` in as ``name`` and put it in the lobby. Messages kept
        for ``name`` wait for :meth:`deliver_kept` (the server calls it after
        its welcome).
        """
        character.name = name
        self.characters[name.lower()] = character
        if self.builder_password is None and not self.first_builder_taken:
            self.first_builder_taken = True
            character.is_builder = True
        self.lobby.msg_contents(f"{name} has arrived.")
        self.lobby.contents.append(character)
        character.room = self.lobby

    def deliver_kept(self, character: Character) -> None:
        """Send ``character`` the messages kept for it while it was away (see :meth:`tell`)."""
        for text in self.mailbox.pop((character.name or "").lower(), []):
            character.msg(text)

    def leave(self, character: Character) -> None:
        """Take a character out of the world when its connection closes."""
        character.left()
        if character.name and self.characters.get(character.name.lower()) is character:
            del self.characters[character.name.lower()]
        if character.room is not None:
            character.room.contents.remove(character)
            character.room.msg_contents(f"{character.name} has left.")
            character.room = None

    def tell(self, name: str, text: str) -> bool:
        """Send ``text`` to ``name`` now, or keep it for when they connect; True if sent."""
        character = self.find(name)
        if character is not None:
            character.msg(text)
            return True
        self.mailbox.setdefault(name.lower(), []).append(text)
        log.info("kept a message for {name}, who is not connected", name=name)
        return False

    def broadcast(self, text: str) -> None:
        """Send ``text`` to every connected player."""
        for character in self:
            character.msg(text)


_current: World | None = None


def set_current(world: World | None) -> None:
    """Make ``world`` the one that module-level (persistent) callbacks talk to."""
    global _current
    _current = world


def current() -> World | None:
    """The running demo's world, or None outside a running server."""
    return _current
