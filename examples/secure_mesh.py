"""A secure mesh: CURVE keys, an allowlist, and an intruder refused.

    python examples/secure_mesh.py

Makes three key pairs in a temporary directory (as ``meshq keygen`` does),
puts the sensor's and the display's public keys in an allowlist directory,
and starts three nodes on loopback: the sensor and the display find each
other and talk encrypted; the intruder, whose key is not allowed, gets
nothing, and the sensor says so. At most about 10 s.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import meshq
from meshq.security import write_key_pair

LOOPBACK = ["127.0.0.1"]


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    keys = Path(tempfile.mkdtemp(prefix="meshq-keys-"))
    try:
        allowed = keys / "allowed"
        allowed.mkdir()
        for name in ("sensor", "display", "intruder"):
            public, _secret = write_key_pair(name, keys)
            if name != "intruder":
                shutil.copy(public, allowed)

        def node(name: str) -> meshq.Node:
            security = meshq.Curve(keys / f"{name}.key_secret", allow=allowed)
            return meshq.Node(name, mesh=mesh, interfaces=LOOPBACK, security=security)

        with node("sensor") as sensor, node("display") as display, node("intruder") as intruder:
            refused: list[meshq.Rejection] = []
            sensor.on_rejected(refused.append)
            with display.subscribe("sensors/") as readings:
                sensor.wait_for_subscribers("sensors/temp", 1, timeout=10)
                sensor.publish("sensors/temp", {"celsius": 21.5})
                message = readings.recv(timeout=10)
                print(f"display got {message.data} over CURVE from {message.sender[:8]}")
            deadline = time.monotonic() + 10
            while not refused and time.monotonic() < deadline:
                time.sleep(0.05)
            for rejection in refused[:1]:
                print(f"sensor refused {rejection.address}: {rejection.reason}")
            names = sorted(peer.name for peer in sensor.peers())
            print(f"sensor's peers: {names}; intruder's peers: {len(intruder.peers())}")
            return 0 if refused and names == ["display"] and not intruder.peers() else 1
    finally:
        shutil.rmtree(keys)


if __name__ == "__main__":
    raise SystemExit(main())
