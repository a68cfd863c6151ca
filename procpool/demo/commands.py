"""
The demo's commands. Each is a function ``(character, args) -> None``
registered with :func:`command`; :func:`execute` finds and runs one, and turns
any error into a one-line message (never a dropped connection).

Where each command's work happens:

- ``py``: in this (the server's) process, for builders: it is how a builder
  calls ``run_async(...)``, which sends the heavy part to a worker process.
- ``eval``: in procpool's sandbox (``procpool.limited_exec``), for everyone.
- ``delay``/``tasks``: procpool's task handler (``procpool.delay``).
- ``quiz``: an ``@interactive`` dialogue in this process.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from procpool.demo import callbacks
from procpool.demo.world import Character
from procpool.dialogue import interactive

log = Logger()

Handler = Callable[[Character, str], None]


class CommandError(Exception):
    """A command cannot be done as asked; the message goes to the player as is."""


@dataclass
class Command:
    key: str
    func: Handler
    usage: str
    summary: str
    builder_only: bool = False
    aliases: tuple[str, ...] = ()
    starts_dialogue: bool = False


COMMANDS: dict[str, Command] = {}
_BY_NAME: dict[str, Command] = {}


def command(key: str, usage: str, summary: str, *, builder_only: bool = False,
            aliases: tuple[str, ...] = (),
            starts_dialogue: bool = False) -> Callable[[Handler], Handler]:
    """Register a command; e.g. ``@command("look", "look", "Describe the room.")``."""
    def register(func: Handler) -> Handler:
        cmd = Command(key, func, usage, summary, builder_only, aliases, starts_dialogue)
        COMMANDS[key] = cmd
        for name in (key, *aliases):
            _BY_NAME[name] = cmd
        return func
    return register


def one_line(error: BaseException | Failure) -> str:
    """``TypeName: message`` on one line, however long or multi-line the message."""
    if isinstance(error, Failure):
        error = error.value
    text = " ".join(str(error).split())
    name = type(error).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{name}: {text}" if text else name


def _named(line: str) -> Command | None:
    word = line.strip().partition(" ")[0]
    return _BY_NAME.get(word.lower()) if word else None


def runs_during_dialogue(line: str, pausing: bool) -> bool:
    """
    True when ``line`` is a command even while a dialogue takes the player's
    lines: ``quit`` (always), and during a pause a command that would start a
    dialogue (it answers "Finish what you are answering first."). See docs/demo.md.
    """
    cmd = _named(line)
    if cmd is None:
        return False
    return cmd.key == "quit" or (pausing and cmd.starts_dialogue)


def execute(character: Character, line: str) -> None:
    """Run one line of player input as a command; errors become one-line messages."""
    line = line.strip()
    if not line:
        return
    word, _, args = line.partition(" ")
    cmd = _BY_NAME.get(word.lower())
    if cmd is None:
        character.msg(f"Huh? Unknown command {word[:40]!r}. Type 'help' for the commands.")
        return
    if cmd.builder_only and not character.is_builder:
        character.msg(f"Only builders may use '{cmd.key}'.")
        return
    try:
        cmd.func(character, args.strip())
    except CommandError as exc:
        character.msg(str(exc))
    except Exception as exc:
        log.failure("command {line!r} from {name} failed", line=line, name=character.name)
        character.msg(f"Error: {one_line(exc)}")


# --- talking and looking ------------------------------------------------------


@command("help", "help [command]", "List the commands, or explain one.")
def cmd_help(character: Character, args: str) -> None:
    if args:
        cmd = _BY_NAME.get(args.split()[0].lower())
        if cmd is None:
            raise CommandError(f"No command {args!r}. Type 'help' for the list.")
        character.msg(f"{cmd.usage}: {cmd.summary}")
        return
    lines = ["Commands:"]
    for cmd in COMMANDS.values():
        if cmd.builder_only and not character.is_builder:
            continue
        lines.append(f"  {cmd.usage:<36} {cmd.summary}")
    character.msg("\n".join(lines))


@command("look", "look", "Describe the room and who is here.", aliases=("l",))
def cmd_look(character: Character, args: str) -> None:
    room = character.room
    assert room is not None
    others = [c.name for c in room.contents if c is not character]
    character.msg(f"{room.name}\n{room.description}")
    character.msg("Here with you: " + (", ".join(sorted(others)) if others else "nobody"))


@command("say", "say <text>", "Say something to everyone in the room.", aliases=("'",))
def cmd_say(character: Character, args: str) -> None:
    if not args:
        raise CommandError("Say what? Usage: say <text>")
    room = character.room
    assert room is not None
    character.msg(f'You say, "{args}"')
    room.msg_contents(f'{character.name} says, "{args}"', exclude=character)


@command("quit", "quit", "Leave the game.", aliases=("exit", "logout"))
def cmd_quit(character: Character, args: str) -> None:
    character.msg("Goodbye!")
    character.output.disconnect()


@command("builder", "builder <password>", "Become a builder (when the server has a password).")
def cmd_builder(character: Character, args: str) -> None:
    world = character.world
    if character.is_builder:
        raise CommandError("You are a builder already.")
    if world.builder_password is None:
        raise CommandError("This server has no builder password: its first player is "
                           "the builder.")
    if not hmac.compare_digest(args.encode(), world.builder_password.encode()):
        raise CommandError("Wrong password.")
    character.is_builder = True
    character.msg("You are now a builder: 'py' is yours.")


# --- py: Python in the server process, for builders ----------------------------


def _py_namespace(character: Character) -> dict[str, Any]:
    import procpool

    def show(*values: Any, sep: str = " ", **_ignored: Any) -> None:
        character.msg(sep.join(str(v) for v in values))

    return {
        "__name__": "__py__",
        "self": character,
        "me": character,
        "here": character.room,
        "world": character.world,
        "procpool": procpool,
        "run_async": procpool.run_async,
        "delay": procpool.delay,
        "print": show,
    }


@command("py", "py <python>",
         "Builders: run Python in the server (self, here, run_async, delay).",
         builder_only=True, aliases=("@py", "!"))
def cmd_py(character: Character, args: str) -> None:
    if not args:
        raise CommandError("Usage: py <python>   e.g. py run_async('_return(1+2)', "
                           "at_return=self.msg)")
    character.msg(f">>> {args}")
    namespace = _py_namespace(character)
    try:
        code = compile(args, "<py>", "eval")
    except SyntaxError:
        code = None
    try:
        if code is not None:
            result = eval(code, namespace)  # noqa: S307 - builders only, by design
            if isinstance(result, Deferred):
                character.msg("<Deferred: running; its callbacks will answer>")
            elif result is not None:
                character.msg(repr(result))
        else:
            exec(compile(args, "<py>", "exec"), namespace)  # noqa: S102 - builders only
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: still an error
        # Anything escaping here would reach Twisted's transport and drop the
        # builder's connection (and exit() would try to leave the server).
        log.info("py from {name} raised {error}", name=character.name, error=one_line(exc))
        character.msg(f"Error: {one_line(exc)}")


# --- eval: untrusted Python in the sandbox, for everyone -------------------------


@command("eval", "eval <python>", "Run Python in the sandbox and see the result.",
         aliases=("calc",))
def cmd_eval(character: Character, args: str) -> None:
    if not args:
        raise CommandError("Usage: eval <python>   e.g. eval sum(range(10))")
    import procpool

    def returned(result: Any) -> None:
        character.msg(f"Result: {result!r}")

    def failed(failure: Failure) -> None:
        character.msg(f"Error: {one_line(failure)}")

    procpool.limited_exec(args, at_return=returned, at_err=failed, caller=character.name)


# --- delay and tasks -------------------------------------------------------------


def _demo_tasks(character: Character) -> dict[int, tuple[Any, str, str, float, bool]]:
    """
    Delays set with the 'delay' command that ``character`` may see, by id:
    (handle, owner, text, seconds left, persistent). Read from the task handler itself, so
    persistent delays loaded after a restart are listed too.
    """
    from procpool.tasks import get_handler

    handler = get_handler()
    now = handler.clock.seconds()
    found = {}
    for handle in handler.handles(callbacks.tell):
        if len(handle.args) != 2 or not handle.active():
            continue
        owner, text = handle.args
        if character.is_builder or owner.lower() == (character.name or "").lower():
            found[handle.get_id()] = (handle, owner, text, max(0.0, handle.due - now),
                                      handle.persistent)
    return found


@command("delay", "delay <seconds> <text> [persistent]",
         "Send yourself <text> later; 'persistent' survives a restart.")
def cmd_delay(character: Character, args: str) -> None:
    import procpool

    words = args.split()
    persistent = bool(words) and words[-1].lower() == "persistent"
    if persistent:
        words = words[:-1]
    if len(words) < 2:
        raise CommandError("Usage: delay <seconds> <text> [persistent]")
    try:
        seconds = float(words[0])
    except ValueError:
        raise CommandError(f"Not a number of seconds: {words[0]!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise CommandError("The delay must be zero or more seconds.")
    text = " ".join(words[1:])
    assert character.name is not None
    task = procpool.delay(seconds, callbacks.tell, character.name, text, persistent=persistent)
    kind = "persistent " if persistent else ""
    character.msg(f"Task {task.get_id()}: {kind}delay of {seconds:g} s set.")


@command("tasks", "tasks [cancel <id>]", "List your delays, or cancel one.")
def cmd_tasks(character: Character, args: str) -> None:
    mine = _demo_tasks(character)
    words = args.split()
    if words and words[0].lower() == "cancel":
        if len(words) != 2:
            raise CommandError("Usage: tasks cancel <id>")
        try:
            task_id = int(words[1])
        except ValueError:
            raise CommandError(f"Not a task id: {words[1]!r}")
        if task_id not in mine:
            raise CommandError(f"You have no task {task_id}.")
        mine[task_id][0].remove()
        character.msg(f"Task {task_id} cancelled.")
        return
    if words:
        raise CommandError("Usage: tasks [cancel <id>]")
    if not mine:
        character.msg("You have no tasks running.")
        return
    lines = ["Tasks:"]
    for task_id, (_handle, owner, text, left, persistent) in sorted(mine.items()):
        kind = " persistent" if persistent else ""
        who = f" for {owner}" if owner.lower() != (character.name or "").lower() else ""
        lines.append(f"  {task_id}: in {left:.0f} s{kind}{who}: {text}")
    character.msg("\n".join(lines))


# --- quiz: an @interactive dialogue --------------------------------------------------

QUESTIONS = [
    ("What is 6 times 7?", ("42", "forty-two", "forty two"), "6 x 7 = 42."),
    ("Which word pauses an @interactive function: yield or sleep?", ("yield",),
     "'yield 5' pauses five seconds; time.sleep would freeze the whole server."),
    ("Can a builder's run_async CPU loop stop this server answering you? (yes/no)",
     ("no", "n"), "it runs in a worker process, so the server keeps answering."),
]


@interactive
def quiz(caller: Character) -> Any:
    """Three questions with pauses between them; fires with the score."""
    caller.msg("Quiz time! Three questions; type each answer on its own line.")
    yield 1
    score = 0
    for question, good, why in QUESTIONS:
        answer = yield question
        if answer.strip().lower() in good:
            score += 1
            caller.msg("Right!")
        else:
            caller.msg(f"Not quite: {why}")
        yield 0.5
    caller.msg(f"Quiz over: you scored {score} of {len(QUESTIONS)}.")
    return score


@command("quiz", "quiz", "Answer three questions (an @interactive dialogue).",
         starts_dialogue=True)
def cmd_quiz(character: Character, args: str) -> None:
    if character.in_dialogue:
        # A second dialogue's question would take the first one's input: it
        # would wait forever.
        raise CommandError("Finish what you are answering first.")

    def scored(score: int) -> None:
        room = character.room
        if room is not None and score == len(QUESTIONS):
            room.msg_contents(f"{character.name} aced the quiz!", exclude=character)

    def broke(failure: Failure) -> None:
        if not failure.check(CancelledError):  # cancelled: the player left
            character.msg(f"The quiz broke: {one_line(failure)}")

    character.follow(quiz(character)).addCallbacks(scored, broke)


# --- stats ---------------------------------------------------------------------------


_OUTCOMES = (("done", "tasks_done"), ("failed", "tasks_failed"),
             ("timed out", "tasks_timed_out"), ("crashed", "tasks_crashed"),
             ("cancelled", "tasks_cancelled"), ("rejected", "tasks_rejected"),
             ("moved", "tasks_moved"))
_PROCESSES = (("started", "workers_started"), ("crashed", "workers_crashed"),
              ("recycled", "workers_recycled"), ("failed to start", "workers_failed_to_start"))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def stats_lines(figures: dict[str, Any]) -> list[str]:
    """
    ``procpool.stats()`` as an operator reads it, one topic a line (each figure
    is explained in docs/operations.md)::

        Pool figures (running, local backend):
          workers:   2 (busy 1, idle 1, starting 0; pids 4711, 4712)
          ...
    """
    f = dict(figures)

    def take(key: str, default: Any = None) -> Any:
        return f.pop(key, default)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    pids = ", ".join(str(pid) for pid in take("pids", [])) or "none"
    state, backend, address = take("state", "?"), take("backend"), take("address")
    where = f", {backend} backend" if backend else ""
    where += f" at {address}" if address else ""
    lines = [f"Pool figures ({state}{where}):",
             f"  workers:   {take('workers', 0)} (busy {take('busy', 0)}, idle {take('idle', 0)}"
             f", starting {take('starting', 0)}; pids {pids})",
             f"  queue:     {take('queued', 0)} waiting for a worker ({take('queued_bytes', 0)}"
             f" bytes), {take('in_flight', 0)} in flight",
             "  tasks:     " + ", ".join(f"{name} {take(key, 0)}" for name, key in _OUTCOMES),
             "  processes: " + ", ".join(f"{name} {take(key, 0)}" for name, key in _PROCESSES),
             f"  latency:   p50 {ms(take('latency_p50_ms'))}, p99 {ms(take('latency_p99_ms'))}"
             " (submit to answer, recent tasks)"]
    limit = take("per_caller_limit", 0)
    in_pool, waiting = take("callers_in_pool", 0), take("callers_waiting", 0)
    tasks_waiting = take("tasks_waiting_for_share", 0)
    if limit:
        lines.append(f"  shares:    at most {limit} per caller; {_plural(in_pool, 'caller')} in the"
                     f" pool, {_plural(waiting, 'caller')} waiting with "
                     f"{_plural(tasks_waiting, 'task')}")
    else:
        lines.append("  shares:    off (PROCPOOL_PER_CALLER=0)")
    threshold, stalls = take("watchdog_threshold"), take("watchdog_stalls", 0)
    last_s, last_in = take("watchdog_last_stall_s"), take("watchdog_last_stall_in")
    if threshold is None:
        lines.append("  watchdog:  off (PROCPOOL_WATCHDOG)")
    else:
        last = f", the last {last_s:.2f} s in {last_in}" if last_in else ""
        lines.append(f"  watchdog:  on at {threshold:g} s; {_plural(stalls, 'stall')} logged{last}")
    url = take("metrics_url")
    lines.append(f"  metrics:   {url}" if url else "  metrics:   off (PROCPOOL_METRICS_PORT)")
    lines += [f"  {key}: {value}" for key, value in sorted(f.items())]  # figures added later
    return lines


@command("stats", "stats", "The process pool's figures (procpool.stats()).")
def cmd_stats(character: Character, args: str) -> None:
    import procpool

    character.msg("\n".join(stats_lines(procpool.stats())))
