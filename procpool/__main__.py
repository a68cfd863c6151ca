"""
The ``procpool`` command line. One subcommand so far::

    procpool demo [--host 127.0.0.1] [--port 4000] [--builder-password PW]

``python -m procpool demo`` does the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procpool", description="procpool: a process pool for Twisted servers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo", help="run the demo telnet game server",
        description="Run the demo game server: connect with `telnet HOST PORT`.")
    demo.add_argument("--host", default="127.0.0.1", help="interface to listen on "
                      "(default: %(default)s)")
    demo.add_argument("--port", type=int, default=4000,
                      help="TCP port; 0 picks a free one (default: %(default)s)")
    demo.add_argument("--builder-password", default=None, metavar="PW",
                      help="players who type 'builder PW' become builders; without it "
                      "the first player to log in is the builder")
    return parser


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
    _parser().error(f"unknown command {args.command!r}")  # argparse normally catches it
    return 2


if __name__ == "__main__":
    sys.exit(main())
