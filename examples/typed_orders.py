"""Typed end to end: the documented calls need no casts under ``mypy --strict``.

    python examples/typed_orders.py

A relay, a shop that publishes orders durably and a billing consumer, on
loopback, with every variable annotated as a strictly typed application
would. CI checks this file with ``mypy --strict`` (tests/test_typing.py):
``publish(..., durable=True)`` is an ``int``, a plain ``publish`` is
``None``, ``subscribe`` returns a ``Subscription`` or, with ``durable=``, a
``DurableSubscription``, and ``await`` on an ``AsyncDurablePublisher``'s
confirm is an ``int``. At most about 10 s.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Mapping

import meshq

LOOPBACK = ["127.0.0.1"]


def total(data: object) -> object:
    """A service handler: payloads are whatever msgpack carried, so check them."""
    if not isinstance(data, list):
        raise TypeError("expected a list of quantities")
    return sum(int(quantity) for quantity in data)


async def publish_from_asyncio(mesh: str) -> int:
    """The asyncio publisher: the same calls as DurablePublisher, awaited."""
    async with meshq.AsyncNode("till", mesh=mesh, interfaces=LOOPBACK) as till:
        await till.wait_for_service("meshq/relay/orders/", timeout=10)
        publisher = meshq.AsyncDurablePublisher(till)
        confirm: meshq.AsyncConfirm = await publisher.send("orders/3", {"qty": 4})
        await publisher.flush(timeout=10)
        seq: int = await confirm
        confirmed: int = publisher.confirmed
        return seq if confirmed == 1 else 0


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    with (
        tempfile.TemporaryDirectory(prefix="meshq-typed-") as data,
        meshq.Node("shop", mesh=mesh, interfaces=LOOPBACK) as shop,
    ):
        relay = meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), data, ["orders/"])
        try:
            shop.serve("total", total)
            providers: Mapping[str, str] = shop.wait_for_service("meshq/relay/orders/", timeout=10)
            print(f"relay found: {len(providers)} provider(s)")

            seq: int = shop.publish("orders/1", {"qty": 2}, durable=True)
            plain: None = shop.publish("news/orders", b"order 1 taken")
            publisher = meshq.DurablePublisher(shop)
            confirm: meshq.Confirm = publisher.send("orders/2", {"qty": 3})
            publisher.flush(timeout=10)
            last: int = confirm.result()
            print(f"stored orders as seq {seq} and {last}; plain publish returned {plain}")

            news: meshq.Subscription = shop.subscribe("news/")
            news.close()
            billing: meshq.DurableSubscription = shop.subscribe(
                "orders/", durable="billing", backoff=(1.0, 5.0)
            )
            quantities: list[int] = []
            with billing:
                for _ in range(2):
                    message: meshq.DurableMessage = billing.recv(timeout=10)
                    order = message.data
                    if isinstance(order, dict):
                        quantities.append(int(order["qty"]))

            answer: object = shop.request("total", quantities, timeout=5.0)
            missed: int = shop.stats()["messages_missed"]
            print(f"billed {quantities}, total {answer}, messages missed {missed}")
            third = asyncio.run(publish_from_asyncio(mesh))
            print(f"stored an order from asyncio as seq {third}")
            return 0 if answer == 5 and missed == 0 and third == 3 else 1
        finally:
            relay.close()


if __name__ == "__main__":
    raise SystemExit(main())
