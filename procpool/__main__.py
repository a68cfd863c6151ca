"""
The ``procpool`` command line (README, "The command line")::

    procpool --version
    procpool demo [--host 127.0.0.1] [--port 4000] [--builder-password PW]
    procpool tasks [--database D] [list | show ID | remove ID]

``python -m procpool ...`` does the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _demo_epilog() -> str:
    from procpool.demo.server import DEMO_DEFAULTS
    defaults = ", ".join(f"{name}={value}" for name, value in DEMO_DEFAULTS.items())
    return (f"The demo sets {defaults} (persistent delays go to the file "
            f"{DEMO_DEFAULTS['PROCPOOL_DATABASE']!r} in the working directory); a PROCPOOL_* "
            "environment variable of the same name overrides each, and the other PROCPOOL_* "
            "settings (README, Settings) apply as they are. Commands and a session: "
            "docs/demo.md.")


def _parser() -> argparse.ArgumentParser:
    from procpool import __version__
    parser = argparse.ArgumentParser(
        prog="procpool", description="procpool: a process pool for Twisted servers.")
    parser.add_argument("--version", action="version", version=f"procpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo", help="run the demo telnet game server", epilog=_demo_epilog(),
        description="Run the demo game server: connect with `telnet HOST PORT`.")
    demo.add_argument("--host", default="127.0.0.1", help="interface to listen on "
                      "(default: %(default)s)")
    demo.add_argument("--port", type=int, default=4000,
                      help="TCP port; 0 picks a free one (default: %(default)s)")
    demo.add_argument("--builder-password", default=None, metavar="PW",
                      help="players who type 'builder PW' become builders; without it "
                      "the first player to log in is the builder")
    _tasks_parser(sub)
    return parser


def _tasks_parser(sub: Any) -> None:
    tasks = sub.add_parser(
        "tasks", help="list, show or remove stored persistent tasks",
        description="Look at and clean the persistent tasks stored in a database "
        "(SQLite or PostgreSQL). Callbacks are loaded from the current directory too: run "
        "it where the server runs. Stop the server before removing: a running server "
        "still runs the tasks it loaded.")
    tasks.add_argument("--database", metavar="D", default=None,
                       help="a SQLite path, sqlite:///path, postgresql:// DSN or libpq "
                       "key=value string (default: the PROCPOOL_DATABASE setting)")
    tasks.add_argument("action", nargs="?", default="list", choices=("list", "show", "remove"),
                       help="list (the default): id, due time, callback, state; show ID: one "
                       "task with its arguments; remove ID: delete it (exit 1 if there is none)")
    tasks.add_argument("task_id", nargs="?", type=int, metavar="ID")


def _start_logging() -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Entry point of the ``procpool`` console script; returns the exit code.

    Example: ``main(["demo", "--port", "4001"])`` runs the demo on port 4001.
    """
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if not 0 <= args.port <= 65535:
            _parser().error(f"--port must be 0 to 65535, got {args.port}")
        _start_logging()
        from procpool.demo.server import run

        return run(host=args.host, port=args.port, builder_password=args.builder_password)
    if args.command == "tasks":
        if (args.action == "list") != (args.task_id is None):
            _parser().error("tasks: show and remove take a task ID, list takes none")
        from procpool.storage.listing import run_tasks_command

        return run_tasks_command(args.database, args.action, args.task_id)
    _parser().error(f"unknown command {args.command!r}")  # argparse normally catches it
    return 2


if __name__ == "__main__":
    sys.exit(main())
