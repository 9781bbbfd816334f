"""The control loop (meshq/control.py) on a real node, fed by a raw DEALER playing a peer."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import zmq

import meshq
from meshq.control import ControlLoop
from meshq.ratelimit import retry_delay
from meshq.wire import PING_HEAD, Hello, Ping, encode_control, routing_id

LOOPBACK = ["127.0.0.1"]
WAIT = 10.0  # seconds, with room for a loaded machine
BURST = 3 * 256  # three times what the loop reads before it looks at the clock

HelloWith = Callable[[dict[str, str]], bytes]


@contextmanager
def raw_peer(node: meshq.Node, mesh: str) -> Iterator[tuple[zmq.Socket[bytes], bytes, HelloWith]]:
    """A DEALER that says HELLO to ``node`` and is its peer: (dealer, peer id, a
    HELLO encoder taking the headers to announce)."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 0)
        peer_id = os.urandom(16)
        dealer.setsockopt(zmq.ROUTING_ID, routing_id(peer_id, 1))
        dealer.connect(node.control_endpoints[0])
        control, publish = ("tcp://127.0.0.1:9",), ("tcp://127.0.0.1:8",)

        def hello(headers: dict[str, str]) -> bytes:
            return encode_control(Hello(peer_id, "peer", mesh, control, publish, headers=headers))

        dealer.send(hello({}))
        node.wait_for_peers(1, timeout=WAIT)
        yield dealer, peer_id, hello
    finally:
        dealer.close()
        context.term()


def wait_for_headers(node: meshq.Node, headers: dict[str, str], failure: str) -> None:
    """Wait (at most WAIT s) until the peer shows ``headers``; fail with ``failure``."""
    deadline = time.monotonic() + WAIT
    while not any(dict(p.headers) == headers for p in node.peers()):
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def test_a_burst_longer_than_one_read_is_read_to_its_end(mesh: str) -> None:
    """The loop waits on the ROUTER's ZMQ_FD, which signals only new work: a read
    that stops with messages left must come back to them without a new signal."""
    with (
        meshq.Node("n", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
        raw_peer(node, mesh) as (dealer, peer_id, hello),
    ):
        ping = encode_control(Ping(peer_id))
        for _ in range(BURST):
            dealer.send(ping)
        # The last message of the burst says something the node shows.
        dealer.send(hello({"after": "burst"}))
        wait_for_headers(node, {"after": "burst"}, "the end of the burst was never read")
        assert node.stats().get("protocol_errors", 0) == 0
        assert node.stats().get("internal_errors", 0) == 0


def test_the_retry_delay_starts_at_once_then_doubles_to_a_bound() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0  # the first failure: at once
    assert delays[1:4] == [0.001, 0.002, 0.004]
    assert delays == sorted(delays) and max(delays) == 0.1
    assert retry_delay(10**6) == 0.1


def test_a_read_that_keeps_failing_backs_off_and_what_waits_is_read_after(
    mesh: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No socket read fails on demand, so the loop's read is made to fail (as a
    ROUTER gone bad would): the loop must neither spin on it nor give it up."""
    broken = threading.Event()
    receive = ControlLoop._receive

    def failing(self: ControlLoop, read_at: float | None = None) -> int:
        if broken.is_set():
            raise zmq.ZMQError(errno.EFAULT)
        return receive(self, read_at)

    monkeypatch.setattr(ControlLoop, "_receive", failing)
    with (
        meshq.Node("n", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
        raw_peer(node, mesh) as (dealer, _, hello),
    ):
        loop = node.runtime.control_loop
        assert loop is not None
        broken.set()
        timer_runs = loop.timer_runs
        # Sent while every read fails: it waits in the ROUTER, signalled once.
        dealer.send(hello({"after": "failure"}))
        deadline = time.monotonic() + WAIT
        while node.stats().get("internal_errors", 0) == 0:
            assert time.monotonic() < deadline, "the read never ran"
            time.sleep(0.01)
        time.sleep(1.0)  # a second of failing reads: retried, not spun on
        failed = node.stats()["internal_errors"]
        # Spinning would fail tens of thousands of times a second; backing
        # off to 0.1 s, a few dozen at most.
        assert failed < 200, f"{failed} failed reads in about a second: the loop spins"
        assert loop.timer_runs > timer_runs  # heartbeats went on meanwhile
        broken.clear()
        # No new message arrives: the retry itself must read what waited.
        wait_for_headers(node, {"after": "failure"}, "what waited was never read")
        assert [p.name for p in node.peers()] == ["peer"]


def test_peers_show_the_latest_heartbeat_without_a_new_snapshot(mesh: str) -> None:
    """A PING changes no peer snapshot (no event, no hand-over): node.peers() reads
    when each peer was last heard from the control protocol's live views."""
    with (
        meshq.Node("n", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
        raw_peer(node, mesh) as (dealer, peer_id, _),
    ):
        (joined,) = node.peers()
        ping = encode_control(Ping(peer_id))
        deadline = time.monotonic() + WAIT
        while True:
            time.sleep(0.05)  # past the join, on any clock granularity
            sent = time.time()
            dealer.send(ping)
            time.sleep(0.05)
            (peer,) = node.peers()
            if peer.last_seen > joined.last_seen:
                break
            assert time.monotonic() < deadline, "a PING never showed in last_seen"
        assert joined.last_seen < peer.last_seen <= time.time()
        assert peer.last_seen >= sent - 0.01  # that PING (or a later one), not the HELLO
        # The join, and nothing else: no event per PING.
        assert [event.kind for event in node.events(timeout=0)] == [meshq.EventKind.JOINED]


@contextmanager
def listening_peer(
    node: meshq.Node, mesh: str
) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], bytes]]:
    """A peer that ``node`` dials back: (its DEALER to the node, the ROUTER where
    the node's heartbeats arrive, its id). The caller waits for the join."""
    context = zmq.Context()
    dealer, router = context.socket(zmq.DEALER), context.socket(zmq.ROUTER)
    try:
        for sock in (dealer, router):
            sock.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        peer_id = os.urandom(16)
        dealer.setsockopt(zmq.ROUTING_ID, routing_id(peer_id, 1))
        dealer.connect(node.control_endpoints[0])
        control, publish = (f"tcp://127.0.0.1:{port}",), ("tcp://127.0.0.1:8",)
        dealer.send(encode_control(Hello(peer_id, "peer", mesh, control, publish)))
        yield dealer, router, peer_id
    finally:
        dealer.close()
        router.close()
        context.term()


