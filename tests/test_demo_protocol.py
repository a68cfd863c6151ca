"""The demo's telnet line handling and caller protocol, in process."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from procpool import tasks
from procpool.demo import callbacks
from procpool.demo.server import PlayerConnection, TelnetLineProtocol
from procpool.demo.world import Character, World, set_current
from procpool.dialogue import interactive


class Lines(TelnetLineProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def line_received(self, line: str) -> None:
        self.lines.append(line)


def connected(proto):
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class TelnetLineTests(unittest.TestCase):
    def test_crlf_lf_and_cr_nul_all_end_a_line(self) -> None:
        proto, _ = connected(Lines())
        proto.dataReceived(b"one\r\ntwo\nthree\r\x00\n")
        self.assertEqual(proto.lines, ["one", "two", "three"])

    def test_a_line_split_across_packets_is_joined(self) -> None:
        proto, _ = connected(Lines())
        for chunk in (b"sa", b"y hel", b"lo\r", b"\n"):
            proto.dataReceived(chunk)
        self.assertEqual(proto.lines, ["say hello"])

    def test_negotiation_is_refused_and_never_part_of_a_line(self) -> None:
        proto, transport = connected(Lines())
        # DO ECHO and WILL NAWS split at awkward places, then a subnegotiation
        for chunk in (b"lo\xff", b"\xfd", b"\x01ok\xff\xfb\x1f", b"\xff\xfa\x1f\x00\x50",
                      b"\xff\xf0\r\n"):
            proto.dataReceived(chunk)
        self.assertEqual(proto.lines, ["look"])
        self.assertEqual(transport.value(), b"\xff\xfc\x01\xff\xfe\x1f")  # WONT ECHO, DONT NAWS

    def test_escaped_iac_is_a_data_byte(self) -> None:
        proto, _ = connected(Lines())
        proto.dataReceived("é".encode()[:1] + b"\xff\xff\r\n")
        self.assertEqual(len(proto.lines), 1)
        self.assertNotIn("\xff", proto.lines[0])  # decoded with replacement, not dropped

    def test_output_doubles_iac_and_ends_lines_with_crlf(self) -> None:
        proto, transport = connected(Lines())
        proto.send_line("caf\u00e9 \u00ff")
        self.assertEqual(transport.value(), "caf\u00e9 \u00ff".encode().replace(
            b"\xff", b"\xff\xff") + b"\r\n")

    def test_overlong_line_is_dropped_with_an_error(self) -> None:
        proto, transport = connected(Lines())
        proto.dataReceived(b"x" * 10_000)
        proto.dataReceived(b"\r\nlook\r\n")
        self.assertIn(b"line too long", transport.value())
        self.assertEqual(proto.lines[-1], "look")

    def test_overlong_line_is_dropped_whole_never_run_as_its_tail(self) -> None:
        proto, transport = connected(Lines())
        proto.dataReceived(b"x" * 10_000 + b"quit\r\n")
        proto.dataReceived(b"y" * 9_000)
        proto.dataReceived(b"y" * 9_000 + b"\r\nlook\r\n")
        self.assertEqual(proto.lines, ["look"])
        self.assertEqual(transport.value().count(b"line too long"), 2)

    def test_many_short_lines_in_one_packet_all_arrive(self) -> None:
        proto, transport = connected(Lines())
        lines = [f"say line {n:04d} " + "." * 30 for n in range(400)]   # 18 KB in one read
        proto.dataReceived("".join(f"{line}\r\n" for line in lines).encode())
        self.assertEqual(proto.lines, lines)
        self.assertNotIn(b"too long", transport.value())

    def test_control_characters_never_reach_a_line(self) -> None:
        proto, _ = connected(Lines())
        proto.dataReceived(b"say \x1b[2J\x1b]0;pwned\x07hi\tthere\x7f\xc2\x9b1m\r\n")
        self.assertEqual(proto.lines, ["say [2J]0;pwnedhi there1m"])


class CharacterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World()
        set_current(self.world)
        self.addCleanup(set_current, None)
        self.clock = Clock()
        tasks.set_handler(tasks.TaskHandler(clock=self.clock))
        self.addCleanup(tasks.set_handler, None)

    def login(self, name: str) -> tuple[PlayerConnection, StringTransport]:
        conn, transport = connected(PlayerConnection(self.world))
        conn.dataReceived(name.encode() + b"\r\n")
        self.assertIn(f"Welcome, {name}!".encode(), transport.value())
        transport.clear()
        return conn, transport

    def test_first_player_without_password_is_the_builder(self) -> None:
        ada, _ = self.login("Ada")
        bob, _ = self.login("Bob")
        self.assertTrue(ada.character.is_builder)
        self.assertFalse(bob.character.is_builder)

    def test_taken_and_malformed_names_are_asked_again(self) -> None:
        self.login("Ada")
        conn, transport = connected(PlayerConnection(self.world))
        conn.dataReceived(b"ada\r\n1x\r\nBea\r\n")
        out = transport.value().decode()
        self.assertIn("ada is already playing", out)
        self.assertIn("Names are 2 to 20 letters", out)
        self.assertIn("Welcome, Bea!", out)

    def test_interactive_question_takes_the_next_line_not_a_command(self) -> None:
        conn, transport = self.login("Ada")
        clock = Clock()

        @interactive(clock=clock)
        def ask(caller):
            return (yield "Favourite colour?")

        answers: list[str] = []
        conn.character.follow(ask(conn.character)).addCallback(answers.append)
        self.assertEqual(transport.value(), b"Favourite colour?\r\n")
        conn.dataReceived(b"look\r\n")
        self.assertEqual(answers, ["look"])
        conn.dataReceived(b"look\r\n")  # now a command again
        self.assertIn(b"The Lobby", transport.value())

    def test_leaving_cancels_running_dialogues(self) -> None:
        conn, _ = self.login("Ada")
        clock = Clock()
        closed: list[bool] = []

        @interactive(clock=clock)
        def long(caller):
            try:
                yield 100
            finally:
                closed.append(True)

        d = conn.character.follow(long(conn.character))
        conn.connectionLost(None)
        self.failureResultOf(d)
        self.assertEqual(closed, [True])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(self.world.find("Ada"))

    def test_tell_keeps_messages_for_absent_players(self) -> None:
        callbacks.tell("Ada", "kettle")
        _conn, transport = connected(PlayerConnection(self.world))
        _conn.dataReceived(b"Ada\r\n")
        self.assertIn(b"[delay] kettle\r\n", transport.value())

    def test_broadcast_reaches_everyone(self) -> None:
        _a, ta = self.login("Ada")
        _b, tb = self.login("Bob")
        ta.clear()
        callbacks.broadcast("server restarts soon")
        self.assertEqual(ta.value(), b"[announcement] server restarts soon\r\n")
        self.assertEqual(tb.value(), b"[announcement] server restarts soon\r\n")

    def test_msg_turns_anything_into_lines(self) -> None:
        conn, transport = self.login("Ada")
        character: Character = conn.character
        character.msg([8, 13])
        character.msg("two\nlines")
        self.assertEqual(transport.value(), b"[8, 13]\r\ntwo\r\nlines\r\n")

    def test_leaving_answers_a_pending_question_with_connection_done(self) -> None:
        conn, _ = self.login("Ada")
        seen: list[str] = []

        @interactive(clock=self.clock)
        def ask(caller):
            try:
                yield "Still there?"
            except ConnectionDone:
                seen.append("gone")
                raise

        d = ask(conn.character)          # not followed: nothing would cancel it
        conn.connectionLost(None)
        self.failureResultOf(d, ConnectionDone)
        self.assertEqual(seen, ["gone"])
        self.flushLoggedErrors(ConnectionDone)

    def test_quiz_cannot_start_twice_during_its_pauses(self) -> None:
        conn, transport = self.login("Ada")
        conn.dataReceived(b"quiz\r\n")
        transport.clear()
        conn.dataReceived(b"quiz\r\n")       # during the first quiz's opening pause
        self.assertEqual(transport.value(), b"Finish what you are answering first.\r\n")
        self.clock.advance(1)
        conn.dataReceived(b"42\r\n")
        self.assertIn(b"Right!", transport.value())
        self.assertEqual(len(conn.character.dialogues), 1)

    def test_py_raising_system_exit_is_an_error_line_not_a_dropped_connection(self) -> None:
        ada, transport = self.login("Ada")
        for code in (b"raise SystemExit(3)", b"exit()", b"raise KeyboardInterrupt"):
            transport.clear()
            ada.dataReceived(b"py " + code + b"\r\n")
            self.assertIn(b"Error: ", transport.value())
        self.assertIn(b"Error: KeyboardInterrupt", transport.value())
        self.assertFalse(transport.disconnecting)
        ada.dataReceived(b"py 1+1\r\n")
        self.assertIn(b"2\r\n", transport.value())

    def test_builder_password_checks(self) -> None:
        self.world.builder_password = "pässwörd"
        bob, transport = self.login("Bob")
        bob.dataReceived(b"builder password\r\n")
        self.assertIn(b"Wrong password.", transport.value())
        self.assertFalse(bob.character.is_builder)
        bob.dataReceived(b"py 1\r\n")
        self.assertIn(b"Only builders may use 'py'.", transport.value())
        bob.dataReceived("builder pässwörd\r\n".encode())
        self.assertTrue(bob.character.is_builder)

    def test_tasks_shows_and_cancels_only_your_own(self) -> None:
        self.world.builder_password = "pw"
        bob, tb = self.login("Bob")
        cat, tc = self.login("Cat")
        bob.dataReceived(b"delay 30 bobs tea\r\n")
        bob_task = int(tb.value().split(b"Task ")[1].split(b":")[0])
        cat.dataReceived(b"delay 40 cats tea\r\n")
        tc.clear()
        cat.dataReceived(b"tasks\r\n")
        self.assertIn(b"cats tea", tc.value())
        self.assertNotIn(b"bobs tea", tc.value())
        cat.dataReceived(f"tasks cancel {bob_task}\r\n".encode())
        self.assertIn(f"You have no task {bob_task}.".encode(), tc.value())
        self.clock.advance(30)
        self.assertIn(b"[delay] bobs tea", tb.value())
