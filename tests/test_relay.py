"""The persistence relay in one process: confirms, replay, acks, redelivery, dedup, retention.

Real nodes on loopback, a real SQLite file in tmp_path. Failures with real
processes and signals are in tests/test_relay_failures.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import meshq
from meshq.relay import JetStreamStore
from meshq.relay.store import Store

LOOPBACK = ["127.0.0.1"]


def wait_for_relay(node: meshq.Node, stream: str, relays: int = 1) -> None:
    node.wait_for_service(f"meshq/relay/{stream}", relays, timeout=10)


@pytest.fixture(params=["sqlite", "jetstream"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each durable-stream test runs against both stores: SQLite, and a 3-server
    JetStream cluster (R3) behind a gateway relay."""
    return str(request.param)


def make_relay(
    request: pytest.FixtureRequest,
    kind: str,
    mesh: str,
    data: Path,
    streams: list[str | meshq.StreamConfig],
) -> meshq.Relay:
    """A relay on a new node of ``mesh``: SQLite in ``data``, or the session's cluster."""
    node = meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK)
    try:
        if kind == "sqlite":
            return meshq.Relay(node, data, streams)
        cluster = request.getfixturevalue("nats_cluster")
        store = JetStreamStore(cluster.urls, replicas=3)
        try:
            return meshq.Relay(node, streams=streams, store=store)
        except BaseException:
            store.close()
            raise
    except BaseException:
        node.close()
        raise


@pytest.fixture
def relay_node(
    request: pytest.FixtureRequest, store_kind: str, mesh: str, tmp_path: Path
) -> Iterator[meshq.Relay]:
    relay = make_relay(
        request,
        store_kind,
        mesh,
        tmp_path / "relay",
        ["orders/", meshq.StreamConfig("audit/", durability="batched")],
    )
    yield relay
    relay.close()


@pytest.fixture
def client(mesh: str, relay_node: meshq.Relay) -> Iterator[meshq.Node]:
    with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "orders/")
        wait_for_relay(node, "audit/")
        yield node


def test_durable_publish_is_confirmed_with_its_stream_sequence(client: meshq.Node) -> None:
    assert client.publish("orders/1", {"qty": 1}, durable=True) == 1
    assert client.publish("orders/2", b"raw", durable=True) == 2
    assert client.publish("audit/x", "batched", durable=True) == 1  # its own stream


def test_no_relay_for_the_topic_raises_no_providers_at_once(client: meshq.Node) -> None:
    started = time.monotonic()
    with pytest.raises(meshq.NoProviders):
        client.publish("elsewhere/1", 1, durable=True, timeout=30)
    assert time.monotonic() - started < 30  # not after the timeout


def test_a_consumer_gets_stored_then_live_messages_in_order(client: meshq.Node) -> None:
    for i in range(5):
        client.publish("orders/a", i, durable=True)
    with client.subscribe("orders/", durable="billing") as sub:
        got = [sub.recv(timeout=5).data for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
        for i in range(5, 8):
            client.publish("orders/a", i, durable=True)
        live = [sub.recv(timeout=5) for _ in range(3)]
        assert [m.data for m in live] == [5, 6, 7]
        assert [m.seq for m in live] == [6, 7, 8]
        assert all(m.deliveries == 1 for m in live)
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0.2)  # no duplicate at the switch-over


def test_a_consumer_resumes_after_its_last_acknowledged_message(client: meshq.Node) -> None:
    for i in range(6):
        client.publish("orders/a", i, durable=True)
    with client.subscribe("orders/", durable="resume") as sub:
        assert [sub.recv(timeout=5).data for _ in range(3)] == [0, 1, 2]
    # Auto-ack: 0 and 1 were acknowledged by receiving the next; 2 by close().
    with client.subscribe("orders/", durable="resume", ack_wait=0.3) as sub:
        assert [sub.recv(timeout=5).data for _ in range(3)] == [3, 4, 5]


def test_start_positions_of_a_new_consumer(client: meshq.Node) -> None:
    for i in range(4):
        client.publish("orders/a", i, durable=True)
    with client.subscribe("orders/", durable="new", start=meshq.Start.NEW) as sub:
        client.publish("orders/a", 4, durable=True)
        assert sub.recv(timeout=5).data == 4
    with client.subscribe("orders/", durable="from3", start=meshq.Start.at_seq(3)) as sub:
        assert sub.recv(timeout=5).seq == 3
    with client.subscribe("orders/", durable="t", start=meshq.Start.at_time(time.time())) as sub:
        client.publish("orders/a", 5, durable=True)
        assert sub.recv(timeout=5).data == 5


