"""
The sandbox for untrusted source strings typed by players.

One request's path::

    limited_exec / run_sandboxed          (sandbox.host, reactor thread)
      -> request checked and encoded       (sandbox.replies: str source, JSON-able context)
      -> per-caller and global limits      (sandbox.host: refuse / queue)
      -> a warm child, already confined    (sandbox.child: imports, sandbox.confine)
      -> JSON request on its stdin, closed (sandbox._process: one child's pipes)
      -> RestrictedPython policy           (sandbox.policy) runs the source,
         the _return rule                  (workers.source, shared with the workers)
      -> one JSON reply line on its stdout, then the child exits
      -> size/depth-checked JSON parse     (sandbox.replies, called by sandbox._process)
      -> Deferred fires in the reactor thread

This package's ``__init__`` imports nothing: the confined child imports
``sandbox.child`` and must not pull in Twisted or procpool on the way.
Users call :func:`procpool.limited_exec`.
"""
