"""Subscription.recv's expected-frame path agrees with Inbox._take, frame by frame.

recv follows the stream of the last message it took and recognises that
stream's next one-message frame by its header alone (meshq/subscription.py,
``_expect``). These tests feed a real subscription frames crafted by a raw
PUB, among them frames that begin exactly like the expected one but are not
a valid message of it, and check that what comes out (messages, gaps,
drops, the sequence numbers kept per stream) is what the codec's path gives.
"""

from __future__ import annotations

import os

import msgpack
import zmq

import meshq
from meshq.wire import FLAG_MSGPACK, Limits, encode_data, topic_prefix

LOOPBACK = ["127.0.0.1"]
WAIT_MS = 10_000  # how long the raw publisher waits for the subscription to arrive
FIRST, SECOND = os.urandom(16), os.urandom(16)
PREFIX = topic_prefix("t/x", FIRST, Limits())
OTHER = topic_prefix("t/x", SECOND, Limits())
LONGER = topic_prefix("t/xy", FIRST, Limits())  # another topic the subscription takes


def frames() -> list[bytes]:
    """What the raw publisher sends, in order (see the expected outcome in the test)."""
    return [
        encode_data(PREFIX, 0, 1, 0, b"a"),  # taken by _take: its stream is followed
        encode_data(PREFIX, 0, 2, 0, b"b"),  # the expected frame
        encode_data(PREFIX, 0, 3, 0, b""),  # expected, an empty payload
        PREFIX + b"\0" + (4).to_bytes(8, "big") + b"\0\0\0",  # expected start, time cut off
        encode_data(LONGER, 0, 4, 0, b"l"),  # the expected sequence number, another topic
        encode_data(PREFIX, 0, 4, 0, b"d"),  # expected (the bad ones changed nothing)
        encode_data(PREFIX, 0, 4, 0, b"dup"),  # a repeat: no gap, taken as _take does
        encode_data(PREFIX, 0, 7, 0, b"g"),  # 5 and 6 lost
        encode_data(PREFIX, FLAG_MSGPACK, 8, 0, msgpack.packb({"k": 8})),  # not raw bytes
        encode_data(OTHER, 0, 1, 0, b"other"),  # another sender: followed now
        encode_data(PREFIX, 0, 9, 0, b"i"),  # back to the first: _take, no gap
        encode_data(PREFIX, 0, 10, 0, b"j"),  # expected again
        encode_data(OTHER, 0, 3, 0, b"other3"),  # 2 lost on the other stream
        encode_data(OTHER, 0, 2**64 - 1, 0, b"last"),  # a peer's largest: no next one
        encode_data(OTHER, 0, 4, 0, b"after"),  # taken, no gap (as after any jump back)
    ]


def test_the_expected_frame_path_gives_what_take_gives(mesh: str) -> None:
    context = zmq.Context()
    pub = context.socket(zmq.XPUB)  # tells when the subscription has reached it
    pub.setsockopt(zmq.LINGER, 0)
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        with (
            meshq.Node("expect", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
            node.subscribe("t/") as sub,
        ):
            sub._sock.connect(f"tcp://127.0.0.1:{port}")
            assert pub.poll(WAIT_MS), "the subscription never reached the raw publisher"
            assert pub.recv() == b"\x01t/"
            for frame in frames():
                pub.send(frame)
            got = []
            for _ in range(10):
                message = sub.recv(timeout=10)
                got.append((message.topic, message.sender, message.seq, message.data))
            first, second = FIRST.hex(), SECOND.hex()
            assert got == [
                ("t/x", first, 1, b"a"),
                ("t/x", first, 2, b"b"),
                ("t/x", first, 3, b""),
                ("t/xy", first, 4, b"l"),
                ("t/x", first, 4, b"d"),
                ("t/x", first, 4, b"dup"),
                ("t/x", first, 7, b"g"),
                ("t/x", first, 8, {"k": 8}),
                ("t/x", second, 1, b"other"),
                ("t/x", first, 9, b"i"),
            ]
            assert sub.dropped == 1  # the frame whose time field was cut off
            assert sub.gaps == 2 and [(g.sender, g.missed) for g in sub.gap_log] == [(first, 2)]
            assert sub.recv(timeout=10).data == b"j"
            assert sub.recv(timeout=10).data == b"other3"
            assert sub.gaps == 3 and [(g.sender, g.missed) for g in sub.gap_log][-1] == (second, 1)
            assert sub.recv(timeout=10).data == b"last"
            assert sub.gaps == 3 + 2**64 - 1 - 4
            assert sub.recv(timeout=10).data == b"after"
            # What introspection reads: the last sequence number of each stream, at once.
            assert dict(sub._last_seq) == {
                PREFIX: 10,
                OTHER: 4,
                LONGER: 4,
            }
    finally:
        pub.close(linger=0)
        context.term()