def test_unacknowledged_messages_are_redelivered_then_dead_lettered(
    client: meshq.Node, relay_node: meshq.Relay
) -> None:
    client.publish("orders/a", "poison", durable=True)
    with client.subscribe(
        "orders/", durable="slow", ack="explicit", ack_wait=0.2, max_deliver=2
    ) as sub:
        first = sub.recv(timeout=5)  # and never acknowledged
        again = sub.recv(timeout=5)
        assert (first.seq, first.deliveries) == (1, 1)
        assert (again.seq, again.deliveries) == (1, 2)
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=1.0)  # given up on after max_deliver
    info = client.request("meshq/relay/orders/", ["info"])
    assert isinstance(info, dict)
    assert info["dead_letters"] == 1
    dead = client.request("meshq/relay/orders/", ["dead", "slow", 0, 10])
    assert isinstance(dead, list) and len(dead) == 1
    seq, topic, _id, _flags, payload, _time, deliveries = dead[0]
    assert (seq, topic, deliveries) == (1, "orders/a", 2)
    assert msgpack.unpackb(payload) == "poison"  # kept whole, with its payload


def test_an_acknowledged_message_delivered_again_is_skipped(client: meshq.Node) -> None:
    client.publish("orders/a", "x", durable=True)
    client.publish("orders/a", "y", durable=True)
    with client.subscribe("orders/", durable="dedup", ack="explicit") as sub:
        message = sub.recv(timeout=5)
        message.ack()
        # What a relay that lost the acknowledgement (a crash before its
        # commit) sends again: the same record, a second delivery.
        state = sub._state
        state.buffer.appendleft(
            meshq.DurableMessage(
                state, "orders/", message.seq, message.topic, message.msg_id, "x", 0, 2
            )
        )
        assert sub.recv(timeout=5).data == "y"  # the copy was skipped ...
        assert sub.duplicates == 1  # ... counted, and acknowledged again
        assert state.acks[-1] == message.seq


def test_an_explicit_message_never_acknowledged_comes_back(client: meshq.Node) -> None:
    client.publish("orders/a", "x", durable=True)
    with client.subscribe("orders/", durable="forgot", ack="explicit", ack_wait=0.2) as sub:
        first = sub.recv(timeout=5)
        again = sub.recv(timeout=5)  # after ack_wait, to the application again
        assert (again.seq, again.deliveries) == (first.seq, 2)
        again.ack()
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0.6)
        assert sub.duplicates == 0


def test_leaving_a_with_block_by_an_exception_hands_the_message_back(
    client: meshq.Node,
) -> None:
    client.publish("orders/a", "bill me", durable=True)
    with (
        pytest.raises(RuntimeError),
        client.subscribe("orders/", durable="failing") as sub,
    ):
        assert sub.recv(timeout=5).data == "bill me"
        raise RuntimeError("billing backend down")
    with client.subscribe("orders/", durable="failing") as sub:
        again = sub.recv(timeout=5)
        assert (again.data, again.deliveries) == ("bill me", 2)


def test_a_retry_with_the_same_id_is_stored_once(client: meshq.Node) -> None:
    publisher = meshq.DurablePublisher(client)
    first = publisher.publish("orders/a", "once", msg_id=b"order-17")
    again = publisher.publish("orders/a", "once", msg_id=b"order-17")
    assert first == again
    info = client.request("meshq/relay/orders/", ["info"])
    assert isinstance(info, dict) and info["messages"] == 1


def test_pipelined_publishes_are_all_confirmed_in_order(client: meshq.Node) -> None:
    publisher = meshq.DurablePublisher(client, max_in_flight=64)
    confirms = [publisher.send("audit/x", i) for i in range(500)]
    publisher.flush(timeout=30)
    assert [c.result() for c in confirms] == list(range(1, 501))
    assert publisher.confirmed == 500 and publisher.failed == 0


