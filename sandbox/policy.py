"""
The language layer: RestrictedPython with the policy player code runs under.

Imported by the confined child before confinement (it imports only the
standard library, RestrictedPython and :mod:`workers.source`, whose
``returned_value`` is the one ``_return`` rule). It is the first filter and the
source of readable errors, not the security boundary: that is the OS layer
in :mod:`sandbox.confine`.

    >>> from sandbox.policy import run_source
    >>> run_source("_return(1 + 2)", {}, restricted=True)
    3
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import random
import types

from RestrictedPython import (
    RestrictingNodeTransformer,
    compile_restricted_eval,
    compile_restricted_exec,
)
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr_raise,
)
from RestrictedPython.PrintCollector import PrintCollector

from workers.source import returned_value  # the one _return rule, shared with the workers

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["PlayerPolicy", "PlayerSyntaxError", "player_builtins", "run_source"]

RETURN_NAME = "_return"
FILENAME = "<player>"

_NO_VALUE = object()


class PlayerSyntaxError(Exception):
    """The source does not compile, or the policy refuses it; the message names the line."""


class PlayerPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy, plus reading (never binding) the name ``_return``."""

    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        if (name == RETURN_NAME and isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Load)):
            return
        super().check_name(node, name, allow_magic_methods)


# --- guards -------------------------------------------------------------------

def _getiter(ob: Any) -> Any:
    """The one place player code iterates: ``for``, comprehensions, unpacking, builtins."""
    if isinstance(ob, (types.ModuleType, type)):
        raise TypeError(f"iterating over {type(ob).__name__} objects is not allowed")
    return iter(ob)


def _getitem(ob: Any, index: Any) -> Any:
    return ob[index]


# Of an exception, player code reads only what it was raised with (``args``:
# messages, and the player's own values) and the missing name (``name``, a
# string). Every other attribute can carry an object from elsewhere:
# AttributeError.obj (the object whose attribute was missing, which library code
# may hold privately), StopIteration.value, an exception group's members,
# SystemExit.code, and methods such as with_traceback. The dunders
# (__traceback__, __context__, __cause__) and frame attributes are refused
# before the code runs, by RestrictedPython.
_EXCEPTION_ATTRIBUTES = {"args": tuple, "name": (str, type(None))}  # name: what it must hold


def _getattr(ob: Any, name: str) -> Any:
    """Player code's ``ob.name``: RestrictedPython's guard, and exceptions' attributes refused."""
    if isinstance(ob, BaseException):
        kinds = _EXCEPTION_ATTRIBUTES.get(name)
        if kinds is not None:
            value = safer_getattr_raise(ob, name)
            if isinstance(value, kinds):
                return value
        raise AttributeError(f'"{name}" of an exception cannot be read in the sandbox '
                             "(only its args and name)")
    return safer_getattr_raise(ob, name)


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul,
    "/=": operator.itruediv, "//=": operator.ifloordiv, "%=": operator.imod,
    "**=": operator.ipow, "<<=": operator.ilshift, ">>=": operator.irshift,
    "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
    "@=": operator.imatmul,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    try:
        return _INPLACE[op](x, y)
    except KeyError:
        raise SyntaxError(f"augmented assignment {op!r} is not allowed")


def _apply(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


# --- builtins -----------------------------------------------------------------
# The builtins that iterate take their input through _getiter, so the guard
# applies however player code iterates. Wrapped types are functions, so
# isinstance() maps them back to the real types.

def _sorted(iterable: Any, /, *, key: Any = None, reverse: bool = False) -> list[Any]:
    return builtins.sorted(_getiter(iterable), key=key, reverse=reverse)


def _extreme(func: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1:
            return func(_getiter(args[0]), **kwargs)
        return func(*args, **kwargs)
    guarded.__name__ = func.__name__
    return guarded


def _sum(iterable: Any, /, start: Any = 0) -> Any:
    return builtins.sum(_getiter(iterable), start)


def _enumerate(iterable: Any, start: int = 0) -> Any:
    return builtins.enumerate(_getiter(iterable), start)


def _zip(*iterables: Any, strict: bool = False) -> Any:
    return builtins.zip(*(_getiter(it) for it in iterables), strict=strict)


def _container(kind: type) -> Callable[..., Any]:
    def guarded(iterable: Any = (), /) -> Any:
        return kind(_getiter(iterable))
    guarded.__name__ = kind.__name__
    return guarded


def _dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    if args and not isinstance(args[0], dict):
        args = (_getiter(args[0]),) + args[1:]
    return dict(*args, **kwargs)


def _any(iterable: Any, /) -> bool:
    return builtins.any(_getiter(iterable))


def _all(iterable: Any, /) -> bool:
    return builtins.all(_getiter(iterable))


def _reversed(seq: Any, /) -> Any:
    return iter(list(_getiter(seq))[::-1])


_WRAPPED_TYPES: dict[Any, type] = {}


def _real_types(cls: Any) -> Any:
    if isinstance(cls, tuple):
        return tuple(_real_types(c) for c in cls)
    return _WRAPPED_TYPES.get(cls, cls)


def _isinstance(obj: Any, cls: Any, /) -> bool:
    return builtins.isinstance(obj, _real_types(cls))


def _namespace(module: types.ModuleType, names: list[str]) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: getattr(module, name) for name in names})


