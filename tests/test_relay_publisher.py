"""DurablePublisher's promises: progress without poll(), failures raised, store refusals resent.

A real relay in this process on loopback, a real SQLite file; SQLite's own
limit on the file's pages stands in for a full disk (tests/test_relay_disk.py
fills a real one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import meshq
from tests.test_relay import LOOPBACK, wait_for_relay


@pytest.fixture
def relay(mesh: str, tmp_path: Path) -> Iterator[meshq.Relay]:
    node = meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK)
    relay = meshq.Relay(node, tmp_path, ["s/"], settle=0.0)  # the only relay: no one to find
    yield relay
    relay.close()


@pytest.fixture
def client(mesh: str, relay: meshq.Relay) -> Iterator[meshq.Node]:
    with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "s/")
        yield node


def fill_store(relay: meshq.Relay) -> None:
    """Let the store's file grow by two pages at most: a bigger write fails as on a full disk."""
    pages = relay._store._db.execute("PRAGMA page_count").fetchone()[0]
    relay._store._db.execute(f"PRAGMA max_page_count = {pages + 2}")


def free_store(relay: meshq.Relay) -> None:
    relay._store._db.execute("PRAGMA max_page_count = 1073741823")


def test_confirms_make_progress_while_the_application_is_busy_elsewhere(
    client: meshq.Node,
) -> None:
    publisher = meshq.DurablePublisher(client, timeout=1.0)
    for i in range(6):  # spread out over more than the timeout, no poll() in between
        publisher.send("s/x", {"i": i})
        time.sleep(0.4)  # the application is busy elsewhere
    burst = [publisher.send("s/x", {"burst": i}) for i in range(20)]
    time.sleep(1.5)  # away for longer than the timeout, with most of the burst held back
    publisher.flush(timeout=10)  # raises if any failed
    assert publisher.failed == 0 and publisher.confirmed == 26
    assert [c.result() for c in burst] == list(range(7, 27))


def test_store_failure_refusals_are_resent_with_the_same_id_until_confirmed(
    relay: meshq.Relay, client: meshq.Node
) -> None:
    publisher = meshq.DurablePublisher(client, timeout=60)
    assert publisher.publish("s/x", "before") == 1
    fill_store(relay)
    confirm = publisher.send("s/x", b"x" * 200_000)
    deadline = time.monotonic() + 30
    while relay.counts.get("store_errors", 0) < 3:  # refused, resent, refused again ...
        assert time.monotonic() < deadline, relay.counts
        assert not confirm.done()  # done() reads replies and resends: no failure yet
        time.sleep(0.01)
    free_store(relay)
    assert confirm.result(timeout=30) == 2
    assert publisher.resent >= 2 and publisher.failed == 0
    info = client.request("meshq/relay/s/", ["info"])
    assert isinstance(info, dict) and info["messages"] == 2  # stored once
    assert relay.counts.get("duplicates", 0) == 0  # nothing of a refused request was kept
    with client.subscribe("s/", durable="check") as sub:
        assert [sub.recv(timeout=5).data for _ in range(2)] == ["before", b"x" * 200_000]


def test_flush_raises_publish_failed_listing_the_ids_no_result_raised(
    relay: meshq.Relay, client: meshq.Node
) -> None:
    publisher = meshq.DurablePublisher(client, timeout=0.5)
    publisher.publish("s/x", "fits")
    fill_store(relay)
    seen = publisher.send("s/x", b"x" * 200_000, msg_id=b"seen")
    unseen = [publisher.send("s/x", b"x" * 200_000, msg_id=b"lost-%d" % i) for i in range(2)]
    with pytest.raises(meshq.Timeout):  # the store kept failing until the timeout
        seen.result(timeout=10)
    with pytest.raises(meshq.PublishFailed) as caught:
        publisher.flush(timeout=10)
    assert [msg_id for msg_id, _ in caught.value.failures] == [c.msg_id for c in unseen]
    assert caught.value.count == 2
    assert all(isinstance(error, meshq.Timeout) for _, error in caught.value.failures)
    assert b"lost-0".hex() in str(caught.value)
    publisher.flush(timeout=10)  # reported once: the next flush is clean
    free_store(relay)
    assert publisher.publish("s/x", "after") == 2


def test_asyncio_publishes_resend_store_failure_refusals_too(mesh: str, relay: meshq.Relay) -> None:
    async def scenario() -> tuple[int, int]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            deadline = time.monotonic() + 10
            while "meshq/relay/s/" not in node.services():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            publisher = meshq.AsyncDurablePublisher(node, timeout=60)
            fill_store(relay)
            pending = asyncio.ensure_future(publisher.publish("s/x", b"x" * 200_000))
            while relay.counts.get("store_errors", 0) < 3:  # refused and resent, again
                assert time.monotonic() < deadline + 30 and not pending.done()
                await asyncio.sleep(0.01)
            free_store(relay)
            return await pending, publisher.resent

    seq, resent = asyncio.run(scenario())
    assert seq == 1 and resent >= 2


def test_asyncio_flush_raises_publish_failed_listing_the_ids_no_result_raised(
    mesh: str, relay: meshq.Relay
) -> None:
    async def scenario() -> meshq.PublishFailed:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/s/", timeout=10)
            publisher = meshq.AsyncDurablePublisher(node, timeout=0.5)
            assert await publisher.publish("s/x", "fits") == 1
            fill_store(relay)
            seen = await publisher.send("s/x", b"x" * 200_000, msg_id=b"seen")
            unseen = [
                await publisher.send("s/x", b"x" * 200_000, msg_id=b"lost-%d" % i) for i in range(2)
            ]
            with pytest.raises(meshq.Timeout):  # the store kept failing until the timeout
                await seen
            with pytest.raises(meshq.PublishFailed) as caught:
                await publisher.flush(timeout=10)
            assert [msg_id for msg_id, _ in caught.value.failures] == [c.msg_id for c in unseen]
            assert publisher.failed == 3 and publisher.in_flight == 0
            await publisher.flush(timeout=10)  # reported once: the next flush is clean
            free_store(relay)
            assert await publisher.publish("s/x", "after") == 2
            return caught.value

    failed = asyncio.run(scenario())
    assert failed.count == 2
    assert all(isinstance(error, meshq.Timeout) for _, error in failed.failures)
    assert b"lost-0".hex() in str(failed)
