"""Task functions for the benchmarks, in a module every worker can import."""


def noop(x=None):
    """Return the argument: the smallest task there is."""
    return x


def echo(data):
    """Return the payload, so it crosses both ways."""
    return data


def burn(seconds):
    """Keep a CPU busy for ``seconds``."""
    import time
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def sleep(seconds):
    """Sleep for ``seconds``."""
    import time
    time.sleep(seconds)


def make_bytes(size):
    """A result of ``size`` bytes, made in the worker."""
    return b"x" * size
