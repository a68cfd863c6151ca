"""The @interactive section of the contract, line by line (time from a Clock)."""

from __future__ import annotations

import gc
import math
import warnings

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from procpool import interactive as interactive_from_package
from procpool import returnValue as return_value_from_package
from procpool.dialogue import interactive, returnValue


class Player:
    """The input protocol as a server provides it: msg() and get_input()."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.prompts: list[str] = []
        self._callback = None

    def msg(self, text: str) -> None:
        self.sent.append(text)

    def get_input(self, prompt: str, callback) -> None:
        self.prompts.append(prompt)
        self._callback = callback

    @property
    def waiting(self) -> bool:
        return self._callback is not None

    def type(self, line) -> None:
        callback, self._callback = self._callback, None
        assert callback is not None, "nothing asked for input"
        callback(line)


class EagerPlayer(Player):
    """A caller whose answers are already typed: get_input answers at once."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = list(answers)

    def get_input(self, prompt: str, callback) -> None:
        self.prompts.append(prompt)
        callback(self.answers.pop(0))


class LogCapture:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def failures(self) -> list[dict]:
        return [e for e in self.events if e.get("log_failure") is not None]


class InteractiveTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.logged = LogCapture()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [], "a pause was left scheduled")

    # --- exported names -------------------------------------------------------

    def test_package_exports_interactive_and_returnValue(self) -> None:
        self.assertIs(interactive_from_package, interactive)
        self.assertIs(return_value_from_package, returnValue)

    # --- yield <seconds> ------------------------------------------------------

    def test_yield_number_pauses_that_many_seconds_without_blocking(self) -> None:
        steps: list[str] = []

        @interactive(clock=self.clock)
        def wait(caller):
            steps.append("before")
            yield 5
            steps.append("after")

        d = wait(Player())
        self.assertEqual(steps, ["before"])  # the call returned while paused
        self.assertNoResult(d)
        self.clock.advance(4.9)
        self.assertEqual(steps, ["before"])
        self.clock.advance(0.1)
        self.assertEqual(steps, ["before", "after"])
        self.assertIsNone(self.successResultOf(d))

    def test_yield_float_pauses_fractions_of_a_second(self) -> None:
        @interactive(clock=self.clock)
        def wait():
            yield 0.25
            return "done"

        d = wait()
        self.clock.advance(0.2)
        self.assertNoResult(d)
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(d), "done")

    def test_yield_zero_resumes_on_the_clocks_next_turn(self) -> None:
        @interactive(clock=self.clock)
        def wait():
            yield 0
            return "done"

        d = wait()
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), "done")

    def test_two_dialogues_pause_side_by_side(self) -> None:
        order: list[str] = []

        @interactive(clock=self.clock)
        def tick(label, seconds):
            yield seconds
            order.append(label)

        slow, fast = tick("slow", 3), tick("fast", 1)
        self.clock.advance(1)
        self.assertEqual(order, ["fast"])
        self.clock.advance(2)
        self.assertEqual(order, ["fast", "slow"])
        self.successResultOf(slow)
        self.successResultOf(fast)

    def test_pause_needs_no_caller(self) -> None:
        @interactive(clock=self.clock)
        def no_caller():
            yield 1
            return 7

        d = no_caller()
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), 7)

    def test_default_clock_is_the_task_handlers_clock(self) -> None:
        from procpool import tasks

        previous = tasks.get_handler()
        tasks.set_handler(tasks.TaskHandler(clock=self.clock))
        self.addCleanup(tasks.set_handler, previous)

        @interactive
        def wait():
            yield 10
            return "woke"

        d = wait()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), "woke")

    def test_negative_or_non_finite_pause_is_a_value_error(self) -> None:
        for bad in (-1, math.nan, math.inf):
            @interactive(clock=self.clock)
            def wait(seconds=bad):
                yield seconds

            failure = self.failureResultOf(wait(), ValueError)
            self.assertIn("finite number of seconds", str(failure.value))
            self.assertIn(repr(bad), str(failure.value))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)

    # --- answer = yield "Question?" -------------------------------------------

    def test_question_is_sent_with_msg_and_answer_is_the_next_line(self) -> None:
        @interactive(clock=self.clock)
        def ask(caller):
            name = yield "What is your name?"
            caller.msg(f"Hello, {name}!")
            return name

        player = Player()
        d = ask(player)
        self.assertEqual(player.sent, ["What is your name?"])
        self.assertEqual(player.prompts, ["What is your name?"])
        self.assertNoResult(d)
        player.type("Ada")
        self.assertEqual(player.sent, ["What is your name?", "Hello, Ada!"])
        self.assertEqual(self.successResultOf(d), "Ada")

    def test_caller_may_be_passed_by_keyword(self) -> None:
        @interactive(clock=self.clock)
        def ask(greeting, caller):
            answer = yield f"{greeting}?"
            return answer

        player = Player()
        d = ask("Hi", caller=player)
        player.type("yes")
        self.assertEqual(player.sent, ["Hi?"])
        self.assertEqual(self.successResultOf(d), "yes")

    def test_caller_may_come_through_var_keyword(self) -> None:
        @interactive(clock=self.clock)
        def ask(**kwargs):
            answer = yield "Colour?"
            return answer

        player = Player()
        d = ask(caller=player)
        player.type("blue")
        self.assertEqual(self.successResultOf(d), "blue")

    def test_caller_on_a_method_after_self(self) -> None:
        class Room:
            @interactive(clock=self.clock)
            def welcome(self, caller):
                answer = yield "Wipe your feet?"
                return (self, answer)

        room, player = Room(), Player()
        d = room.welcome(player)
        player.type("done")
        self.assertEqual(self.successResultOf(d), (room, "done"))

    def test_questions_and_pauses_mix(self) -> None:
        @interactive(clock=self.clock)
        def chat(caller):
            first = yield "One?"
            yield 2
            second = yield "Two?"
            return [first, second]

        player = Player()
        d = chat(player)
        player.type("1")
        self.assertEqual(player.sent, ["One?"])
        self.clock.advance(2)
        self.assertEqual(player.sent, ["One?", "Two?"])
        player.type("2")
        self.assertEqual(self.successResultOf(d), ["1", "2"])

    def test_answers_given_inside_get_input_resume_in_order(self) -> None:
        @interactive(clock=self.clock)
        def survey(caller):
            answers = []
            for question in ("A?", "B?", "C?"):
                answers.append((yield question))
            return answers

        player = EagerPlayer(["a", "b", "c"])
        d = survey(player)
        self.assertEqual(self.successResultOf(d), ["a", "b", "c"])
        self.assertEqual(player.sent, ["A?", "B?", "C?"])

    def test_second_answer_to_one_question_is_ignored(self) -> None:
        @interactive(clock=self.clock)
        def ask(caller):
            first = yield "Once?"
            second = yield "Twice?"
            return [first, second]

        player = Player()
        d = ask(player)
        callback = player._callback
        callback("x")
        callback("stale")  # the server called back twice for the first question
        self.assertEqual(player.sent, ["Once?", "Twice?"])
        player.type("y")
        self.assertEqual(self.successResultOf(d), ["x", "y"])

    def test_exception_as_answer_is_raised_at_the_yield(self) -> None:
        seen: list[str] = []

        @interactive(clock=self.clock)
        def ask(caller):
            try:
                yield "Still there?"
            except ConnectionDone:
                seen.append("gone")
                return "left"

        for answer in (ConnectionDone(), Failure(ConnectionDone())):
            player = Player()
            d = ask(player)
            player.type(answer)
            self.assertEqual(self.successResultOf(d), "left")
        self.assertEqual(seen, ["gone", "gone"])

    def test_question_without_caller_argument_is_a_clear_error(self) -> None:
        @interactive(clock=self.clock)
        def lonely():
            yield "Anyone?"

        failure = self.failureResultOf(lonely(), TypeError)
        self.assertIn("'Anyone?'", str(failure.value))
        self.assertIn("argument named 'caller'", str(failure.value))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_question_with_caller_none_is_a_clear_error(self) -> None:
        @interactive(clock=self.clock)
        def ask(caller=None):
            yield "Who?"

        failure = self.failureResultOf(ask(), TypeError)
        self.assertIn("no caller to ask", str(failure.value))
        self.flushLoggedErrors(TypeError)

    def test_caller_without_input_protocol_is_a_clear_error(self) -> None:
        class Mute:
            def msg(self, text):
                pass

        @interactive(clock=self.clock)
        def ask(caller):
            yield "Hello?"

        failure = self.failureResultOf(ask(Mute()), TypeError)
        self.assertIn("get_input(prompt, callback)", str(failure.value))
        self.flushLoggedErrors(TypeError)

    def test_error_is_raised_at_the_yield_so_the_dialogue_can_handle_it(self) -> None:
        @interactive(clock=self.clock)
        def careful():
            try:
                yield "No caller here?"
            except TypeError:
                return "handled"

        self.assertEqual(self.successResultOf(careful()), "handled")
        self.assertEqual(self.logged.failures(), [])

    # --- other yielded values --------------------------------------------------

    def test_yielding_anything_else_is_a_clear_error(self) -> None:
        for bad in (None, [5], b"bytes", True, object()):
            @interactive(clock=self.clock)
            def odd(caller, value=bad):
                yield value

            failure = self.failureResultOf(odd(Player()), TypeError)
            self.assertIn("yield a number of seconds to pause or a string", str(failure.value))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 5)

    # --- the end ---------------------------------------------------------------

    def test_returnValue_ends_it_with_a_value(self) -> None:
        after: list[str] = []

        @interactive(clock=self.clock)
        def pick(caller):
            colour = yield "Red or blue?"
            returnValue(colour.upper())
            after.append("not reached")

        player = Player()
        d = pick(player)
        player.type("red")
        self.assertEqual(self.successResultOf(d), "RED")
        self.assertEqual(after, [])

    def test_returnValue_passes_through_except_exception(self) -> None:
        @interactive(clock=self.clock)
        def guarded():
            yield 1
            try:
                returnValue(3)
            except Exception:
                return "swallowed"

        d = guarded()
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), 3)

    def test_plain_return_ends_it_with_a_value(self) -> None:
        @interactive(clock=self.clock)
        def total(caller):
            a = yield "a?"
            b = yield "b?"
            return int(a) + int(b)

        player = Player()
        d = total(player)
        player.type("2")
        player.type("40")
        self.assertEqual(self.successResultOf(d), 42)

    def test_twisted_returnValue_still_ends_it(self) -> None:
        from twisted.internet import defer

        @interactive(clock=self.clock)
        def old_style():
            yield 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                defer.returnValue("old")

        d = old_style()
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), "old")

    def test_function_that_never_yields_still_returns_a_deferred(self) -> None:
        @interactive(clock=self.clock)
        def plain(caller):
            return "at once"

        @interactive(clock=self.clock)
        def plain_return_value(caller):
            returnValue("also")

        self.assertEqual(self.successResultOf(plain(Player())), "at once")
        self.assertEqual(self.successResultOf(plain_return_value(Player())), "also")

    def test_exception_fails_the_deferred_and_is_logged_once(self) -> None:
        @interactive(clock=self.clock)
        def broken(caller):
            answer = yield "Number?"
            return 10 / int(answer)

        player = Player()
        d = broken(player)
        player.type("0")
        failure = self.failureResultOf(d, ZeroDivisionError)
        del d, failure
        gc.collect()  # a second "Unhandled error in Deferred" would be logged here
        logged = self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(len(logged), 1)
        [event] = self.logged.failures()
        self.assertIn("broken", event["name"])
        self.assertIn("failed", event["log_format"])

    def test_unobserved_failure_is_logged_not_lost(self) -> None:
        @interactive(clock=self.clock)
        def broken():
            yield 1
            raise KeyError("lost?")

        broken()  # nobody keeps the Deferred
        self.clock.advance(1)
        gc.collect()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_exception_before_the_first_yield_fails_the_deferred(self) -> None:
        @interactive(clock=self.clock)
        def early(caller):
            raise RuntimeError("at once")
            yield 1

        self.failureResultOf(early(Player()), RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_call_arguments_raise_at_the_call(self) -> None:
        @interactive(clock=self.clock)
        def needs_two(caller, other):
            yield 1

        with self.assertRaises(TypeError):
            needs_two(Player())

    def test_async_functions_are_refused_at_decoration(self) -> None:
        async def coroutine(caller):
            return 1

        with self.assertRaises(TypeError):
            interactive(coroutine)

    def test_wraps_keeps_the_name_and_docstring(self) -> None:
        @interactive
        def quiz(caller):
            """Ask things."""
            yield "?"

        self.assertEqual(quiz.__name__, "quiz")
        self.assertEqual(quiz.__doc__, "Ask things.")

    # --- cancelling -------------------------------------------------------------

    def test_cancel_stops_the_pause_and_closes_the_generator(self) -> None:
        cleaned: list[str] = []

        @interactive(clock=self.clock)
        def long_wait():
            try:
                yield 100
                cleaned.append("resumed")
            finally:
                cleaned.append("finally")

        d = long_wait()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cleaned, ["finally"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.logged.failures(), [])

    def test_answer_after_cancel_is_ignored(self) -> None:
        @interactive(clock=self.clock)
        def ask(caller):
            yield "Anything?"
            caller.msg("resumed")

        player = Player()
        d = ask(player)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        player.type("late")
        self.assertEqual(player.sent, ["Anything?"])
