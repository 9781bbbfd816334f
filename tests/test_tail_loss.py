"""Tail loss is counted: received + gaps == published, even when a burst's end is lost.

A subscriber process is stopped with SIGSTOP in the middle of a flood and
resumed after the flood ended, so no later message shows the jump in
sequence numbers; only the publisher's tail markers can. Once for a stall
shorter than ``gone_after`` (the link survives) and once for a longer one
(both sides drop the peer and make the link anew).
"""

from __future__ import annotations

import signal
import time

import pytest

from meshq.errors import ProtocolError
from meshq.subscription import Inbox, PublisherDirectory
from meshq.wire import (
    FLAG_MSGPACK,
    FLAG_TAIL,
    Limits,
    TailMarker,
    decode_data,
    encode_data,
    topic_prefix,
)
from tests.harness import Agent, agent_argv, joined

LOOPBACK = "127.0.0.1"
FLOOD = 20_000


def report(subscriber: Agent) -> dict[str, object]:
    subscriber.send(cmd="report")
    event = subscriber.expect(lambda e: e["ev"] == "report", timeout=10)
    subscriber.events.remove(event)
    return event


@pytest.mark.parametrize("stall", [1.0, 4.5], ids=["within-gone-after", "past-gone-after"])
def test_a_lost_tail_is_counted_as_a_gap(mesh: str, agents: list[Agent], stall: float) -> None:
    publisher = Agent(agent_argv("publisher", mesh, LOOPBACK, "--hwm", "50"), "publisher")
    agents.append(publisher)
    subscriber = Agent(agent_argv("subscriber", mesh, LOOPBACK, "--hwm", "50"), "subscriber")
    agents.append(subscriber)
    subscriber.expect(joined(publisher.name), timeout=15)
    subscriber.send(cmd="subscribe", prefix="flood/", quiet=True)
    subscriber.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    deadline = time.monotonic() + 15
    warm_ups = 0
    while not report(subscriber).get("received"):  # until connected (slow joiner)
        assert time.monotonic() < deadline, "the subscriber never heard the publisher"
        publisher.send(cmd="publish", topic="flood/x", data="hello")
        warm_ups += 1
    # Messages before the link existed were never due: count from the first one.
    first_seq = int(report(subscriber)["first_seq"])  # type: ignore[call-overload]
    due = warm_ups + FLOOD - first_seq + 1

    subscriber.signal(signal.SIGSTOP)
    try:
        publisher.send(cmd="publish", topic="flood/x", data="x" * 1000, count=FLOOD)
        publisher.expect(lambda e: e["ev"] == "published" and e["count"] == FLOOD, timeout=60)
        time.sleep(stall)  # the subscriber stays stopped: the scenario, not a wait for a result
    finally:
        subscriber.signal(signal.SIGCONT)

    # Nothing more is published: only tail markers can tell what was lost.
    deadline = time.monotonic() + 60
    while True:
        now = report(subscriber)
        received = int(now.get("received", 0))  # type: ignore[call-overload]
        gaps = int(now.get("gaps", 0))  # type: ignore[call-overload]
        if received + gaps >= due:
            break
        assert time.monotonic() < deadline, f"received {received} + gaps {gaps} < {due}"
        time.sleep(0.2)
    assert received + gaps == due, (received, gaps, due)
    assert gaps > 0 and received > 0
    assert all(gap["topic"] == "flood/x" for gap in now["gap_log"])  # type: ignore[attr-defined]


def test_tail_markers_decode_and_count_what_a_stream_lacks() -> None:
    limits = Limits()
    sender = bytes(range(1, 17))
    prefix = topic_prefix("t/x", sender, limits)
    marker = decode_data(encode_data(prefix, FLAG_TAIL, 7, 0, b""), limits)
    assert isinstance(marker, TailMarker) and marker.seq == 7
    for bad in (
        encode_data(prefix, FLAG_TAIL, 7, 0, b"x"),  # a payload
        encode_data(prefix, FLAG_TAIL | FLAG_MSGPACK, 7, 0, b""),  # other flags
        encode_data(prefix, FLAG_TAIL, 0, 0, b""),  # seq 0
    ):
        with pytest.raises(ProtocolError):
            decode_data(bad, limits)

    inbox = Inbox("t/", PublisherDirectory(), limits)
    missed: list[int] = []
    inbox.on_gap = missed.append
    assert inbox._take(encode_data(prefix, FLAG_TAIL, 3, 0, b"")) is None  # counting starts
    message = inbox._take(encode_data(prefix, 0, 4, 0, b"a"))
    assert message is not None and message.seq == 4 and inbox.gaps == 0
    inbox._take(encode_data(prefix, FLAG_TAIL, 9, 0, b""))  # 5..9 never came
    inbox._take(encode_data(prefix, FLAG_TAIL, 9, 0, b""))  # told again: nothing new
    assert (inbox.gaps, missed) == (5, [5])
    assert inbox.gap_log[-1].topic == "t/x" and inbox.gap_log[-1].sender == sender.hex()
    inbox._take(encode_data(prefix, 0, 10, 0, b"b"))
    assert inbox.gaps == 5
