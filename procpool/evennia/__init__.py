"""
procpool inside an Evennia game, enabled by one line in the game's
``server/conf/settings.py``::

    SERVER_SERVICES_PLUGIN_MODULES += ["procpool.evennia"]

Evennia then calls :func:`start_plugin_services` as the Server starts, and
procpool:

- reads ``PROCPOOL_*`` from the game's settings (Evennia's defaults: the task
  database in ``server/procpool.sqlite3``, a 0.5 s stop grace, malloc left
  alone, workers that set the game's Django up before their first task);
- starts its workers with the Server and stops them with it: ``reload`` and
  ``shutdown`` kill tasks still running after ``PROCPOOL_STOP_GRACE`` (their
  Deferreds fail with ``PoolStopped``), so the new Server always comes up;
- loads persistent delays when Evennia loads its own task handler (after the
  Portal has given the sessions back), so an overdue ``caller.msg`` reaches
  its player;
- lets typeclassed objects cross to workers and into stored delays by
  reference, and lets ``@interactive`` ask characters and accounts through
  Evennia's own input mechanism;
- with ``PROCPOOL_REPLACE_EVENNIA = True``, points ``evennia.utils``'
  ``run_async``, ``delay`` and ``interactive`` at procpool's.

The recipe, what differs from Evennia's own functions, and the measured
figures: docs/evennia.md. Installed with the extra ``procpool[evennia]``.
"""

from __future__ import annotations

from typing import Any

from procpool.evennia._service import ProcPoolService

__all__ = ["ProcPoolService", "start_plugin_services"]


def start_plugin_services(server: Any) -> None:
    """
    Evennia's plugin hook: attach procpool's service to the Server (Evennia
    calls this for each module in ``SERVER_SERVICES_PLUGIN_MODULES``)::

        SERVER_SERVICES_PLUGIN_MODULES += ["procpool.evennia"]
    """
    ProcPoolService(server).setServiceParent(server)
