"""The AMP box format of workers/wire.py: any size, any way the stream is cut."""

import random

import pytest

from workers import wire


def _boxes(rng):
    boxes = []
    for _ in range(30):
        size = rng.choice([0, 1, 100, 2048, 2049, 65535, 65536, 200_000, 700_001])
        boxes.append({b"_answer": str(len(boxes)).encode(), b"p": rng.randbytes(size)})
    return boxes


@pytest.mark.parametrize("seed", range(8))
def test_boxes_survive_any_cutting_of_the_stream(seed):
    rng = random.Random(seed)
    boxes = _boxes(rng)
    stream = b"".join(b"".join(bytes(p) for p in wire.encode_box(b)) for b in boxes)
    parser = wire.BoxParser()
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 7, 4096, 8192, 65539, 262144, 1 << 20])
        for box in parser.feed(stream[pos:pos + step]):
            got.append({b"_answer": bytes(box[b"_answer"]),
                        b"p": bytes(wire.join_value(box, b"p"))})
        pos += step
    assert got == boxes
    assert parser.pending() == 0


def test_run_box_round_trips_small_and_large_payloads():
    for payload in (b"", b"x" * 10, b"y" * 65535, b"z" * 300_000):
        data = wire.encode_run(b"1f", b"c", payload)
        data = data if isinstance(data, bytes) else b"".join(bytes(p) for p in data)
        (box,) = list(wire.BoxParser().feed(data))
        assert box[b"_command"] == b"run" and box[b"_ask"] == b"1f" and box[b"k"] == b"c"
        assert bytes(wire.join_value(box, b"p")) == payload


def test_no_value_exceeds_the_amp_limit():
    pairs = wire.encode_box({b"p": b"q" * 500_000})
    lengths = [len(p) for p in pairs[3::4]]
    assert max(lengths) <= wire.MAX_VALUE
