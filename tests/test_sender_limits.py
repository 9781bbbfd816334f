"""What a receiver would refuse is refused at the sender; retries never re-ask a provider."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import meshq

LOOPBACK = ["127.0.0.1"]
TOO_BIG = {"blob": "x" * 5_000_000}  # over the default max_msgpack_bytes (4 MiB)


@pytest.fixture
def pair(mesh: str) -> Iterator[tuple[meshq.Node, meshq.Node]]:
    with (
        meshq.Node("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        yield provider, caller


def test_an_oversized_publish_is_refused_and_costs_no_sequence_number(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    publisher, subscriber_node = pair
    with subscriber_node.subscribe("big/") as subscription:
        publisher.wait_for_subscribers("big/x", 1, timeout=10)
        with pytest.raises(meshq.PayloadTooLarge) as caught:
            publisher.publish("big/x", TOO_BIG)
        assert isinstance(caught.value, ValueError)
        assert caught.value.limit == publisher.config.max_msgpack_bytes
        assert "max_msgpack_bytes" in str(caught.value)
        with pytest.raises(meshq.PayloadTooLarge):
            publisher.publish_many("big/x", [{"small": 1}, TOO_BIG])
        publisher.publish("big/x", {"small": 1})
        message = subscription.recv(timeout=10)
        assert message.data == {"small": 1}
        assert message.seq == 1  # nothing before it went out
    assert subscriber_node.stats().get("messages_missed", 0) == 0


def test_an_oversized_blocking_publish_is_refused(pair: tuple[meshq.Node, meshq.Node]) -> None:
    publisher, _ = pair
    with pytest.raises(meshq.PayloadTooLarge):
        publisher.publish_blocking("big/blocking", TOO_BIG, timeout=1.0)


def test_an_oversized_request_is_refused_at_once(pair: tuple[meshq.Node, meshq.Node]) -> None:
    provider, caller = pair
    calls: list[object] = []
    provider.serve("store", calls.append)
    wait_for_service(caller, "store")
    with pytest.raises(meshq.PayloadTooLarge) as caught:
        caller.request("store", TOO_BIG)
    assert caught.value.what == "request"
    assert caller.request("store", "small") is None
    assert calls == ["small"]


def test_an_oversized_reply_reaches_the_caller_as_a_remote_error(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    provider, caller = pair
    calls: list[object] = []

    def huge(data: object) -> object:
        calls.append(data)
        return TOO_BIG

    provider.serve("huge", huge)
    wait_for_service(caller, "huge")
    with pytest.raises(meshq.RemoteError) as caught:
        caller.request("huge", 1)
    assert caught.value.remote_type == "PayloadTooLarge"
    assert "reply too large" in caught.value.remote_message
    assert calls == [1]  # answered at once: no retry ran the handler again


def test_a_slow_handler_runs_once_with_the_default_retries(
    pair: tuple[meshq.Node, meshq.Node],
) -> None:
    provider, caller = pair
    release = threading.Event()
    runs: list[object] = []

    def charge_card(data: object) -> object:
        runs.append(data)
        release.wait(30)
        return "charged"

    provider.serve("charge-card", charge_card)
    provider.serve("ping", lambda data: "pong")
    wait_for_service(caller, "charge-card")
    wait_for_service(caller, "ping")
    with pytest.raises(meshq.Timeout):
        caller.request("charge-card", 1, timeout=0.3)  # default retries: the only provider
    release.set()
    # Requests on one link are served in order: once "ping" is answered,
    # any retry of "charge-card" sent to this provider would have run.
    assert caller.request("ping", None, timeout=30) == "pong"
    assert runs == [1]


def wait_for_service(node: meshq.Node, name: str) -> None:
    node.wait_for_service(name, timeout=10)