def test_consumers_sharing_a_name_split_the_messages(client: meshq.Node) -> None:
    for i in range(20):
        client.publish("orders/a", i, durable=True)
    one = client.subscribe("orders/", durable="group")
    two = client.subscribe("orders/", durable="group")
    one.batch = two.batch = 5
    got: list[int] = []
    got += [one.recv(timeout=5).data for _ in range(5)]  # type: ignore[misc]
    got += [two.recv(timeout=5).data for _ in range(5)]  # type: ignore[misc]
    got += [one.recv(timeout=5).data for _ in range(5)]  # type: ignore[misc]
    got += [two.recv(timeout=5).data for _ in range(5)]  # type: ignore[misc]
    one.close()
    two.close()
    assert sorted(got) == list(range(20))  # each once, none to both


def test_plain_subscribers_also_get_durable_messages(mesh: str, client: meshq.Node) -> None:
    sub = client.subscribe("orders/")
    relay_id = next(iter(client.services()["meshq/relay/orders/"]))
    deadline = time.monotonic() + 10
    while not any(p.id == relay_id for p in client.peers()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    received = None
    for i in range(50):  # until the subscription is connected to the relay
        client.publish("orders/live", i, durable=True)
        try:
            received = sub.recv(timeout=0.2)
            break
        except meshq.Timeout:
            continue
    sub.close()
    assert received is not None and received.sender == relay_id


def test_a_consumer_name_reused_with_another_prefix_is_refused(client: meshq.Node) -> None:
    client.publish("orders/a", 1, durable=True)
    with client.subscribe("orders/a", durable="picky") as sub:
        sub.recv(timeout=5)
    with pytest.raises(meshq.RemoteError, match="use another name"):
        client.subscribe("orders/", durable="picky")


def test_two_relays_claiming_a_stream_is_a_configuration_error(
    mesh: str, tmp_path: Path, client: meshq.Node
) -> None:
    with meshq.Node("relay2", mesh=mesh, interfaces=LOOPBACK) as node2:
        meshq.Relay(node2, tmp_path / "relay2", ["orders/"])
        wait_for_relay(client, "orders/", relays=2)
        with pytest.raises(meshq.RelayConflict):
            client.publish("orders/a", 1, durable=True)


def test_retention_by_count_keeps_the_newest(
    request: pytest.FixtureRequest, store_kind: str, mesh: str, tmp_path: Path
) -> None:
    config = meshq.StreamConfig("m/", max_messages=3)
    relay = make_relay(request, store_kind, mesh, tmp_path, [config])
    try:
        with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
            wait_for_relay(client, "m/")
            for i in range(10):
                client.publish("m/x", i, durable=True)
            deadline = time.monotonic() + 10
            while True:  # retention runs as the SQLite relay's housekeeping, at least each 1 s
                info = client.request("meshq/relay/m/", ["info"], timeout=5)
                assert isinstance(info, dict)
                if info["messages"] <= 3:
                    break
                assert time.monotonic() < deadline, info
                time.sleep(0.05)
            assert (info["messages"], info["first_seq"], info["last_seq"]) == (3, 8, 10)
            with client.subscribe("m/", durable="late") as sub:
                assert [sub.recv(timeout=5).data for _ in range(3)] == [7, 8, 9]
    finally:
        relay.close()


def test_a_flipped_byte_is_refused_loudly_and_never_served(
    mesh: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "relay.sqlite"
    store = Store(path)
    for seq in (1, 2, 3):
        store.append("s/", seq, "s/x", b"id%d" % seq, 0, b"payload-%d" % seq, time.time_ns())
    store.close()
    # Flip one byte of the second record's payload inside the file itself.
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"payload-2")
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with (
        meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK) as node,
        meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client,
    ):
        meshq.Relay(node, tmp_path, ["s/"])
        wait_for_relay(client, "s/")
        with client.subscribe("s/", durable="reader") as sub:
            got = [sub.recv(timeout=5).data for _ in range(2)]
        assert got == [b"payload-1", b"payload-3"]
    assert any("CORRUPT RECORD" in r.getMessage() for r in caplog.records)


def test_a_durable_handler_acks_on_return_and_a_failure_is_redelivered(
    mesh: str, client: meshq.Node
) -> None:
    client.publish("orders/a", "fine", durable=True)
    client.publish("orders/a", "flaky", durable=True)
    calls: list[tuple[object, int]] = []
    done = threading.Event()
    with meshq.Node("handler", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "orders/")

        @node.on_message("orders/", durable="handled")
        def handle(message: meshq.DurableMessage) -> None:
            calls.append((message.data, message.deliveries))
            if message.data == "flaky" and message.deliveries == 1:
                raise RuntimeError("first try fails")
            if message.data == "flaky":
                done.set()

        assert done.wait(10)
        assert node.stats()["message_handler_errors"] == 1
    # The node closed with the handler idle; its acknowledgements reached the relay.
    assert calls == [("fine", 1), ("flaky", 1), ("flaky", 2)]
    info = client.request("meshq/relay/orders/", ["info"])
    assert isinstance(info, dict)
    assert info["consumers"]["handled"]["lag"] == 0


