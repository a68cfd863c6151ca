"""
How values cross between the host and a worker, in either direction.

Plain pickle first (fast); dill only for what pickle refuses (lambdas,
closures) or for what pickle would store by a reference the other side
cannot follow: a name in ``__main__``, which is a different module in every
process. Measured: a ``__main__`` function costs about 450 us to dill and
1 us to pickle, so the dill path is taken only when it must be::

    >>> dumps((len, ("abc",), {})) == pickle.dumps((len, ("abc",), {}), protocol=5)
    True

Objects that must not cross as copies (a game's database objects) can cross
by reference instead: :func:`register_reference` names their class and how
to rebuild them on the other side. Plain arguments never pay for it.

Shared by both sides (standard library only; dill is imported when needed).
"""

from __future__ import annotations

import _pickle as pickle  # the C pickler alone: module pickle imports re and enum (~5 ms)
import io
import types
from collections.abc import Callable

TYPE_CHECKING = False  # not typing's: importing typing costs a worker's start ~3 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ["dumps", "dumps_by_name", "register_reference"]

# (class, reduce): instances of class pickle as reduce(obj) says, not as copies.
_REFERENCES: list[tuple[type, Callable[[Any], Any]]] = []

_PLAIN = frozenset([bytes, bytearray, str, int, float, bool, type(None), complex])
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType)
_SEQUENCES = (tuple, type({}.values()))


def _may_name_main(obj: Any) -> bool:
    """
    Could ``obj``'s pickle refer to ``__main__``? Cheap for the common shapes:
    a task's ``(callable, args[, kwargs])`` and a plain result (bytes, str, a
    number), whose pickle is then not scanned (a 1 MiB result's scan cost more
    than its pickling).
    """
    if type(obj) in _PLAIN:
        return False
    if type(obj) is not tuple or len(obj) not in (2, 3):
        return True
    head, *rest = obj
    if getattr(head, "__module__", None) == "__main__":
        return True
    if type(head) not in _PLAIN and not isinstance(head, _FUNCTIONS):
        return True  # a partial, a callable object...: scan its pickle
    for part in rest:
        values = part.values() if type(part) is dict else part
        if type(values) not in _SEQUENCES:
            return True
        for value in values:  # a loop, not any(): no generator per call
            if type(value) not in _PLAIN:
                return True
    return False


def register_reference(cls: type, reduce: Callable[[Any], Any]) -> None:
    """
    Pickle instances of ``cls`` (and its subclasses) as ``reduce(obj)``
    returns: a ``(callable, args)`` pair run on the other side to rebuild
    them, or NotImplemented to pickle that one as usual. Registering the
    same class again replaces its reduce::

        register_reference(Character, lambda c: (find_character, (c.id,)))
    """
    _REFERENCES[:] = [(c, r) for c, r in _REFERENCES if c is not cls]
    _REFERENCES.append((cls, reduce))


def _reducer_override(self: Any, obj: Any) -> Any:
    for cls, reduce in _REFERENCES:
        if isinstance(obj, cls):
            return reduce(obj)
    return NotImplemented


class _ByReference(pickle.Pickler):
    reducer_override = _reducer_override


def dumps_by_name(obj: Any) -> bytes:
    """Pickle ``obj`` with the registered references, never with dill (for what is stored)."""
    if not _REFERENCES:
        return pickle.dumps(obj, protocol=5)
    out = io.BytesIO()
    _ByReference(out, protocol=5).dump(obj)
    return out.getvalue()


def _dill_by_reference(obj: Any) -> bytes:
    import dill

    if not _REFERENCES:
        return dill.dumps(obj, protocol=5, recurse=True)

    class _DillByReference(dill.Pickler):
        reducer_override = _reducer_override

    out = io.BytesIO()
    _DillByReference(out, protocol=5, recurse=True).dump(obj)
    return out.getvalue()


def dumps(obj: Any) -> bytes:
    """
    Pickle ``obj`` for the other side, with dill where pickle cannot do it.

    Raises whatever dill raises when neither can serialise ``obj``.
    """
    plain = not _may_name_main(obj)
    try:
        data = pickle.dumps(obj, protocol=5) if plain else dumps_by_name(obj)
    except Exception:
        pass
    else:
        # Scanning a big pickle costs about as much as copying it: skip the
        # scan when the arguments are plain values.
        if plain or b"__main__" not in data:
            return data
    return _dill_by_reference(obj)
