"""Round-trip times from echo PINGs (PROTOCOL.md 16.4) on real nodes and sockets."""

from __future__ import annotations

import time

import meshq
from meshq.introspect import parse_snapshot, snapshot

LOOPBACK = ["127.0.0.1"]
WAIT = 10.0  # seconds: a few heartbeat rounds, with room for a loaded machine


def test_peers_report_a_round_trip_time_from_their_heartbeats(mesh: str) -> None:
    with meshq.Node("a", mesh=mesh, interfaces=LOOPBACK, discovery=False) as a:
        seed = a.control_endpoints[0]
        with meshq.Node("b", mesh=mesh, interfaces=LOOPBACK, discovery=False, seeds=[seed]) as b:
            a.wait_for_peers(1, timeout=WAIT)
            b.wait_for_peers(1, timeout=WAIT)
            # The first echo needs two heartbeat rounds: wait for it, bounded.
            deadline = time.monotonic() + WAIT
            while any(node.peers()[0].rtt is None for node in (a, b)):
                assert time.monotonic() < deadline, "no round-trip time within 10 s"
                time.sleep(0.05)
            gone_after = meshq.MeshConfig().gone_after
            for node in (a, b):
                (peer,) = node.peers()
                assert peer.rtt is not None and 0.0 <= peer.rtt <= gone_after
            assert a.stats().get("protocol_errors", 0) == 0  # both sides take the 20-byte PINGs
            # The introspection reply carries it (16.2).
            (row,) = parse_snapshot(snapshot(a, time.time())).peers
            assert row.rtt is not None and 0.0 <= row.rtt <= gone_after
