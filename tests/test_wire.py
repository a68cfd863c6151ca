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


def _answer_pieces(keys: list[bytes], size: int = 300) -> bytes:
    """An unfinished answer box: ``_answer`` then one pair of ``size`` bytes per key."""
    return b"".join(b"".join(wire._pairs(key, b"v" * size)) for key in [b"_answer", *keys])


def test_the_hosts_framing_check_looks_at_each_key_once(monkeypatch):
    from procpool import _answers
    looked: list[bytes] = []
    real = _answers._plausible_key
    monkeypatch.setattr(_answers, "_plausible_key", lambda key: looked.append(key) or real(key))
    stream = _answer_pieces([b"p.%d" % i for i in range(1, 400)])
    parser = _answers.AnswerParser()
    reads = 0
    for at in range(0, len(stream), 997):  # reads that cut pairs anywhere
        list(parser.feed(stream[at:at + 997]))
        reads += 1
        assert parser.lost(max_pairs=10_000) is None
    assert len(parser._box) == 400
    # Each whole key once, plus at most one look per read at a key whose value is cut.
    assert len(looked) <= 400 + reads, (len(looked), reads)


def test_the_hosts_framing_check_still_finds_a_bad_key_late_in_a_big_answer():
    from procpool import _answers
    good = _answer_pieces([b"p.%d" % i for i in range(1, 200)])
    bad = b"".join(wire._pairs(b"p.200\xff", b"v" * 300))
    parser = _answers.AnswerParser()
    list(parser.feed(good))
    assert parser.lost(max_pairs=10_000) is None
    list(parser.feed(bad))
    assert "unknown key" in parser.lost(max_pairs=10_000)
    crowded = _answers.AnswerParser()
    list(crowded.feed(good))
    assert "more than 100 values" in crowded.lost(max_pairs=100)
