"""Publish/subscribe in ten lines: a sensor and a display in one process.

    python examples/pubsub_sensors.py

Both nodes run on the loopback interface and find each other by mDNS. The
display subscribes to ``sensors/``; the sensor publishes temperatures until
the display has received five of them (at most 10 s).
"""

from __future__ import annotations

import time

import meshq

LOOPBACK = ["127.0.0.1"]


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    with (
        meshq.Node("sensor", mesh=mesh, interfaces=LOOPBACK) as sensor,
        meshq.Node("display", mesh=mesh, interfaces=LOOPBACK) as display,
        display.subscribe("sensors/") as readings,
    ):
        # Publish only once the display's subscription is connected: then
        # nothing is lost to ZeroMQ's "slow joiner".
        sensor.wait_for_subscribers("sensors/temp", 1, timeout=10)
        for step in range(5):
            sensor.publish("sensors/temp", {"celsius": 20.0 + step / 2})
        received = 0
        for message in readings:
            print(f"{message.topic} from {message.sender[:8]} #{message.seq}: {message.data}")
            received += 1
            if received == 5:
                break
        return 0 if received == 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
