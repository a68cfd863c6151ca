"""
The errors a sandboxed run can fail with (host side).

    >>> from sandbox.errors import SandboxError
    >>> str(SandboxError("ValueError", "x"))
    'ValueError: x'
"""

from __future__ import annotations

from procpool.errors import ProcPoolError

__all__ = ["SandboxError", "SandboxUnavailable", "SandboxBusy"]


class SandboxError(ProcPoolError):
    """
    Player code failed, or its confined child misbehaved.

    ``type_name`` is the error's type name as seen in the child (for example
    ``"ValueError"``, ``"SyntaxError"``, or ``"SandboxCrashed"`` for a child
    that died), ``message`` its text and ``traceback`` the child's traceback
    text, if any. Example: ``SandboxError("ValueError", "x")`` reads
    ``"ValueError: x"``.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class SandboxUnavailable(ProcPoolError):
    """
    Sandboxed runs are refused: confinement could not be set up here.

    Set ``PROCPOOL_SANDBOX_DEGRADED`` to run without it (warns on every run).
    Example: ``SandboxUnavailable("seccomp: libseccomp not found")``.
    """


class SandboxBusy(SandboxUnavailable):
    """
    The caller already has its quota of sandboxed runs in progress.

    Refused at once rather than queued, so one player cannot build up a
    backlog; ``PROCPOOL_SANDBOX_PER_CALLER`` sets the quota. Example:
    ``SandboxBusy("caller already has 2 sandboxed runs in progress")``.
    """
