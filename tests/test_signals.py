"""node.run() closes gracefully on SIGTERM and SIGINT (issue 10).

A real process runs ``node.run()`` inside a ``with`` block; a real signal
stops it, and a peer in this process must see it leave with reason "bye"
(a process killed without a goodbye is seen gone after ``gone_after``, with
reason "timeout").
"""

from __future__ import annotations

import signal
import textwrap
import threading

import pytest

import meshq
from tests.harness import python_child

LOOPBACK = ["127.0.0.1"]

SERVER = textwrap.dedent(
    """
    import sys
    import meshq
    with meshq.Node("server", mesh=sys.argv[1], interfaces=["127.0.0.1"]) as node:
        node.serve("echo", lambda data: data)
        print("ready", flush=True)
        node.run()
        print("run returned", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_returns_on_a_signal_and_the_peer_sees_a_goodbye(mesh: str, signum: int) -> None:
    with (
        meshq.Node("watcher", mesh=mesh, interfaces=LOOPBACK) as watcher,
        python_child(SERVER, mesh) as server,
    ):
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        watcher.wait_for_peers(1, timeout=20)
        server.send_signal(signum)
        reason = next(
            (
                event.reason
                for event in watcher.events(timeout=20)
                if event.kind is meshq.EventKind.LEFT and event.peer.name == "server"
            ),
            None,
        )
        assert reason == "bye"  # not "timeout", gone_after later
        out, err = server.communicate(timeout=20)
        assert server.returncode == 0, err
        assert out == "run returned\n"


def test_run_puts_back_the_sigterm_handler_it_found(mesh: str) -> None:
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not expected to be called")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with meshq.Node("n", mesh=mesh, interfaces=LOOPBACK) as node:
            node.run(timeout=0.05)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_run_in_another_thread_needs_no_signal_handler(mesh: str) -> None:
    errors: list[BaseException] = []

    def serve(node: meshq.Node) -> None:
        try:
            node.run(timeout=0.05)  # signal handlers can only be set in the main thread
        except BaseException as exc:  # reported below
            errors.append(exc)

    with meshq.Node("n", mesh=mesh, interfaces=LOOPBACK) as node:
        thread = threading.Thread(target=serve, args=(node,))
        thread.start()
        thread.join(timeout=20)
    assert not thread.is_alive() and errors == []
