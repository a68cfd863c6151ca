"""procpool's lines in Evennia's server.log: named, and no debug chatter unless asked."""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from zope.interface import implementer

from procpool.errors import SettingError

__all__ = ["install"]


@implementer(ILogObserver)
class _Named:
    """Prefix each line with 'procpool: ' (Evennia's format shows no namespace)."""

    def __init__(self, observer: Any) -> None:
        self.observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        fmt = event.get("log_format")
        if fmt is not None and not str(fmt).startswith("procpool: "):
            event = dict(event, log_format="procpool: " + str(fmt))
        self.observer(event)


def _level(name: Any) -> LogLevel:
    try:
        return LogLevel.levelWithName(str(name).lower())
    except Exception:
        raise SettingError(f"PROCPOOL_LOG_LEVEL must be one of debug, info, warn, error, "
                           f"critical, got {name!r}") from None


def install(level: Any = "info") -> None:
    """Send every procpool logger loaded so far through the level filter and the name."""
    observer = FilteringLogObserver(_Named(globalLogPublisher),
                                    [LogLevelFilterPredicate(defaultLogLevel=_level(level))])
    for name, module in list(sys.modules.items()):
        if not name.startswith(("procpool.", "sandbox.")) or name.startswith("procpool.demo"):
            continue
        log = getattr(module, "log", None)
        if isinstance(log, Logger):
            log.observer = observer
