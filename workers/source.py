"""
How a source string runs: one namespace, one compile, one execution.

Shared by the worker processes and by the host's thread fallback, so a
source string means the same wherever it runs::

    >>> run_source("val = testvar + 5\\n_return(val)\\n_return(val + 5)", {"testvar": 3})
    [8, 13]
    >>> run_source("2 * 21", {})
    42

Rules (the README's run_async section): the extra keyword arguments are the source's globals;
``_return(value)`` hands values back: no call gives ``None``, one call that
value, several a list in call order. A source that is a single expression
and never calls ``_return`` gives the expression's value. The source is
parsed and compiled once and executed once, whatever happens (the 2013
ProcPool retried with ``exec`` after any error and so ran code twice).
"""

from __future__ import annotations

import builtins

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the sandbox child imports this module,
if TYPE_CHECKING:      # and importing typing there costs milliseconds per child
    from typing import Any

__all__ = ["run_source", "compile_source", "returned_value"]

_UNSET = object()


def compile_source(source: str, filename: str = "<source>") -> tuple[Any, bool]:
    """Compile ``source`` once; also say whether it is a lone expression."""
    import ast  # here: a worker that runs no source never pays its import

    tree = ast.parse(source, filename, "exec")
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
        expression = ast.Expression(tree.body[0].value)
        return compile(expression, filename, "eval"), True
    return compile(tree, filename, "exec"), False


def run_source(source: str, env: dict[str, Any], on_return: Any = None) -> Any:
    """
    Run ``source`` with ``env`` as its globals and collect its ``_return``
    values; ``on_return(value)``, if given, hears each one as it is made.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, not {type(source).__name__}")
    code, is_expression = compile_source(source)
    returned: list[Any] = []
    namespace: dict[str, Any] = dict(env)
    if on_return is None:
        namespace["_return"] = returned.append
    else:
        def _return(value: Any) -> None:
            returned.append(value)
            on_return(value)
        namespace["_return"] = _return
    namespace.setdefault("__builtins__", builtins)
    namespace.setdefault("__name__", "__procpool_source__")
    value = eval(code, namespace) if is_expression else _exec(code, namespace)
    return returned_value(returned, value)


def returned_value(returned: list[Any], value: Any) -> Any:
    """
    The ``_return`` rule, for every place a source string runs (here, and the
    sandbox's child): no call gives ``value`` (a lone expression's value, else
    None), one call that value, several a list in call order::

        >>> returned_value([], None), returned_value([8], None), returned_value([8, 13], None)
        (None, 8, [8, 13])
    """
    if not returned:
        return value
    return returned[0] if len(returned) == 1 else returned


def _exec(code: Any, namespace: dict[str, Any]) -> None:
    exec(code, namespace)
    return None
