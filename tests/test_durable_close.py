"""Closing a node stops the durable waits of its other threads at once, and loses nothing confirmed.

A consumer's long poll and a publisher's wait for confirms block in
``Node.wait_any`` (meshq/replywait.py), which the close wakes through a
descriptor. To show that it is the close that ends each wait, and not a
timer that would have ended it soon anyway, every timer that could (the
long poll, the attempt timeout, the caller side's expiry scan) is made an
hour long here: a wait that did not wake on the close would outlive the
generous joins below by far.

Real nodes and a real relay on loopback (tests/test_relay.py's fixtures,
so SQLite and a JetStream cluster), and for the publisher a stalled relay:
a node whose relay service takes requests and never answers.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import meshq
from meshq import requester
from meshq.durable import confirms, consumer
from meshq.relaywire import RELAY_SERVICE_PREFIX
from meshq.services import ReplyTo

from .test_relay import LOOPBACK, client, relay_node, store_kind, wait_for_relay

__all__ = ["client", "relay_node", "store_kind"]  # fixtures, used by name

HOUR = 3600.0  # the relay protocol's longest fetch wait
JOIN = 30.0  # seconds a thread may take to end after the close: generous, not a measure


@pytest.fixture
def hour_long_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wait that could end by itself takes an hour: only the close can end it."""
    monkeypatch.setattr(consumer, "LONG_POLL", HOUR)
    monkeypatch.setattr(consumer, "ATTEMPT", HOUR)
    monkeypatch.setattr(confirms, "ATTEMPT", HOUR)
    monkeypatch.setattr(requester, "_SCAN_EVERY", HOUR)


def wait_until_inside(thread: threading.Thread, function: str) -> None:
    """Wait (at most JOIN s) until ``thread`` is running ``function``: blocked in it."""
    deadline = time.monotonic() + JOIN
    while True:
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None:
            if frame.f_code.co_name == function:
                return
            frame = frame.f_back
        assert thread.is_alive() and time.monotonic() < deadline, f"never in {function}"
        time.sleep(0.01)


