"""
The worker's side of the Evennia integration: the game's Django, once, and
objects that crossed by reference.

A worker of an Evennia game calls :func:`setup` before its first task
(``PROCPOOL_WORKER_INIT`` names it; ``procpool.evennia`` sets that), so a
task can search and change the game's objects like code in the Server::

    def rename(dbref, name):
        import evennia
        obj = evennia.search_object(dbref)[0]
        obj.key = name
        return obj.key

Typeclassed objects given to ``run_async`` cross as references (Evennia's own
``pack_dbobj`` tuple) and come back to life here through :func:`unpack`; the
host side is procpool/evennia/_refs.py. Imports no Twisted.
"""

from __future__ import annotations

from typing import Any

__all__ = ["setup", "unpack", "plain"]

_ready = False


def setup() -> None:
    """
    Set Django up from the game's settings (``DJANGO_SETTINGS_MODULE``, which
    the worker inherits from the Server) and load Evennia's API, once.
    """
    global _ready
    if _ready:
        return
    import django

    django.setup()
    import evennia

    evennia._init()
    _ready = True


def unpack(packed: tuple[Any, ...]) -> Any:
    """
    The typeclassed object that ``packed`` (Evennia's ``pack_dbobj`` tuple)
    names, read from the game's database; None if it no longer exists.
    """
    setup()
    from evennia.utils.dbserialize import unpack_dbobj

    return unpack_dbobj(packed)


def plain(value: Any) -> Any:
    """What an Attribute's saved list, dict or set becomes on the other side: its plain copy."""
    return value
