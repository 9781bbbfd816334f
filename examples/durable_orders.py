"""Durable orders: a relay stores them, a consumer that was away still gets every one.

    python examples/durable_orders.py

A relay stores the stream "orders/" in a temporary directory. A producer
publishes ten orders with confirms while no consumer exists; then the
consumer "billing" starts, reads the five oldest and stops (its position is
kept); five more orders arrive; the consumer comes back and gets exactly
the ones it has not acknowledged, then a live one, with no gap and nothing
twice. Everything runs on the loopback interface.
"""

from __future__ import annotations

import tempfile
import time

import meshq

LOOPBACK = ["127.0.0.1"]


def order_number(message: meshq.DurableMessage) -> int:
    data = message.data
    if not isinstance(data, dict):  # stored by any producer: check it, never assert
        raise TypeError(f"expected an order, got {type(data).__name__}")
    return int(data["order"])


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    with (
        tempfile.TemporaryDirectory() as data,
        meshq.Node("shop", mesh=mesh, interfaces=LOOPBACK) as shop,
        meshq.Node("billing", mesh=mesh, interfaces=LOOPBACK) as billing,
    ):
        relay = meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), data, ["orders/"])
        try:
            shop.wait_for_service("meshq/relay/orders/", timeout=10)  # discovery takes a moment

            publisher = meshq.DurablePublisher(shop)
            for number in range(1, 11):
                publisher.send(f"orders/{number}", {"order": number, "eur": 10 * number})
            publisher.flush(timeout=10)
            print(f"shop: {publisher.confirmed} orders confirmed on disk")

            got = []
            with billing.subscribe("orders/", durable="billing") as orders:
                for _ in range(5):
                    got.append(order_number(orders.recv(timeout=5)))
            print(f"billing: handled {got}, then stopped")

            for number in range(11, 16):
                shop.publish(
                    f"orders/{number}", {"order": number, "eur": 10 * number}, durable=True
                )

            with billing.subscribe("orders/", durable="billing") as orders:
                later = [order_number(orders.recv(timeout=5)) for _ in range(10)]
                print(f"billing: back, caught up on {later}")
                shop.publish("orders/16", {"order": 16, "eur": 160}, durable=True)
                live = orders.recv(timeout=5)
                print(f"billing: live order {order_number(live)} (stream seq {live.seq})")
            everything = [*got, *later, order_number(live)]
            ok = everything == list(range(1, 17))
            print("every order exactly once, in order" if ok else f"unexpected: {everything}")
            return 0 if ok else 1
        finally:
            relay.close()


if __name__ == "__main__":
    raise SystemExit(main())
