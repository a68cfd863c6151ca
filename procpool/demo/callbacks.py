"""
Callbacks for the demo's delays. They are module-level functions taking only
strings, so a persistent ``procpool.delay`` can store them and call them again
after the server restarts::

    procpool.delay(60, tell, "Ada", "Tea is ready.", persistent=True)
"""

from __future__ import annotations

from twisted.logger import Logger

from procpool.demo import world as _world

log = Logger()


def tell(name: str, text: str) -> None:
    """Send ``text`` to the player called ``name``, now or when they next connect."""
    world = _world.current()
    if world is None:
        log.warn("no demo world running; message for {name} dropped: {text}", name=name,
                 text=text)
        return
    world.tell(name, f"[delay] {text}")


def broadcast(text: str) -> None:
    """Send ``text`` to everyone connected."""
    world = _world.current()
    if world is None:
        log.warn("no demo world running; broadcast dropped: {text}", text=text)
        return
    world.broadcast(f"[announcement] {text}")
