"""
The done file: tasks whose rows must go, kept on the local disk while the database cannot.

When the database refuses the delete of a task that ran (or was cancelled),
the storage thread writes the task's id here, so that a host stopped before
the database is back does not run it again on its next start: that start
reads the file, leaves those rows unrun and deletes them (docs/persistence.md,
"Across an outage")::

    >>> done = DoneFile("/srv/game/tasks.sqlite3-done", "SQLite file 'tasks.sqlite3'")
    >>> done.write([4, 9]); done.read()
    {4, 9}
    >>> done.clear()

The file is replaced whole (written beside it, synced, renamed), so a crash
leaves either the old list or the new one, never half of one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["DoneFile", "state_directory"]


def state_directory() -> str:
    """Where done files of databases without a local file go: ``$XDG_STATE_HOME/procpool``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "procpool")


class DoneFile:
    """The ids of tasks that must never run again, for one database: ``DoneFile(path, name)``."""

    def __init__(self, path: str, database: str) -> None:
        self.path = path
        self.database = database

    def read(self) -> set[int]:
        """The ids in the file (none when it is missing); an unreadable file raises OSError."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return set()
        return {int(line) for line in lines if line.strip().isdigit()}

    def exists(self) -> bool:
        """True while the file is there: ``done.exists()``."""
        return os.path.lexists(self.path)

    def write(self, ids: Iterable[int]) -> None:
        """Replace the file with ``ids``, synced to disk before it counts; raises OSError."""
        text = (f"# procpool: tasks that ran or were cancelled, whose rows {self.database} "
                "could not delete yet; the next start deletes them and does not run them\n"
                + "".join(f"{i}\n" for i in sorted(set(ids))))
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        try:
            directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(directory)
        except OSError:
            pass
        finally:
            os.close(directory)

    def clear(self) -> None:
        """Remove the file (missing is fine); raises OSError if it stays."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
