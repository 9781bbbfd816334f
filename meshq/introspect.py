"""Introspection: what one node says about itself, served as ``meshq/introspect``.

Every node answers the built-in request/reply service ``meshq/introspect``
(docs/PROTOCOL.md 16) from its start (:class:`meshq.Node` runs :func:`install`
unless ``MeshConfig(introspection=False)``) with a snapshot of itself: name,
id, version, uptime, interfaces, peers, counters, the topics it publishes,
its subscriptions, its durable consumers and the services it offers. The
request travels on the node's ordinary service socket, so CURVE and the
allowlist apply to it as to any request.

The snapshot is built from state the node keeps anyway (the per-topic
sequence numbers of the publish socket, each subscription's last sequence
per publisher and its gap log, the counters of ``stats()``); nothing is
counted on the message hot path for it. :func:`node_facts` is the one place
that reads those parts of a node.

:func:`parse_snapshot` checks a reply from another node; a malformed one is
an :class:`IntrospectError`, never a crash of the collector.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import MeshqError
from .peers import Peer
from .runtime import Runtime
from .servicestats import ServiceStats

__all__ = [
    "INTROSPECT_SERVICE",
    "SNAPSHOT_VERSION",
    "Introspectable",
    "IntrospectError",
    "NodeFacts",
    "ConsumerRow",
    "NodeSnapshot",
    "install",
    "node_facts",
    "parse_snapshot",
    "snapshot",
]

INTROSPECT_SERVICE = "meshq/introspect"
SNAPSHOT_VERSION = 1
#: Most topics and per-publisher subscription streams one snapshot lists
#: (the busiest first), so a reply stays far below the msgpack bound.
MAX_ROWS = 500


class IntrospectError(MeshqError, ValueError):
    """A node's introspection reply is malformed (``reason`` says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"bad introspection reply: {reason}")
        self.reason = reason


class Introspectable(Protocol):
    """What a snapshot reads of a node: :class:`meshq.Node` is one.

    A protocol rather than ``Node`` itself, so that the node can install
    introspection at its start without the two modules importing each other.
    """

    id: str
    name: str
    mesh: str
    interfaces: tuple[str, ...]
    runtime: Runtime

    @property
    def control_endpoints(self) -> tuple[str, ...]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def peers(self) -> list[Peer]: ...

    def stats(self) -> dict[str, int]: ...

    def serve(self, name: str, handler: Any = None) -> Any: ...


@dataclass(frozen=True)
class NodeFacts:
    """What a snapshot is made of, read from a node at one moment."""

    published: Mapping[str, tuple[int, bool]]  # topic -> (messages published, blocking)
    subscriptions: list[dict[str, Any]]  # prefix, gaps, dropped, streams, gap_log
    services: tuple[str, ...]
    service_stats: Mapping[str, ServiceStats]


def node_facts(node: Introspectable) -> NodeFacts:
    """Read the publish, subscription and service state of ``node``.

    Reads structures other threads write: each is copied with one ``dict()``
    or ``list()`` call, which CPython performs while holding the GIL, so the
    copy is consistent and nothing on the writers' side takes a lock for it.
    """
    from .subscription import Inbox

    publisher, directory, runner = _parts(node)
    topics = dict(publisher._topics)
    published = {topic: (entry.seq, entry.blocking) for topic, entry in topics.items()}
    subscriptions = []
    for watcher in list(directory._watchers):
        if not isinstance(watcher, Inbox):
            continue
        streams = []
        for key, last in dict(watcher._last_seq).items():
            # key: topic, NUL, version byte, 16-byte sender id (subscription.py).
            streams.append(
                {
                    "topic": key[:-18].decode("utf-8", "replace"),
                    "sender": key[-16:].hex(),
                    "seq": last,
                }
            )
        gaps: dict[tuple[str, str], int] = {}
        for gap in list(watcher.gap_log):
            gaps[(gap.topic, gap.sender)] = gaps.get((gap.topic, gap.sender), 0) + gap.missed
        subscriptions.append(
            {
                "prefix": watcher.prefix,
                "gaps": watcher.gaps,
                "dropped": watcher.dropped,
                "streams": streams,
                "gap_log": [
                    {"topic": t, "sender": s, "missed": n} for (t, s), n in sorted(gaps.items())
                ],
            }
        )
    service_stats: dict[str, ServiceStats] = {}
    if runner is not None:
        recorded = dict(runner.service_stats)
        for name in runner.names():
            # Deferred handlers (the relay's) are not counted here: leave them out.
            if name in recorded or name not in runner._deferred:
                service_stats[name] = recorded.get(name) or ServiceStats()
    offered = () if runner is None else runner.names()
    return NodeFacts(published, subscriptions, offered, service_stats)


def _parts(node: Introspectable) -> tuple[Any, Any, Any]:
    """(publish socket, publisher directory, service runner or None) of ``node``."""
    runtime = node.runtime
    return runtime.publisher, runtime.state.publishers, runtime._service_runner


