"""Nodes in one process on 127.0.0.1: discovery, pub/sub, events, bad input, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

import meshq
from meshq.discovery import SERVICE_TYPE
from meshq.wire import Hello, Limits, encode_control, encode_data, routing_id, topic_prefix

LOOPBACK = ["127.0.0.1"]


def receive_while_publishing(
    publisher: meshq.Node, topic: str, data: object, sub: meshq.Subscription, timeout: float = 5.0
) -> meshq.Message:
    """Publish every 20 ms until ``sub`` gets a message (bounded: ``timeout`` s).

    A subscriber connects to a publisher asynchronously, so the first
    messages may go out before it listens (ZeroMQ's slow joiner).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(topic, data)
        try:
            return sub.recv(timeout=0.02)
        except meshq.Timeout:
            continue
    raise AssertionError(f"nothing received on {sub.prefix!r} within {timeout} s")


@pytest.fixture
def trio(mesh: str) -> Iterator[list[meshq.Node]]:
    nodes = [
        meshq.Node(name, mesh=mesh, interfaces=LOOPBACK, headers={"role": name})
        for name in ("alpha", "bravo", "charlie")
    ]
    try:
        for node in nodes:
            node.wait_for_peers(2, timeout=10)
        yield nodes
    finally:
        for node in nodes:
            node.close()


def test_three_nodes_find_each_other_by_mdns(trio: list[meshq.Node]) -> None:
    alpha, bravo, charlie = trio
    peers = {peer.name: peer for peer in alpha.peers()}
    assert set(peers) == {"bravo", "charlie"}
    assert peers["bravo"].id == bravo.id and peers["charlie"].id == charlie.id
    assert peers["bravo"].state is meshq.PeerState.ALIVE
    assert peers["bravo"].endpoint in bravo.control_endpoints
    assert peers["bravo"].headers == {"role": "bravo"}
    assert len({alpha.id, bravo.id, charlie.id}) == 3 and len(alpha.id) == 32


def test_publish_reaches_subscribers_with_prefix_matching(trio: list[meshq.Node]) -> None:
    alpha, bravo, charlie = trio
    with bravo.subscribe("sensors/") as sensors, charlie.subscribe("sensors/temp") as temps:
        first = receive_while_publishing(alpha, "sensors/temp", {"celsius": 21.5}, sensors)
        receive_while_publishing(alpha, "sensors/temp", {"celsius": 21.5}, temps)
        assert first.topic == "sensors/temp" and first.data == {"celsius": 21.5}
        assert first.sender == alpha.id
        assert abs(first.timestamp - time.time()) < 60  # a wall-clock time, in seconds
        alpha.publish("sensors/temp", b"sync")  # both are connected now; skip the warm-up
        for sub in (sensors, temps):
            while sub.recv(timeout=5).data != b"sync":
                pass
        alpha.publish("sensors/humidity", b"\x00raw bytes")
        alpha.publish("other/thing", b"not for us")
        alpha.publish("sensors/temp", b"last")
        humidity = sensors.recv(timeout=5)
        assert (humidity.topic, humidity.data) == ("sensors/humidity", b"\x00raw bytes")
        assert humidity.seq == 1  # sequence numbers count per topic
        last = sensors.recv(timeout=5)
        assert (last.topic, last.data) == ("sensors/temp", b"last")
        assert last.seq > first.seq
        # charlie's narrower prefix skips humidity; "other/" reaches nobody here.
        assert temps.recv(timeout=5).data == b"last"
        with pytest.raises(meshq.Timeout):
            sensors.recv(timeout=0.3)


def test_a_node_receives_its_own_messages(mesh: str) -> None:
    with meshq.Node("solo", mesh=mesh, interfaces=LOOPBACK) as node, node.subscribe("me/") as sub:
        message = receive_while_publishing(node, "me/x", [1, 2, 3], sub)
        assert message.data == [1, 2, 3] and message.sender == node.id


def test_subscription_reaches_peers_that_join_later(mesh: str) -> None:
    with (
        meshq.Node("early", mesh=mesh, interfaces=LOOPBACK) as early,
        early.subscribe("news/") as sub,
        meshq.Node("late", mesh=mesh, interfaces=LOOPBACK) as late,
    ):
        late.wait_for_peers(1, timeout=10)
        message = receive_while_publishing(late, "news/today", "hello", sub)
        assert message.sender == late.id and message.data == "hello"


def test_close_says_goodbye(trio: list[meshq.Node]) -> None:
    alpha, _, charlie = trio
    charlie.close()
    for event in alpha.events(timeout=10):
        if event.kind is meshq.EventKind.LEFT:
            assert event.peer.name == "charlie"
            assert event.reason == "bye"  # not a heartbeat timeout
            break
    else:
        raise AssertionError("charlie's departure was not reported")
    assert [p.name for p in alpha.peers()] == ["bravo"]


def test_peer_callbacks_run_off_the_io_thread_and_survive_errors(mesh: str) -> None:
    seen: list[tuple[str, str]] = []
    arrived = threading.Event()
    with meshq.Node("watcher", mesh=mesh, interfaces=LOOPBACK) as watcher:

        @watcher.on_peer_joined
        def broken(peer: meshq.Peer) -> None:
            raise RuntimeError("a buggy handler")

        @watcher.on_peer_joined
        def record(peer: meshq.Peer) -> None:
            seen.append((peer.name, threading.current_thread().name))
            arrived.set()

        with meshq.Node("newcomer", mesh=mesh, interfaces=LOOPBACK) as newcomer:
            assert arrived.wait(10)
            newcomer.wait_for_peers(1, timeout=10)
        assert seen[0][0] == "newcomer"
        assert seen[0][1].startswith("meshq-events")
        assert watcher.stats()["callback_errors"] == 1


def test_other_meshes_are_ignored(mesh: str) -> None:
    with meshq.Node("mine", mesh=mesh, interfaces=LOOPBACK) as mine:
        seeds = list(mine.control_endpoints)
        with meshq.Node("theirs", mesh=mesh + "-other", interfaces=LOOPBACK, seeds=seeds) as theirs:
            deadline = time.monotonic() + 10
            while mine.stats().get("other_mesh", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert mine.stats().get("other_mesh", 0) >= 1  # its HELLO arrived and was refused
            assert mine.peers() == [] and theirs.peers() == []


def test_one_seed_is_enough_for_a_full_mesh(mesh: str) -> None:
    config = meshq.MeshConfig()
    with meshq.Node("seed", mesh=mesh, interfaces=LOOPBACK, discovery=False) as seed:
        seeds = list(seed.control_endpoints)
        with (
            meshq.Node("b", mesh=mesh, interfaces=LOOPBACK, seeds=seeds, discovery=False) as b,
            meshq.Node(
                "c", mesh=mesh, interfaces=LOOPBACK, seeds=seeds, config=config, discovery=False
            ) as c,
        ):
            for node in (seed, b, c):
                node.wait_for_peers(2, timeout=10)
            assert {p.name for p in c.peers()} == {"seed", "b"}
            assert {p.name for p in b.peers()} == {"seed", "c"}


def test_what_peers_would_refuse_is_refused_locally(mesh: str) -> None:
    with pytest.raises(ValueError, match="node name"):
        meshq.Node("n" * 256, mesh=mesh, interfaces=LOOPBACK)
    with pytest.raises(ValueError, match="mesh name"):
        meshq.Node("ok", mesh="m" * 129, interfaces=LOOPBACK)
    with pytest.raises(ValueError, match="headers"):
        meshq.Node("ok", mesh=mesh, interfaces=LOOPBACK, headers={"k": "v" * 1025})
    with pytest.raises(ValueError, match="encoded"):
        meshq.Node("ok", mesh=mesh, interfaces=LOOPBACK, headers={"k": "\udc80"})
    too_big = {f"k{i}": "v" * 1024 for i in range(64)}  # each fine, together over 64 KiB
    with pytest.raises(ValueError, match="HELLO limit"):
        meshq.Node("ok", mesh=mesh, interfaces=LOOPBACK, headers=too_big)
    with pytest.raises(ValueError, match="IPv4"):
        meshq.Node("ok", mesh=mesh, interfaces=["eth0"])
    with pytest.raises(ValueError, match="port"):
        meshq.Node("ok", mesh=mesh, interfaces=LOOPBACK, seeds=["tcp://127.0.0.1"])
    with meshq.Node("é" * 100, mesh=mesh, interfaces=LOOPBACK) as node:  # non-ASCII name
        with pytest.raises(ValueError):
            node.subscribe("a\0b")
        with pytest.raises(ValueError):
            node.publish("", b"x")
        with pytest.raises(TypeError):
            node.publish("t", object())


def test_wait_for_peers_times_out_with_a_typed_error(mesh: str) -> None:
    with meshq.Node("alone", mesh=mesh, interfaces=LOOPBACK) as node:
        with pytest.raises(meshq.Timeout) as caught:
            node.wait_for_peers(1, timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, meshq.MeshqError)


def test_use_after_close_raises_closed(mesh: str) -> None:
    node = meshq.Node("short-lived", mesh=mesh, interfaces=LOOPBACK)
    dropped = node.subscribe("y/")
    collected = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert collected() is None  # a subscription nobody holds is not kept alive
    sub = node.subscribe("x/")
    node.close()
    assert sub.closed  # this thread's subscriptions close with the node
    node.close()  # twice is fine
    with pytest.raises(meshq.Closed):
        node.publish("x/y", b"late")
    with pytest.raises(meshq.Closed):
        sub.recv(timeout=1)
    with pytest.raises(meshq.Closed):
        node.subscribe("x/")
    assert list(sub) == []


def test_subscription_closed_by_node_in_another_thread(mesh: str) -> None:
    node = meshq.Node("threads", mesh=mesh, interfaces=LOOPBACK)
    outcome: list[BaseException] = []
    started = threading.Event()

    def consume() -> None:
        sub = node.subscribe("x/")
        started.set()
        try:
            sub.recv(timeout=30)
        except BaseException as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert started.wait(5)
    node.close()
    consumer.join(10)
    assert not consumer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], meshq.Closed)