def test_a_second_relay_on_the_same_directory_is_refused(mesh: str, tmp_path: Path) -> None:
    with meshq.Node("one", mesh=mesh, interfaces=LOOPBACK) as one:
        meshq.Relay(one, tmp_path, ["s/"])
        with (
            meshq.Node("two", mesh=mesh, interfaces=LOOPBACK) as two,
            pytest.raises(meshq.relay.StoreInUse),
        ):
            meshq.Relay(two, tmp_path, ["s/"])


def test_retention_by_age_count_and_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    old = time.time_ns() - 3600 * 10**9
    for seq in range(1, 11):
        when = old if seq <= 4 else time.time_ns()
        store.append("s/", seq, "s/x", b"id%d" % seq, 0, b"x" * 100, when)
    store.commit()
    trim = {"max_age": None, "max_messages": None, "max_bytes": None, "dedup_window": 1e9}
    assert store.trim("s/", **{**trim, "max_age": 60.0}) == 4  # type: ignore[arg-type]
    assert store.trim("s/", **{**trim, "max_messages": 5}) == 1  # type: ignore[arg-type]
    assert store.trim("s/", **{**trim, "max_bytes": 350}) == 2  # type: ignore[arg-type]
    store.commit()
    stats = store.stats("s/")
    assert (stats.messages, stats.first_seq, stats.last_seq, stats.bytes) == (3, 8, 10, 300)
    assert store.seq_of("s/", b"id1") == 1  # ids stay for the dedup window ...
    store.trim("s/", **{**trim, "dedup_window": 60.0})  # type: ignore[arg-type]
    assert store.seq_of("s/", b"id1") == 1  # ... counted from their removal, just now
    store.trim("s/", **{**trim, "dedup_window": 0.0})  # type: ignore[arg-type]
    assert store.seq_of("s/", b"id1") is None
    store.close()


def test_publishers_of_one_node_never_share_a_message_id(
    client: meshq.Node, relay_node: meshq.Relay
) -> None:
    # Each publisher is separate (a per-thread one behind publish(), explicit
    # ones, another thread's); ids are unique per node all the same.
    seqs = [client.publish("orders/a", 0, durable=True)]
    seqs.append(meshq.DurablePublisher(client).publish("orders/a", 1))
    seqs.append(client.publish("orders/a", 2, durable=True, timeout=2.0))
    other: list[int | None] = []
    thread = threading.Thread(
        target=lambda: other.append(client.publish("orders/a", 3, durable=True))
    )
    thread.start()
    thread.join()
    assert sorted([*seqs, *other]) == [1, 2, 3, 4]  # type: ignore[type-var]
    assert relay_node.counts.get("duplicates", 0) == 0


def restart(relay: meshq.Relay, mesh: str, data: Path) -> meshq.Relay:
    """Close ``relay`` and start another on the same directory (a new node, same store)."""
    relay.close()
    return meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), data, ["s/"])


def dead_letters(client: meshq.Node) -> int:
    info = client.request("meshq/relay/s/", ["info"], timeout=5)
    assert isinstance(info, dict)
    return int(info["dead_letters"])


def test_acks_and_dead_letters_survive_a_relay_restart(mesh: str, tmp_path: Path) -> None:
    relay = meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), tmp_path, ["s/"])
    try:
        with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
            wait_for_relay(client, "s/")
            for data in ("poison", "a", "b", "c"):
                client.publish("s/x", data, durable=True)
            dead = client.subscribe("s/", durable="dl", ack="explicit", ack_wait=0.1, max_deliver=1)
            handled: list[object] = []
            deadline = time.monotonic() + 10
            while dead_letters(client) == 0:  # poison is never acknowledged: it goes dead
                assert time.monotonic() < deadline, handled
                with contextlib.suppress(meshq.Timeout):
                    message = dead.recv(timeout=0.2)
                    handled.append(message.data)
                    if message.data != "poison":
                        message.ack()
            dead.close()
            assert sorted(map(str, handled)) == ["a", "b", "c", "poison"]
            sub = client.subscribe("s/", durable="acks")
            assert [sub.recv(timeout=5).data for _ in range(3)] == ["poison", "a", "b"]
            relay = restart(relay, mesh, tmp_path)
            wait_for_relay(client, "s/", relays=1)
            sub.close()  # its acknowledgements reach the new relay
            with client.subscribe("s/", durable="acks") as again:
                assert again.recv(timeout=5).data == "c"
            assert dead_letters(client) == 1
            info = client.request("meshq/relay/s/", ["info"], timeout=5)
            assert isinstance(info, dict)
            assert info["consumers"]["dl"]["lag"] == 0  # poison is done: nothing to redeliver
            with client.subscribe("s/", durable="dl") as again, pytest.raises(meshq.Timeout):
                again.recv(timeout=0.5)
    finally:
        relay.close()


