"""
``@interactive`` with Evennia's characters and accounts as callers.

A question routes the player's next line through Evennia's own input
mechanism (``evennia.utils.evmenu``'s ``InputCmdSet`` and
``caller.ndb._getinput``), without sending the prompt a second time. The
answer reaches the dialogue one reactor turn later, after Evennia has
cleared its input state, so the next question is not wiped. ``quit`` (or
``@quit``) and a disconnect raise :class:`procpool.DialogueAbandoned` at
the ``yield``.
"""

from __future__ import annotations

import functools
from typing import Any

from procpool.errors import DialogueAbandoned

__all__ = ["install", "QUIT_WORDS"]

QUIT_WORDS = frozenset({"quit", "@quit"})

# caller -> the dialogue's callback for its open question
_waiting: dict[Any, Any] = {}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _ask(caller: Any, prompt: str, callback: Any) -> None:
    from evennia.utils.evmenu import InputCmdSet, _Prompt

    state = _Prompt()
    state._callback, state._prompt, state._session = _answered, prompt, None
    state._args, state._kwargs = (), {}
    caller.ndb._getinput = state
    caller.cmdset.add(InputCmdSet, persistent=False)
    _waiting[caller] = callback


def _answered(caller: Any, prompt: str, line: str) -> None:
    callback = _waiting.pop(caller, None)
    if callback is None:
        return None
    if line.strip().lower() in QUIT_WORDS:
        answer: Any = DialogueAbandoned(f"{caller} typed {line.strip()!r} at {prompt!r}")
    else:
        answer = line
    _reactor().callLater(0, callback, answer)
    return None  # Evennia clears its input state now; the next question sets it anew


def _left(sender: Any, **_: Any) -> None:
    callback = _waiting.pop(sender, None)
    if callback is None:
        return
    from evennia.utils.evmenu import InputCmdSet

    try:
        del sender.ndb._getinput
        sender.cmdset.remove(InputCmdSet)
    except Exception:
        pass
    callback(DialogueAbandoned(f"{sender} left the game with a question open"))


def _provider(caller: Any) -> Any:
    if hasattr(caller, "cmdset") and hasattr(caller, "ndb") and hasattr(caller, "msg"):
        return functools.partial(_ask, caller)
    return None


def install() -> None:
    """Register the provider and hear unpuppets and logouts."""
    from evennia.server import signals

    from procpool.dialogue import register_input

    register_input(_provider)
    signals.SIGNAL_OBJECT_POST_UNPUPPET.connect(_left, weak=False)
    signals.SIGNAL_ACCOUNT_POST_LOGOUT.connect(_left, weak=False)
