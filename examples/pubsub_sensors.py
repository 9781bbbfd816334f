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
        display.wait_for_peers(1, timeout=10)
        received = 0
        deadline = time.monotonic() + 10
        reading = 20.0
        while received < 5 and time.monotonic() < deadline:
            sensor.publish("sensors/temp", {"celsius": reading})
            reading += 0.5
            try:
                message = readings.recv(timeout=0.1)
            except meshq.Timeout:
                continue  # the display is still connecting to the sensor
            received += 1
            print(f"{message.topic} from {message.sender[:8]} #{message.seq}: {message.data}")
        return 0 if received == 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
