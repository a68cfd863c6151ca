"""The Twisted service that ties procpool's life to the Evennia Server's."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from procpool import api, settings, tasks
from procpool.evennia import _config, _input, _log, _refs, _switch

__all__ = ["ProcPoolService"]

log = Logger()


class ProcPoolService(Service):
    """
    procpool's service under Evennia's Server service: starts the workers
    when the Server starts, loads persistent delays after the Portal sync,
    stops everything (within ``PROCPOOL_STOP_GRACE``) when the Server stops.

    @ivar server: Evennia's Server service (``EVENNIA_SERVER_SERVICE``).
    @ivar started: fires when the workers answer (or failed to start).
    @ivar loaded: fires when the stored delays are loaded.
    """

    name = "procpool"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.started: defer.Deferred[Any] = defer.Deferred()
        self.loaded: defer.Deferred[Any] = defer.Deferred()
        self._stopping: defer.Deferred[Any] | None = None

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Configure from the game's settings, install the glue, start the workers."""
        super().startService()
        from django.conf import settings as django_settings

        for warning in _config.configure_from_django(django_settings):
            log.warn("{warning}", warning=warning)
        _log.install(getattr(django_settings, "PROCPOOL_LOG_LEVEL", "info"))
        _refs.install()
        _input.install()
        if getattr(django_settings, "PROCPOOL_REPLACE_EVENNIA", False):
            _switch.install()
        api._start_watchdog()
        self._after_portal_sync()
        self._at_server_stop()
        if not settings.get("PROCPOOL_ENABLED"):
            self.started.callback(None)
            return
        starting = api.get_pool().start()
        starting.addErrback(self._start_failed)
        starting.chainDeferred(self.started)

    def _start_failed(self, failure: Any) -> None:
        if not self.running:  # the Server stopped (Evennia's first start resets once)
            log.info("procpool's workers were stopped while starting")
            return
        log.failure("procpool's workers did not start", failure)

    def _after_portal_sync(self) -> None:
        # Evennia loads its own task handler in at_post_portal_sync, once the
        # Portal has given the sessions back; procpool's delays load there too.
        original = self.server.at_post_portal_sync

        def at_post_portal_sync(mode: str, *args: Any, **kwargs: Any) -> Any:
            result = original(mode, *args, **kwargs)
            self.load_tasks()
            return result

        self.server.at_post_portal_sync = at_post_portal_sync

    def _at_server_stop(self) -> None:
        # Evennia's Server calls at_server_stop last of its shutdown hooks (for
        # a reload too), then stops its reactor 1 s later; the Portal starts
        # the new Server as soon as the old one's AMP link drops, and the new
        # one exits if the old is still alive. So the workers' stop (and its
        # grace) starts here, a second before the services stop, not there.
        original = self.server.at_server_stop

        def at_server_stop(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._stop()
            return result

        self.server.at_server_stop = at_server_stop

    def load_tasks(self) -> defer.Deferred[Any]:
        """Load (and fire the overdue of) the persistent delays."""
        loading = tasks.get_handler().start()
        loading.addErrback(lambda f: log.failure("procpool's stored delays did not load", f))
        loading.chainDeferred(self.loaded)
        return loading

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - Twisted's name
        """Stop the workers (killing what outlives the grace) and close the task store."""
        super().stopService()
        if _switch.installed():
            _switch.uninstall()
        return self._stop()

    def _stop(self) -> defer.Deferred[Any]:
        if self._stopping is None:
            self._stopping = api.stop()
            self._stopping.addErrback(lambda f: log.failure("procpool did not stop cleanly", f))
        done: defer.Deferred[Any] = defer.Deferred()
        self._stopping.addBoth(lambda result: (done.callback(None), result)[1])
        return done