def test_bad_input_is_counted_and_the_node_keeps_working(trio: list[meshq.Node]) -> None:
    alpha, bravo, _ = trio
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    garbage = [
        [b"not meshq"],
        [b"MQ\x07\x02"],  # a future protocol version
        [b"MQ\x01\x01" + b"\xc1\xc1"],  # HELLO with a broken body
        [b"MQ\x01\x01" + msgpack.packb({"name": "x", "mesh": alpha.mesh})],  # no endpoints
        [b"two", b"frames"],
        [b"MQ\x01\x02", b"", b"extra"],
    ]
    with context.socket(zmq.DEALER) as rogue:
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.setsockopt(zmq.IDENTITY, routing_id(b"r" * 16, 1))
        rogue.connect(alpha.control_endpoints[0])
        for frames in garbage:
            rogue.send_multipart(frames)
        deadline = time.monotonic() + 10
        while alpha.stats().get("protocol_errors", 0) < len(garbage):
            assert time.monotonic() < deadline, alpha.stats()
            time.sleep(0.02)
    with context.socket(zmq.DEALER) as anonymous:  # no 16-byte identity: not a node
        anonymous.setsockopt(zmq.LINGER, 0)
        anonymous.connect(alpha.control_endpoints[0])
        anonymous.send(encode_control(meshq.wire.Ping(b"p" * 16)))
        while alpha.stats().get("protocol_errors", 0) < len(garbage) + 1:
            assert time.monotonic() < deadline, alpha.stats()
            time.sleep(0.02)
    assert {p.name for p in alpha.peers()} == {"bravo", "charlie"}
    with alpha.subscribe("still/") as sub:
        assert receive_while_publishing(bravo, "still/here", b"yes", sub).data == b"yes"


