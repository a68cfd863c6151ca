"""``python -m sandbox CONFIG``: run the one-shot confined child (see :mod:`sandbox.child`)."""

import json
import sys


def _config_given() -> bool:
    """True when argv holds the one JSON object the host passes (see sandbox/child.py)."""
    if len(sys.argv) != 2:
        return False
    try:
        return isinstance(json.loads(sys.argv[1]), dict)
    except ValueError:
        return False


if not _config_given():
    sys.stderr.write("sandbox: this is procpool's one-shot sandboxed child, which the sandbox "
                     "host starts with its configuration as one JSON argument (there is "
                     "nothing to run by hand; see docs/sandbox.md)\n")
    sys.exit(2)

from sandbox.child import main  # noqa: E402 - only once it has something to run

main()