def snapshot(node: Introspectable, started: float) -> dict[str, Any]:
    """The introspection reply of ``node`` (docs/PROTOCOL.md 16.2) as a msgpack-able map.

    ``started`` is when the node started, in seconds since the epoch.
    """
    from . import __version__

    facts = node_facts(node)
    topics = sorted(facts.published.items(), key=lambda item: -item[1][0])
    streams = [(sub["prefix"], row) for sub in facts.subscriptions for row in sub.pop("streams")]
    streams.sort(key=lambda item: -int(item[1]["seq"]))
    kept = streams[:MAX_ROWS]
    for sub in facts.subscriptions:
        sub["streams"] = [row for prefix, row in kept if prefix == sub["prefix"]]
    consumers = _consumers(node)
    now = time.time()
    return {
        "v": SNAPSHOT_VERSION,
        "id": node.id,
        "name": node.name,
        "mesh": node.mesh,
        "version": __version__,
        "time": now,
        "uptime": max(0.0, now - started),
        "interfaces": list(node.interfaces),
        "control": list(node.control_endpoints),
        "headers": dict(node.headers),
        "peers": [
            {
                "id": peer.id,
                "name": peer.name,
                "state": peer.state.value,
                "last_seen": peer.last_seen,
                "endpoint": peer.endpoint,
                # Round-trip times from heartbeats need the PING change of
                # docs/PROTOCOL.md 16.4, which is not built yet.
                "rtt": None,
            }
            for peer in node.peers()
        ],
        "stats": node.stats(),
        "topics": [
            {"topic": topic, "published": seq, "blocking": blocking}
            for topic, (seq, blocking) in topics[:MAX_ROWS]
        ],
        "subscriptions": facts.subscriptions,
        "services": [name for name in facts.services if name != INTROSPECT_SERVICE],
        "service_stats": [
            _service_row(name, stats)
            for name, stats in sorted(facts.service_stats.items())
            if name != INTROSPECT_SERVICE
        ],
        "consumers": consumers[:MAX_ROWS],
        "truncated": sum(max(0, len(rows) - MAX_ROWS) for rows in (topics, streams, consumers)),
    }


def _consumers(node: Introspectable) -> list[dict[str, object]]:
    """The node's open durable consumers, the most delivered first."""
    rows = [row for c in node.runtime.state.consumers() if (row := c.report()) is not None]
    rows.sort(key=lambda row: -row["delivered"] if isinstance(row["delivered"], int) else 0)
    return rows


def _service_row(name: str, stats: ServiceStats) -> dict[str, Any]:
    quantiles = stats.percentiles()
    p50, p90, p99 = (None, None, None) if quantiles is None else quantiles
    return {
        "name": name,
        "served": stats.served,
        "errors": stats.errors,
        "p50": p50,
        "p90": p90,
        "p99": p99,
    }


def install(node: Introspectable) -> None:
    """Make ``node`` answer ``meshq/introspect``; its uptime counts from now.

    ``Node`` calls it at its start (unless ``MeshConfig(introspection=False)``);
    calling it again restarts the uptime. Raises ValueError if the node
    cannot offer one more service.
    """
    started = time.time()

    def answer(request: object) -> object:
        if request is not None and not isinstance(request, dict):
            raise ValueError("an introspection request is nil or a map")
        return snapshot(node, started)

    node.serve(INTROSPECT_SERVICE, answer)


@dataclass(frozen=True)
class PeerRow:
    id: str
    name: str
    state: str
    last_seen: float
    endpoint: str
    rtt: float | None


@dataclass(frozen=True)
class TopicRow:
    topic: str
    published: int
    blocking: bool


@dataclass(frozen=True)
class StreamRow:
    """What one subscription has seen of one publisher on one topic."""

    prefix: str
    topic: str
    sender: str
    seq: int  # the last sequence number received
    gaps: int  # missed messages among the latest gaps kept (gap log)


@dataclass(frozen=True)
class ServiceRow:
    """Requests one service of the node answered; latencies in seconds (None: no sample)."""

    name: str
    served: int
    errors: int
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True)
class ConsumerRow:
    """A durable consumer of the node, as the consumer itself counts (PROTOCOL.md 16.2)."""

    prefix: str
    name: str
    stream: str | None  # None while no relay holds the prefix
    delivered: int  # handed to the application
    acked: int
    naked: int
    pending: int  # handed out, neither acknowledged nor naked yet
    buffered: int  # fetched, not handed out yet
    unsent_acks: int  # acknowledged, not yet told to the relay
    last_seq: int  # the highest stream seq fetched
    duplicates: int  # redeliveries of messages it had acknowledged, skipped


@dataclass(frozen=True)
class SubscriptionRow:
    prefix: str
    gaps: int
    dropped: int


