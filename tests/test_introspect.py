"""Introspection: what a node says about itself, over the mesh, under CURVE too.

Every node answers it from its start; ``MeshConfig(introspection=False)``
turns that off.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import meshq
from meshq.introspect import (
    INTROSPECT_SERVICE,
    IntrospectError,
    parse_snapshot,
    snapshot,
)
from meshq.security import write_key_pair

LOOPBACK = ["127.0.0.1"]
WAIT = 10.0
#: A node that asks but does not answer: its own reply never gets in the way.
ASKER = meshq.MeshConfig(introspection=False)


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.02)


def test_a_snapshot_counts_what_was_published_and_received(mesh: str) -> None:
    with (
        meshq.Node("pub", mesh=mesh, interfaces=LOOPBACK) as publisher,
        meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK) as subscriber,
    ):
        subscriber.serve("calc", lambda data: data)
        with subscriber.subscribe("t/") as sub:
            publisher.wait_for_subscribers("t/a", 1, timeout=WAIT)
            for i in range(25):
                publisher.publish("t/a", i)
            publisher.publish_many("t/b", range(10))
            got = [sub.recv(timeout=WAIT).topic for _ in range(35)]
            assert got.count("t/a") == 25

            mine = parse_snapshot(snapshot(publisher, time.time() - 3.0))
            assert mine.name == "pub" and mine.id == publisher.id and mine.mesh == mesh
            assert mine.version == meshq.__version__ and mine.uptime >= 3.0
            assert mine.interfaces == ("127.0.0.1",)
            assert {(t.topic, t.published) for t in mine.topics} == {("t/a", 25), ("t/b", 10)}
            assert [p.name for p in mine.peers] == ["sub"] and mine.peers[0].state == "alive"

            # The same, asked over the mesh: the subscriber's view of what it received.
            publisher.wait_for_service(INTROSPECT_SERVICE, 2, timeout=WAIT)  # both, no install
            replies = publisher.gather(INTROSPECT_SERVICE, None, timeout=WAIT).replies
            theirs = parse_snapshot(replies[subscriber.id])
        assert theirs.name == "sub" and theirs.services == ("calc",)
        assert sorted(publisher.services()) == ["calc"]  # the built-in one is left out
        [calc] = theirs.service_stats
        assert (calc.name, calc.served, calc.errors, calc.p50) == ("calc", 0, 0, None)
        assert [(s.prefix, s.gaps, s.dropped) for s in theirs.subscriptions] == [("t/", 0, 0)]
        assert {(r.topic, r.sender, r.seq) for r in theirs.streams} == {
            ("t/a", publisher.id, 25),
            ("t/b", publisher.id, 10),
        }


def test_introspection_is_refused_to_a_node_outside_the_allowlist(
    mesh: str, tmp_path: Path
) -> None:
    public, secret = {}, {}
    for name in ("inside", "observer", "stranger"):
        public[name], secret[name] = write_key_pair(name, tmp_path / "keys")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("inside", "observer"):
        shutil.copy(public[name], allowed)

    def node(name: str, config: meshq.MeshConfig | None = None) -> meshq.Node:
        curve = meshq.Curve(secret[name], allow=allowed)
        return meshq.Node(name, mesh=mesh, interfaces=LOOPBACK, security=curve, config=config)

    with (
        node("inside") as inside,
        node("observer", ASKER) as observer,
        node("stranger", ASKER) as stranger,
    ):
        observer.wait_for_service(INTROSPECT_SERVICE, timeout=WAIT)
        reply = parse_snapshot(observer.request(INTROSPECT_SERVICE, None, timeout=WAIT))
        assert reply.name == "inside"
        wait_until(lambda: inside.rejections(), "the stranger refused")
        assert stranger.providers().get(INTROSPECT_SERVICE) is None  # never learnt of it
        with pytest.raises(meshq.NoProviders):
            stranger.request(INTROSPECT_SERVICE, None, timeout=1.0)


def test_a_bad_request_is_a_remote_error_and_the_node_keeps_answering(mesh: str) -> None:
    with (
        meshq.Node("a", mesh=mesh, interfaces=LOOPBACK),
        meshq.Node("b", mesh=mesh, interfaces=LOOPBACK, config=ASKER) as b,
    ):
        b.wait_for_service(INTROSPECT_SERVICE, timeout=WAIT)
        with pytest.raises(meshq.RemoteError, match="nil or a map"):
            b.request(INTROSPECT_SERVICE, [1, 2], timeout=WAIT)
        assert parse_snapshot(b.request(INTROSPECT_SERVICE, {}, timeout=WAIT)).name == "a"


def serve_threads(node: meshq.Node) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"meshq-serve-{node.id[:8]}"]


def test_every_node_answers_from_its_start_unless_turned_off(mesh: str) -> None:
    with (
        meshq.Node("plain", mesh=mesh, interfaces=LOOPBACK) as plain,
        meshq.Node("quiet", mesh=mesh, interfaces=LOOPBACK, config=ASKER) as quiet,
    ):
        # Answering costs a service socket and thread from the start; off, neither.
        assert plain.service_endpoints and serve_threads(plain)
        assert not quiet.service_endpoints and not serve_threads(quiet)
        quiet.wait_for_peers(1, timeout=WAIT)
        plain.wait_for_peers(1, timeout=WAIT)
        providers = quiet.wait_for_service(INTROSPECT_SERVICE, timeout=WAIT)
        assert list(providers) == [plain.id]  # the quiet node offers nothing
        assert quiet.services() == {} and plain.services() == {}
        replies = quiet.gather(INTROSPECT_SERVICE, None, timeout=WAIT)
        assert list(replies.replies) == [plain.id] and not replies.missing
        assert parse_snapshot(replies.replies[plain.id]).peers[0].name == "quiet"
        with pytest.raises(RuntimeError, match="offer a service"):
            quiet.add_ticker(lambda now, idle: None)
        quiet.serve("echo", lambda data: data)  # serving later opens the socket then
        assert quiet.service_endpoints and serve_threads(quiet)
        assert quiet.wait_for_service("echo", timeout=WAIT)
        assert list(quiet.providers()[INTROSPECT_SERVICE]) == [plain.id]  # still not by quiet
    assert not serve_threads(plain) and not serve_threads(quiet)  # close() ended them


def test_a_taken_service_port_fails_the_start_and_leaves_nothing_running(mesh: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(meshq.BindError):  # introspection binds the service port at start
            meshq.Node(
                "clash", mesh=mesh, interfaces=LOOPBACK, config=meshq.MeshConfig(service_port=port)
            )
        quiet = meshq.MeshConfig(service_port=port, introspection=False)
        with (
            meshq.Node("later", mesh=mesh, interfaces=LOOPBACK, config=quiet) as node,
            pytest.raises(meshq.BindError),  # off: bound on the first serve(), as before
        ):
            node.serve("echo", lambda data: data)
    # The thread-leak fixture checks that the failed start left no thread behind.


def test_an_async_node_answers_too(mesh: str) -> None:
    async def main() -> tuple[str, str]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            with meshq.Node("asker", mesh=mesh, interfaces=LOOPBACK, config=ASKER) as asker:
                await asyncio.to_thread(asker.wait_for_service, INTROSPECT_SERVICE, timeout=WAIT)
                reply = await asyncio.to_thread(asker.request, INTROSPECT_SERVICE, None)
                return node.id, parse_snapshot(reply).id

    own_id, answered_id = asyncio.run(main())
    assert answered_id == own_id


def test_durable_consumers_made_directly_report_themselves_through_the_node_seam(
    mesh: str,
) -> None:
    """Not only ``subscribe(durable=...)``: a consumer registers itself (Node.track_consumer)."""
    with meshq.Node("sync", mesh=mesh, interfaces=LOOPBACK) as node:
        # No relay on this mesh: the consumer is made on the first fetch, and reported now.
        with meshq.DurableSubscription(node, "jobs/", "direct"):
            [row] = parse_snapshot(snapshot(node, time.time())).consumers
        assert (row.prefix, row.name, row.delivered) == ("jobs/", "direct", 0)
        assert parse_snapshot(snapshot(node, time.time())).consumers == ()  # closed: gone

    async def main() -> list[str]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            consumer = meshq.AsyncDurableSubscription(node, "jobs/", "direct-async")
            rows = parse_snapshot(snapshot(node.node, time.time())).consumers
            await consumer.close()
            return [row.name for row in rows]

    assert asyncio.run(main()) == ["direct-async"]


def test_the_durable_consumers_of_a_node_and_an_async_node_are_in_their_replies(
    mesh: str, tmp_path: Path
) -> None:
    relay = meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), tmp_path, ["jobs/"])

    async def main() -> tuple[list[Any], list[Any]]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/jobs/", timeout=WAIT)
            for i in range(3):
                await node.publish_durable("jobs/1", i)
            made_with_subscribe = node.subscribe("jobs/", durable="made-with-subscribe")
            async with await node.subscribe_durable("jobs/", "crunch") as crunch:
                await crunch.recv(timeout=WAIT)
                await crunch.recv(timeout=WAIT)  # auto-ack: the first is acknowledged
                rows = list(parse_snapshot(snapshot(node.node, time.time())).consumers)
            await made_with_subscribe.close()
            after = list(parse_snapshot(snapshot(node.node, time.time())).consumers)
            return rows, after

    try:
        rows, after = asyncio.run(main())
        with meshq.Node("sync", mesh=mesh, interfaces=LOOPBACK) as node:
            node.wait_for_service("meshq/relay/jobs/", timeout=WAIT)
            with node.subscribe("jobs/", durable="tally") as tally:
                message = tally.recv(timeout=WAIT)
                message.ack()  # explicit as well as automatic acks are counted
                [sync_row] = parse_snapshot(snapshot(node, time.time())).consumers
    finally:
        relay.close()
    by_name = {row.name: row for row in rows}
    assert sorted(by_name) == ["crunch", "made-with-subscribe"]
    crunch = by_name["crunch"]
    assert (crunch.prefix, crunch.stream, crunch.delivered, crunch.acked, crunch.pending) == (
        "jobs/", "jobs/", 2, 1, 1,
    )  # fmt: skip
    assert after == []  # closed consumers are no longer reported
    assert (sync_row.name, sync_row.delivered, sync_row.acked, sync_row.pending) == (
        "tally", 1, 1, 0,
    )  # fmt: skip


def _valid() -> dict[str, Any]:
    return {
        "v": 1,
        "id": "ab" * 16,
        "name": "n",
        "mesh": "m",
        "version": "0.1.0",
        "time": 1.5,
        "uptime": 2,
        "interfaces": ["127.0.0.1"],
        "control": ["tcp://127.0.0.1:1"],
        "headers": {},
        "peers": [
            {
                "id": "cd" * 16,
                "name": "p",
                "state": "alive",
                "last_seen": 1.0,
                "endpoint": "tcp://127.0.0.1:2",
                "rtt": None,
            }
        ],
        "stats": {"requests_served": 3, "odd": "not a number"},
        "topics": [{"topic": "t", "published": 4, "blocking": False}],
        "subscriptions": [
            {
                "prefix": "t",
                "gaps": 1,
                "dropped": 0,
                "streams": [{"topic": "t", "sender": "cd" * 16, "seq": 9}],
                "gap_log": [{"topic": "t", "sender": "cd" * 16, "missed": 1}],
            }
        ],
        "services": [],
        "consumers": [
            {
                "prefix": "o/",
                "name": "billing",
                "stream": None,
                "delivered": 5,
                "acked": 3,
                "naked": 1,
                "pending": 1,
                "buffered": 2,
                "unsent_acks": 3,
                "last_seq": 7,
                "duplicates": 0,
            }
        ],
        "truncated": 0,
        "later_field": "ignored",
    }


def test_a_valid_reply_parses_and_unknown_fields_are_ignored() -> None:
    parsed = parse_snapshot(_valid())
    assert parsed.stats == {"requests_served": 3}
    assert parsed.streams[0].seq == 9 and parsed.streams[0].gaps == 1
    assert parsed.uptime == 2.0
    [consumer] = parsed.consumers
    assert (consumer.name, consumer.stream, consumer.pending, consumer.last_seq) == (
        "billing", None, 1, 7,
    )  # fmt: skip
    older = _valid()
    del older["consumers"]  # a node of an earlier version: none
    assert parse_snapshot(older).consumers == ()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.pop("id"), "id is not a string"),
        (lambda r: r.update(peers="x"), "peers is not an array"),
        (lambda r: r["topics"][0].update(published=True), "published is not an integer"),
        (lambda r: r.update(time="now"), "time is not a number"),
        (lambda r: r.update(interfaces=[1]), "interfaces holds a non-string"),
        (lambda r: r["subscriptions"][0]["streams"].append(7), "the entry of topic is not a map"),
        (lambda r: r.update(stats=None), "stats is not a map"),
        (lambda r: r["consumers"][0].update(pending="1"), "pending is not an integer"),
        (lambda r: r["consumers"][0].update(stream=3), "stream is not a string"),
    ],
)
def test_a_malformed_reply_is_a_typed_error(
    change: Callable[[dict[str, Any]], object], reason: str
) -> None:
    reply = _valid()
    change(reply)
    with pytest.raises(IntrospectError) as caught:
        parse_snapshot(reply)
    assert caught.value.reason == reason
    with pytest.raises(IntrospectError, match="reply is not a map"):
        parse_snapshot([reply])