def run(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start ``target`` on a thread; the list gets what it returned or raised."""
    outcome: list[object] = []

    def main() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=main, name="test-waiter", daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def stalled_relay(mesh: str) -> Iterator[list[ReplyTo]]:
    """A node offering the relay service of stream ``held/`` that never answers."""
    held: list[ReplyTo] = []
    with meshq.Node("stalled", mesh=mesh, interfaces=LOOPBACK) as node:
        node.serve_deferred(RELAY_SERVICE_PREFIX + "held/", lambda _data, reply: held.append(reply))
        yield held


@pytest.mark.usefixtures("hour_long_timers")
def test_a_close_ends_a_consumers_long_poll_on_another_thread(client: meshq.Node) -> None:
    for i in range(3):
        client.publish("orders/a", i, durable=True)

    def consume() -> list[object]:
        got = []
        with client.subscribe("orders/", durable="billing") as sub:
            got = [sub.recv(timeout=JOIN).data for _ in range(3)]
            sub.recv()  # nothing more: waits in an hour-long poll
        return got

    thread, outcome = run(consume)
    wait_until_inside(thread, "wait_any")  # the long poll is out
    client.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], meshq.Closed)


@pytest.mark.usefixtures("hour_long_timers")
def test_a_close_ends_a_publishers_wait_and_what_was_confirmed_stays(
    mesh: str, client: meshq.Node, stalled_relay: list[ReplyTo]
) -> None:
    wait_for_relay(client, "held/")
    confirmed = [client.publish("orders/c", i, durable=True) for i in range(5)]

    def publish_held() -> object:
        publisher = meshq.DurablePublisher(client, timeout=HOUR)
        return publisher.publish("held/x", "never confirmed")

    thread, outcome = run(publish_held)
    wait_until_inside(thread, "wait_any")
    deadline = time.monotonic() + JOIN
    while not stalled_relay:  # its request reaches the stalled relay (and stays unanswered)
        assert time.monotonic() < deadline, "the request never reached the stalled relay"
        time.sleep(0.01)
    client.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], meshq.Closed)
    # What the relay confirmed before the close is all there.
    with meshq.Node("reader", mesh=mesh, interfaces=LOOPBACK) as reader:
        wait_for_relay(reader, "orders/")
        with reader.subscribe("orders/", durable="audit") as sub:
            stored = [(m.seq, m.data) for m in (sub.recv(timeout=JOIN) for _ in confirmed)]
    assert stored == list(zip(confirmed, range(5), strict=True))


@pytest.mark.usefixtures("hour_long_timers")
def test_wait_any_wakes_on_any_reply_not_only_the_first_request(
    mesh: str, stalled_relay: list[ReplyTo]
) -> None:
    with meshq.Node("server", mesh=mesh, interfaces=LOOPBACK) as server:
        server.serve("echo", lambda data: data)
        with meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller:
            caller.wait_for_service("echo", timeout=JOIN)
            caller.wait_for_service(RELAY_SERVICE_PREFIX + "held/", timeout=JOIN)
            slow = caller.request_async(RELAY_SERVICE_PREFIX + "held/", "x", timeout=HOUR)
            fast = caller.request_async("echo", "hi", timeout=HOUR)
            assert caller.wait_any([slow, fast], timeout=JOIN)
            assert fast.ready and not slow.ready
            assert fast.result(0) == "hi"
            assert not caller.wait_any([slow], timeout=0.05)  # a deadline, and nothing came
            slow.cancel()


def test_wait_any_refuses_a_future_of_another_thread(
    mesh: str, stalled_relay: list[ReplyTo]
) -> None:
    with meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller:
        caller.wait_for_service(RELAY_SERVICE_PREFIX + "held/", timeout=JOIN)
        future = caller.request_async(RELAY_SERVICE_PREFIX + "held/", "x", timeout=HOUR)
        thread, outcome = run(lambda: caller.wait_any([future], timeout=JOIN))
        thread.join(JOIN)
        assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError)
        future.cancel()


def test_wait_any_after_the_close_raises_closed(mesh: str) -> None:
    node = meshq.Node("gone", mesh=mesh, interfaces=LOOPBACK)
    node.close()
    with pytest.raises(meshq.Closed):
        node.wait_any([], timeout=1)


def open_pipes() -> set[tuple[int, str]]:
    """This process's open pipe ends: (descriptor, "pipe:[inode]")."""
    ends = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
        if target.startswith("pipe:"):
            ends.add((int(name), target))
    return ends


def test_closing_a_node_releases_the_descriptors_wait_any_made(mesh: str) -> None:
    node = meshq.Node("waiter", mesh=mesh, interfaces=LOOPBACK)
    try:
        before = open_pipes()
        assert not node.wait_any([], timeout=0.01)  # makes the node's close alarm
        alarm = open_pipes() - before
        assert len(alarm) == 2  # its pipe's two ends
        node.close()
        assert not alarm & open_pipes()  # the node is still referenced: not by collection
    finally:
        node.close()


@pytest.mark.usefixtures("hour_long_timers")
def test_a_wait_any_under_way_gives_the_descriptors_back_as_the_close_ends_it(
    mesh: str, stalled_relay: list[ReplyTo]
) -> None:
    with meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller:
        caller.wait_for_service(RELAY_SERVICE_PREFIX + "held/", timeout=JOIN)
        before = open_pipes()

        def wait() -> object:
            future = caller.request_async(RELAY_SERVICE_PREFIX + "held/", "x", timeout=HOUR)
            return caller.wait_any([future])

        thread, outcome = run(wait)
        wait_until_inside(thread, "wait_any")
        deadline = time.monotonic() + JOIN
        while not stalled_relay:  # the request is in flight: the wait polls the alarm
            assert time.monotonic() < deadline, "the request never reached the stalled relay"
            time.sleep(0.01)
        alarm = open_pipes() - before
        assert len(alarm) == 2
        caller.close()
        thread.join(JOIN)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], meshq.Closed)
        assert not alarm & open_pipes()
