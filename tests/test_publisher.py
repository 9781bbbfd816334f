"""What a publisher does at a full subscriber: drop (counted as gaps) or block (meshq.Timeout).

The slow subscriber is real: a second node on loopback whose subscription
is never read, with tiny high-water marks, so ZeroMQ queues and the kernel's
socket buffers fill after a bounded number of large messages.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

import meshq
from meshq.patterns import AsyncPublisher, Publisher
from tests.conftest import NodePair
from tests.harness import Agent
from tests.test_multiprocess import start

LOOPBACK = ["127.0.0.1"]
TINY = meshq.MeshConfig(publish_hwm=2, subscribe_hwm=2)
PAYLOAD = bytes(256 * 1024)
# Loopback buffers hold at most about 36 MiB (tcp_rmem + tcp_wmem maxima):
# 600 messages of 256 KiB are far more than fit.
MAX_SENDS = 600


@pytest.fixture
def pair(node_pair: NodePair) -> tuple[meshq.Node, meshq.Node]:
    """(publisher node, subscriber node), both with tiny high-water marks."""
    return node_pair(TINY)


def receive(subscription: meshq.Subscription, n: int) -> list[meshq.Message]:
    return [subscription.recv(timeout=10) for _ in range(n)]


def test_block_waits_for_a_full_subscriber_then_times_out_and_loses_nothing(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    pub_node, sub_node = pair
    subscription = sub_node.subscribe("slow/")  # owned by this thread, not read yet
    publisher = Publisher(pub_node, "slow/t", when_full="block", timeout=0.2)
    publisher.wait_for_subscribers(1, timeout=10)
    with pytest.raises(meshq.Timeout):
        for _ in range(MAX_SENDS):
            publisher.send(PAYLOAD)
    sent = publisher.sent
    assert publisher.timeouts == 1
    assert 0 < sent < MAX_SENDS

    messages = receive(subscription, sent)  # the reader catches up: room again
    publisher.send(b"after", timeout=10)
    last = subscription.recv(timeout=10)
    assert [m.seq for m in messages] + [last.seq] == list(range(1, sent + 2))
    assert last.data == b"after"
    assert subscription.gaps == 0  # the timed-out message was never numbered


def test_drop_never_waits_and_every_loss_shows_as_a_gap(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    pub_node, sub_node = pair
    subscription = sub_node.subscribe("slow/")
    publisher = Publisher(pub_node, "slow/t")  # when_full="drop"
    publisher.wait_for_subscribers(1, timeout=10)
    for _ in range(MAX_SENDS):
        publisher.send(PAYLOAD)  # never waits, never raises
    received = markers = 0
    while True:
        try:
            message = subscription.recv(timeout=0.5)
        except meshq.Timeout:  # drained: a marker shows whatever was lost last
            assert markers < 20
            publisher.send(b"marker")
            markers += 1
            continue
        if message.data == b"marker":
            break
        received += 1
    assert publisher.sent == MAX_SENDS + markers
    assert subscription.gaps > 0
    assert received + 1 + subscription.gaps == MAX_SENDS + markers
    assert sub_node.stats()["messages_missed"] == subscription.gaps  # the node counts them too
    assert {(g.sender, g.topic) for g in subscription.gap_log} == {(pub_node.id, "slow/t")}


def test_a_node_publishes_a_topic_one_way_only(mesh: str) -> None:
    with meshq.Node("pub", mesh=mesh, interfaces=LOOPBACK) as node:
        node.publish("dropping", 1)
        with pytest.raises(ValueError):
            Publisher(node, "dropping", when_full="block")
        Publisher(node, "blocking", when_full="block").send(1)
        with pytest.raises(ValueError):
            Publisher(node, "blocking").send(1)
        with pytest.raises(ValueError):
            node.publish_many("blocking", [1, 2])
        with pytest.raises(ValueError):
            Publisher(node, "x", when_full="sometimes")  # type: ignore[arg-type]


def test_blocking_topics_reach_local_and_remote_subscribers(mesh: str) -> None:
    # No periodic HELLO within the test: the blocking socket must be announced at once.
    rare_gossip = meshq.MeshConfig(gossip_interval=60.0)
    with (
        meshq.Node("pub", mesh=mesh, interfaces=LOOPBACK, config=rare_gossip) as pub_node,
        meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK) as sub_node,
        pub_node.subscribe("t") as local,
        sub_node.subscribe("t") as remote,
    ):
        pub_node.wait_for_peers(1, timeout=10)
        sub_node.wait_for_peers(1, timeout=10)
        pub_node.publish("other", 1)  # not under "t"
        for refused in ("other", ""):  # refused before the socket opens, so it is announced later
            with pytest.raises(ValueError):
                pub_node.declare_blocking(refused)
        publisher = Publisher(pub_node, "t", when_full="block")  # announced to a known peer
        publisher.wait_for_subscribers(2, timeout=10)
        for i in range(5):
            publisher.send(i)
        assert [local.recv(timeout=10).data for _ in range(5)] == list(range(5))
        assert [remote.recv(timeout=10).data for _ in range(5)] == list(range(5))


def test_async_block_times_out_without_stalling_the_loop(mesh: str) -> None:
    with meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as sub_node:
        subscription = sub_node.subscribe("slow/")  # this thread's, not read yet

        async def main() -> int:
            async with meshq.AsyncNode("pub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as node:
                publisher = AsyncPublisher(node, "slow/a", when_full="block", timeout=0.2)
                await publisher.wait_for_subscribers(1, timeout=10)
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        ticks += 1
                        await asyncio.sleep(0)

                ticking = asyncio.create_task(ticker())
                with pytest.raises(meshq.Timeout):
                    for _ in range(MAX_SENDS):
                        await publisher.send(PAYLOAD)
                ticking.cancel()
                assert ticks > 0  # the loop ran while the publisher waited
                assert publisher.timeouts == 1
                sent: int = publisher.sent
                messages = receive(subscription, sent)
                assert [m.seq for m in messages] == list(range(1, sent + 1))
                assert subscription.gaps == 0
                return sent

        assert asyncio.run(main()) > 0


def test_a_paused_subscriber_holds_a_blocking_publisher_back_and_misses_nothing(
    mesh: str, agents: list[Agent]
) -> None:
    """SIGSTOP a subscriber process: sends block, then time out; after SIGCONT it has all."""
    subscriber = start(agents, "subscriber", mesh, "--hwm", "2")
    # The paused subscriber's connection must outlive the test's pause: ZeroMQ's
    # heartbeat would otherwise drop it after gone_after (and the blocked
    # publisher would then go on without it).
    patient = meshq.MeshConfig(publish_hwm=2, subscribe_hwm=2, suspect_after=20, gone_after=60)
    with meshq.Node("publisher", mesh=mesh, interfaces=LOOPBACK, config=patient) as node:
        publisher = Publisher(node, "flood/x", when_full="block", timeout=0.3)
        subscriber.send(cmd="subscribe", prefix="flood/", quiet=True)
        subscriber.expect(lambda e: e["ev"] == "subscribed", timeout=10)
        publisher.wait_for_subscribers(1, timeout=15)
        subscriber.signal(signal.SIGSTOP)
        try:
            with pytest.raises(meshq.Timeout):
                for _ in range(MAX_SENDS):
                    publisher.send(PAYLOAD)
        finally:
            subscriber.signal(signal.SIGCONT)
        publisher.send(b"after", timeout=30)
        expected = publisher.sent
        deadline = time.monotonic() + 30
        while True:
            subscriber.send(cmd="report")
            report = subscriber.expect(lambda e: e["ev"] == "report", timeout=10)
            subscriber.events.remove(report)
            if report.get("received", 0) >= expected:
                break
            assert time.monotonic() < deadline, (report, expected)
            time.sleep(0.05)
    assert report["received"] == expected
    assert report.get("gaps", 0) == 0