def test_a_full_disk_refuses_confirms_and_recovers(mesh: str, tmp_path: Path) -> None:
    relay = meshq.Relay(
        meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK),
        tmp_path,
        [meshq.StreamConfig("s/", durability="batched")],
    )
    try:
        with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
            wait_for_relay(client, "s/")
            assert client.publish("s/x", "before", durable=True) == 1
            # SQLite's own limit on the file's pages stands in for a full disk.
            pages = relay._store._db.execute("PRAGMA page_count").fetchone()[0]
            relay._store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
            with pytest.raises((meshq.RemoteError, meshq.Timeout)):
                client.publish("s/x", b"x" * 200_000, durable=True, timeout=2.0)
            assert relay.counts["store_errors"] >= 1
            relay._store._db.execute("PRAGMA max_page_count = 1073741823")
            assert client.publish("s/x", "after", durable=True) == 2
            with client.subscribe("s/", durable="check") as sub:
                assert [sub.recv(timeout=5).data for _ in range(2)] == ["before", "after"]
    finally:
        relay.close()


def test_a_payload_consumers_could_not_decode_is_refused(client: meshq.Node) -> None:
    bad = [["orders/a", b"id-1", 1, b"\xc1"]]  # flags: msgpack; 0xc1 is never valid
    with pytest.raises(meshq.RemoteError, match="msgpack"):
        client.request("meshq/relay/orders/", ["pubs", bad])
    info = client.request("meshq/relay/orders/", ["info"])
    assert isinstance(info, dict) and info["messages"] == 0


@pytest.mark.parametrize(
    "request_",
    [
        ["read", 2**63, 10],
        ["dead", "x" * 300, 0, 10],
        ["open", "é" * 200, "orders/", "first", 0],
        ["ack", "c", [True], []],
        ["ack", "c", list(range(70_000)), []],
        ["fetch", "c", "orders/", "first", 0, 10, True, [], 1.0, 5],
        ["fetch", "c", "orders/", "first", 0, 10, 0.0, [], 0.0, 5],
        ["pubs", []],
        ["nope"],
        "not a list",
    ],
)
def test_malformed_relay_requests_are_refused_and_the_relay_goes_on(
    client: meshq.Node, request_: object
) -> None:
    with pytest.raises(meshq.RemoteError):
        client.request("meshq/relay/orders/", request_)
    assert client.publish("orders/a", "still here", durable=True) == 1


def test_stream_names_that_cannot_be_served_are_refused_up_front(mesh: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"1\.\.243"):
        meshq.StreamConfig("x" * 244)
    with meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK) as node:
        with pytest.raises(ValueError, match="overlap"):
            meshq.Relay(node, tmp_path, ["a/", "a/b/"])
        assert not node.services()  # nothing was offered
        meshq.Relay(node, tmp_path, ["a/"])  # and the directory is not locked


def test_a_topic_under_two_streams_is_a_configuration_error(
    mesh: str, tmp_path: Path, client: meshq.Node
) -> None:
    with meshq.Node("other", mesh=mesh, interfaces=LOOPBACK) as node:
        meshq.Relay(node, tmp_path / "other", ["orders/eu/"])
        wait_for_relay(client, "orders/eu/")
        with pytest.raises(meshq.RelayConflict, match="overlap"):
            client.publish("orders/eu/1", 1, durable=True)
        assert client.publish("orders/us/1", 1, durable=True) == 1  # only orders/ has it


