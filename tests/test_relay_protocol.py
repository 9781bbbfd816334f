"""The relay protocol (PROTOCOL 9.10) spoken by hand to a real relay: start positions, refusals.

A client node sends relay documents with Node.request, as another
implementation would, to a relay with a real SQLite file in tmp_path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import meshq
from meshq import relaywire
from tests.test_relay import LOOPBACK, wait_for_relay

SERVICE = "meshq/relay/orders/"


@pytest.fixture
def client(mesh: str, tmp_path: Path) -> Iterator[meshq.Node]:
    relay_node = meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK)
    relay = meshq.Relay(relay_node, tmp_path / "relay", ["orders/"])
    try:
        with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as node:
            wait_for_relay(node, "orders/")
            yield node
    finally:
        relay.close()


def ask(client: meshq.Node, document: list[object]) -> object:
    return client.request(SERVICE, document, timeout=5.0, retries=0)


def publish(client: meshq.Node, count: int) -> list[relaywire.Record]:
    """Store ``count`` messages; return every stored record, as "read" gives them."""
    for n in range(count):
        seq = ask(client, ["pub", "orders/a", os.urandom(24), 0, bytes([n])])
        assert seq == n + 1
    return relaywire.decode_records(ask(client, ["read", 0, 100]))


def test_start_seq_begins_at_the_seq_given(client: meshq.Node) -> None:
    publish(client, 4)
    # The ack floor open returns is the seq before the first to deliver.
    assert (
        ask(
            client,
            [
                "open",
                "from3",
                "orders/",
                "seq",
                3,
            ],
        )
        == 2
    )
    fetched = relaywire.decode_records(
        ask(client, ["fetch", "from3", "orders/", "seq", 3, 10, 0, [], 30.0, 5])
    )
    assert [r.seq for r in fetched] == [3, 4]


def test_start_time_compares_with_the_relays_store_time(client: meshq.Node) -> None:
    records = publish(client, 5)
    # The relay's store times are the only times in a record: what "time"
    # compares with. At a record's own store time the start includes it.
    for n, record in enumerate(records):
        at = record.time_ns
        first = min(r.seq for r in records if r.time_ns >= at)
        assert ask(client, ["open", f"at{n}", "orders/", "time", at]) == first - 1
    # After the last store time: nothing stored qualifies, start after the last.
    after = max(r.time_ns for r in records) + 1
    assert ask(client, ["open", "later", "orders/", "time", after]) == records[-1].seq
    assert ask(client, ["open", "before", "orders/", "time", 0]) == 0


@pytest.mark.parametrize(
    "document",
    [
        ["pub", "orders/a", b"id", 2, b""],  # flags other than 0 and 1
        ["pub", msgpack.ExtType(5, b""), b"id", 0, b""],  # an ext where a str goes
        ["fetch", "c", "orders/", msgpack.ExtType(5, b""), 0, 10, 0, [], 30.0, 5],
        ["open", "c", "orders/", "time", msgpack.Timestamp(1, 0)],
    ],
)
def test_the_relay_refuses_with_a_protocol_error_reply(
    client: meshq.Node, document: list[object]
) -> None:
    with pytest.raises(meshq.RemoteError) as refused:
        ask(client, document)
    assert refused.value.remote_type == "ProtocolError"
    assert ask(client, ["read", 0, 10]) == []  # nothing stored
