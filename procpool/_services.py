"""
The subsystems ``procpool.stop()`` stops, each registered by itself on first use.

The sandbox registers when its pool is created, so ``procpool.api`` never
imports the sandbox to stop it (and the sandbox never imports the api)::

    register_stop("sandbox", sandbox.host.stop)
    yield stop_registered()          # every registered stop, together
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

_stoppers: dict[str, Callable[[], Any]] = {}


def register_stop(name: str, stop: Callable[[], Any]) -> None:
    """Have ``procpool.stop()`` call ``stop()`` (it may return a Deferred); once per name."""
    _stoppers[name] = stop


def stop_registered() -> list[defer.Deferred[Any]]:
    """Call every registered stop; one Deferred each."""
    return [defer.maybeDeferred(stop) for stop in list(_stoppers.values())]
