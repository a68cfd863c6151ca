"""
The worker side of procpool: what runs inside a worker process.

``workers/__main__.py`` starts one (the host does this; you never need to).
Code shipped to a worker may use :mod:`workers.db` for a database
connection of its own, and ``from workers import progress`` to report
progress to ``at_progress`` (workers/reporting.py). Nothing here imports Twisted.
"""


def __getattr__(name: str):  # noqa: ANN202 - module __getattr__ (PEP 562)
    """``from workers import progress``: the function, loaded on first use."""
    if name == "progress":
        from workers.reporting import progress
        return progress
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
