"""Durable handlers at the edges: backoff as an argument, and failures logged without a flood.

Real nodes and a real relay on loopback (the fixtures of tests/test_relay.py,
so both stores: SQLite and a JetStream cluster).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import meshq
from meshq.ratelimit import HandlerErrorLog

from .test_relay import LOOPBACK, client, relay_node, store_kind, wait_for_relay

__all__ = ["client", "relay_node", "store_kind"]  # fixtures, used by name

WAIT = 20.0  # seconds any condition may take on a loaded machine


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.02)


def test_subscribe_and_on_message_take_backoff(mesh: str, client: meshq.Node) -> None:
    with client.subscribe("orders/", durable="tuned", backoff=(0.5, 3.0)) as sub:
        assert sub.backoff == (0.5, 3.0)
    client.publish("orders/a", "flaky", durable=True)
    calls: list[float] = []
    done = threading.Event()
    with meshq.Node("handler", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "orders/")

        @node.on_message("orders/", durable="handled", backoff=(1.5, 0.0))
        def handle(message: meshq.DurableMessage) -> None:
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise RuntimeError("backend down for a moment")
            done.set()

        assert done.wait(WAIT)
    # Not the default (1 s, then 2 s): the given backoff, 1.5 s then none.
    assert calls[1] - calls[0] >= 1.5


def test_asyncio_subscribe_and_on_message_take_backoff(mesh: str, client: meshq.Node) -> None:
    client.publish("orders/a", "flaky", durable=True)

    async def scenario() -> tuple[tuple[float, ...], tuple[float, ...], list[float]]:
        calls: list[float] = []
        done = asyncio.Event()
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/orders/", timeout=10)
            sub = node.subscribe("orders/", durable="tuned", backoff=(0.5, 3.0))
            other = await node.subscribe_durable("orders/", "other", backoff=(2.0,))
            await sub.close()
            await other.close()

            @node.on_message("orders/", durable="handled", backoff=(1.5, 0.0))
            def handle(message: meshq.DurableMessage) -> None:
                calls.append(time.monotonic())
                if len(calls) < 3:
                    raise RuntimeError("backend down for a moment")
                done.set()

            await asyncio.wait_for(done.wait(), WAIT)
        return sub.backoff, other.backoff, calls

    tuned, other, calls = asyncio.run(scenario())
    assert tuned == (0.5, 3.0) and other == (2.0,)
    assert calls[1] - calls[0] >= 1.5


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and "on_message handler" in r.getMessage()]


def test_a_handler_that_always_raises_logs_one_traceback_and_counts_all(
    mesh: str, client: meshq.Node, caplog: pytest.LogCaptureFixture
) -> None:
    client.publish("orders/a", "poison", durable=True)
    with meshq.Node("handler", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "orders/")

        @node.on_message("orders/", durable="handled", backoff=(0.0,))
        def handle(message: meshq.DurableMessage) -> None:
            raise RuntimeError("always fails")

        # max_deliver=5 by default: five deliveries, then a dead letter.
        wait_until(lambda: node.stats()["message_handler_errors"] == 5, "five failures")
    assert len(tracebacks(caplog)) == 1


def test_an_asyncio_handler_that_always_raises_logs_one_traceback(
    mesh: str, client: meshq.Node, caplog: pytest.LogCaptureFixture
) -> None:
    client.publish("orders/a", "poison", durable=True)

    async def scenario() -> int:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/orders/", timeout=10)

            @node.on_message("orders/", durable="handled", backoff=(0.0,))
            async def handle(message: meshq.DurableMessage) -> None:
                raise RuntimeError("always fails")

            deadline = time.monotonic() + WAIT
            while node.stats()["message_handler_errors"] < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return node.stats()["message_handler_errors"]

    assert asyncio.run(scenario()) == 5
    assert len(tracebacks(caplog)) == 1


def test_handler_error_log_summarises_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    errors = HandlerErrorLog(logging.getLogger("meshq.test"), "handler h", 30.0, lambda: now[0])
    caplog.set_level(logging.ERROR, "meshq.test")
    for _ in range(10):  # within the first interval: one traceback
        errors.failed(RuntimeError("down"))
        now[0] += 1.0
    errors.failed(KeyError("new kind"))  # a new kind: its traceback at once
    now[0] += 30.0  # an interval after the last line (the new kind)
    errors.failed(RuntimeError("still down"))  # the summary line
    errors.failed(RuntimeError("still down"))  # held back again
    lines = [(r.getMessage(), bool(r.exc_info)) for r in caplog.records]
    assert [with_traceback for _, with_traceback in lines] == [True, True, False]
    # 9 held back after the first traceback, and this one.
    assert "failed 10 time(s) since the last line, 12 in all" in lines[2][0]
    assert "RuntimeError: still down" in lines[2][0]
    assert errors.failures == 13


def test_async_durable_publisher_has_the_sync_ones_calls_and_counters() -> None:
    def surface(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    sync_only = {"poll", "wait"}  # a thread drives its own replies; a loop needs neither
    assert surface(meshq.DurablePublisher) - sync_only <= surface(meshq.AsyncDurablePublisher)
    for name in ("send", "publish", "flush"):
        assert asyncio.iscoroutinefunction(getattr(meshq.AsyncDurablePublisher, name))


def test_async_sends_in_flight_together_travel_batched_and_flush_settles_them(
    mesh: str, client: meshq.Node
) -> None:
    async def scenario() -> tuple[list[int], dict[str, int]]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/orders/", timeout=10)
            publisher = meshq.AsyncDurablePublisher(node, timeout=30, max_in_flight=64)
            confirms = [await publisher.send("orders/a", {"i": i}) for i in range(200)]
            await publisher.flush(timeout=30)  # raises PublishFailed if any failed
            counts = {
                "confirmed": publisher.confirmed,
                "failed": publisher.failed,
                "in_flight": publisher.in_flight,
                "requests": publisher.requests,
            }
            assert all(confirm.done() for confirm in confirms)
            return [await confirm for confirm in confirms], counts

    seqs, counts = asyncio.run(scenario())
    assert seqs == list(range(1, 201))
    assert counts["confirmed"] == 200 and counts["failed"] == 0 and counts["in_flight"] == 0
    assert counts["requests"] < 200  # sends in flight together shared requests
    with client.subscribe("orders/", durable="check") as sub:
        assert [sub.recv(timeout=5).data for _ in range(200)] == [{"i": i} for i in range(200)]


def test_async_confirms_progress_while_nobody_awaits_them(mesh: str, client: meshq.Node) -> None:
    async def scenario() -> tuple[int, int]:
        async with meshq.AsyncNode("async", mesh=mesh, interfaces=LOOPBACK) as node:
            await node.wait_for_service("meshq/relay/orders/", timeout=10)
            publisher = meshq.AsyncDurablePublisher(node, timeout=1.0)
            confirms = []
            for i in range(5):  # spread over more than the timeout, never awaited
                confirms.append(await publisher.send("orders/a", i))
                await asyncio.sleep(0.4)  # the application is busy elsewhere
            deadline = time.monotonic() + WAIT
            while not all(c.done() for c in confirms) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return publisher.confirmed, publisher.failed

    assert asyncio.run(scenario()) == (5, 0)
