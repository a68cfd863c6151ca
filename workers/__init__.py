"""
The worker side of procpool: what runs inside a worker process.

``python -m workers`` starts one (the host does this; you never need to).
Code shipped to a worker may use :mod:`workers.db` for a database
connection of its own. Nothing here imports Twisted.
"""
