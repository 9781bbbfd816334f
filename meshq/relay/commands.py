"""The relay's CLI subcommands: ``meshq relay``, ``meshq streams``, ``meshq replay``.

meshq relay --data DIR --streams "orders/,audit/"   store those streams, until Ctrl-C
meshq relay --store nats://h1:4222,nats://h2:4222 --replicas 3 --streams orders/
                                                     the same on a JetStream cluster
meshq streams                                        per stream: messages, bytes, seqs, consumers
meshq replay STREAM --from SEQ [--dead CONSUMER]     print stored messages (or dead letters)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
from collections.abc import Callable, Mapping

from ..errors import MeshqError, Timeout
from ..node import Node
from ..relaywire import RELAY_SERVICE_PREFIX, decode_records, stream_of_service
from ..wire import decode_payload
from .jetstream import JetStreamStore
from .server import Relay, StreamConfig

__all__ = ["add_commands"]

Command = Callable[[argparse.Namespace], int]


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    node_options: Callable[[argparse.ArgumentParser], None],
    make_node: Callable[[argparse.Namespace, str], Node],
) -> dict[str, Command]:
    """Add the relay subcommands to ``commands``; return their handlers by name."""
    relay = commands.add_parser("relay", help="store durable streams and serve them")
    node_options(relay)
    relay.add_argument("--data", help="directory for the SQLite file")
    relay.add_argument(
        "--store",
        metavar="URLS",
        help="keep the streams on NATS JetStream instead: 'nats://h1:4222,nats://h2:4222'",
    )
    relay.add_argument("--replicas", type=int, default=1, help="JetStream copies per stream")
    relay.add_argument(
        "--streams", required=True, help="comma-separated topic prefixes, e.g. 'orders/,audit/'"
    )
    relay.add_argument(
        "--durability",
        choices=("fsync", "batched"),
        default="fsync",
        help="commit each request before confirming (default), or group commits",
    )
    relay.add_argument("--max-age", type=float, default=None, help="seconds kept")
    relay.add_argument("--max-messages", type=int, default=None, help="messages kept per stream")
    relay.add_argument("--max-bytes", type=int, default=None, help="payload bytes per stream")
    relay.add_argument(
        "--dedup-window", type=float, default=120.0, help="seconds ids of removed messages are kept"
    )
    relay.add_argument("--duration", type=float, default=None, help="stop after N seconds")

    streams = commands.add_parser("streams", help="list durable streams and their consumers")
    node_options(streams)
    streams.add_argument("--wait", type=float, default=2.0, help="seconds to find relays")

    replay = commands.add_parser("replay", help="print the stored messages of a stream")
    node_options(replay)
    replay.add_argument("stream")
    replay.add_argument("--from", dest="start", type=int, default=1, help="first seq (default 1)")
    replay.add_argument("--count", type=int, default=100, help="at most N (default 100)")
    replay.add_argument("--wait", type=float, default=3.0, help="seconds to find the relay")
    replay.add_argument("--dead", metavar="CONSUMER", help="print CONSUMER's dead letters instead")

    def run_relay(args: argparse.Namespace) -> int:
        configs = [
            StreamConfig(
                name.strip(),
                durability=args.durability,
                max_age=args.max_age,
                max_messages=args.max_messages,
                max_bytes=args.max_bytes,
            )
            for name in args.streams.split(",")
            if name.strip()
        ]
        if (args.data is None) == (args.store is None):
            raise SystemExit("meshq relay: give --data DIR (SQLite) or --store URLS (JetStream)")
        store = None if args.store is None else JetStreamStore(args.store, replicas=args.replicas)
        node = make_node(args, "meshq-relay")
        try:
            relay = Relay(node, args.data, configs, dedup_window=args.dedup_window, store=store)
        except BaseException:
            node.close()
            if store is not None:
                store.close()
            raise
        where = args.data if store is None else store.store_id
        print(f"relay {node.id[:8]} storing {[c.name for c in configs]} in {where}", flush=True)
        try:
            node.run(timeout=args.duration)
        finally:
            relay.close()
        return 0

    def list_streams(args: argparse.Namespace) -> int:
        with make_node(args, "meshq-streams") as node:
            with contextlib.suppress(Timeout):  # discovery takes a moment
                node.wait_for_providers(
                    lambda services: _streams_in(services) or None, timeout=args.wait
                )
            names = _relay_streams(node)
            print(f"{len(names)} stream(s) on mesh {args.mesh!r}")
            for name in names:
                try:
                    info = node.request(RELAY_SERVICE_PREFIX + name, ["info"], timeout=2.0)
                except MeshqError as exc:
                    print(f"  {name:20} ({type(exc).__name__}: {exc})")
                    continue
                if not isinstance(info, dict):
                    continue
                print(
                    f"  {name:20} {info['messages']} msgs  {info['bytes']} B  "
                    f"seq {info['first_seq']}..{info['last_seq']}  {info['durability']}  "
                    f"dead letters {info['dead_letters']}"
                )
                for consumer, state in sorted(info["consumers"].items()):
                    print(f"    consumer {consumer:16} lag {state['lag']}  out {state['out']}")
        return 0

    def replay_stream(args: argparse.Namespace) -> int:
        with make_node(args, "meshq-replay") as node:
            try:
                node.wait_for_service(RELAY_SERVICE_PREFIX + args.stream, timeout=args.wait)
            except Timeout:
                raise Timeout(f"no relay holds stream {args.stream!r}") from None
            after, shown = args.start - 1, 0
            while shown < args.count:
                limit = min(args.count - shown, 1000)
                request: list[object] = (
                    ["read", after, limit]
                    if args.dead is None
                    else ["dead", args.dead, after, limit]
                )
                reply = node.request(RELAY_SERVICE_PREFIX + args.stream, request, timeout=5.0)
                records = decode_records(reply)
                if not records:
                    break
                for record in records:
                    when = datetime.datetime.fromtimestamp(record.time_ns / 1e9).isoformat()
                    data = decode_payload(record.flags, record.payload, node.limits)
                    tries = f" (dead after {record.deliveries} deliveries)" if args.dead else ""
                    print(f"#{record.seq} {when} {record.topic} {data!r}{tries}")
                    after = record.seq
                shown += len(records)
        return 0

    return {"relay": run_relay, "streams": list_streams, "replay": replay_stream}


def _relay_streams(node: Node) -> list[str]:
    return _streams_in(node.providers())


def _streams_in(services: Mapping[str, object]) -> list[str]:
    found = (stream_of_service(service) for service in services)
    return sorted(stream for stream in found if stream is not None)