_MATH_NAMES = [n for n in dir(math) if not n.startswith("_")]
_RANDOM_NAMES = ["random", "randint", "randrange", "choice", "choices", "shuffle", "sample",
                 "uniform", "gauss", "triangular", "seed"]

_EXCEPTIONS = [
    "ArithmeticError", "AssertionError", "AttributeError", "Exception", "IndexError",
    "KeyError", "LookupError", "NameError", "NotImplementedError", "OverflowError",
    "RuntimeError", "StopIteration", "TypeError", "ValueError", "ZeroDivisionError",
]


def player_builtins() -> dict[str, Any]:
    """
    The builtins player code sees: a short list useful for game scripts.

    Example: ``"sorted" in player_builtins()`` is true, ``"open"`` is absent.
    """
    names: dict[str, Any] = {
        "None": None, "True": True, "False": False,
        "len": len, "range": range, "str": str, "int": int, "float": float, "bool": bool,
        "abs": abs, "round": round, "divmod": divmod, "chr": chr, "ord": ord, "repr": repr,
        "sorted": _sorted, "min": _extreme(min), "max": _extreme(max), "sum": _sum,
        "enumerate": _enumerate, "zip": _zip, "any": _any, "all": _all,
        "reversed": _reversed,
        "list": _container(list), "tuple": _container(tuple), "set": _container(set),
        "dict": _dict, "isinstance": _isinstance,
        "math": _namespace(math, _MATH_NAMES),
        "random": _namespace(random, _RANDOM_NAMES),
    }
    for kind in (list, tuple, set):
        _WRAPPED_TYPES[names[kind.__name__]] = kind
    _WRAPPED_TYPES[_dict] = dict
    names.update({name: getattr(builtins, name) for name in _EXCEPTIONS})
    return names


def _guards() -> dict[str, Any]:
    return {
        # A missing attribute raises AttributeError (RestrictedPython's plain
        # safer_getattr quietly answers None).
        "_getattr_": _getattr,
        "_getitem_": _getitem,
        "_getiter_": _getiter,
        "_write_": full_write_guard,
        "_inplacevar_": _inplacevar,
        "_apply_": _apply,
        "_print_": PrintCollector,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
    }


# --- running ------------------------------------------------------------------

def _is_single_expression(source: str) -> bool:
    try:
        tree = ast.parse(source, FILENAME, "exec")
    except SyntaxError as e:
        raise PlayerSyntaxError(f"{e.msg} (line {e.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise PlayerSyntaxError(f"cannot compile: {e}") from None
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)


def _compile(source: str, restricted: bool) -> tuple[Any, bool]:
    expression = _is_single_expression(source)
    mode = "eval" if expression else "exec"
    if not restricted:
        return compile(source, FILENAME, mode), expression
    compiler = compile_restricted_eval if expression else compile_restricted_exec
    result = compiler(source, FILENAME, policy=PlayerPolicy)
    if result.errors or result.code is None:
        raise PlayerSyntaxError("; ".join(result.errors) or "source refused")
    return result.code, expression


def run_source(source: str, context: dict[str, Any], *, restricted: bool = True,
               namespace: dict[str, Any] | None = None) -> Any:
    """
    Compile ``source`` once and run it once; return what it hands back.

    What comes back follows the one ``_return`` rule, the workers' own
    (:func:`workers.source.returned_value`). ``context`` becomes global
    names. ``restricted=False`` is the testing switch: full builtins, no
    language layer. ``namespace`` adds globals that are not player data
    (the child's pre-imported modules).

        >>> run_source("_return(8)\\n_return(13)", {})
        [8, 13]
    """
    code, expression = _compile(source, restricted)
    returned: list[Any] = []
    glob: dict[str, Any] = dict(namespace or {})
    glob.update(context)
    glob[RETURN_NAME] = returned.append
    if restricted:
        glob["__builtins__"] = player_builtins()
        glob.update(_guards())
    else:
        glob["__builtins__"] = builtins
    glob["__name__"] = "player"
    if expression:
        value = eval(code, glob)
    else:
        exec(code, glob)
        value = None
    return returned_value(returned, value)
