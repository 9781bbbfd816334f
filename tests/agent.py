"""A node in its own process, driven by JSON lines, for multi-process tests.

Prints one JSON object per line on stdout (``ready``, ``joined``, ``left``,
``suspect``, ``message``, ``published``, ``closed``) and reads commands as
JSON lines on stdin: ``{"cmd": "subscribe", "prefix": "t/"}``,
``{"cmd": "publish", "topic": "t/x", "data": "hi", "count": 10}``,
``{"cmd": "serve", "name": "calc", "delay": 0.5}`` (answers ``{"by": name}``
after ``delay`` seconds, saying ``handling`` first), ``{"cmd": "request",
"name": "calc", "data": 1, "timeout": 1.0, "retries": 2}`` (says ``reply`` or
``error``), ``{"cmd": "tally", "name": "calc", "count": 60, "providers": 2}``
(waits for that many providers, then says who answered how often),
``{"cmd": "subscribe", "prefix": "t/", "quiet": true}``
with ``{"cmd": "report"}`` (counts and gaps instead of a line per message),
``{"cmd": "peers"}`` (says ``peers``: name and chosen endpoint of each),
``{"cmd": "sink", "name": "done"}`` (collects pipeline results) with
``{"cmd": "sink_report"}`` (says ``sunk``: the tasks received, sorted),
``{"cmd": "block_publisher", "topic": "t/x", "timeout": 0.3, "subscribers": 1}``
(a ``when_full="block"`` publisher, said ``block_ready`` once that many
subscribers are connected) with ``{"cmd": "publish_block", "topic": "t/x",
"size": 1000, "count": 10}`` (says ``published``, or ``blocked`` with the
count sent before a send timed out), ``{"cmd": "close"}``. Exits when stdin
closes or after ``close``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import meshq
from meshq.patterns import Pipeline, Publisher, Sink, Worker
from meshq.patterns.worker import stage_service

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
        sys.stdout.flush()


def receive(
    node: meshq.Node, prefix: str, stop: threading.Event, quiet: bool, tally: dict[str, Any]
) -> None:
    """Receive on ``prefix``; report each message, or (quiet) only count them in ``tally``."""
    with node.subscribe(prefix) as sub:
        emit("subscribed", prefix=prefix)
        while not stop.is_set():
            try:
                message = sub.recv(timeout=0.2)
            except meshq.Timeout:
                # Tail markers count gaps without delivering a message.
                tally["gaps"] = sub.gaps
                tally["gap_log"] = [gap.__dict__ for gap in sub.gap_log]
                continue
            except meshq.Closed:
                return
            tally["received"] = tally.get("received", 0) + 1
            tally.setdefault("first_seq", message.seq)
            tally["gaps"] = sub.gaps
            tally["gap_log"] = [gap.__dict__ for gap in sub.gap_log]
            if quiet:
                continue
            data = message.data
            if isinstance(data, bytes):
                data = data.decode(errors="replace")
            emit("message", topic=message.topic, data=data, sender=message.sender, seq=message.seq)


def make_handler(name: str, delay: float) -> meshq.services.Handler:
    def handle(data: object) -> object:
        emit("handling", data=data if isinstance(data, (int, str)) else None)
        time.sleep(delay)  # a slow service, so a test can kill it mid-request
        return {"by": name, "data": data}

    return handle


def slow_echo(delay: float, die: bool = False) -> Callable[[object], object]:
    """Echo each task after ``delay`` s; with ``die``, SIGKILL this process on the first
    task instead, so that it dies holding its batch (never after answering it)."""

    def handle(task: object) -> object:
        emit("task", task=task if isinstance(task, int) else None)
        if die:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(delay)
        return task

    return handle


def report_events(node: meshq.Node) -> None:
    for event in node.events():
        emit(
            event.kind.value,
            name=event.peer.name,
            id=event.peer.id,
            reason=event.reason,
            endpoint=event.peer.endpoint,
        )


class EmitLog(logging.Handler):
    """meshq's log records as ``log`` events, for tests that check what a node says."""

    def emit(self, record: logging.LogRecord) -> None:
        emit("log", logger=record.name, level=record.levelname, message=record.getMessage())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--interface", help="the one address to use (default: the node's default)")
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-mdns", action="store_true")
    parser.add_argument("--hwm", type=int, default=meshq.MeshConfig().publish_hwm)
    parser.add_argument("--gone-after", type=float, default=meshq.MeshConfig().gone_after)
    parser.add_argument("--key", help="CURVE secret key file: run with security")
    parser.add_argument("--allow", help="with --key: directory of allowed public keys")
    parser.add_argument("--log", help="report meshq log records of this level and up as events")
    args = parser.parse_args()
    if args.log:
        logger = logging.getLogger("meshq")
        logger.setLevel(args.log)
        logger.addHandler(EmitLog())
    config = meshq.MeshConfig(
        control_port=args.port,
        publish_hwm=args.hwm,
        subscribe_hwm=args.hwm,
        suspect_after=args.gone_after / 2,
        gone_after=args.gone_after,
    )
    node = meshq.Node(
        args.name,
        mesh=args.mesh,
        interfaces=[args.interface] if args.interface else None,
        seeds=args.seed,
        config=config,
        discovery=not args.no_mdns,
        security=meshq.Curve(args.key, allow=args.allow) if args.key else None,
    )
    events = threading.Thread(target=report_events, args=(node,), daemon=True)
    events.start()
    emit("ready", id=node.id, control=list(node.control_endpoints), interfaces=node.interfaces)
    stop = threading.Event()
    tally: dict[str, Any] = {}
    workers: list[Worker] = []
    sinks: list[Sink] = []
    blocking: dict[str, Publisher] = {}
    receivers = []
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "subscribe":
            quiet = command.get("quiet", False)
            thread = threading.Thread(
                target=receive, args=(node, command["prefix"], stop, quiet, tally)
            )
            thread.start()
            receivers.append(thread)
        elif command["cmd"] == "publish":
            for _ in range(command.get("count", 1)):
                node.publish(command["topic"], command["data"])
            emit("published", topic=command["topic"], count=command.get("count", 1))
        elif command["cmd"] == "worker":  # a pipeline stage, each task taking ``delay`` s
            handler = slow_echo(command.get("delay", 0.0), command.get("die", False))
            workers.append(Worker(node, command["stage"], handler))
            emit("working", stage=command["stage"])
        elif command["cmd"] == "produce":  # push tasks through a pipeline, report the counts
            pipeline = Pipeline(
                node, command["stage"], batch=command["batch"], credit=2, timeout=2.0
            )
            # Every worker the test started is in this node's directory first.
            node.wait_for_service(stage_service(command["stage"]), command["workers"], timeout=20)
            first = command.get("first", 0)
            pipeline.push_many(range(first, first + command["count"]), timeout=30)
            if command.get("drain", True):
                pipeline.drain(timeout=30)
            done = [result.task for result in pipeline.results() if result.ok]
            emit(
                "produced",
                completed=pipeline.completed,
                failed=pipeline.failed,
                lost=pipeline.lost,
                tasks=sorted([*done, *pipeline.lost_tasks]),  # type: ignore[type-var]
            )
        elif command["cmd"] == "block_publisher":
            publisher = Publisher(
                node, command["topic"], when_full="block", timeout=command["timeout"]
            )
            blocking[command["topic"]] = publisher
            publisher.wait_for_subscribers(command["subscribers"], timeout=15)
            emit("block_ready", topic=command["topic"])
        elif command["cmd"] == "publish_block":
            publisher = blocking[command["topic"]]
            sent = 0
            try:
                for _ in range(command["count"]):
                    publisher.send(bytes(command["size"]))
                    sent += 1
                emit("published", topic=command["topic"], count=sent)
            except meshq.Timeout:
                emit("blocked", topic=command["topic"], sent=sent)
        elif command["cmd"] == "sink":
            sinks.append(Sink(node, command["name"]))
            emit("sinking", name=command["name"])
        elif command["cmd"] == "wait_service":  # this node's directory has n providers
            node.wait_for_service(command["name"], command["n"], timeout=20)
            emit("service_seen", name=command["name"])
        elif command["cmd"] == "sink_report":
            tasks = [result.task for sink in sinks for result in sink.results()]
            emit("sunk", tasks=sorted(tasks))  # type: ignore[type-var]
        elif command["cmd"] == "serve":
            node.serve(command["name"], make_handler(args.name, command.get("delay", 0.0)))
            emit("serving", name=command["name"])
        elif command["cmd"] == "tally":  # many requests; say who answered how often
            answered: dict[str, int] = {}
            # Peers join before their services are known: wait for them all.
            node.wait_for_service(command["name"], command.get("providers", 1), timeout=20)
            for index in range(command["count"]):
                answer = node.request(command["name"], index)
                assert isinstance(answer, dict)
                answered[answer["by"]] = answered.get(answer["by"], 0) + 1
            emit("tally", by=answered)
        elif command["cmd"] == "request":
            try:
                result = node.request(
                    command["name"],
                    command.get("data"),
                    timeout=command.get("timeout", 1.0),
                    retries=command.get("retries", 2),
                )
                emit("reply", data=result)
            except meshq.MeshqError as exc:
                emit("error", type=type(exc).__name__, message=str(exc))
        elif command["cmd"] == "peers":  # the peer table as node.peers() has it
            emit("peers", peers=[{"name": p.name, "endpoint": p.endpoint} for p in node.peers()])
        elif command["cmd"] == "report":  # what the quiet subscriptions counted
            emit("report", **dict(tally))
        elif command["cmd"] == "close":
            break
    stop.set()
    for thread in receivers:
        thread.join()
    node.close()
    emit("closed")


if __name__ == "__main__":
    main()
