"""
Typeclassed objects cross by reference: to workers, and into stored delays.

A character given to ``run_async`` or stored by ``delay(..., persistent=True)``
is pickled as Evennia's own ``pack_dbobj`` tuple (model, creation time, id),
and read back from the game's database on the other side
(:func:`workers.evennia.unpack`): never a stale copy, never "Can't pickle
'DbHolder'". An Attribute's saved list, dict or set crosses as its plain
copy (Evennia's ``deserialize``).
"""

from __future__ import annotations

from typing import Any

from workers import evennia as worker_side
from workers import pickling

__all__ = ["install"]


def _reduce_object(obj: Any) -> Any:
    from evennia.utils.dbserialize import pack_dbobj

    packed = pack_dbobj(obj)
    if packed is obj:  # not one of Evennia's models: pickle it as usual
        return NotImplemented
    return worker_side.unpack, (packed,)


def _reduce_saved(value: Any) -> Any:
    from evennia.utils.dbserialize import deserialize

    return worker_side.plain, (deserialize(value),)


def install() -> None:
    """Register the references (the Server's Django is set up by then)."""
    from evennia.typeclasses.models import TypedObject
    from evennia.utils.dbserialize import _SaverMutable

    worker_side._ready = True  # this process is the Server: its Django is already set up
    pickling.register_reference(TypedObject, _reduce_object)
    pickling.register_reference(_SaverMutable, _reduce_saved)
