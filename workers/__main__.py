"""
``python -m workers``: start one worker process (see workers/worker.py).

The host runs ``python -P -m workers`` with this package's parent directory
first on PYTHONPATH (procpool/_spawn.py), so that the ``workers`` imported
here is procpool's own, whatever the working directory or the game's path
holds. That first entry is taken out again before anything else runs: the
working directory takes its place (where ``-m`` puts it), and PYTHONPATH
loses it, so tasks and what they start see the path the host had.
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


_settle_path()

from workers.worker import main  # noqa: E402 - after the path is settled

main()
