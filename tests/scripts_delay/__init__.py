"""Helper programs for the persistent-delay tests (run as real host processes)."""
