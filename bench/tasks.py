"""Task functions for the benchmarks, in a module every worker can import."""


def noop(x=None):
    """Return the argument: the smallest task there is."""
    return x


def echo(data):
    """Return the payload, so it crosses both ways."""
    return data
