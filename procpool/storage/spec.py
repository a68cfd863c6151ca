"""
What a ``PROCPOOL_DATABASE`` value names, decided once, without guessing.

Accepted, and nothing else::

    >>> parse_database("postgresql://game@db/game")       # also postgres://
    ('postgresql', 'postgresql://game@db/game')
    >>> parse_database("host=db dbname=game user=game")   # a libpq key=value string
    ('postgresql', 'host=db dbname=game user=game')
    >>> parse_database("/var/lib/game/tasks.sqlite3")     # a path (relative: to the cwd)
    ('sqlite', '/var/lib/game/tasks.sqlite3')
    >>> parse_database("sqlite:////var/lib/game/tasks.sqlite3")
    ('sqlite', '/var/lib/game/tasks.sqlite3')

``sqlite:///`` follows SQLAlchemy: three slashes then the path, so
``sqlite:///tasks.sqlite3`` is relative and ``sqlite:////var/...`` absolute.
Any other ``scheme://`` (``mysql://``, ``sqlite://x``), an empty value or a
``key=value`` string libpq refuses raises :class:`SettingError` naming
``PROCPOOL_DATABASE`` and the accepted forms, never quoting a password.
This module imports nothing from Twisted (settings.py checks values with it).
"""

from __future__ import annotations

import re

from procpool.errors import SettingError

__all__ = ["parse_database", "ACCEPTED"]

#: the accepted forms, as every refusal spells them
ACCEPTED = ("a postgresql:// or postgres:// DSN, a libpq key=value string "
            "('host=db dbname=game'), a SQLite file path, or sqlite:///path")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_KEYWORDS = re.compile(r"^\s*(?:[A-Za-z_]\w*\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s']\S*|(?=\s|$))\s*)+$")


def _refuse(why: str) -> SettingError:
    return SettingError(f"PROCPOOL_DATABASE {why}; accepted: {ACCEPTED}")


def parse_database(value: str) -> tuple[str, str]:
    """
    ``("postgresql", dsn)`` or ``("sqlite", path)`` for a ``PROCPOOL_DATABASE``
    value; anything else raises :class:`SettingError` (see the module docstring).
    """
    if not isinstance(value, str):
        raise _refuse(f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _refuse("is empty")
    url = _URL.match(value)
    if url is not None and url.group(2):
        scheme = url.group(1).lower()
        if scheme in ("postgresql", "postgres"):
            return "postgresql", value
        if scheme == "sqlite":
            if not value.startswith("sqlite:///") or len(value) == len("sqlite:///"):
                raise _refuse("names a SQLite file as sqlite:///path (three slashes, then "
                              "the path; four for an absolute one)")
            return "sqlite", value[len("sqlite:///"):]
        raise _refuse(f"names a {scheme}:// database, which procpool cannot store tasks in")
    if _KEYWORDS.match(value):
        _check_libpq(value)
        return "postgresql", value
    return "sqlite", value


def _check_libpq(value: str) -> None:
    """Refuse a key=value string libpq would refuse (an unknown keyword, bad quoting)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    try:
        conninfo_to_dict(value)
    except psycopg.Error as e:
        # libpq's message names the keyword, never a value; keep only its first line.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _refuse(f"is a libpq key=value string that libpq refuses ({reason}); a SQLite "
                      "file whose name has '=' in it is written ./name or sqlite:///name") from None