def test_a_window_of_corrupt_records_does_not_hide_the_rest(mesh: str, tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite"
    store = Store(path)
    for seq in range(1, 7):
        store.append("s/", seq, "s/x", b"id%d" % seq, 0, b"payload-%d" % seq, time.time_ns())
    store.close()
    with sqlite3.connect(path) as db:  # corrupt 2 and 3 through SQL, checksums unchanged
        db.execute("UPDATE messages SET payload = x'00' WHERE seq IN (2, 3)")
    with (
        meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK) as node,
        meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client,
    ):
        meshq.Relay(node, tmp_path, ["s/"])
        wait_for_relay(client, "s/")
        with client.subscribe("s/", durable="reader") as sub:
            sub.batch = 1  # a fetch window holding only corrupt records
            got = [sub.recv(timeout=5).data for _ in range(4)]
        assert got == [b"payload-1", b"payload-4", b"payload-5", b"payload-6"]


def test_big_messages_travel_in_requests_and_fetches_that_fit(client: meshq.Node) -> None:
    # 300 x 16 KiB: more than one request's and one fetch reply's worth.
    publisher = meshq.DurablePublisher(client, max_in_flight=1024)
    for i in range(300):
        publisher.send("orders/big", i.to_bytes(2, "big") * 8192)
    publisher.flush(timeout=30)
    assert publisher.confirmed == 300
    with client.subscribe("orders/", durable="big") as sub:
        got = [sub.recv(timeout=5).data for _ in range(300)]
    assert got == [i.to_bytes(2, "big") * 8192 for i in range(300)]
    with pytest.raises(ValueError, match="at most"):
        publisher.send("orders/big", b"x" * client.config.max_msgpack_bytes)


def test_asyncio_durable_publish_and_consume(mesh: str, relay_node: meshq.Relay) -> None:
    async def scenario() -> tuple[list[int], list[object], list[object]]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/orders/", timeout=10)
            publisher = meshq.AsyncDurablePublisher(node)
            seqs = await asyncio.gather(*(publisher.publish("orders/a", i) for i in range(20)))
            sub = await node.subscribe_durable("orders/", "async-reader")
            got = [(await sub.recv(timeout=5)).data for _ in range(20)]
            await sub.close()
            with pytest.raises(meshq.NoProviders):
                await node.publish_durable("nowhere/1", 1)
            # A failure inside ``async with`` hands the message in hand back.
            with contextlib.suppress(RuntimeError):
                async with await node.subscribe_durable("orders/", "failing") as failing:
                    await node.publish_durable("orders/b", "again")
                    (await failing.recv(timeout=5)).ack()  # the first stored ...
                    for _ in range(19):
                        (await failing.recv(timeout=5)).ack()
                    await failing.recv(timeout=5)  # ... "again": then the block fails
                    raise RuntimeError("handler failed")
            async with await node.subscribe_durable("orders/", "failing") as again:
                redelivered = [(await again.recv(timeout=5)).data]
            return sorted(seqs), got, redelivered

    seqs, got, redelivered = asyncio.run(scenario())
    assert seqs == list(range(1, 21))
    assert sorted(got) == list(range(20))  # type: ignore[type-var]
    assert redelivered == ["again"]


def test_asyncio_acks_made_during_a_long_poll_are_kept_and_close_ends_it(
    mesh: str, client: meshq.Node
) -> None:
    for i in range(3):
        client.publish("orders/a", i, durable=True)

    async def scenario() -> tuple[list[object], object]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/orders/", timeout=10)
            sub = await node.subscribe_durable("orders/", "tasks", ack="explicit")
            messages = [await sub.recv(timeout=5) for _ in range(3)]
            polling = asyncio.create_task(sub.recv(timeout=1.5))  # nothing left: a long poll
            await asyncio.sleep(0)  # let it send its fetch
            for message in messages:
                message.ack()  # from this task, while the fetch is out
            with pytest.raises(meshq.Timeout):
                await polling
            await sub.close()
            again = await node.subscribe_durable("orders/", "tasks")
            with pytest.raises(meshq.Timeout):
                await again.recv(timeout=0.5)  # all three stayed acknowledged
            waiting = asyncio.create_task(again.recv())  # no timeout: waits on the relay
            await asyncio.sleep(0)
        # The node closed with the fetch in flight: the task ends, with Closed.
        outcome = await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), 10)
        return [m.data for m in messages], outcome[0]

    data, outcome = asyncio.run(scenario())
    assert data == [0, 1, 2]
    assert isinstance(outcome, meshq.Closed)
