"""``python -m sandbox CONFIG``: run the one-shot confined child (see :mod:`sandbox.child`)."""

from sandbox.child import main

main()
