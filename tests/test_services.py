"""Request/reply services in one process on 127.0.0.1, and the service codec."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import zmq

import meshq
import meshq.aio
from meshq.errors import ProtocolError
from meshq.ratelimit import retry_delay
from meshq.requester import Requester
from meshq.servicewire import (
    check_service_name,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from meshq.wire import FLAG_MSGPACK, Limits, encode_msgpack

LOOPBACK = ["127.0.0.1"]
LIMITS = Limits()
VECTORS_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol-vectors.json"


def test_request_and_reply_frames_round_trip() -> None:
    frame = encode_request(7, check_service_name("calc"), FLAG_MSGPACK, encode_msgpack([1, 2]))
    request = decode_request(frame, LIMITS)
    assert (request.request_id, request.service, request.data) == (7, "calc", [1, 2])
    reply = decode_reply(encode_reply(7, 3, flags=0, payload=b"ok"), LIMITS)
    assert (reply.request_id, reply.load, reply.data, reply.error) == (7, 3, b"ok", None)
    failed = decode_reply(encode_reply(8, 0, error=KeyError("k")), LIMITS)
    assert failed.error == ("KeyError", "'k'")
    assert decode_reply(encode_reply(9, 0, not_served=True), LIMITS).not_served


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"Q\x01\x00" + bytes(8),  # truncated
        b"X\x01\x00" + bytes(8) + b"\x01c",  # not a request
        b"Q\x09\x00" + bytes(8) + b"\x01c",  # version
        b"Q\x01\x80" + bytes(8) + b"\x01c",  # flags
        b"Q\x01\x00" + bytes(8) + b"\x05c",  # name longer than the frame
        b"Q\x01\x00" + bytes(8) + b"\x00",  # empty name
        b"Q\x01\x00" + bytes(8) + b"\x01\xff",  # not UTF-8
        b"Q\x01\x01" + bytes(8) + b"\x01c\xc1",  # bad msgpack
    ],
)
def test_malformed_requests_are_one_typed_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(frame, LIMITS)


@pytest.mark.parametrize(
    "frame",
    [
        b"A\x01\x00" + bytes(8),  # truncated
        b"A\x01\x40" + bytes(12),  # flags
        b"A\x01\x03" + bytes(12) + encode_msgpack("not a pair"),  # bad error payload
    ],
)
def test_malformed_replies_are_one_typed_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(frame, LIMITS)


@pytest.fixture
def cluster(mesh: str) -> Iterator[list[meshq.Node]]:
    """A caller and three providers of "calc", each answering with its own name."""
    nodes = [meshq.Node(n, mesh=mesh, interfaces=LOOPBACK) for n in ("caller", "p1", "p2", "p3")]
    try:
        for provider in nodes[1:]:
            provider.serve("calc", echo_from(provider.name))
        wait_for_service(nodes[0], "calc", 3)
        yield nodes
    finally:
        for node in nodes:
            node.close()


def test_requests_spread_over_every_provider(cluster: list[meshq.Node]) -> None:
    caller = cluster[0]
    answered = collections.Counter(
        caller.request("calc", i)["by"]  # type: ignore[index]
        for i in range(150)
    )
    assert set(answered) == {"p1", "p2", "p3"}
    assert min(answered.values()) >= 10  # nobody starves


def test_many_requests_in_flight_from_one_caller(cluster: list[meshq.Node]) -> None:
    caller = cluster[0]
    futures = [caller.request_async("calc", i) for i in range(300)]
    assert [f.result(timeout=30)["echo"] for f in futures] == list(range(300))  # type: ignore[index]


def test_no_providers_is_raised_at_once(cluster: list[meshq.Node]) -> None:
    with pytest.raises(meshq.NoProviders) as caught:
        cluster[0].request("nobody-offers-this", 1, timeout=30)
    assert caught.value.service == "nobody-offers-this"


def test_a_handler_error_reaches_the_caller_and_serving_goes_on(mesh: str) -> None:
    with (
        meshq.Node("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):

        @provider.service("div")
        def divide(data: object) -> object:
            assert isinstance(data, list)
            return data[0] / data[1]

        wait_for_service(caller, "div", 1)
        with pytest.raises(meshq.RemoteError) as caught:
            caller.request("div", [1, 0])
        assert caught.value.remote_type == "ZeroDivisionError"
        assert "division by zero" in caught.value.remote_message
        assert caught.value.provider == provider.id
        assert caller.request("div", [6, 3]) == 2.0
        assert provider.stats()["handler_errors"] == 1


def test_a_silent_provider_is_retried_elsewhere_and_its_late_reply_dropped(mesh: str) -> None:
    release = threading.Event()
    with (
        meshq.Node("stuck", mesh=mesh, interfaces=LOOPBACK) as stuck,
        meshq.Node("quick", mesh=mesh, interfaces=LOOPBACK) as quick,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        stuck.serve("work", lambda data: release.wait(10) and "late")
        quick.serve("work", lambda data: "quick")
        wait_for_service(caller, "work", 2)
        answers = [caller.request("work", i, timeout=0.3, retries=1) for i in range(6)]
        assert answers == ["quick"] * 6  # whoever went to "stuck" was retried
        assert caller.stats()["request_retries"] >= 1
        release.set()
        deadline = time.monotonic() + 10
        while caller.stats().get("late_replies", 0) < 1:
            caller.request("work", "pump", timeout=0.3, retries=1)  # reads the late reply
            assert time.monotonic() < deadline, caller.stats()


def test_every_attempt_unanswered_is_a_timeout(mesh: str) -> None:
    release = threading.Event()
    with (
        meshq.Node("stuck", mesh=mesh, interfaces=LOOPBACK) as stuck,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        stuck.serve("work", lambda data: release.wait(10))
        wait_for_service(caller, "work", 1)
        with pytest.raises(meshq.Timeout):
            caller.request("work", 1, timeout=0.2, retries=1)
        release.set()


def test_gather_collects_every_provider_and_names_the_silent(mesh: str) -> None:
    release = threading.Event()
    with (
        meshq.Node("a", mesh=mesh, interfaces=LOOPBACK) as a,
        meshq.Node("b", mesh=mesh, interfaces=LOOPBACK) as b,
        meshq.Node("silent", mesh=mesh, interfaces=LOOPBACK) as silent,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        a.serve("stats", lambda data: {"node": "a"})
        b.serve("stats", lambda data: 1 / 0)
        silent.serve("stats", lambda data: release.wait(10))
        wait_for_service(caller, "stats", 3)
        result = caller.gather("stats", None, timeout=0.5)
        release.set()
        assert result.replies == {a.id: {"node": "a"}}
        assert list(result.errors) == [b.id]
        assert result.errors[b.id].remote_type == "ZeroDivisionError"
        assert result.missing == (silent.id,)


def test_a_node_can_call_its_own_service(mesh: str) -> None:
    with meshq.Node("self", mesh=mesh, interfaces=LOOPBACK) as node:
        node.serve("echo", lambda data: data)
        wait_for_service(node, "echo", 1)
        assert node.request("echo", b"\x00bytes") == b"\x00bytes"
        with pytest.raises(ValueError):
            node.serve("", lambda data: data)


def echo_from(name: str) -> meshq.services.Handler:
    return lambda data: {"by": name, "echo": data}


def wait_for_service(node: meshq.Node, name: str, providers: int) -> None:
    node.wait_for_service(name, providers, timeout=10)


async def wait_for_service_async(node: meshq.AsyncNode, name: str, providers: int) -> None:
    await node.wait_for_service(name, providers, timeout=10)


def test_run_returns_when_the_node_closes_or_time_is_up(mesh: str) -> None:
    with meshq.Node("runner", mesh=mesh, interfaces=LOOPBACK) as node:
        node.run(timeout=0.1)  # time is up
        closer = threading.Timer(0.1, node.close)
        closer.start()
        node.run()  # returns once another thread closed the node
        closer.join()
        assert node.closed


def test_large_requests_and_replies_cross_the_network(mesh: str) -> None:
    with (
        meshq.Node("big", mesh=mesh, interfaces=LOOPBACK) as provider,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        provider.serve("echo", lambda data: data)
        wait_for_service(caller, "echo", 1)
        payload = bytes(range(256)) * 4096  # 1 MiB, far above the control limit
        assert caller.request("echo", payload, timeout=5) == payload


def test_a_not_served_reply_is_bounded_by_retries(mesh: str) -> None:
    with meshq.Node("fickle", mesh=mesh, interfaces=LOOPBACK) as node:
        node.serve("gone-soon", lambda data: data)
        wait_for_service(node, "gone-soon", 1)
        with node.runtime._service_lock:  # the handler disappears, the advert lingers a moment
            assert node.runtime._service_runner is not None
            node.runtime._service_runner._handlers.clear()
        with pytest.raises(meshq.NoProviders):
            node.request("gone-soon", 1, timeout=1.0, retries=2)


def test_handlers_that_raise_anything_do_not_stop_the_service(mesh: str) -> None:
    def nasty(data: object) -> object:
        if data == "exit":
            raise SystemExit(3)
        if data == "surrogate":
            raise ValueError("\udc80 cannot be UTF-8")
        return "fine"

    with meshq.Node("sturdy", mesh=mesh, interfaces=LOOPBACK) as node:
        node.serve("nasty", nasty)
        wait_for_service(node, "nasty", 1)
        for data, remote_type in (("exit", "SystemExit"), ("surrogate", "ValueError")):
            with pytest.raises(meshq.RemoteError) as caught:
                node.request("nasty", data)
            assert caught.value.remote_type == remote_type
        assert node.request("nasty", "ok") == "fine"


def test_services_that_would_overflow_the_hello_are_refused(mesh: str) -> None:
    headers = {f"k{i}": "v" * 900 for i in range(60)}  # fits, but only just
    with (
        meshq.Node("full", mesh=mesh, interfaces=LOOPBACK, headers=headers) as node,
        pytest.raises(ValueError, match="HELLO limit"),
    ):
        for i in range(64):
            node.serve(f"service-with-a-rather-long-name-number-{i:03d}-" + "x" * 180, str)


def test_a_provider_that_leaves_is_given_up_on_at_once(mesh: str) -> None:
    release = threading.Event()
    with (
        meshq.Node("quick", mesh=mesh, interfaces=LOOPBACK) as quick,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        leaving = meshq.Node("leaving", mesh=mesh, interfaces=LOOPBACK)
        try:
            leaving.serve("work", lambda data: release.wait(30) and "late")
            wait_for_service(caller, "work", 1)
            future = caller.request_async("work", 1, timeout=30, retries=1)
            quick.serve("work", lambda data: "quick")
            wait_for_service(caller, "work", 2)
            closer = threading.Thread(target=leaving.close)  # its BYE, mid-request
            closer.start()
            # Well before the 30 s attempt timeout, the request moves to "quick".
            assert future.result(timeout=10) == "quick"
        finally:
            release.set()
            closer.join()
            leaving.close()


def test_direct_messages_reach_one_peer_and_are_acknowledged(mesh: str) -> None:
    with (
        meshq.Node("inbox", mesh=mesh, interfaces=LOOPBACK) as inbox,
        meshq.Node("other", mesh=mesh, interfaces=LOOPBACK) as other,
        meshq.Node("sender", mesh=mesh, interfaces=LOOPBACK) as sender,
    ):
        received: list[tuple[str, object]] = []

        @inbox.on_direct
        def take(sender_id: str, data: object) -> object:
            received.append((sender_id, data))
            return "thanks"

        other.on_direct(lambda sender_id, data: "wrong peer")
        wait_for_service(sender, "meshq/direct", 2)
        assert sender.send_to(inbox.id, {"hello": 1}) == "thanks"
        assert received == [(sender.id, {"hello": 1})]
        with pytest.raises(meshq.NoProviders):
            sender.send_to("0" * 32, b"nobody")


def test_async_requests_and_gather(mesh: str) -> None:
    async def scenario() -> tuple[list[object], meshq.GatherResult]:
        async with (
            meshq.AsyncNode("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
            meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
        ):
            provider.serve("double", lambda data: data * 2)  # type: ignore[operator]
            await wait_for_service_async(caller, "double", 1)
            answers = await asyncio.gather(*(caller.request("double", i) for i in range(50)))
            with pytest.raises(meshq.NoProviders):
                await caller.request("nobody", 1)
            return list(answers), await caller.gather("double", 21)

    answers, gathered = asyncio.run(scenario())
    assert answers == [i * 2 for i in range(50)]
    assert list(gathered.replies.values()) == [42] and gathered.missing == ()


def test_the_async_reply_reader_outlives_failing_batches_and_backs_off(
    mesh: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No batch of replies fails to be handled on demand, so handling is made to
    fail (as a bug would) four times in a row, then twice more after a success:
    the reader must count each, pause longer after each failure in a row (and
    start over after a success), log fewer lines than failures, and answer the
    calls once handling works again."""
    failing = 0
    real_handle = Requester.handle

    def flaky(self: Requester, ready: Mapping[Any, int]) -> None:
        nonlocal failing
        if failing:
            failing -= 1
            raise RuntimeError("injected")
        real_handle(self, ready)

    backoffs: list[int] = []

    def recorded(failures: int) -> float:
        backoffs.append(failures)
        return retry_delay(failures)

    monkeypatch.setattr(Requester, "handle", flaky)
    monkeypatch.setattr(meshq.aio, "retry_delay", recorded)

    async def scenario() -> tuple[list[object], dict[str, int]]:
        nonlocal failing
        async with (
            meshq.AsyncNode("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
            meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
        ):
            provider.serve("double", lambda data: data * 2)  # type: ignore[operator]
            await wait_for_service_async(caller, "double", 1)
            answers = []
            for run, data in ((4, 21), (2, 5)):
                failing = run
                answers.append(await caller.request("double", data, timeout=10.0))
            return answers, caller.stats()

    with caplog.at_level(logging.WARNING, logger="meshq.aio"):
        answers, stats = asyncio.run(scenario())
    assert answers == [42, 10]
    assert backoffs == [1, 2, 3, 4, 1, 2]  # longer after each in a row, anew after a success
    assert stats["internal_errors"] == 6
    lines = [r for r in caplog.records if r.getMessage().startswith("reading replies failed")]
    assert 1 <= len(lines) < 6


def test_thousands_of_async_requests_at_once_each_run_once(mesh: str) -> None:
    served = collections.Counter[object]()

    def count(data: object) -> object:
        served[data] += 1
        return data

    async def scenario() -> list[object]:
        async with (
            meshq.AsyncNode("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
            meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
        ):
            provider.serve("count", count)
            await wait_for_service_async(caller, "count", 1)
            return list(
                await asyncio.gather(
                    *(caller.request("count", i, timeout=20, retries=0) for i in range(3000))
                )
            )

    assert asyncio.run(scenario()) == list(range(3000))
    assert set(served.values()) == {1}  # nothing ran twice


def test_closing_an_async_node_with_a_call_in_flight_leaves_no_task_behind(mesh: str) -> None:
    """close() cancels the reply reader while it waits for a reply: what it was
    waiting on must end with it, or every AsyncNode closed on a long-lived
    event loop would leave a pending task there."""
    arrived, release = threading.Event(), threading.Event()

    def slow(data: object) -> object:
        arrived.set()
        release.wait(10.0)
        return data

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        async with meshq.AsyncNode("provider", mesh=mesh, interfaces=LOOPBACK) as provider:
            provider.serve("slow", slow)
            caller = meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK)
            try:
                await wait_for_service_async(caller, "slow", 1)
                call = asyncio.ensure_future(caller.request("slow", 1, timeout=10.0))
                # Served, so the request went out and the reader waits for its reply.
                assert await loop.run_in_executor(None, arrived.wait, 10.0)
            finally:
                await caller.close()
            with pytest.raises(meshq.Closed):
                await call
            release.set()
            for _ in range(3):
                await asyncio.sleep(0)  # cancelled tasks finish in a later step
            return [
                task.get_coro().__qualname__  # type: ignore[union-attr]
                for task in asyncio.all_tasks()
                if task is not asyncio.current_task()
            ]

    assert "Event.wait" not in asyncio.run(scenario())


def test_a_cancelled_async_request_is_not_retried(mesh: str) -> None:
    runs = collections.Counter[str]()
    release = threading.Event()

    def slow(data: object) -> object:
        runs["slow"] += 1
        release.wait(5)
        return data

    async def scenario() -> None:
        async with (
            meshq.AsyncNode("a", mesh=mesh, interfaces=LOOPBACK) as a,
            meshq.AsyncNode("b", mesh=mesh, interfaces=LOOPBACK) as b,
            meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
        ):
            a.serve("slow", slow)
            b.serve("slow", slow)
            await wait_for_service_async(caller, "slow", 2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(caller.request("slow", 1, timeout=0.2, retries=2), 0.05)
            await asyncio.sleep(0.6)  # past two attempt timeouts: a retry would show
            release.set()

    asyncio.run(scenario())
    assert runs["slow"] == 1


def test_a_once_busy_provider_is_asked_again(mesh: str) -> None:
    release = threading.Event()
    with (
        meshq.Node("a", mesh=mesh, interfaces=LOOPBACK) as a,
        meshq.Node("b", mesh=mesh, interfaces=LOOPBACK) as b,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        a.serve("work", lambda data: "a")
        b.serve("work", lambda data: release.wait(5) and "b")
        wait_for_service(caller, "work", 2)
        # A burst piles requests onto b, which then reports a high load.
        burst = [caller.request_async("work", i, timeout=10, retries=0) for i in range(200)]
        release.set()
        for future in burst:
            future.result()
        time.sleep(1.1)  # the load report goes stale (after 1 s)
        answered = collections.Counter(caller.request("work", i) for i in range(100))
        assert answered["b"] > 0, answered  # b is not starved for good


def test_a_handler_may_close_its_own_node(mesh: str) -> None:
    with (
        meshq.Node("target", mesh=mesh, interfaces=LOOPBACK) as target,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):

        @target.service("shutdown")
        def shutdown(data: object) -> object:
            threading.Thread(target=target.close).start()  # as a user would
            target.close()  # and directly, from the service thread
            return "bye"

        wait_for_service(caller, "shutdown", 1)
        try:
            caller.request("shutdown", None, timeout=2, retries=0)
        except meshq.Timeout:
            pass  # the node may close before its reply leaves
        deadline = time.monotonic() + 10
        while not target.closed:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_wait_for_service_wakes_when_providers_appear_and_times_out(mesh: str) -> None:
    with (
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
        meshq.Node("one", mesh=mesh, interfaces=LOOPBACK) as one,
        meshq.Node("two", mesh=mesh, interfaces=LOOPBACK) as two,
    ):
        with pytest.raises(meshq.Timeout, match="0 of 1 providers of 'calc'"):
            caller.wait_for_service("calc", timeout=0.2)
        found: list[object] = []
        waiter = threading.Thread(
            target=lambda: found.append(caller.wait_for_service("calc", 2, timeout=10))
        )
        waiter.start()
        one.serve("calc", lambda data: "one")
        two.serve("calc", lambda data: "two")
        waiter.join(15)
        assert not waiter.is_alive()
        assert found and set(found[0]) == {one.id, two.id}  # type: ignore[call-overload]
        assert caller.request("calc", None, timeout=5) in ("one", "two")
        with pytest.raises(meshq.Timeout, match="2 of 3 providers"):
            caller.wait_for_service("calc", 3, timeout=0.2)


def test_wait_for_service_ends_with_closed_when_the_node_closes(mesh: str) -> None:
    node = meshq.Node("alone", mesh=mesh, interfaces=LOOPBACK)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            node.wait_for_service("never", timeout=30)
        except meshq.MeshqError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    node.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert [type(e) for e in errors] == [meshq.Closed]


def test_async_wait_for_service(mesh: str) -> None:
    async def scenario() -> set[str]:
        async with meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller:
            with meshq.Node("provider", mesh=mesh, interfaces=LOOPBACK) as provider:
                with pytest.raises(meshq.Timeout):
                    await caller.wait_for_service("calc", timeout=0.2)
                waiting = asyncio.ensure_future(caller.wait_for_service("calc", timeout=10))
                provider.serve("calc", lambda data: data)
                return set(await waiting)

    assert len(asyncio.run(scenario())) == 1


def test_a_live_provider_drops_and_counts_each_malformed_request_unanswered(mesh: str) -> None:
    """The provider's own reading of requests (not only decode_request) keeps 9.5's checks.

    The name is known to the provider first (a valid request for it), so a
    request whose name runs past the frame's end but starts with a served
    name is dropped, not served; multi-part messages are dropped whole.
    """
    vectors = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["malformed"]
    malformed = [bytes.fromhex(v["hex"]) for v in vectors if v["kind"] == "request"]
    # A raw payload, so that only the name's length is wrong: 10 bytes, "calc" and the end.
    malformed.append(b"Q\x01\x00" + (9).to_bytes(8, "big") + b"\x0acalc")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    config = meshq.MeshConfig(max_offences=1000)  # no ban: every request is looked at
    with meshq.Node("p", mesh=mesh, interfaces=LOOPBACK, config=config, discovery=False) as node:
        node.serve("calc", lambda data: data)
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVTIMEO, 10_000)
        dealer.connect(node.service_endpoints[0])
        dealer.send(encode_request(1, b"calc", 0, b"first"))
        assert decode_reply(dealer.recv(), LIMITS).data == b"first"
        for frame in malformed:
            dealer.send(frame)
        dealer.send_multipart([encode_request(2, b"calc", 0, b"x"), b"extra"])
        dealer.send_multipart([encode_request(3, b"calc", 0, b"x"), b"extra", b"more"])
        dealer.send(encode_request(4, b"calc", 0, b"last"))
        # Replies leave in request order: the next one answers the last request.
        reply = decode_reply(dealer.recv(), LIMITS)
        assert (reply.request_id, reply.data) == (4, b"last")
        assert node.stats()["service_protocol_errors"] == len(malformed) + 2
        assert node.stats()["requests_served"] == 2
        dealer.close()
    context.destroy(linger=0)
