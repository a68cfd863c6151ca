"""
``PROCPOOL_REPLACE_EVENNIA = True``: Evennia's ``run_async``, ``delay`` and
``interactive`` become procpool's, so game code moves to processes unedited.

Both places game code imports them from are switched (``evennia.utils`` and
``evennia.utils.utils``). A module that bound the names before the Server
started its services (``from evennia.utils import delay`` in a module the
settings import) keeps Evennia's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NAMES", "install", "installed", "uninstall"]

NAMES = ("run_async", "delay", "interactive")
_saved: dict[tuple[str, str], Any] = {}


def _modules() -> list[Any]:
    import evennia.utils
    import evennia.utils.utils

    return [evennia.utils.utils, evennia.utils]


def install() -> None:
    """Point Evennia's names at procpool's (remembering Evennia's own)."""
    import procpool

    for module in _modules():
        for name in NAMES:
            _saved.setdefault((module.__name__, name), getattr(module, name))
            setattr(module, name, getattr(procpool, name))


def installed() -> bool:
    """Are Evennia's names procpool's now?"""
    return bool(_saved)


def uninstall() -> None:
    """Give Evennia its own names back."""
    for module in _modules():
        for name in NAMES:
            if (module.__name__, name) in _saved:
                setattr(module, name, _saved.pop((module.__name__, name)))
