"""
Start one worker process (see workers/worker.py).

The host runs this file as a script, ``python -P .../workers/__main__.py``
(``-m workers`` would import runpy first: ~4 ms of every worker's start),
with this package's parent directory first on PYTHONPATH
(procpool/_spawn.py), so that the ``workers`` imported here is procpool's
own, whatever the working directory or the game's path holds. Once it is
imported, that first entry is taken out again: the working directory takes
its place (where ``-m`` would put it), and PYTHONPATH loses it, so tasks and
what they start see the path the host had. ``python -m workers`` by hand
says what this is and exits. With ``--forker`` it is the pool's fork
server (workers/forker.py), and its forked children become workers here. A
task's multiprocessing child started with ``spawn`` or ``forkserver`` runs
this file again as ``__mp_main__``: it then does nothing.
"""

import os
import sys


def _settle_path() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not (sys.flags.safe_path and sys.path[:1] == [root]):
        return  # run by hand: as Python set it up
    sys.path[0] = os.getcwd()
    first, _, rest = os.environ.get("PYTHONPATH", "").partition(os.pathsep)
    if root in rest.split(os.pathsep):
        # The host's own path held this directory too (site dropped the
        # duplicate at start-up): keep it, after the working directory.
        sys.path.insert(1, root)
    if first == root:
        if rest:
            os.environ["PYTHONPATH"] = rest
        else:
            del os.environ["PYTHONPATH"]


if __name__ == "__main__":  # not in a child of multiprocessing's spawn or forkserver
    # Imported before the path is settled: run as a script, nothing has
    # imported the package yet, and only the first entry is sure to find
    # procpool's own. Its submodules are found through the package from then on.
    from workers.worker import main

    _settle_path()
    if sys.argv[1:2] == ["--forker"]:
        # The fork server (workers/forker.py): serve() returns only in a
        # forked worker, which then starts here like a spawned one.
        from workers import forker

        forker.serve()
        forker.run_worker(main)
    main()
