"""Coalescing in the publish socket: bursts share frames, an idle message waits for nobody.

The policy is driven by the socket's clock, which these tests replace with
a fake one, so what is decided does not depend on how fast the machine is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

import meshq
from meshq.message import Message
from meshq.publishing import _ENTRY_COST, _LEG_BYTES
from meshq.wire import FLAG_BATCH, FLAG_TAIL, Limits, decode_data

LOOPBACK = ["127.0.0.1"]
LIMITS = Limits()


class FakeClock:
    """Nanoseconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


@pytest.fixture
def publisher(mesh: str) -> Iterator[tuple[meshq.Node, FakeClock, zmq.Socket]]:  # type: ignore[type-arg]
    """A node whose publish socket runs on a fake clock, and a raw SUB that sees its frames."""
    clock = FakeClock()
    with meshq.Node("coalescer", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
        node.runtime.publisher.clock = clock
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        sub.setsockopt(zmq.SUBSCRIBE, b"c/")
        sub.connect(node.publish_endpoints[0])
        try:
            node.wait_for_subscribers("c/x", 1, timeout=10)
            yield node, clock, sub
        finally:
            sub.close()
            context.term()


def recv_data(sub: zmq.Socket) -> bytes:  # type: ignore[type-arg]
    """The next data frame, skipping the tail markers the node sends every 0.5 s."""
    while True:
        frame: bytes = sub.recv()
        if not frame[frame.index(b"\0") + 18] & FLAG_TAIL:
            return frame


def messages(frame: bytes) -> list[Message]:
    decoded = decode_data(frame, LIMITS)
    if isinstance(decoded, list):
        return decoded
    assert isinstance(decoded, Message), f"not a message: {decoded!r}"
    return [decoded]


def test_an_idle_message_goes_at_once_and_a_burst_shares_one_frame(
    publisher: tuple[meshq.Node, FakeClock, zmq.Socket],  # type: ignore[type-arg]
) -> None:
    node, clock, sub = publisher
    node.publish("c/x", b"first")  # idle: sent at once, nobody else published
    alone = recv_data(sub)
    assert [(m.seq, m.data) for m in messages(alone)] == [(1, b"first")]
    for index in range(2, 6):  # the clock stands still: a burst
        node.publish("c/x", b"burst %d" % index)
    clock.advance(0.001)  # past the hold time: the flusher sends the batch by itself
    # One frame, or two if the control thread's tail round (every 0.5 s,
    # which flushes what is held first) fell inside the burst.
    frames = [recv_data(sub)]
    burst = messages(frames[0])
    while len(burst) < 4:
        frames.append(recv_data(sub))
        burst += messages(frames[-1])
    assert [(m.seq, m.data) for m in burst] == [(i, b"burst %d" % i) for i in range(2, 6)]
    assert len(frames) <= 2
    assert any(frame[frame.index(b"\0") + 18] & FLAG_BATCH for frame in frames)
    clock.advance(1.0)  # idle again
    node.publish("c/x", b"late")
    assert [(m.seq, m.data) for m in messages(recv_data(sub))] == [(6, b"late")]


def test_order_across_topics_and_encodings_is_kept(
    publisher: tuple[meshq.Node, FakeClock, zmq.Socket],  # type: ignore[type-arg]
) -> None:
    node, clock, sub = publisher
    node.publish("c/x", b"a")  # idle
    node.publish("c/x", b"b")  # held
    node.publish("c/y", b"c")  # another topic: the held batch goes first
    node.publish("c/y", {"d": 1})  # another encoding: likewise
    node.publish("c/x", b"e")
    node.publish_many("c/x", [b"f", b"g"])  # flushes what is held, then its own frame
    clock.advance(0.001)
    received: list[tuple[str, int, object]] = []
    while len(received) < 7:
        received += [(m.topic, m.seq, m.data) for m in messages(recv_data(sub))]
    assert received == [
        ("c/x", 1, b"a"),
        ("c/x", 2, b"b"),
        ("c/y", 1, b"c"),
        ("c/y", 2, {"d": 1}),
        ("c/x", 3, b"e"),
        ("c/x", 4, b"f"),
        ("c/x", 5, b"g"),
    ]


def test_large_payloads_are_never_held(
    publisher: tuple[meshq.Node, FakeClock, zmq.Socket],  # type: ignore[type-arg]
) -> None:
    node, _, sub = publisher
    big = bytes(100_000)
    node.publish("c/x", b"small")
    node.publish("c/x", big)  # busy, but too large to start a batch: sent at once
    assert [m.data for m in messages(recv_data(sub))] == [b"small"]
    assert [m.data for m in messages(recv_data(sub))] == [big]


def test_a_burst_reaches_a_subscription_whole_in_order_without_gaps(mesh: str) -> None:
    config = meshq.MeshConfig(publish_hwm=100_000, subscribe_hwm=100_000)
    with (
        meshq.Node(
            "burster", mesh=mesh, interfaces=LOOPBACK, discovery=False, config=config
        ) as node,
        node.subscribe("burst/") as sub,
    ):
        node.wait_for_subscribers("burst/x", 1, timeout=10)
        count = 20_000
        for index in range(count):  # real clock: coalesced as fast as it goes
            node.publish("burst/x", index.to_bytes(4, "big"))
        deadline = time.monotonic() + 30
        got: list[tuple[int, int]] = []
        while len(got) < count and time.monotonic() < deadline:
            message = sub.recv(timeout=5)  # the tail arrives with no further publish
            got.append((message.seq, int.from_bytes(message.data, "big")))  # type: ignore[arg-type]
        assert got == [(index + 1, index) for index in range(count)]
        assert sub.gaps == 0 and sub.dropped == 0


def test_close_sends_what_is_held_and_ends_the_flusher(mesh: str) -> None:
    clock = FakeClock()
    node = meshq.Node("closer", mesh=mesh, interfaces=LOOPBACK, discovery=False)
    node.runtime.publisher.clock = clock
    node.publish("c/x", b"one")
    node.publish("c/x", b"two")  # held, and the clock never moves
    flusher = node.runtime.publisher._flusher
    assert flusher is not None and flusher.is_alive()
    node.close()
    assert not flusher.is_alive()


def test_a_tail_marker_never_overtakes_held_messages(
    publisher: tuple[meshq.Node, FakeClock, zmq.Socket],  # type: ignore[type-arg]
) -> None:
    node, _, sub = publisher
    node.publish("c/x", b"one")  # idle: at once
    node.publish("c/x", b"two")  # held (the fake clock stands still)
    node.runtime.publisher.announce_tails()  # what the control thread does every 0.5 s
    seen: list[object] = []  # data in arrival order
    deadline = time.monotonic() + 10
    while True:  # until the marker for seq 2 (the control thread may add its own)
        assert time.monotonic() < deadline
        frame = sub.recv()
        decoded = decode_data(frame, LIMITS)
        if isinstance(decoded, (list, Message)):
            seen += [m.data for m in messages(frame)]
            continue
        assert decoded.seq <= len(seen)  # a marker never counts what has not arrived
        if decoded.seq == 2:
            break
    assert seen == [b"one", b"two"]


def test_a_batch_ends_at_its_deadline_even_when_the_flusher_cannot_run(
    publisher: tuple[meshq.Node, FakeClock, zmq.Socket],  # type: ignore[type-arg]
) -> None:
    node, clock, sub = publisher
    socket = node.runtime.publisher
    # A flusher that never looks: as when the publishing thread keeps it
    # from the GIL. The publisher itself must then end the batch on time.
    socket._flusher = threading.Thread(target=lambda: None)
    socket._flusher.start()
    socket._flusher.join()
    node.publish("c/x", b"idle")  # at once
    node.publish("c/x", b"held")  # starts a batch
    clock.advance(0.001)  # past its deadline
    late = [b"late %03d" % index for index in range(100)]
    for data in late:
        node.publish("c/x", data)
    socket.flush()
    batches: list[list[Message]] = []
    while sum(map(len, batches)) < 102:
        batches.append(messages(recv_data(sub)))
    received = [(m.seq, m.data) for batch in batches for m in batch]
    assert received == list(enumerate([b"idle", b"held", *late], start=1))
    # The deadline is looked at once per leg of the batch's room, so at most
    # one leg of messages published after it joins the batch.
    held = next(batch for batch in batches if batch[0].data == b"held")
    assert len(held) <= 1 + _LEG_BYTES // (len(late[0]) + _ENTRY_COST) + 1