@dataclass(frozen=True)
class NodeSnapshot:
    """A checked introspection reply; see docs/PROTOCOL.md 16.2 for each field."""

    id: str
    name: str
    mesh: str
    version: str
    time: float
    uptime: float
    interfaces: tuple[str, ...]
    control: tuple[str, ...]
    peers: tuple[PeerRow, ...]
    stats: Mapping[str, int]
    topics: tuple[TopicRow, ...]
    subscriptions: tuple[SubscriptionRow, ...]
    streams: tuple[StreamRow, ...]
    services: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    truncated: int = 0
    service_stats: tuple[ServiceRow, ...] = ()
    consumers: tuple[ConsumerRow, ...] = ()


def parse_snapshot(reply: object) -> NodeSnapshot:
    """Check an introspection reply and return it typed.

    Unknown keys are ignored (later versions may add some). Raises
    IntrospectError naming the first field that is missing or of a wrong type.
    """
    top = _map(reply, "reply")
    peers = tuple(
        PeerRow(
            _get(p, "id", str),
            _get(p, "name", str),
            _get(p, "state", str),
            _number(p, "last_seen"),
            _get(p, "endpoint", str),
            _optional_number(p, "rtt"),
        )
        for p in _list(top, "peers")
    )
    topics = tuple(
        TopicRow(_get(t, "topic", str), _get(t, "published", int), _get(t, "blocking", bool))
        for t in _list(top, "topics")
    )
    subscriptions = []
    streams = []
    for sub in _list(top, "subscriptions"):
        prefix = _get(sub, "prefix", str)
        subscriptions.append(
            SubscriptionRow(prefix, _get(sub, "gaps", int), _get(sub, "dropped", int))
        )
        missed = {
            (_get(g, "topic", str), _get(g, "sender", str)): _get(g, "missed", int)
            for g in _list(sub, "gap_log")
        }
        for row in _list(sub, "streams"):
            topic, sender = _get(row, "topic", str), _get(row, "sender", str)
            streams.append(
                StreamRow(
                    prefix, topic, sender, _get(row, "seq", int), missed.get((topic, sender), 0)
                )
            )
    service_stats = tuple(
        ServiceRow(
            _get(row, "name", str),
            _get(row, "served", int),
            _get(row, "errors", int),
            *(_optional_number(row, q) for q in ("p50", "p90", "p99")),
        )
        for row in (_list(top, "service_stats") if "service_stats" in top else [])
    )
    consumers = tuple(
        ConsumerRow(
            _get(row, "prefix", str),
            _get(row, "name", str),
            None if _map(row, "the entry of stream").get("stream") is None
            else _get(row, "stream", str),
            *(_get(row, key, int) for key in _CONSUMER_COUNTS),
        )
        for row in (_list(top, "consumers") if "consumers" in top else [])
    )  # fmt: skip
    stats = _map(top.get("stats"), "stats")
    headers = _map(top.get("headers", {}), "headers")
    return NodeSnapshot(
        id=_get(top, "id", str),
        name=_get(top, "name", str),
        mesh=_get(top, "mesh", str),
        version=_get(top, "version", str),
        time=_number(top, "time"),
        uptime=_number(top, "uptime"),
        interfaces=tuple(_strings(top, "interfaces")),
        control=tuple(_strings(top, "control")),
        peers=peers,
        stats={str(k): v for k, v in stats.items() if isinstance(v, int)},
        topics=topics,
        subscriptions=tuple(subscriptions),
        streams=tuple(streams),
        services=tuple(_strings(top, "services")),
        headers={str(k): str(v) for k, v in headers.items()},
        truncated=_get(top, "truncated", int) if "truncated" in top else 0,
        service_stats=service_stats,
        consumers=consumers,
    )


_CONSUMER_COUNTS = (
    "delivered", "acked", "naked", "pending", "buffered", "unsent_acks", "last_seq", "duplicates",
)  # fmt: skip


def _map(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise IntrospectError(f"{what} is not a map")
    return value


_KINDS = {str: "a string", int: "an integer", bool: "a boolean"}


def _get(value: object, key: str, kind: type) -> Any:
    item = _map(value, f"the entry of {key}").get(key)
    # bool is an int subclass: an integer field must not accept True.
    if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
        raise IntrospectError(f"{key} is not {_KINDS[kind]}")
    return item


def _number(value: object, key: str) -> float:
    item = _map(value, f"the entry of {key}").get(key)
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise IntrospectError(f"{key} is not a number")
    return float(item)


def _optional_number(value: object, key: str) -> float | None:
    return None if _map(value, f"the entry of {key}").get(key) is None else _number(value, key)


def _list(value: object, key: str) -> list[Any]:
    item = _map(value, f"the entry of {key}").get(key)
    if not isinstance(item, list):
        raise IntrospectError(f"{key} is not an array")
    return item


def _strings(value: object, key: str) -> list[str]:
    items = _list(value, key)
    if not all(isinstance(item, str) for item in items):
        raise IntrospectError(f"{key} holds a non-string")
    return items
