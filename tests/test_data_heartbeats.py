"""ZMTP heartbeats on data connections: a peer that froze is dropped on both sides.

The listening side of a data connection (publisher XPUB, service ROUTER)
sends ZMTP PINGs every heartbeat_interval, the connecting side (SUB, caller
DEALER) only every gone_after (PROTOCOL.md 4.3). These tests freeze the process
at the other end with SIGSTOP, so that its TCP connection stays open (its
kernel still acknowledges) while nothing answers, and wait for our socket's
monitor to report the connection dropped, then, after SIGCONT, made again:

* listening side here, connecting side frozen: dropped because the PONGs
  stop (ZMQ_HEARTBEAT_TIMEOUT). Fails if the listening side sent no PINGs.
* connecting side here, listening side frozen: dropped because the PINGs
  stop (the TTL each PING carries), or, frozen before its first PING, by
  the connecting side's own rare PINGs. Fails without either.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from meshq.config import MeshConfig
from meshq.sockets import SocketFactory

PEER = str(Path(__file__).with_name("heartbeat_peer.py"))
ROOT = str(Path(__file__).resolve().parent.parent)
#: Generous: the connection is dropped gone_after (3 s) after the freeze or the last PING.
WAIT = 30.0
PAIRS = [("XPUB", "SUB"), ("ROUTER", "DEALER")]  # (listening, connecting)
#: Seconds between the handshake and the freeze: at once (before the first
#: PING of the listening side), or after a few of its PINGs.
FREEZE_AFTER = [0.0, 4 * MeshConfig().heartbeat_interval]


class Peer:
    """tests/heartbeat_peer.py in a process of its own; stopped by PID at the end."""

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, PEER, *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the peer process ended before it was ready"
        self.said: str = json.loads(line)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)  # a frozen process cannot end
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def context() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    ctx: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    yield ctx
    ctx.term()


def wait_for_event(monitor: zmq.Socket, event: int) -> None:  # type: ignore[type-arg]
    """Read the monitor until ``event`` comes; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {zmq.Event(event).name} within {WAIT} s"
        if monitor.poll(int(remaining * 1000)) and recv_monitor_message(monitor)["event"] == event:
            return


def freeze_and_thaw(peer: Peer, monitor: zmq.Socket, after: float) -> None:  # type: ignore[type-arg]
    """Freeze ``peer`` ``after`` s past the handshake: the link is dropped, then made again."""
    wait_for_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    time.sleep(after)  # the connection lives meanwhile; nothing to wait for but time
    peer.signal(signal.SIGSTOP)
    try:
        wait_for_event(monitor, zmq.EVENT_DISCONNECTED)
    finally:
        peer.signal(signal.SIGCONT)
    wait_for_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)  # and it is made again


@pytest.mark.parametrize("after", FREEZE_AFTER)
@pytest.mark.parametrize(("listening", "connecting"), PAIRS)
def test_a_listening_socket_drops_a_frozen_connecting_peer(
    context: zmq.Context,  # type: ignore[type-arg]
    listening: str,
    connecting: str,
    after: float,
) -> None:
    sock = SocketFactory(MeshConfig()).make(context, getattr(zmq, listening))
    monitor = sock.get_monitor_socket()
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        peer = Peer("connect", connecting, f"tcp://127.0.0.1:{port}")
        try:
            freeze_and_thaw(peer, monitor, after)
        finally:
            peer.stop()
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


@pytest.mark.parametrize("after", FREEZE_AFTER)
@pytest.mark.parametrize(("listening", "connecting"), PAIRS)
def test_a_connecting_socket_drops_a_frozen_listening_peer(
    context: zmq.Context,  # type: ignore[type-arg]
    listening: str,
    connecting: str,
    after: float,
) -> None:
    peer = Peer("bind", listening)
    try:
        sock = SocketFactory(MeshConfig()).make(context, getattr(zmq, connecting))
        monitor = sock.get_monitor_socket()
        try:
            if connecting == "SUB":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(peer.said)
            freeze_and_thaw(peer, monitor, after)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
    finally:
        peer.stop()
