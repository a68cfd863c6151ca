"""``python -m workers``: start one worker process (see workers/worker.py)."""

from workers.worker import main

main()
