"""The control loop (meshq/control.py) on a real node, fed by a raw DEALER playing a peer."""

from __future__ import annotations

import os
import time

import zmq

import meshq
from meshq.wire import Hello, Ping, encode_control, routing_id

LOOPBACK = ["127.0.0.1"]
WAIT = 10.0  # seconds, with room for a loaded machine
BURST = 3 * 256  # three times what the loop reads before it looks at the clock


def test_a_burst_longer_than_one_read_is_read_to_its_end(mesh: str) -> None:
    """The loop waits on the ROUTER's ZMQ_FD, which signals only new work: a read
    that stops with messages left must come back to them without a new signal."""
    with meshq.Node("n", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        try:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, 0)
            peer_id = os.urandom(16)
            dealer.setsockopt(zmq.ROUTING_ID, routing_id(peer_id, 1))
            dealer.connect(node.control_endpoints[0])
            control, publish = ("tcp://127.0.0.1:9",), ("tcp://127.0.0.1:8",)
            dealer.send(encode_control(Hello(peer_id, "peer", mesh, control, publish)))
            node.wait_for_peers(1, timeout=WAIT)
            ping = encode_control(Ping(peer_id))
            for _ in range(BURST):
                dealer.send(ping)
            # The last message of the burst says something the node shows.
            after = Hello(peer_id, "peer", mesh, control, publish, headers={"after": "burst"})
            dealer.send(encode_control(after))
            deadline = time.monotonic() + WAIT
            while not any(dict(p.headers) == {"after": "burst"} for p in node.peers()):
                assert time.monotonic() < deadline, "the end of the burst was never read"
                time.sleep(0.05)
            assert node.stats().get("protocol_errors", 0) == 0
            assert node.stats().get("internal_errors", 0) == 0
        finally:
            dealer.close()
            context.term()