def test_malformed_data_from_a_peer_is_dropped_and_counted(mesh: str) -> None:
    """A rogue peer announces a publish socket, then sends garbage on it."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    rogue_id = b"R" * 16
    with (
        meshq.Node("victim", mesh=mesh, interfaces=LOOPBACK, discovery=False) as victim,
        context.socket(zmq.PUB) as pub,
        context.socket(zmq.DEALER) as control,
        victim.subscribe("t/") as sub,
    ):
        pub.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.LINGER, 0)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        control.setsockopt(zmq.IDENTITY, routing_id(rogue_id, 1))
        control.connect(victim.control_endpoints[0])
        control.send(
            encode_control(
                Hello(rogue_id, "rogue", mesh, ("tcp://127.0.0.1:1",), (f"tcp://127.0.0.1:{port}",))
            )
        )
        victim.wait_for_peers(1, timeout=10)
        good = encode_data(topic_prefix("t/ok", rogue_id, Limits()), 0, 1, 0, b"fine")
        bad = [b"t/no-terminator", b"t/x\0\x09" + bytes(40), b"t/x\0\x01" + bytes(3)]
        deadline = time.monotonic() + 10
        received = None
        while received is None and time.monotonic() < deadline:
            for frame in bad:
                pub.send(frame)
            pub.send(good)
            try:
                received = sub.recv(timeout=0.05)
            except meshq.Timeout:
                continue
        assert received is not None and received.data == b"fine"
        assert sub.dropped >= len(bad)


def test_async_node_publish_and_subscribe(mesh: str) -> None:
    async def scenario() -> tuple[object, str, list[str]]:
        async with (
            meshq.AsyncNode("a", mesh=mesh, interfaces=LOOPBACK) as a,
            meshq.AsyncNode("b", mesh=mesh, interfaces=LOOPBACK) as b,
        ):
            await a.wait_for_peers(1, timeout=10)
            await b.wait_for_peers(1, timeout=10)
            sub = b.subscribe("async/")
            received: list[meshq.Message] = []

            async def consume() -> None:
                async for message in sub:
                    received.append(message)
                    return

            consumer = asyncio.create_task(consume())
            for _ in range(250):  # bounded: 250 x 20 ms
                a.publish("async/x", {"n": 1})
                done, _ = await asyncio.wait({consumer}, timeout=0.02)
                if done:
                    break
            joined = [event.peer.name async for event in a.events(timeout=0.1)]
            quiet = b.subscribe("nobody-publishes-here/")
            with pytest.raises(meshq.Timeout):
                await quiet.recv(timeout=0.05)
            return received[0].data, received[0].sender, joined

    data, sender, joined = asyncio.run(scenario())
    assert data == {"n": 1}
    assert joined == ["b"]
    assert len(sender) == 32


def test_standard_mdns_browser_sees_the_node(mesh: str) -> None:
    with meshq.Node("visible", mesh=mesh, interfaces=LOOPBACK) as node:
        found = threading.Event()
        records: list[ServiceInfo] = []
        zc = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        try:

            def handler(
                zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
            ) -> None:
                if state_change is not ServiceStateChange.Added:
                    return
                info = zeroconf.get_service_info(service_type, name, timeout=3000)
                if info is not None and info.decoded_properties.get("id") == node.id:
                    records.append(info)
                    found.set()

            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler])
            assert found.wait(10)
            browser.cancel()
        finally:
            zc.close()
        (info,) = records
        assert info.parsed_addresses() == ["127.0.0.1"]
        assert f"tcp://127.0.0.1:{info.port}" in node.control_endpoints
        assert info.decoded_properties == {"v": "1", "id": node.id, "mesh": mesh}


def test_a_multi_homed_peer_dialled_twice_stays_connected(mesh: str) -> None:
    """Two seeds naming two addresses of one node must not make two connections fight."""
    interfaces = ["127.0.0.1", "127.0.0.2"]
    config = meshq.MeshConfig()
    with meshq.Node("homed", mesh=mesh, interfaces=interfaces, discovery=False) as homed:
        seeds = list(homed.control_endpoints)
        assert len(seeds) == 2
        with meshq.Node(
            "dialer", mesh=mesh, interfaces=LOOPBACK, seeds=seeds, discovery=False
        ) as dialer:
            dialer.wait_for_peers(1, timeout=10)
            homed.wait_for_peers(1, timeout=10)
            # Longer than gone_after: a dropped connection would show as a LEFT.
            trouble = [
                event
                for event in homed.events(timeout=config.gone_after + 1.5)
                if event.kind in (meshq.EventKind.LEFT, meshq.EventKind.SUSPECT)
            ]
            assert trouble == []
            assert [p.name for p in homed.peers()] == ["dialer"]


def test_publish_many_arrives_one_by_one_in_order(mesh: str) -> None:
    with (
        meshq.Node("batcher", mesh=mesh, interfaces=LOOPBACK) as node,
        node.subscribe("batch/") as sub,
    ):
        receive_while_publishing(node, "batch/warmup", b"w", sub)
        items: list[object] = [{"n": i} for i in range(1500)] + [b"raw bytes too"]
        assert node.publish_many("batch/x", items) == len(items)  # two frames: 1024 + 477
        node.publish("batch/x", b"single")
        received = [sub.recv(timeout=5) for _ in range(len(items) + 1)]
        while received[0].topic == "batch/warmup":  # warm-up leftovers
            received = [*received[1:], sub.recv(timeout=5)]
        assert [m.data for m in received] == [*items, b"single"]
        assert [m.seq for m in received] == list(range(1, len(items) + 2))
        assert sub.gaps == 0 and not sub.gap_log  # consecutive: nothing reported missing
        assert node.publish_many("batch/empty", []) == 0


def test_oversized_messages_are_refused_before_sending(mesh: str) -> None:
    config = meshq.MeshConfig(max_message_bytes=10_000)
    with (
        meshq.Node("small", mesh=mesh, interfaces=LOOPBACK, config=config) as node,
        node.subscribe("big/") as sub,
    ):
        receive_while_publishing(node, "big/warmup", b"w", sub)
        with pytest.raises(ValueError):
            node.publish("big/x", bytes(10_000))
        with pytest.raises(ValueError):
            node.publish_many("big/x", [b"ok", bytes(10_000)])
        # Many items that are small alone travel in frames within the limit.
        items = [bytes([i % 256]) * 200 for i in range(600)]
        node.publish_many("big/x", items)
        received: list[object] = []
        while len(received) < len(items):
            message = sub.recv(timeout=5)
            if message.topic == "big/x":
                received.append(message.data)
        assert received == items and sub.dropped == 0


def test_a_late_joined_callback_still_hears_of_every_peer_once(trio: list[meshq.Node]) -> None:
    alpha = trio[0]
    names: list[str] = []
    both = threading.Event()

    @alpha.on_peer_joined
    def record(peer: meshq.Peer) -> None:
        names.append(peer.name)
        if len(names) >= 2:
            both.set()

    assert both.wait(10)
    assert sorted(names) == ["bravo", "charlie"]


@pytest.mark.parametrize("which", ["control_port", "publish_port"])
def test_a_port_in_use_is_a_typed_error_not_a_hang(mesh: str, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = meshq.MeshConfig(**{which: port})
        with pytest.raises(meshq.BindError) as caught:
            meshq.Node("clash", mesh=mesh, interfaces=LOOPBACK, config=config)
        assert caught.value.address == f"tcp://127.0.0.1:{port}"
        assert isinstance(caught.value, meshq.MeshqError)
    # Nothing is left behind: the next node on that port starts normally.
    with meshq.Node("after", mesh=mesh, interfaces=LOOPBACK, config=config) as node:
        assert node.control_endpoints


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_subscription_churn_releases_its_resources(mesh: str) -> None:
    """A node that never publishes must still let closed subscriptions go."""
    with meshq.Node("churn", mesh=mesh, interfaces=LOOPBACK) as node:
        baseline = open_fds()
        for _ in range(1200):  # more than a default limit of 1024 descriptors
            node.subscribe("churn/").close()
        deadline = time.monotonic() + 10
        while open_fds() > baseline + 20:
            assert time.monotonic() < deadline, (baseline, open_fds())
            time.sleep(0.05)


def test_a_gossip_flood_does_not_become_a_socket_flood(mesh: str) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    rogue_id = b"G" * 16
    fake_peers = tuple(
        (bytes([1, i >> 8, i & 255]) + bytes(13), (f"tcp://127.0.0.1:{20000 + i}",))
        for i in range(250)  # within max_peers, so the HELLO itself is valid
    )
    with (
        meshq.Node("target", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
        context.socket(zmq.DEALER) as rogue,
    ):
        baseline = open_fds()
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.setsockopt(zmq.IDENTITY, routing_id(rogue_id, 1))
        rogue.connect(node.control_endpoints[0])
        hello = Hello(
            rogue_id,
            "rogue",
            mesh,
            ("tcp://127.0.0.1:1",),
            ("tcp://127.0.0.1:2",),
            peers=fake_peers,
        )
        rogue.send(encode_control(hello))
        deadline = time.monotonic() + 10
        while node.stats().get("dial_refused", 0) < len(fake_peers) - node.config.max_dialing:
            assert time.monotonic() < deadline, node.stats()
            time.sleep(0.02)
        assert open_fds() < baseline + 3 * node.config.max_dialing
        with node.subscribe("still/") as sub:  # and it still has sockets to give
            assert receive_while_publishing(node, "still/ok", b"yes", sub).data == b"yes"


def test_async_waits_hold_no_threads_and_cancel_cleanly(mesh: str) -> None:
    async def scenario() -> list[str]:
        async with meshq.AsyncNode("a", mesh=mesh, interfaces=LOOPBACK) as a:
            # Many waiters at once: none of them may occupy a thread.
            waiters = [asyncio.create_task(a.wait_for_peers(1, timeout=30)) for _ in range(20)]

            # A cancelled events() iteration must not swallow a later event.
            async def first_event() -> meshq.PeerEvent:
                return await anext(a.events(timeout=30))

            early = asyncio.create_task(first_event())
            await asyncio.sleep(0)
            early.cancel()
            async with meshq.AsyncNode("b", mesh=mesh, interfaces=LOOPBACK):
                peers = await asyncio.gather(*waiters)
                assert all(p[0].name == "b" for p in peers)
                seen = [event.peer.name async for event in a.events(timeout=0.5)]
            sub = a.subscribe("x/")
            pending = asyncio.create_task(sub.recv())
            await asyncio.sleep(0)
        with pytest.raises(meshq.Closed):  # closing the node ends a waiting recv
            await pending
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "b"  # JOINED reached the second iteration


def test_an_events_iteration_cancelled_as_its_event_arrives_leaves_the_event(
    mesh: str,
) -> None:
    """The cancel and the wake-up land in the same loop step: the cancel wins.

    (asyncio.wait_for before Python 3.12 swallows such a cancel, and the
    cancelled iteration went on to take the JOINED meant for the next one.)
    """

    async def scenario() -> tuple[bool, list[str]]:
        async with meshq.AsyncNode("a", mesh=mesh, interfaces=LOOPBACK) as a:

            async def first_event() -> meshq.PeerEvent:
                return await anext(a.events(timeout=30))

            early = asyncio.create_task(first_event())
            await asyncio.sleep(0)  # early now waits for a change
            # Block the loop until b's JOINED is queued and its wake-up scheduled...
            with meshq.Node("b", mesh=mesh, interfaces=LOOPBACK):
                a.node.wait_for_peers(1, timeout=30)
                early.cancel()  # ...then cancel: both reach early in one step
                with contextlib.suppress(asyncio.CancelledError):
                    await early
                seen = [event.peer.name async for event in a.events(timeout=0.5)]
            return early.cancelled(), seen

    cancelled, seen = asyncio.run(scenario())
    assert cancelled and seen[:1] == ["b"]


def test_wait_for_subscribers_then_one_publish_reaches_them_all(trio: list[meshq.Node]) -> None:
    alpha, bravo, charlie = trio
    with bravo.subscribe("news/") as first, charlie.subscribe("news/sport") as second:
        assert alpha.wait_for_subscribers("news/sport/today", 2, timeout=10) >= 2
        alpha.publish("news/sport/today", b"once")  # no retries: nobody may miss it
        assert first.recv(timeout=5).data == b"once"
        assert second.recv(timeout=5).data == b"once"
        with pytest.raises(meshq.Timeout):
            alpha.wait_for_subscribers("weather/", 1, timeout=0.2)
    deadline = time.monotonic() + 10  # closed subscriptions stop counting
    while alpha.wait_for_subscribers("news/sport/today", 0) > 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_on_message_handlers_run_on_their_own_thread_and_survive_errors(
    trio: list[meshq.Node],
) -> None:
    alpha, bravo, _ = trio
    seen: list[tuple[object, str]] = []
    done = threading.Event()

    @bravo.on_message("jobs/")
    def handle(message: meshq.Message) -> None:
        if message.data == "bad":
            raise ValueError("a buggy handler")
        seen.append((message.data, threading.current_thread().name))
        if message.data == "last":
            done.set()

    alpha.wait_for_subscribers("jobs/x", 1, timeout=10)
    for data in ("first", "bad", "last"):
        alpha.publish("jobs/x", data)
    assert done.wait(10)
    assert [data for data, _ in seen] == ["first", "last"]
    assert seen[0][1].startswith("meshq-on-message")
    assert bravo.stats()["message_handler_errors"] == 1
