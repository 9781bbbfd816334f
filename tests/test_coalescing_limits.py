"""Coalesced frames fit every receiver; a closed publisher refuses instead of holding."""

from __future__ import annotations

import pytest

import meshq
from meshq.config import MIN_MESSAGE_BYTES

LOOPBACK = ["127.0.0.1"]


def test_a_limit_too_small_for_a_coalesced_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        meshq.MeshConfig(max_message_bytes=MIN_MESSAGE_BYTES - 1)
    meshq.MeshConfig(max_message_bytes=MIN_MESSAGE_BYTES)


def test_a_small_limit_subscriber_gets_a_burst_of_small_messages(mesh: str) -> None:
    small = meshq.MeshConfig(max_message_bytes=MIN_MESSAGE_BYTES)
    with (
        meshq.Node("publisher", mesh=mesh, interfaces=LOOPBACK) as publisher,
        meshq.Node("small", mesh=mesh, interfaces=LOOPBACK, config=small) as subscriber,
        subscriber.subscribe("burst/") as sub,
    ):
        publisher.wait_for_subscribers("burst/x", 1, timeout=10)
        for i in range(2000):  # fast enough to be coalesced
            publisher.publish("burst/x", b"%099d" % i)
        got = [sub.recv(timeout=10).seq for _ in range(2000)]
        assert got == list(range(1, 2001))
        assert sub.gaps == 0 and sub.dropped == 0


def test_publishing_after_close_raises_even_on_a_known_topic(mesh: str) -> None:
    node = meshq.Node("closing", mesh=mesh, interfaces=LOOPBACK)
    node.publish("t/x", b"before")
    node.close()
    with pytest.raises(meshq.Closed):
        node.publish("t/x", b"after")
