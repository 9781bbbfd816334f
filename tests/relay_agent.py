"""Relay-side processes for failure tests: a relay, a durable producer, a durable consumer.

Speaks the same JSON lines as tests/agent.py (``ready`` first, ``close`` on
stdin to stop), so tests drive it with tests.harness.Agent:

    relay_agent.py relay   --data DIR --streams s/ [--durability batched]
    relay_agent.py relay   --store nats://...,nats://... --replicas 3 --streams s/
    relay_agent.py produce --topic s/p1 --count N [--window 64]
        publishes "<topic>-<i>" (payload and id) with confirms, resending an id until
        confirmed; says ``progress`` every 1000 and ``produced`` at the end
    relay_agent.py consume --prefix s/ --durable NAME [--no-ack]
        says ``message`` per delivery; with --no-ack it never acknowledges
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import signal
import sys
import threading
import time
from typing import Any

import meshq
from meshq.relay import JetStreamStore


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
    sys.stdout.flush()


def produce(node: meshq.Node, topic: str, count: int, window: int, budget: float) -> None:
    """Publish ``count`` messages durably; every id is resent until confirmed (within budget s)."""
    publisher = meshq.DurablePublisher(node, timeout=1.0, max_in_flight=window)
    todo = collections.deque(range(count))
    in_flight: collections.deque[tuple[int, meshq.Confirm]] = collections.deque()
    confirmed: set[int] = set()
    resent = 0
    refused: list[str] = []
    deadline = time.monotonic() + budget
    while len(confirmed) < count and time.monotonic() < deadline:
        while todo and len(in_flight) < window:
            index = todo[0]
            try:
                label = f"{topic}-{index}"
                confirm = publisher.send(topic, label, msg_id=label.encode())
            except meshq.NoProviders:  # the relay is down: look again shortly
                time.sleep(0.05)
                break
            todo.popleft()
            in_flight.append((index, confirm))
        if not in_flight:
            continue
        index, confirm = in_flight[0]
        try:
            confirm.result(timeout=0.2)
        except (meshq.Timeout, meshq.RemoteError) as exc:
            if not confirm.done():
                continue
            in_flight.popleft()
            resent += 1
            if isinstance(exc, meshq.RemoteError):  # the store refused for now (a failover)
                refused.append(str(exc))
            todo.appendleft(index)  # same id again: the relay stores it once
            continue
        in_flight.popleft()
        confirmed.add(index)
        if len(confirmed) % 1000 == 0:
            emit("progress", confirmed=len(confirmed))
    emit(
        "produced",
        confirmed=len(confirmed),
        resent=resent,
        topic=topic,
        refused=len(refused),
        refusals=sorted(set(refused))[:5],
    )


def consume(node: meshq.Node, prefix: str, name: str, ack: bool, stop: threading.Event) -> None:
    with node.subscribe(prefix, durable=name, ack="explicit", ack_wait=1.0) as sub:
        emit("consuming", name=name)
        while not stop.is_set():
            try:
                message = sub.recv(timeout=0.2)
            except meshq.Timeout:
                continue
            emit("message", seq=message.seq, data=message.data, deliveries=message.deliveries)
            if ack:
                message.ack()


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("relay", "produce", "consume"))
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--data")
    parser.add_argument("--store", help="NATS URLs: serve the streams from JetStream")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--streams", default="s/")
    parser.add_argument("--durability", default="fsync")
    parser.add_argument("--topic")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--prefix", default="s/")
    parser.add_argument("--durable", default="consumer")
    parser.add_argument("--no-ack", action="store_true")
    args = parser.parse_args()
    node = meshq.Node(args.role, mesh=args.mesh, interfaces=[args.interface])
    relay = None
    if args.role == "relay":
        streams = [
            meshq.StreamConfig(name, durability=args.durability) for name in args.streams.split(",")
        ]
        if args.store:  # a gateway to a JetStream cluster
            store = JetStreamStore(args.store, replicas=args.replicas)
            relay = meshq.Relay(node, streams=streams, store=store)
        else:
            relay = meshq.Relay(node, args.data, streams)
    emit("ready", id=node.id)
    stop = threading.Event()
    worker = None
    if args.role == "produce":
        worker = threading.Thread(
            target=produce, args=(node, args.topic, args.count, args.window, args.budget)
        )
    elif args.role == "consume":
        worker = threading.Thread(
            target=consume, args=(node, args.prefix, args.durable, not args.no_ack, stop)
        )
    if worker is not None:
        worker.start()
    for line in sys.stdin:
        if json.loads(line).get("cmd") == "close":
            break
    stop.set()
    if worker is not None:
        worker.join()
    if relay is not None:
        relay.close()
    node.close()
    emit("closed")


if __name__ == "__main__":
    main()
