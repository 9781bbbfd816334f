"""The relay's CLI subcommands: ``meshq relay``, ``meshq streams``, ``meshq replay``.

meshq relay --data DIR --streams "orders/,audit/"   store those streams, until Ctrl-C
    [--salvage]                                      first copy what is intact of a damaged store
meshq relay --store nats://h1:4222,nats://h2:4222 --replicas 3 --streams orders/
                                                     the same on a JetStream cluster
meshq streams                                        per stream: messages, bytes, seqs, consumers
meshq replay STREAM --from SEQ [--dead CONSUMER]     print stored messages (or dead letters)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import time
from collections.abc import Callable, Mapping

from ..errors import MeshqError, Timeout
from ..node import Node
from ..relaywire import RELAY_SERVICE_PREFIX, decode_records, stream_of_service
from ..wire import decode_payload
from .jetstream import JetStreamStore
from .salvage import salvage
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
    relay.add_argument(
        "--salvage",
        action="store_true",
        help="first move a damaged store aside and copy every record that passes its "
        "checksum into a new one (when there is no backup to restore)",
    )

    streams = commands.add_parser("streams", help="list durable streams and their consumers")
    node_options(streams)
    streams.add_argument("--wait", type=float, default=2.0, help="seconds to find relays")

    replay = commands.add_parser("replay", help="print the stored messages of a stream")
    node_options(replay)
    replay.add_argument("stream")
    replay.add_argument(
        "--from", dest="start", type=_first_seq, default=1, help="first seq, from 1 (default 1)"
    )
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
        if args.salvage:
            if args.data is None:
                raise SystemExit("meshq relay: --salvage is for a SQLite store (--data DIR)")
            print(f"relay store in {args.data}: {salvage(args.data).describe()}", flush=True)
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
            # Until the relays found stay the same for a moment (woken by
            # directory changes): a conflict shows only once every relay of
            # a stream is known.
            deadline = time.monotonic() + args.wait
            seen: set[tuple[str, str]] = set()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                before = seen
                with contextlib.suppress(Timeout):
                    seen = node.wait_for_providers(
                        _changed_from(before),
                        timeout=min(remaining, _STABLE) if before else remaining,
                    )
                if seen == before:  # nothing new for _STABLE s (or the deadline)
                    break
            names = _relay_streams(node)
            print(f"{len(names)} stream(s) on mesh {args.mesh!r}")
            for name in names:
                # Every relay claiming the stream answers: a conflict shows as two.
                try:
                    answers = node.gather(RELAY_SERVICE_PREFIX + name, ["info"], timeout=2.0)
                except MeshqError as exc:
                    print(f"  {name:20} ({type(exc).__name__}: {exc})")
                    continue
                for relay, error in sorted(answers.errors.items()):
                    print(f"  {name:20} relay {relay[:8]}: {error.remote_message}")
                for relay in answers.missing:
                    print(f"  {name:20} relay {relay[:8]}: no answer")
                for relay, info in sorted(answers.replies.items()):
                    if isinstance(info, dict):
                        _print_stream(name, relay, info, len(answers.replies) > 1)
        return 0

        return 0

    def replay_stream(args: argparse.Namespace) -> int:
        with make_node(args, "meshq-replay") as node:
            wanted: str = args.stream
            slashed = wanted + "/"

            def held(services: Mapping[str, object]) -> str | None:
                streams = _streams_in(services)
                if wanted in streams:
                    return wanted
                # Named without its trailing slash: say so at once, not after --wait.
                return slashed if not wanted.endswith("/") and slashed in streams else None

            try:
                stream = node.wait_for_providers(held, timeout=args.wait)
            except Timeout:
                streams = _relay_streams(node)
                raise Timeout(
                    f"no relay holds stream {wanted!r}{_did_you_mean(wanted, streams)}"
                ) from None
            if stream != wanted:
                raise ValueError(
                    f"no relay holds stream {wanted!r}{_did_you_mean(wanted, [stream])}"
                )
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


def _print_stream(name: str, relay: str, info: dict[str, object], several: bool) -> None:
    """One relay's view of stream ``name`` (its "info" reply), as ``meshq streams`` shows it."""
    where = f"  relay {relay[:8]}" if several else ""
    print(
        f"  {name:20} {info['messages']} msgs  {info['bytes']} B  "
        f"seq {info['first_seq']}..{info['last_seq']}  {info['durability']}  "
        f"dead letters {info['dead_letters']}{where}"
    )
    if info.get("conflict"):
        print(f"    CONFLICT: stream {name!r} {info['conflict']}")
    faults = _faults(info)
    if faults:
        print(f"    FAULTS: {faults}")
    consumers = info.get("consumers")
    if isinstance(consumers, dict):
        for consumer, state in sorted(consumers.items()):
            print(f"    consumer {consumer:16} lag {state['lag']}  out {state['out']}")


#: Fault counters of a stream's "info", and how ``meshq streams`` names them.
_FAULTS = {
    "corrupt": "corrupt records refused",
    "integrity_problems": "integrity check problems",
    "wal_damaged": "committed transactions lost to WAL damage",
    "wal_torn": "torn WAL tails",
    "store_errors": "store errors (disk full?)",
}


def _faults(info: dict[str, object]) -> str:
    """The nonzero fault counters of ``info``, as one line ('' if none)."""
    found = [(info.get(key), text) for key, text in _FAULTS.items()]
    return ", ".join(f"{count} {text}" for count, text in found if isinstance(count, int) and count)


_STABLE = 0.5  # seconds without a new relay before meshq streams asks them


def _changed_from(
    before: set[tuple[str, str]],
) -> Callable[[Mapping[str, Mapping[str, str]]], set[tuple[str, str]] | None]:
    """A wait_for_providers test: the relays found, once they differ from ``before``."""

    def test(services: Mapping[str, Mapping[str, str]]) -> set[tuple[str, str]] | None:
        found = _relays_in(services)
        return found if found != before else None

    return test


def _relays_in(services: Mapping[str, Mapping[str, str]]) -> set[tuple[str, str]]:
    """(service, relay id) of every relay stream service in ``services``."""
    return {
        (service, relay)
        for service, relays in services.items()
        if stream_of_service(service) is not None
        for relay in relays
    }


def _relay_streams(node: Node) -> list[str]:
    return _streams_in(node.providers())


def _streams_in(services: Mapping[str, object]) -> list[str]:
    found = (stream_of_service(service) for service in services)
    return sorted(stream for stream in found if stream is not None)


def _first_seq(text: str) -> int:
    """--from: a stream sequence number; they start at 1."""
    try:
        seq = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a sequence number: {text!r}") from None
    if seq < 1:
        raise argparse.ArgumentTypeError(f"sequence numbers start at 1, got {seq}")
    return seq


def _did_you_mean(stream: str, streams: list[str]) -> str:
    """A hint for a stream named without its trailing slash ('orders' for 'orders/')."""
    if not stream.endswith("/") and stream + "/" in streams:
        return f"; did you mean {stream + '/'!r}? (a stream is a topic prefix ending in '/')"
    if streams:
        return f" (streams on this mesh: {', '.join(streams)})"
    return ""
