"""The subscriber's inline parse (Inbox._take) agrees with the codec, frame by frame."""

from __future__ import annotations

import os

import pytest

import meshq
from meshq.subscription import Inbox, PublisherDirectory
from meshq.wire import (
    FLAG_BATCH,
    FLAG_MSGPACK,
    Limits,
    encode_batch,
    encode_data,
    encode_msgpack,
    topic_prefix,
)

LIMITS = Limits()
SENDER = os.urandom(16)
PREFIX = topic_prefix("t/x", SENDER, LIMITS)


def inbox() -> Inbox:
    return Inbox("t/", PublisherDirectory(), LIMITS)


def take_all(box: Inbox, frame: bytes) -> list[tuple[int, object]]:
    first = box._take(frame)
    if first is None:
        return []
    taken = [first]
    while box._pending:
        taken.append(box._pending.popleft())
    return [(m.seq, m.data) for m in taken]


def test_single_and_batch_frames_give_messages_with_their_fields() -> None:
    box = inbox()
    single = box._take(encode_data(PREFIX, 0, 1, 5_000_000_000, b"one"))
    assert single is not None
    assert (single.topic, single.sender, single.seq, single.data) == (
        "t/x",
        SENDER.hex(),
        1,
        b"one",
    )
    assert single.timestamp == 5.0
    batch = encode_data(PREFIX, FLAG_BATCH, 2, 6_000_000_000, encode_batch([b"a", b"", b"c"]))
    assert take_all(box, batch) == [(2, b"a"), (3, b""), (4, b"c")]
    packed = encode_batch([encode_msgpack({"k": 1}), encode_msgpack([2])])
    assert take_all(box, encode_data(PREFIX, FLAG_BATCH | FLAG_MSGPACK, 5, 0, packed)) == [
        (5, {"k": 1}),
        (6, [2]),
    ]
    assert box.gaps == 0 and box.dropped == 0


def test_gaps_are_counted_across_single_and_batch_frames() -> None:
    box = inbox()
    take_all(box, encode_data(PREFIX, 0, 1, 0, b"x"))
    take_all(box, encode_data(PREFIX, FLAG_BATCH, 4, 0, encode_batch([b"y", b"z"])))  # 2, 3 lost
    take_all(box, encode_data(PREFIX, 0, 10, 0, b"w"))  # 6..9 lost
    assert box.gaps == 6 and [g.missed for g in box.gap_log] == [2, 4]
    assert box.gap_log[0].sender == SENDER.hex() and box.gap_log[0].topic == "t/x"


def test_batches_of_equal_and_of_mixed_entries_agree_with_the_codec() -> None:
    box = inbox()
    same = [b"%03d" % index for index in range(100)]
    assert take_all(box, encode_data(PREFIX, FLAG_BATCH, 1, 0, encode_batch(same))) == list(
        enumerate(same, start=1)
    )
    # The size of three entries of the first one's length, which they are not.
    mixed = [b"ab", b"c", b"def"]
    assert take_all(box, encode_data(PREFIX, FLAG_BATCH, 101, 0, encode_batch(mixed))) == list(
        enumerate(mixed, start=101)
    )
    empties = encode_data(PREFIX, FLAG_BATCH, 110, 0, encode_batch([b""] * 3))  # 104-109 lost
    assert take_all(box, empties) == [(110, b""), (111, b""), (112, b"")]
    assert box.gaps == 6 and box.dropped == 0
    assert take_all(box, encode_data(PREFIX, 0, 113, 0, b"next")) == [(113, b"next")]
    assert box.gaps == 6


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty batch
        b"\x00\x00\x00\x05abc",  # entry longer than the frame
        b"\x00\x00\x00\x01a\x00\x00",  # a length cut short
        b"\x00\x00\x00\x02ab\x00\x00\x00\x01cd",  # the size of two equal entries, but not
        encode_batch([b"."] * 1025),  # more entries than MAX_BATCH
    ],
)
def test_malformed_batches_are_dropped_whole_and_counted(payload: bytes) -> None:
    box = inbox()
    assert box._take(encode_data(PREFIX, FLAG_BATCH, 1, 0, payload)) is None
    assert box.dropped == 1 and not box._pending and box.gaps == 0


@pytest.mark.parametrize(
    "frame",
    [
        b"no terminator",
        b"t/x\0\x01" + bytes(10),  # truncated header
        b"t/x\0\x09" + bytes(33) + b"p",  # another version
        b"t/x\0\x01" + bytes(16) + b"\x80" + bytes(16) + b"p",  # unknown flag
        b"\0\x01" + bytes(33) + b"p",  # empty topic
    ],
)
def test_malformed_frames_are_dropped_and_counted(frame: bytes) -> None:
    box = inbox()
    assert box._take(frame) is None
    assert box.dropped == 1


def test_a_batch_of_too_many_entries_is_refused_before_it_is_built() -> None:
    box = inbox()
    entries = b"\x00\x00\x00\x00" * 200_000  # 200,000 empty entries: MAX_BATCH is 1024
    assert take_all(box, encode_data(PREFIX, FLAG_BATCH, 1, 0, entries)) == []
    assert box.dropped == 1
    assert take_all(box, encode_data(PREFIX, FLAG_BATCH, 1, 0, encode_batch([b"a"] * 1024)))


def test_recv_waits_in_the_socket_and_still_honours_timeout_zero(mesh: str) -> None:
    """recv() waits in the SUB socket's own recv (RCVTIMEO), set per timeout.

    That path must return what is there, with timeout=0 too (one look, no
    wait), and raise Timeout (not hang) when nothing is; a timeout that
    changes between calls takes effect.
    """
    with meshq.Node("idle-sub", mesh=mesh, interfaces=["127.0.0.1"], discovery=False) as node:
        sub = node.subscribe("idle/")
        node.wait_for_subscribers("idle/x", 1, timeout=10)
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0.01)
        node.publish("idle/x", b"first")
        assert sub.recv(timeout=5).data == b"first"
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0)
        node.publish("idle/x", b"second")
        assert sub._sock.poll(5000)  # arrived, not read yet
        assert sub.recv(timeout=0).data == b"second"
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0)
        node.publish("idle/x", b"third")
        assert sub.recv(timeout=None).data == b"third"
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0.01)
