"""What only the JetStream store does: several relays per stream, the concept mapping, the CLI.

The durable-stream behaviour both stores share is tests/test_relay.py,
parametrised over both; this file needs the session's 3-server cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st

import meshq
from meshq.relay import JetStreamStore
from meshq.relay.jetstream import (
    _Pulls,
    _Unreachable,
    js_stream_name,
    subject_token,
    topic_of_token,
)
from meshq.relaywire import RELAY_SERVICE_PREFIX, decode_records
from tests.natscluster import NatsCluster, free_port

LOOPBACK = ["127.0.0.1"]
MESHQ = [sys.executable, "-m", "meshq.cli"]


def gateway(mesh: str, cluster: NatsCluster, name: str) -> meshq.Relay:
    node = meshq.Node(name, mesh=mesh, interfaces=LOOPBACK)
    store = JetStreamStore(cluster.urls, replicas=3)
    return meshq.Relay(node, streams=["orders/"], store=store)


def wait_for_providers(node: meshq.Node, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(node.services().get("meshq/relay/orders/", [])) != count:
        assert time.monotonic() < deadline, node.services()
        time.sleep(0.02)


@pytest.fixture
def two_gateways(mesh: str, nats_cluster: NatsCluster) -> Iterator[list[meshq.Relay]]:
    relays = [gateway(mesh, nats_cluster, "gw1"), gateway(mesh, nats_cluster, "gw2")]
    yield relays
    for relay in relays:
        relay.close()


def test_several_relays_serve_one_stream_and_publishers_fail_over(
    mesh: str, two_gateways: list[meshq.Relay]
) -> None:
    first, second = two_gateways
    with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
        wait_for_providers(client, 2)
        publisher = meshq.DurablePublisher(client, timeout=10.0)
        seqs = [publisher.publish("orders/a", i) for i in range(100)]
        assert seqs == list(range(1, 101))  # one stream, one sequence, whichever relay took it
        # Requests go to either relay (the less busy one, else at random).
        assert first.counts.get("confirmed", 0) > 0 and second.counts.get("confirmed", 0) > 0
        first.close()  # one gateway gone: the other serves everything
        wait_for_providers(client, 1)
        more = [publisher.publish("orders/a", i) for i in range(100, 150)]
        assert more == list(range(101, 151))
        with client.subscribe("orders/", durable="all") as sub:
            got = [sub.recv(timeout=10).data for _ in range(150)]
        assert got == list(range(150))


def test_a_consumer_group_spread_over_relays_gets_each_message_once(
    mesh: str, two_gateways: list[meshq.Relay]
) -> None:
    with (
        meshq.Node("c1", mesh=mesh, interfaces=LOOPBACK) as one,
        meshq.Node("c2", mesh=mesh, interfaces=LOOPBACK) as two,
    ):
        wait_for_providers(one, 2)
        wait_for_providers(two, 2)
        publisher = meshq.DurablePublisher(one)
        for i in range(200):
            publisher.send("orders/a", i)
        publisher.flush(timeout=30)
        subs = [node.subscribe("orders/", durable="group") for node in (one, two)]
        for sub in subs:
            sub.batch = 10
        got: list[object] = []
        deadline = time.monotonic() + 60
        while len(got) < 200 and time.monotonic() < deadline:
            for sub in subs:
                try:
                    got.append(sub.recv(timeout=0.2).data)
                except meshq.Timeout:
                    pass
        for sub in subs:
            sub.close()
    # Acks made through either relay count: nothing came back as a redelivery.
    assert sorted(got) == list(range(200))  # type: ignore[type-var]
    assert all(sub.duplicates == 0 for sub in subs)


def test_the_stream_is_a_jetstream_stream_with_the_messages_under_their_subjects(
    mesh: str, two_gateways: list[meshq.Relay], nats_cluster: NatsCluster
) -> None:
    with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
        wait_for_providers(client, 2)
        meshq.DurablePublisher(client).publish("orders/eu.1 x", {"qty": 2}, msg_id=b"id-1")

    async def look() -> tuple[object, object]:
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            jsm = nc.jsm()
            info = await jsm.stream_info(js_stream_name(mesh, "orders/"))
            raw = await jsm.get_msg(js_stream_name(mesh, "orders/"), 1)
            return info, raw
        finally:
            await nc.close()

    info, raw = asyncio.run(look())
    assert info.config.num_replicas == 3  # type: ignore[attr-defined]
    assert info.config.duplicate_window == 120.0  # type: ignore[attr-defined]
    assert raw.subject == f"meshq.{js_stream_name(mesh, 'orders/')}.orders/eu%2E1%20x"  # type: ignore[attr-defined]
    assert raw.headers["Nats-Msg-Id"] == b"id-1".hex()  # type: ignore[attr-defined]


@given(st.text(min_size=1, max_size=60))
def test_every_topic_is_one_subject_token_and_comes_back(topic: str) -> None:
    token = subject_token(topic)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert token.isascii() and token.isprintable()
    assert topic_of_token(token) == topic


def test_relay_command_serves_a_stream_from_jetstream(mesh: str, nats_cluster: NatsCluster) -> None:
    common = ["--mesh", mesh, "--interface", "127.0.0.1"]
    relay = subprocess.Popen(
        [
            *MESHQ,
            "relay",
            "--store",
            ",".join(nats_cluster.urls),
            "--replicas",
            "3",
            "--streams",
            "orders/",
            "--duration",
            "60",
            *common,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
            wait_for_providers(client, 1)
            assert client.publish("orders/1", "one", durable=True) == 1
        replay = subprocess.run(
            [*MESHQ, "replay", "orders/", "--wait", "20", *common],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert replay.returncode == 0, replay.stderr
        assert "#1 " in replay.stdout and "orders/1 'one'" in replay.stdout
    finally:
        relay.kill()
        relay.wait()


def test_a_pull_nobody_serves_is_unreachable_not_an_empty_stream(
    nats_cluster: NatsCluster,
) -> None:
    # "503 no responders" is what a read's new consumer got, now and then,
    # before its server had told the others of it: taken for "no messages",
    # `meshq replay` printed nothing for a stream holding one.
    async def scenario() -> None:
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            with pytest.raises(_Unreachable):
                await _Pulls(nc).pull("NO_SUCH_STREAM", "nobody", 1)
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_read_right_after_each_publish_returns_that_message(
    mesh: str, two_gateways: list[meshq.Relay]
) -> None:
    with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
        wait_for_providers(client, 2)
        for n in range(60):  # bounded: 60 publishes, each confirmed before its read
            seq = client.publish("orders/now", n, durable=True)
            reply = client.request(
                RELAY_SERVICE_PREFIX + "orders/", ["read", seq - 1, 1], timeout=10
            )
            assert [(r.seq, r.topic) for r in decode_records(reply)] == [(seq, "orders/now")]


def test_a_message_over_the_servers_max_payload_is_refused_with_an_error(
    mesh: str, two_gateways: list[meshq.Relay]
) -> None:
    with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
        wait_for_providers(client, 2)
        big = b"x" * (1024 * 1024 + 1)  # nats-server's max_payload is 1 MiB by default
        with pytest.raises(meshq.RemoteError, match="payload"):
            client.publish("orders/big", big, durable=True, timeout=10)
        assert client.publish("orders/small", b"x", durable=True) == 1  # and it goes on


def test_servers_that_fsync_every_acknowledgement_serve_the_relay(
    mesh: str, nats_server: str
) -> None:
    # README: `jetstream { sync_interval: always }` where a confirm must be on disk.
    with NatsCluster(1, sync_always=True) as cluster:
        server = cluster.servers[0]
        varz = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/varz", timeout=5)
        assert json.load(varz)["jetstream"]["config"]["sync_always"] is True
        relay = meshq.Relay(
            meshq.Node("gw", mesh=mesh, interfaces=LOOPBACK),
            streams=["orders/"],
            store=JetStreamStore(cluster.urls, replicas=1),
        )
        try:
            with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
                wait_for_providers(client, 1)
                publisher = meshq.DurablePublisher(client)
                assert [publisher.publish("orders/a", i) for i in range(10)] == list(range(1, 11))
                with client.subscribe("orders/", durable="synced") as sub:
                    assert [sub.recv(timeout=5).data for _ in range(10)] == list(range(10))
        finally:
            relay.close()


def test_an_unreachable_cluster_is_a_clear_error_at_start(mesh: str) -> None:
    store = JetStreamStore(f"nats://127.0.0.1:{free_port()}", connect_timeout=1.0)
    try:
        with meshq.Node("gw", mesh=mesh, interfaces=LOOPBACK) as node:
            with pytest.raises(meshq.MeshqError, match="no NATS server"):
                meshq.Relay(node, streams=["orders/"], store=store)
            assert "meshq/relay/orders/" not in node.services()  # nothing half-served
    finally:
        store.close()
