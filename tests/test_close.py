"""close() finishes: no thread of the node is left, whatever other threads still hold.

Sockets owned by other threads are closed by their owner on its next call
(it gets meshq.Closed), and the node's ZeroMQ context ends with the last
of them, with no thread waiting for it in between. The autouse
thread-leak fixture (conftest.py) checks that nothing else lingers.
"""

from __future__ import annotations

import errno
import gc
import threading
from collections.abc import Iterator

import pytest
import zmq

import meshq
from meshq.services import ReplyTo
from meshq.zmqerrors import translate

LOOPBACK = ["127.0.0.1"]


def meshq_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("meshq")]


def test_a_thread_that_made_one_request_and_went_idle_does_not_hold_close_up(mesh: str) -> None:
    with meshq.Node("provider", mesh=mesh, interfaces=LOOPBACK) as provider:
        provider.serve("echo", lambda data: data)
        node = meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK)
        node.wait_for_service("echo", timeout=10)
        asked, go_on = threading.Event(), threading.Event()
        outcome: list[object] = []

        def caller() -> None:
            outcome.append(node.request("echo", 1, timeout=5))
            asked.set()
            go_on.wait(30)  # idle, holding its DEALER
            try:
                node.request("echo", 2, timeout=5)
            except meshq.Closed as exc:
                outcome.append(exc)

        thread = threading.Thread(target=caller)
        thread.start()
        assert asked.wait(30)
        node.close()
        # close() returned: none of its threads is left, its context waits
        # for the one socket the idle thread owns.
        assert not [name for name in meshq_threads() if node.id[:8] in name]
        assert "meshq-term" not in meshq_threads()
        assert node.runtime.sockets.open_sockets == 1
        assert not node.runtime.context.closed
        go_on.set()
        thread.join(30)
        assert outcome[0] == 1 and isinstance(outcome[1], meshq.Closed)
        assert node.runtime.sockets.open_sockets == 0
        assert node.runtime.context.closed  # ended with the last socket


def test_a_subscription_of_another_thread_closes_on_its_next_call(mesh: str) -> None:
    node = meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK)
    subscribed, go_on = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def reader() -> None:
        subscription = node.subscribe("t/")
        subscribed.set()
        go_on.wait(30)
        try:
            subscription.recv(timeout=5)
        except meshq.Closed as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert subscribed.wait(30)
    node.close()
    assert not [name for name in meshq_threads() if node.id[:8] in name]
    assert not node.runtime.context.closed
    go_on.set()
    thread.join(30)
    assert [type(e) for e in outcome] == [meshq.Closed]
    assert node.runtime.context.closed


def test_a_blocked_reader_of_another_thread_is_woken_by_close(mesh: str) -> None:
    node = meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK)
    subscribed = threading.Event()
    outcome: list[BaseException] = []

    def reader() -> None:
        subscription = node.subscribe("t/")
        subscribed.set()
        try:
            subscription.recv(timeout=30)  # blocked when the node closes
        except meshq.MeshqError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert subscribed.wait(30)
    node.close()
    thread.join(30)
    assert not thread.is_alive()
    assert [type(e) for e in outcome] == [meshq.Closed]
    assert node.runtime.context.closed


def test_close_with_nothing_left_ends_the_context_at_once(mesh: str) -> None:
    node = meshq.Node("alone", mesh=mesh, interfaces=LOOPBACK)
    try:
        node.serve("echo", lambda data: data)
        with node.subscribe("t/"):
            pass
        node.wait_for_service("echo", timeout=10)  # the directory learns it on the control thread
        node.request("echo", 1, timeout=5)
    finally:
        node.close()
    assert node.runtime.sockets.open_sockets == 0
    assert node.runtime.context.closed


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Garbage is collected only where the test says: what refcounting frees is seen as such."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_thread_that_ends_with_a_request_in_flight_releases_its_sockets(
    mesh: str, no_automatic_gc: None
) -> None:
    """As it ends, not at some later garbage collection (a request refers to its caller side)."""
    node = meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK, discovery=False)
    try:
        held: list[ReplyTo] = []
        node.serve_deferred("never", lambda data, reply_to: held.append(reply_to))
        node.wait_for_service("never", timeout=10)
        outcome: list[bool] = []

        def caller() -> None:
            future = node.request_async("never", 1, timeout=30)
            outcome.append(future.ready)  # and the thread ends, the request in flight

        thread = threading.Thread(target=caller)
        thread.start()
        thread.join(30)
        assert outcome == [False]
    finally:
        node.close()
    assert node.runtime.sockets.open_sockets == 0
    assert node.runtime.context.closed  # nothing was left open for it to wait for


def test_a_node_collected_with_a_socket_left_open_never_blocks_the_collecting_thread(
    mesh: str, no_automatic_gc: None
) -> None:
    """A socket reachable only through a reference cycle, with the node it belongs to.

    Were the node's context finalized in the same collection, pyzmq would
    end it while that socket is still open (its weak reference already
    cleared, its own finalizer not yet run): the collecting thread (an event
    loop, say) would wait in zmq_ctx_term forever.
    """
    node = meshq.Node("left", mesh=mesh, interfaces=LOOPBACK, discovery=False)
    cycle: list[object] = [node.runtime.sockets.make(node.runtime.context, zmq.DEALER)]
    cycle.append(cycle)
    node.close()  # its context waits for the socket
    assert not node.runtime.context.closed
    del node, cycle
    collector = threading.Thread(target=gc.collect, name="collector", daemon=True)
    collector.start()
    collector.join(30)
    assert not collector.is_alive(), "the collection blocked in zmq_ctx_term"


@pytest.mark.parametrize(
    ("code", "kind", "errno_text"),
    [
        (zmq.ETERM, meshq.Closed, "errno"),
        (zmq.ENOTSOCK, meshq.Closed, "errno"),
        (zmq.EAGAIN, meshq.Timeout, "errno"),
        (errno.EMFILE, meshq.TransportError, "errno 24"),
        (zmq.EHOSTUNREACH, meshq.TransportError, "errno"),
    ],
)
def test_zmq_errors_become_meshq_errors_keeping_the_errno(
    code: int, kind: type[meshq.MeshqError], errno_text: str
) -> None:
    error = translate(zmq.ZMQError(code), "publish")
    assert type(error) is kind
    assert "publish" in str(error) and errno_text in str(error)
    assert str(code) in str(error)
    if isinstance(error, (meshq.Closed, meshq.TransportError)):
        assert error.errno == code
