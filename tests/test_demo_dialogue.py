"""
The demo's dialogues over a real telnet connection to a real demo server
(``python -m procpool demo``): lines typed while a dialogue runs are its input,
even during its pauses; ``quit`` always quits; messages kept while a player was
away (a delay that came due while the server was down) come after the welcome.
"""

from __future__ import annotations

import itertools
import re
import signal
import time

import pytest

from tests.demo_support import DemoServer

_names = (f"Q{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with DemoServer(tmp_path_factory.mktemp("demo-dialogue"), "--builder-password", "pw") as srv:
        yield srv


def test_a_line_typed_during_the_pause_before_a_question_answers_it(server):
    bob = server.connect(next(_names))
    # One packet: "42" reaches the server during the quiz's opening pause.
    bob.send_raw(b"quiz\r\n42\r\n")
    upto = bob.read_until("What is 6 times 7?", timeout=10)
    assert "Huh?" not in upto, "the line ran as a command"
    after = bob.read_until(re.compile(r"Right!|Not quite|Huh\?"), timeout=10)
    assert after.endswith("Right!"), bob.transcript


def test_a_line_typed_during_the_pause_between_questions_answers_the_next_one(server):
    bob = server.connect(next(_names))
    bob.send("quiz")
    bob.read_until("What is 6 times 7?", timeout=10)
    # One packet: "42" answers the first question, "yield" arrives in the pause after it.
    bob.send_raw(b"42\r\nyield\r\n")
    bob.read_until("Right!")
    upto = bob.read_until("yield or sleep?", timeout=10)
    assert "Huh?" not in upto, "the line ran as a command"
    after = bob.read_until(re.compile(r"Right!|Not quite|Huh\?"), timeout=10)
    assert after.endswith("Right!"), bob.transcript
    bob.read_until("(yes/no)", timeout=10)
    bob.send("no")
    assert bob.read_line_with("Quiz over", timeout=10) == "Quiz over: you scored 3 of 3."
    assert not any("Huh?" in part for part in bob.transcript)
    assert bob.is_open()


def test_a_line_typed_in_the_last_pause_runs_as_a_command_once_the_quiz_ends(server):
    bob = server.connect(next(_names))
    bob.send("quiz")
    for question, answer in (("6 times 7?", "42"), ("yield or sleep?", "yield")):
        bob.read_until(question, timeout=10)
        bob.send(answer)
    bob.read_until("(yes/no)", timeout=10)
    bob.send_raw(b"no\r\nsay after the quiz\r\n")
    bob.read_until("Quiz over", timeout=10)
    assert bob.read_line_with("after the quiz", timeout=10) == 'You say, "after the quiz"'


def _assert_closed(client) -> None:
    client.sock.settimeout(10)
    rest = b""
    while True:
        chunk = client.sock.recv(65536)
        if not chunk:
            break
        rest += chunk
        assert len(rest) < 65536, rest


def test_quit_during_a_question_quits_rather_than_answers(server):
    bob = server.connect(next(_names))
    bob.send("quiz")
    bob.read_until("What is 6 times 7?", timeout=10)
    bob.send("quit")
    said = bob.read_until(re.compile(r"Goodbye!|Not quite"), timeout=10)
    assert said.endswith("Goodbye!"), bob.transcript
    _assert_closed(bob)


def test_quit_during_a_pause_quits(server):
    bob = server.connect(next(_names))
    bob.send_raw(b"quiz\r\nquit\r\n")
    bob.read_until("Goodbye!", timeout=10)
    _assert_closed(bob)


def test_quit_at_the_name_prompt_quits(server):
    visitor = server.connect(None)
    visitor.send("quit")
    said = visitor.read_until(re.compile(r"Goodbye!|Welcome"), timeout=10)
    assert said.endswith("Goodbye!"), visitor.transcript
    _assert_closed(visitor)


def test_a_delay_due_while_the_server_was_down_comes_after_the_welcome(tmp_path):
    srv = DemoServer(tmp_path)
    try:
        srv.start()
        ada = srv.connect("Ada")
        line = ada.command("delay 3 the kettle persistent", "Task")
        due = time.monotonic() + 3
        assert "persistent delay of 3 s set" in line
        srv.stop(signal.SIGTERM)  # well before it is due
        time.sleep(max(0.0, due + 1 - time.monotonic()))  # due while the server is down
        srv.start()
        ada = srv.connect(None)
        ada.send("Ada")
        upto = ada.read_until("[delay] the kettle", timeout=30)
        assert "Welcome, Ada!" in upto, ada.transcript
    finally:
        srv.stop()
        srv.kill()