def next_round(router: zmq.Socket[bytes]) -> None:
    """Return as the node's next PING arrives (what came before is dropped)."""
    deadline = time.monotonic() + WAIT
    while router.poll(0):
        router.recv_multipart()
    while True:
        assert router.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), "no PING came"
        if router.recv_multipart()[-1][:4] == PING_HEAD:
            return


def test_the_mesh_round_that_follows_ours_is_read_after_a_spell_as_of_its_arrival(
    mesh: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats that arrive just after the node's own round begin a quiet spell
    unread (ControlLoop.coalesce): they are read at its end, yet count as read
    when they came (PROTOCOL.md 16.4), so neither liveness nor a round trip
    includes the spell."""
    spell = 0.4  # seconds: long against this test's own delays, short of suspect_after
    monkeypatch.setattr(ControlLoop, "coalesce", spell)
    with (
        meshq.Node("n", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
        listening_peer(node, mesh) as (first, heartbeats, first_id),
        listening_peer(node, mesh) as (second, _, second_id),
    ):
        node.wait_for_peers(2, timeout=WAIT)  # a spell needs two peers or more
        next_round(heartbeats)
        sent = time.time()
        first.send(encode_control(Ping(first_id)))
        second.send(encode_control(Ping(second_id)))
        deadline = time.monotonic() + WAIT
        while True:
            (peer,) = [p for p in node.peers() if p.id == first_id.hex()]
            if peer.last_seen >= sent - 0.01:
                shown = time.time()
                break
            assert time.monotonic() < deadline, "the PING was never read"
            time.sleep(0.005)
        # Read at the end of the spell ...
        assert shown - peer.last_seen >= spell - 0.1
        # ... as read when it came: after it was sent, not when it was read.
        assert sent - 0.01 <= peer.last_seen <= sent + (shown - sent) / 2
        assert node.stats().get("internal_errors", 0) == 0
