"""A subscription waits in its socket's own recv; news of publishers wakes it there.

The owner thread blocks in the SUB socket's recv (RCVTIMEO), as a raw
pyzmq subscriber does. What it must act on (a publisher joined or left, the
node closed) arrives as a frame on an inproc PUB of the node that the SUB
also reads (meshq.subscription.News). These tests check that a blocked
reader still connects to publishers that come later (with security on too),
that wake-up frames are neither messages nor counted drops (and a peer
cannot forge one), and that close() after a timeout releases the socket.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import meshq
from meshq.security import load_public_key, write_key_pair

LOOPBACK = ["127.0.0.1"]
WAIT = 10.0  # seconds any single condition may take on a loaded machine


def curves(root: Path) -> tuple[meshq.Curve, meshq.Curve, str]:
    """Key pairs for two nodes that admit each other, and the first one's ``#KEY`` seed suffix."""
    public, secret, allow = {}, {}, {}
    for name in ("a", "b"):
        public[name], secret[name] = write_key_pair(name, root / "keys")
        allow[name] = root / f"allow-{name}"
        allow[name].mkdir()
    shutil.copy(public["b"], allow["a"])
    shutil.copy(public["a"], allow["b"])
    first, second = (meshq.Curve(secret[n], allow=allow[n]) for n in ("a", "b"))
    return first, second, "#" + load_public_key(public["a"]).decode()


@contextlib.contextmanager
def blocked_reader(
    node: meshq.Node, prefix: str, read: Callable[[meshq.Subscription], None]
) -> Iterator[threading.Thread]:
    """Run ``read`` on a thread of its own, with its subscription of ``node`` to ``prefix``.

    Yields the thread once it subscribed (``read`` is about to block in
    recv); joins it on the way out.
    """
    subscribed = threading.Event()

    def main() -> None:
        with node.subscribe(prefix) as sub:
            subscribed.set()
            read(sub)

    thread = threading.Thread(target=main, name="blocked-reader")
    thread.start()
    try:
        assert subscribed.wait(WAIT)
        yield thread
    finally:
        thread.join(WAIT)


def late_node(
    name: str, mesh: str, seeds: Sequence[str], security: meshq.Curve | None = None
) -> meshq.Node:
    """A node that joins through ``seeds`` (control endpoints), no discovery."""
    return meshq.Node(
        name, mesh=mesh, interfaces=LOOPBACK, discovery=False, seeds=seeds, security=security
    )


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_a_reader_blocked_in_recv_connects_to_a_publisher_that_joins_later(
    mesh: str, secure: bool, tmp_path: Path
) -> None:
    """The late publisher counts the subscription only once its blocked owner connected."""
    early_curve, late_curve, key = curves(tmp_path) if secure else (None, None, "")
    outcome: list[object] = []

    def read(sub: meshq.Subscription) -> None:
        try:
            outcome.append(sub.recv(timeout=2 * WAIT))  # blocked while "late" starts
            outcome.append((sub.dropped, sub.gaps))
        except meshq.MeshqError as exc:
            outcome.append(exc)

    with (
        meshq.Node(
            "early", mesh=mesh, interfaces=LOOPBACK, discovery=False, security=early_curve
        ) as early,
        blocked_reader(early, "late/", read) as thread,
        late_node("late", mesh, [early.control_endpoints[0] + key], late_curve) as late,
    ):
        # Only the reader's thread may connect its socket: this
        # returns once the wake-up reached it inside recv().
        assert late.wait_for_subscribers("late/x", 1, timeout=WAIT) == 1
        late.publish("late/x", b"hello")
        thread.join(WAIT)
        assert not thread.is_alive()
        message = outcome[0]
        assert isinstance(message, meshq.Message), outcome
        assert message.data == b"hello" and message.sender == late.id
        assert outcome[1] == (0, 0)  # wake-ups are not drops or gaps


def test_a_blocked_reader_hears_of_every_change_not_just_the_first(mesh: str) -> None:
    """One wake-up unread at a time: each one read lets the next one through."""
    heard: queue.Queue[object] = queue.Queue()

    def read(sub: meshq.Subscription) -> None:
        try:
            for _ in range(3):
                heard.put(sub.recv(timeout=2 * WAIT).sender)
        except meshq.MeshqError as exc:
            heard.put(exc)

    with meshq.Node("hub", mesh=mesh, interfaces=LOOPBACK, discovery=False) as hub:
        with blocked_reader(hub, "many/", read) as thread:
            for index in range(3):  # each joins (and leaves) while the reader is blocked
                with late_node(f"late-{index}", mesh, hub.control_endpoints) as late:
                    assert late.wait_for_subscribers("many/x", 1, timeout=WAIT) == 1
                    late.publish("many/x", b"hello")
                    assert heard.get(timeout=WAIT) == late.id
        assert not thread.is_alive()


def test_a_wake_up_is_neither_a_message_nor_a_drop_and_cannot_be_forged(mesh: str) -> None:
    with (
        meshq.Node("forge", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node,
        node.subscribe("t/") as sub,
    ):
        wake_up = b"t/" + sub._news_tail
        assert sub._take(wake_up) is None
        assert sub.dropped == 0
        # The same shape with another tail: a peer's malformed frame, counted.
        forged = b"t/\0" + bytes(16)
        assert forged != wake_up
        assert sub._take(forged) is None
        assert sub.dropped == 1


def test_close_from_the_owner_after_a_timeout_releases_the_socket(mesh: str) -> None:
    with meshq.Node("owner", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
        sub = node.subscribe("t/")
        with pytest.raises(meshq.Timeout):
            sub.recv(timeout=0.05)
        sockets = node.runtime.sockets.open_sockets
        sub.close()
        assert sub.closed
        assert node.runtime.sockets.open_sockets == sockets - 1
        with pytest.raises(meshq.Closed):
            sub.recv(timeout=0.05)
        with pytest.raises(meshq.Closed):
            sub.recv()  # no timeout: raises, does not block
        sub.close()  # twice: nothing more to do
        # The node goes on: a new subscription of the same thread receives.
        with node.subscribe("t/") as again:
            node.wait_for_subscribers("t/x", 1, timeout=WAIT)
            node.publish("t/x", b"after")
            assert again.recv(timeout=WAIT).data == b"after"


def test_a_subscription_made_as_the_node_closes_does_not_wait_for_a_wake_up(mesh: str) -> None:
    """Made after the close woke every subscription: its recv() must see the close itself."""
    node = meshq.Node("closing", mesh=mesh, interfaces=LOOPBACK, discovery=False)
    outcome: list[object] = []

    def reader() -> None:
        sub = node.subscribe("t/")
        try:
            sub.recv()  # no timeout: nothing would ever wake it
        except meshq.MeshqError as exc:
            outcome.append(exc)
        outcome.append(sub.closed)

    try:
        node.runtime.state.publishers.close()  # close()'s first step, as if the race was lost
        thread = threading.Thread(target=reader, name="late-subscriber", daemon=True)
        thread.start()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert [type(item) for item in outcome] == [meshq.Closed, bool] and outcome[1]
    finally:
        node.close()
