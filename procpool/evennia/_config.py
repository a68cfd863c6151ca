"""The game's Django settings as procpool's settings, with Evennia's defaults."""

from __future__ import annotations

import os
from typing import Any

from procpool import settings

__all__ = ["ADAPTER_SETTINGS", "configure_from_django", "evennia_defaults"]

# The adapter's own settings (read from Django's settings, not procpool's table).
ADAPTER_SETTINGS = {
    "PROCPOOL_REPLACE_EVENNIA": "point evennia.utils' run_async, delay and interactive "
                                "at procpool's (default False)",
    "PROCPOOL_LOG_LEVEL": "the least level of procpool's lines in server.log "
                          "(default 'info'; 'debug' shows every worker start)",
}


def evennia_defaults(game_dir: str) -> dict[str, Any]:
    """
    What differs from procpool's defaults inside a game: the task database
    beside Evennia's in ``server/``, workers that set the game's Django up,
    a grace short enough for Evennia's restart, and malloc left alone.
    """
    return {
        "PROCPOOL_DATABASE": os.path.join(game_dir, "server", "procpool.sqlite3"),
        "PROCPOOL_WORKER_INIT": "workers.evennia:setup",
        "PROCPOOL_STOP_GRACE": 0.5,
        "PROCPOOL_TUNE_MALLOC": False,
    }


def configure_from_django(django_settings: Any) -> list[str]:
    """
    Configure procpool from ``PROCPOOL_*`` names in the game's settings; an
    environment variable of the same name beats Evennia's default but not
    the game's settings. Returns warnings for names that mean nothing.
    """
    values = {name: value for name, value in evennia_defaults(django_settings.GAME_DIR).items()
              if name not in os.environ}
    warnings = []
    for name in dir(django_settings):
        if not name.startswith("PROCPOOL_"):
            continue
        if name in settings.SETTINGS:
            values[name] = getattr(django_settings, name)
        elif name not in ADAPTER_SETTINGS:
            warnings.append(f"settings.{name} is not a procpool setting (ignored); "
                            "see the README's settings table")
    settings.configure(**values)
    return warnings
