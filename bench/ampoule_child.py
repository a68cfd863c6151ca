"""An ampoule child with the benchmark's two commands (for the side-by-side run)."""

from ampoule.child import AMPChild
from twisted.protocols import amp


class Noop(amp.Command):
    """Return at once."""

    arguments = [(b"x", amp.Integer())]
    response = [(b"x", amp.Integer())]


class Echo(amp.Command):
    """Return the payload (ampoule itself cannot carry more than 64 KiB per value)."""

    arguments = [(b"data", amp.String())]
    response = [(b"data", amp.String())]


class BenchChild(AMPChild):
    """Answers Noop and Echo."""

    @Noop.responder
    def noop(self, x):
        return {"x": x}

    @Echo.responder
    def echo(self, data):
        return {"data": data}
