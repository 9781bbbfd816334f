"""A blocking publish waits for room without polling: it wakes when a subscriber reads.

The slow subscriber is real (a second node on loopback with tiny high-water
marks, whose subscription is not read), as in tests/test_publisher.py. The
number of tries a blocked publisher makes is counted on the publish
socket's own ``try_publish_blocking``, which both the sync and the asyncio
shells call once per try: a wait that polled would try dozens of times a
second, one woken by the subscriber's reads tries a handful of times.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

import meshq
from meshq import publishing
from meshq.publishing import PublishSocket
from meshq.sockets import SocketFactory
from meshq.wire import Limits
from tests.conftest import NodePair

LOOPBACK = ["127.0.0.1"]
# Tiny high-water marks, and ZMTP heartbeats rare enough that none falls in
# a test: each one lets a stalled subscriber's engine read a little (it must,
# to find the PING), which makes room for one more message, and after
# gone_after without an answer it drops the connection.
TINY = meshq.MeshConfig(
    publish_hwm=2, subscribe_hwm=2, heartbeat_interval=10.0, suspect_after=20.0, gone_after=40.0
)
PAYLOAD = bytes(256 * 1024)
# Loopback buffers hold at most about 36 MiB: 600 messages of 256 KiB are far more than fit.
MAX_SENDS = 600
#: Tries a publisher blocked for about a second may make: its first two, a
#: recheck every 0.5 s (see publishing.BlockingWait), and a few wake-ups
#: from the control thread. A publisher that retried on a timer (0.5 ms
#: doubling to 10 ms, as before) makes about a hundred.
MAX_TRIES = 8


@pytest.fixture
def pair(node_pair: NodePair) -> tuple[meshq.Node, meshq.Node]:
    """(publisher node, subscriber node), both with tiny high-water marks."""
    return node_pair(TINY)


def count_tries(publisher: PublishSocket) -> collections.Counter[str]:
    """Count each try of a blocking publish on ``publisher``, by topic (a spy, not a mock)."""
    tries: collections.Counter[str] = collections.Counter()
    real = publisher.try_publish_blocking
    lock = threading.Lock()

    def counting(topic: str, *args: object, **kwargs: object) -> bool:
        with lock:
            tries[topic] += 1
        return real(topic, *args, **kwargs)  # type: ignore[arg-type]

    publisher.try_publish_blocking = counting  # type: ignore[method-assign]
    return tries


def stall(pub: meshq.Node, sub: meshq.Node) -> tuple[meshq.Subscription, int]:
    """``sub`` subscribes to slow/ (its thread's, unread) and ``pub`` fills slow/t
    until it blocks: (the subscription, messages sent)."""
    subscription = sub.subscribe("slow/")
    pub.declare_blocking("slow/t")
    pub.wait_for_subscribers("slow/t", 1, timeout=10)
    return subscription, fill(pub, "slow/t")


def fill(node: meshq.Node, topic: str) -> int:
    """Publish blocking on ``topic`` until a subscriber stays full; return how many went.

    Stays full: for half a second. TCP's zero-window probes still let a
    message or two in during the first few hundred milliseconds.
    """
    for sent in range(MAX_SENDS):
        try:
            node.publish_blocking(topic, PAYLOAD, timeout=0.5)
        except meshq.Timeout:
            return sent
    raise AssertionError("the subscriber never filled up")


def publishing_last(
    publish_blocking: Callable[..., None], outcome: list[object]
) -> threading.Thread:
    """A thread (not started) that publishes b"last" on slow/t through ``publish_blocking``
    (a node's or a PublishSocket's) with no deadline; ``outcome`` gets "sent" or
    what it raised."""

    def main() -> None:
        try:
            publish_blocking("slow/t", b"last", timeout=None)  # no deadline to wake it
            outcome.append("sent")
        except BaseException as exc:
            outcome.append(exc)

    return threading.Thread(target=main)


async def fill_async(node: meshq.AsyncNode, topic: str) -> int:
    """:func:`fill` for an AsyncNode."""
    for sent in range(MAX_SENDS):
        try:
            await node.publish_blocking(topic, PAYLOAD, timeout=0.5)
        except meshq.Timeout:
            return sent
    raise AssertionError("the subscriber never filled up")


def test_a_blocked_publisher_resumes_when_the_subscriber_reads(
    pair: tuple[meshq.Node, meshq.Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publishing, "ROOM_RECHECK", 600.0)  # only news of room can wake it
    pub, sub = pair
    subscription, sent = stall(pub, sub)  # this thread's subscription, not read yet
    tries = count_tries(pub.runtime.publisher)
    outcome: list[object] = []
    blocked = publishing_last(pub.publish_blocking, outcome)
    blocked.start()
    try:
        blocked.join(0.3)
        assert blocked.is_alive() and not outcome  # nobody read: it waits
        messages = [subscription.recv(timeout=10) for _ in range(sent)]
        last = subscription.recv(timeout=10)
        blocked.join(10)
    finally:
        pub.close()  # ends a wait that was never woken (Closed), so the thread ends
        blocked.join()
    assert outcome == ["sent"]
    assert [m.seq for m in messages] + [last.seq] == list(range(1, sent + 2))
    assert last.data == b"last"
    assert subscription.gaps == 0
    assert 2 <= tries["slow/t"] <= MAX_TRIES  # woken by the reads, not by a timer


def test_a_blocked_publisher_tries_a_few_times_then_times_out_at_its_deadline(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    pub, sub = pair
    subscription, sent = stall(pub, sub)
    tries = count_tries(pub.runtime.publisher)
    began = time.monotonic()
    with pytest.raises(meshq.Timeout, match="slow/t"):
        pub.publish_blocking("slow/t", PAYLOAD, timeout=1.0)
    waited = time.monotonic() - began
    assert 1.0 <= waited < 3.0  # at its deadline, neither before nor long after
    assert 2 <= tries["slow/t"] <= MAX_TRIES
    # Nothing went and no sequence number was used: the reader sees no gap.
    messages = [subscription.recv(timeout=10) for _ in range(sent)]
    pub.publish_blocking("slow/t", b"after", timeout=10)
    last = subscription.recv(timeout=10)
    assert [m.seq for m in messages] + [last.seq] == list(range(1, sent + 2))
    assert subscription.gaps == 0


def test_two_blocked_publishers_do_not_wake_each_other_forever(mesh: str) -> None:
    """Each failed try may pass a wake-up on; two waiters must not ping-pong on it."""
    with (
        meshq.Node("pub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as pub,
        meshq.Node("sub-a", mesh=mesh, interfaces=LOOPBACK, config=TINY) as sub_a,
        meshq.Node("sub-b", mesh=mesh, interfaces=LOOPBACK, config=TINY) as sub_b,
        sub_a.subscribe("a/") as reader_a,
        sub_b.subscribe("b/") as reader_b,
    ):
        pub.wait_for_peers(2, timeout=10)
        for topic in ("a/t", "b/t"):
            pub.declare_blocking(topic)
            pub.wait_for_subscribers(topic, 1, timeout=10)
        sent = {topic: fill(pub, topic) for topic in ("a/t", "b/t")}
        tries = count_tries(pub.runtime.publisher)
        timeouts: list[str] = []

        def wait(topic: str) -> None:
            try:
                pub.publish_blocking(topic, PAYLOAD, timeout=1.0)
            except meshq.Timeout:
                timeouts.append(topic)

        threads = [threading.Thread(target=wait, args=(t,)) for t in ("a/t", "b/t")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(timeouts) == ["a/t", "b/t"]
        assert 2 <= tries["a/t"] <= MAX_TRIES
        assert 2 <= tries["b/t"] <= MAX_TRIES
        # Room for one wakes its publisher; the other stays full.
        got_a = [reader_a.recv(timeout=10).seq for _ in range(sent["a/t"])]
        pub.publish_blocking("a/t", b"a", timeout=10)
        assert reader_a.recv(timeout=10).seq == sent["a/t"] + 1
        assert got_a == list(range(1, sent["a/t"] + 1))
        with pytest.raises(meshq.Timeout):
            pub.publish_blocking("b/t", PAYLOAD, timeout=0.3)
        assert reader_b.recv(timeout=10).seq == 1


def test_an_async_blocked_publisher_resumes_when_the_subscriber_reads(
    mesh: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publishing, "ROOM_RECHECK", 600.0)  # only news of room can wake it

    async def main() -> None:
        async with (
            meshq.AsyncNode("pub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as pub,
            meshq.AsyncNode("sub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as sub,
        ):
            await pub.wait_for_peers(1, timeout=10)
            subscription = sub.subscribe("slow/")
            pub.declare_blocking("slow/t")
            await pub.wait_for_subscribers("slow/t", 1, timeout=10)
            sent = await fill_async(pub, "slow/t")
            tries = count_tries(pub.node.runtime.publisher)
            blocked = asyncio.create_task(pub.publish_blocking("slow/t", b"last", timeout=None))
            await asyncio.sleep(0.3)
            assert not blocked.done()  # nobody read: it waits, and the loop runs meanwhile
            seqs = [(await subscription.recv(timeout=10)).seq for _ in range(sent)]
            last = await subscription.recv(timeout=10)
            await asyncio.wait_for(blocked, 10)
            assert [*seqs, last.seq] == list(range(1, sent + 2))
            assert last.data == b"last"
            assert subscription.gaps == 0
            assert 2 <= tries["slow/t"] <= MAX_TRIES

    asyncio.run(main())


def test_an_async_blocked_publisher_tries_a_few_times_then_times_out(mesh: str) -> None:
    with meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as sub_node:
        subscription = sub_node.subscribe("slow/")  # this thread's, read after the loop ends

        async def main() -> int:
            async with meshq.AsyncNode("pub", mesh=mesh, interfaces=LOOPBACK, config=TINY) as pub:
                pub.declare_blocking("slow/t")
                await pub.wait_for_subscribers("slow/t", 1, timeout=10)
                sent = await fill_async(pub, "slow/t")
                tries = count_tries(pub.node.runtime.publisher)
                began = time.monotonic()
                with pytest.raises(meshq.Timeout, match="slow/t"):
                    await pub.publish_blocking("slow/t", PAYLOAD, timeout=1.0)
                waited = time.monotonic() - began
                assert 1.0 <= waited < 3.0
                assert 2 <= tries["slow/t"] <= MAX_TRIES
                # Read here, while the publisher is open (this thread owns the subscription).
                seqs = [subscription.recv(timeout=10).seq for _ in range(sent)]
                assert seqs == list(range(1, sent + 1))
                assert subscription.gaps == 0
                return sent

        assert asyncio.run(main()) > 0


def test_closing_the_node_ends_a_blocked_publish_with_closed(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    pub, sub = pair
    subscription, _ = stall(pub, sub)
    outcome: list[BaseException] = []

    def publish_forever() -> None:
        try:
            pub.publish_blocking("slow/t", PAYLOAD, timeout=None)
        except BaseException as exc:
            outcome.append(exc)

    blocked = threading.Thread(target=publish_forever)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()
    pub.close()
    blocked.join(10)
    assert not blocked.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], meshq.Closed)
    subscription.close()


def test_news_of_room_taken_by_another_topics_publisher_reaches_the_waiter(
    pair: tuple[meshq.Node, meshq.Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood on another blocking topic uses the NODROP socket all the time, and
    so may run the command that brings room before the control thread reads the
    socket: the waiter still hears of it."""
    monkeypatch.setattr(publishing, "ROOM_RECHECK", 600.0)  # only news of room can wake it
    pub, sub = pair
    subscription = sub.subscribe("slow/")
    pub.declare_blocking("slow/t")
    pub.declare_blocking("free/t")  # nobody subscribes: every send goes (to nobody)
    pub.wait_for_subscribers("slow/t", 1, timeout=10)
    sent = fill(pub, "slow/t")
    stop = threading.Event()
    flooded = 0

    def flood() -> None:
        nonlocal flooded
        while not stop.is_set() and flooded < 10_000_000:
            pub.publish_blocking("free/t", b"x", timeout=1.0)
            flooded += 1

    outcome: list[object] = []
    threads = [threading.Thread(target=flood), publishing_last(pub.publish_blocking, outcome)]
    for thread in threads:
        thread.start()
    try:
        threads[1].join(0.3)
        assert threads[1].is_alive()
        messages = [subscription.recv(timeout=10) for _ in range(sent)]
        last = subscription.recv(timeout=10)
        threads[1].join(10)
    finally:
        stop.set()
        pub.close()
        for thread in threads:
            thread.join()
    assert outcome == ["sent"]
    assert flooded > 0
    assert [m.seq for m in messages] + [last.seq] == list(range(1, sent + 2))


#: One use of a publisher's NODROP socket by someone other than the waiter.
USES: dict[str, Callable[[PublishSocket], object]] = {
    "a try on another topic": lambda p: p.try_publish_blocking("free/t", 0, b"x"),
    "a round of tail markers": lambda p: p.announce_tails(),
    "subscribers()": lambda p: p.subscribers("slow/t"),
}


@pytest.mark.parametrize("use", USES)
def test_every_use_of_the_nodrop_socket_hands_news_of_room_on(
    use: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any use of the NODROP socket may run the command that brings room, so each
    one must pass the news on (publishing._NodropSocket).

    A bare PublishSocket, with no node and so no control thread reading its
    ZMQ_FD, and a raw SUB on the inproc endpoint: after the reader drains,
    the one way the waiter hears of room is the use made here.
    """
    monkeypatch.setattr(publishing, "ROOM_RECHECK", 600.0)  # only news of room can wake it
    context = zmq.Context()
    config = meshq.MeshConfig(publish_hwm=2, subscribe_hwm=2)
    publisher = PublishSocket(
        context,
        SocketFactory(config),
        node_id=bytes(16),
        interfaces=LOOPBACK,
        port=0,
        limits=Limits(),
        max_topics=16,
    )
    reader = context.socket(zmq.SUB)
    reader.setsockopt(zmq.RCVHWM, 2)
    outcome: list[object] = []
    failed_try = threading.Event()
    real_try = publisher.try_publish_blocking

    def spied_try(topic: str, *args: Any) -> bool:
        sent = real_try(topic, *args)
        if not sent and topic == "slow/t":
            failed_try.set()  # registered as waiting, in the same locked step
        return sent

    blocked = publishing_last(publisher.publish_blocking, outcome)
    try:
        for topic in ("slow/t", "free/t"):
            publisher.declare_blocking(topic)
        reader.subscribe(b"slow/t")
        for endpoint in (publisher.local_endpoint, publisher.block_local_endpoint):
            reader.connect(endpoint)  # both: so subscribers() counts it
        deadline = time.monotonic() + 10
        while publisher.subscribers("slow/t") < 1:  # commands waiting: run by the next look
            assert time.monotonic() < deadline, "the reader never subscribed"
            zmq.select(publisher.wake_fds(), [], [], 0.1)
        sent = 0
        while publisher.try_publish_blocking("slow/t", 0, b"x"):
            sent += 1
            assert sent < 100, "the reader never filled up"
        publisher.try_publish_blocking = spied_try  # type: ignore[method-assign,assignment]
        blocked.start()
        assert failed_try.wait(10)
        assert reader.poll(10_000)
        for _ in range(sent):  # the reader drains: room comes as a command
            assert reader.poll(10_000)
            reader.recv()
        for _ in range(100):  # each use may run the command: then it must tell the waiter
            USES[use](publisher)
            blocked.join(0.1)
            if not blocked.is_alive():
                break
        assert outcome == ["sent"]
        frames: list[bytes] = []  # tail markers may come first
        while not frames or not frames[-1].endswith(b"last"):
            assert len(frames) < 10 and reader.poll(10_000)
            frames.append(reader.recv())
    finally:
        publisher.close()  # ends a wait that was never woken (Closed), so the thread ends
        if blocked.ident is not None:
            blocked.join()
        reader.close(linger=0)
        context.term()
