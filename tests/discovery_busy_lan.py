"""A busy LAN for discovery: records that went away, and a node that joins meanwhile.

Run inside a network namespace of its own (tests/test_discovery.py does), so
the pointers it announces reach no browser but its own. Node ``a`` runs; a
raw python-zeroconf instance announces ``--vanished`` PTR records that no
one answers for (as after hosts vanished or a relay was SIGKILLed): ``a``
must resolve each, and each resolve gives up after 3 s. Once one has given
up, node ``b`` starts, without discovery of its own (it dials no one), and
the raw instance announces it: ``a`` can only learn of ``b`` by resolving
that record. Prints one JSON line: whether ``a`` found ``b``, how
many resolves had given up by then, and which threads outlived the nodes.

    python tests/discovery_busy_lan.py [--vanished 40] [--wait 60]
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable

from zeroconf import IPVersion, ServiceInfo, Zeroconf
from zeroconf._dns import DNSPointer
from zeroconf._protocol.outgoing import DNSOutgoing

import meshq
from meshq.discovery import SERVICE_TYPE
from meshq.wire import PROTOCOL_VERSION

LOOPBACK = ["127.0.0.1"]
_TYPE_PTR, _CLASS_IN, _RESPONSE = 12, 1, 0x8400  # RFC 6762: an authoritative response
_TTL = 120  # seconds


class GaveUp(logging.Handler):
    """Counts discovery's "did not resolve" lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counted = threading.Lock()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "did not resolve" in record.getMessage():
            with self.counted:
                self.count += 1


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def announce_pointers(zc: Zeroconf, names: list[str], ttl: int) -> None:
    """Send one response with PTR records only: no SRV, TXT or address follows."""
    out = DNSOutgoing(_RESPONSE)
    for name in names:
        out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, ttl, name), 0)
    zc.send(out)


def record_of(node: meshq.Node, mesh: str) -> ServiceInfo:
    """The mDNS record ``node`` would announce of itself (docs/PROTOCOL.md 5.1)."""
    port = int(node.control_endpoints[0].rpartition(":")[2])
    return ServiceInfo(
        SERVICE_TYPE,
        f"b-{node.id[:12]}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(LOOPBACK[0])],
        port=port,
        properties={"v": str(PROTOCOL_VERSION), "id": node.id, "mesh": mesh},
        server=f"b-{node.id[:16]}.local.",
    )


def run(vanished: int, wait: float) -> dict[str, object]:
    gave_up = GaveUp()
    logger = logging.getLogger("meshq.discovery")
    logger.addHandler(gave_up)
    logger.setLevel(logging.DEBUG)
    mesh = f"busy-{secrets.token_hex(4)}"
    names = [f"vanished{n}-{mesh}.{SERVICE_TYPE}" for n in range(vanished)]
    before = set(threading.enumerate())
    result: dict[str, object] = {"vanished": vanished}
    zc = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    try:
        with meshq.Node("a", mesh=mesh, interfaces=LOOPBACK) as a:
            announce_pointers(zc, names, _TTL)
            # Once one resolve gave up, a has taken in every pointer (one packet).
            result["one_gave_up"] = wait_until(lambda: gave_up.count > 0, wait)
            with meshq.Node("b", mesh=mesh, interfaces=LOOPBACK, discovery=False) as b:
                zc.register_service(record_of(b, mesh), cooperating_responders=True)
                found = wait_until(lambda: any(p.name == "b" for p in a.peers()), wait)
                with gave_up.counted:
                    result["gave_up_when_b_found"] = gave_up.count
                result["found_b"] = found
            started = time.monotonic()
        # a closed with resolves still in flight.
        result["close_s"] = round(time.monotonic() - started, 3)
    finally:
        zc.close()
    wait_until(lambda: not set(threading.enumerate()) - before, 5.0)
    result["threads_left"] = sorted(t.name for t in set(threading.enumerate()) - before)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vanished", type=int, default=40)
    parser.add_argument("--wait", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(run(args.vanished, args.wait)), flush=True)


if __name__ == "__main__":
    main()
