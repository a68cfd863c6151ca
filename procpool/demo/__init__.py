"""
procpool's demo game server: every part of procpool, live, over telnet.

Run it with ``procpool demo`` (or ``python -m procpool demo``) and connect
with ``telnet 127.0.0.1 4000``. The walkthrough is ``docs/demo.md``.

Layout: :mod:`~procpool.demo.server` (telnet lines, login, start-up),
:mod:`~procpool.demo.world` (room and characters: the ``caller`` protocol),
:mod:`~procpool.demo.commands` (what players type),
:mod:`~procpool.demo.callbacks` (module-level callbacks for persistent delays).

Example::

    from procpool.demo.server import run
    run(port=4000)   # blocks; Ctrl-C stops it
"""
