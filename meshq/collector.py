"""The whole mesh in one view: what ``meshq top`` shows and ``meshq exporter`` serves.

A :class:`Collector` runs on an observer node. Each :meth:`Collector.collect`
asks every node for its introspection snapshot (one ``gather`` of
``meshq/introspect``) and every relay for its streams (the relay's own
``info`` request), and joins them into a :class:`MeshView`: nodes, topics,
services, streams, and the durable consumers as each node counts them
(with the lag its relay reports). Rates come from the previous collect. A
row gets a ``mark`` when something is going wrong: a node that did not
answer or that sees a peer suspect, gaps that grew, a consumer whose lag
grew, two relays claiming one stream.

Every call waits at most ``timeout`` seconds per request; a node's malformed
reply is listed in ``MeshView.errors`` and skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .durable.lookup import relay_stores
from .errors import MeshqError, NoProviders
from .introspect import INTROSPECT_SERVICE, IntrospectError, NodeSnapshot, parse_snapshot
from .node import Node
from .relaywire import RELAY_SERVICE_PREFIX, stream_of_service

__all__ = [
    "Collector",
    "ConsumerView",
    "MeshView",
    "NodeConsumerView",
    "NodeView",
    "StreamView",
    "TopicView",
]


@dataclass(frozen=True)
class NodeView:
    """One node as it describes itself; rates in messages per second."""

    id: str
    name: str
    version: str
    uptime: float
    interfaces: tuple[str, ...]
    peers_alive: int
    peers_suspect: int
    published: int  # messages published on all topics since start
    publish_rate: float | None
    gaps: int  # messages its subscriptions know they missed
    services: tuple[str, ...]
    stats: dict[str, int]
    mark: str = ""
    #: The largest smoothed round-trip time (s) to one of its peers, and that
    #: peer's name; None until the node measures round trips (PROTOCOL.md 16.4).
    rtt_max: float | None = None
    rtt_peer: str = ""


@dataclass(frozen=True)
class TopicView:
    """One topic from one publisher, and how far its subscribers got."""

    topic: str
    publisher: str  # node name
    publisher_id: str
    published: int
    rate: float | None
    subscribers: int  # subscriptions (on answering nodes) that received from it
    behind: int  # published minus the lowest last sequence any of them received
    gaps: int  # missed messages its subscribers recorded (latest gaps kept per subscription)
    mark: str = ""
    #: The last sequence numbers its subscribers received, summed; and how
    #: fast that sum advanced (per second: messages that reached them, or
    #: were lost on the way and counted in ``gaps``). None: no earlier
    #: collect with the same subscribers.
    received: int = 0
    received_rate: float | None = None


@dataclass(frozen=True)
class ProviderView:
    """One provider of a service: what it answered (None: it does not say).

    Latencies are the provider's own (handler and encoding), in seconds.
    """

    node: str
    served: int | None = None
    rate: float | None = None
    errors: int | None = None
    p50: float | None = None
    p99: float | None = None
    mark: str = ""


@dataclass(frozen=True)
class ServiceView:
    name: str
    providers: tuple[str, ...]  # node names
    calls: tuple[ProviderView, ...] = ()


@dataclass(frozen=True)
class ConsumerView:
    name: str
    lag: int
    outstanding: int
    mark: str = ""


@dataclass(frozen=True)
class StreamView:
    """One stream as its relay reports it."""

    stream: str
    relay: str  # node name
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    dead_letters: int
    consumers: tuple[ConsumerView, ...]
    mark: str = ""
    conflict: bool = False  # claimed by two relays, overlapping another, or so its relay says


@dataclass(frozen=True)
class NodeConsumerView:
    """A durable consumer as the node running it counts it, with its relay's lag.

    ``lag`` is the relay's (messages of the stream not acknowledged by this
    consumer name, over every process sharing it); None when no relay
    reported on the consumer's stream.
    """

    node: str
    prefix: str
    stream: str | None
    name: str
    delivered: int
    rate: float | None  # delivered per second
    acked: int
    pending: int  # handed to the application, not yet acknowledged or naked
    buffered: int  # fetched, not handed out yet
    last_seq: int
    lag: int | None
    mark: str = ""


@dataclass(frozen=True)
class MeshView:
    """One collect: every node that answered, and what did not."""

    mesh: str
    taken_at: float  # seconds since the epoch
    nodes: tuple[NodeView, ...]
    topics: tuple[TopicView, ...]
    services: tuple[ServiceView, ...]
    streams: tuple[StreamView, ...]
    #: Nodes (names) that did not answer in time, or answered before and are
    #: gone from the mesh now (for ``forget_after`` seconds).
    missing: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # malformed replies: "name: reason"
    consumers: tuple[NodeConsumerView, ...] = ()
    snapshots: tuple[NodeSnapshot, ...] = field(default=(), repr=False)

    @property
    def marked(self) -> list[str]:
        """Every mark, as ``kind name: mark`` lines."""
        rows: list[tuple[str, str, str]] = [("node", n.name, n.mark) for n in self.nodes]
        rows += [("topic", f"{t.topic} from {t.publisher}", t.mark) for t in self.topics]
        rows += [
            ("service", f"{s.name} on {c.node}", c.mark) for s in self.services for c in s.calls
        ]
        rows += [("stream", s.stream, s.mark) for s in self.streams]
        rows += [
            ("consumer", f"{s.stream}/{c.name}", c.mark) for s in self.streams for c in s.consumers
        ]
        rows += [("consumer", f"{c.name} on {c.node}", c.mark) for c in self.consumers]
        rows += [("node", name, "did not answer") for name in self.missing]
        return [f"{kind} {name}: {mark}" for kind, name, mark in rows if mark]


class Collector:
    """Collects :class:`MeshView` s through ``node`` (an observer on the mesh).

    Use from one thread: ``node``'s request calls belong to the calling thread.
    """

    def __init__(self, node: Node, *, timeout: float = 1.0, forget_after: float = 60.0) -> None:
        self.node = node
        self.timeout = timeout
        self.forget_after = forget_after
        self._previous: MeshView | None = None
        self._answered: dict[str, tuple[str, float]] = {}  # node id -> (name, when)

    def collect(self) -> MeshView:
        """Ask every node and relay now; wait at most ``timeout`` s for each round."""
        names = {peer.id: peer.name for peer in self.node.peers()}
        snapshots: list[NodeSnapshot] = []
        errors: list[str] = []
        missing: list[str] = []
        try:
            result = self.node.gather(INTROSPECT_SERVICE, None, timeout=self.timeout)
        except NoProviders:
            result = None
        if result is not None:
            for node_id, reply in sorted(result.replies.items()):
                if node_id == self.node.id:
                    continue  # the observer is not part of what it observes
                try:
                    snapshots.append(parse_snapshot(reply))
                except IntrospectError as exc:
                    errors.append(f"{names.get(node_id, node_id[:8])}: {exc.reason}")
            for node_id, error in result.errors.items():
                errors.append(f"{names.get(node_id, node_id[:8])}: {error}")
            missing = [names.get(i, i[:8]) for i in result.missing if i != self.node.id]
        now = time.time()
        # A node that answered before and left (or froze and was dropped by
        # its peers) is shown as missing for a while instead of vanishing.
        for snap in snapshots:
            self._answered[snap.id] = (snap.name, now)
        asked = set(result.replies) | set(result.errors) | set(result.missing) if result else set()
        for node_id, (name, when) in list(self._answered.items()):
            if now - when > self.forget_after:
                del self._answered[node_id]
            elif node_id not in asked:
                missing.append(name)
        missing.sort()
        streams = self._streams(names, errors)
        view = MeshView(
            mesh=self.node.mesh,
            taken_at=now,
            nodes=tuple(self._nodes(snapshots, now)),
            topics=tuple(self._topics(snapshots, now)),
            services=tuple(self._services(names, snapshots, now)),
            streams=tuple(streams),
            missing=tuple(missing),
            errors=tuple(errors),
            snapshots=tuple(snapshots),
            consumers=tuple(self._consumers(snapshots, streams, now)),
        )
        self._previous = view
        return view

    def _rate(self, now: float, old: int | None, new: int) -> float | None:
        if self._previous is None or old is None or now <= self._previous.taken_at:
            return None
        return max(0, new - old) / (now - self._previous.taken_at)

    def _grew(self, what: str, old: int | None, new: int) -> str:
        """``"gaps +3"`` when ``new`` went past ``old`` (a row new since the last collect: 0)."""
        if self._previous is None:
            return ""  # nothing to compare with: a mark says what changed
        base = 0 if old is None else old
        return f"{what} +{new - base}" if new > base else ""

    def _nodes(self, snapshots: list[NodeSnapshot], now: float) -> list[NodeView]:
        before = {n.id: n for n in self._previous.nodes} if self._previous else {}
        views = []
        for snap in snapshots:
            published = sum(t.published for t in snap.topics)
            gaps = sum(s.gaps for s in snap.subscriptions)
            suspect = [p.name for p in snap.peers if p.state == "suspect"]
            old = before.get(snap.id)
            marks = []
            if suspect:
                marks.append(f"peer suspect: {', '.join(suspect)}")
            if grew := self._grew("gaps", old.gaps if old else None, gaps):
                marks.append(grew)
            timed = [(p.rtt, p.name) for p in snap.peers if p.rtt is not None]
            rtt_max, rtt_peer = max(timed) if timed else (None, "")
            views.append(
                NodeView(
                    id=snap.id,
                    name=snap.name,
                    version=snap.version,
                    uptime=snap.uptime,
                    interfaces=snap.interfaces,
                    peers_alive=sum(p.state == "alive" for p in snap.peers),
                    peers_suspect=len(suspect),
                    published=published,
                    publish_rate=self._rate(now, old.published if old else None, published),
                    gaps=gaps,
                    services=snap.services,
                    stats=dict(snap.stats),
                    mark="; ".join(marks),
                    rtt_max=rtt_max,
                    rtt_peer=rtt_peer,
                )
            )
        return sorted(views, key=lambda v: v.name)

    def _consumers(
        self, snapshots: list[NodeSnapshot], streams: list[StreamView], now: float
    ) -> list[NodeConsumerView]:
        before = (
            {(c.node, c.prefix, c.name): c for c in self._previous.consumers}
            if self._previous
            else {}
        )
        lags: dict[tuple[str, str], int] = {}
        for stream in streams:  # two relays of one stream (a conflict): the larger lag
            for c in stream.consumers:
                key = (stream.stream, c.name)
                lags[key] = max(lags.get(key, c.lag), c.lag)
        views = []
        for snap in snapshots:
            for row in snap.consumers:
                old = before.get((snap.name, row.prefix, row.name))
                lag = None if row.stream is None else lags.get((row.stream, row.name))
                old_lag = None if old is None else old.lag
                mark = ""
                if lag is not None and old_lag is not None and lag > old_lag:
                    mark = f"falling behind (lag +{lag - old_lag})"
                views.append(
                    NodeConsumerView(
                        node=snap.name,
                        prefix=row.prefix,
                        stream=row.stream,
                        name=row.name,
                        delivered=row.delivered,
                        rate=self._rate(now, old.delivered if old else None, row.delivered),
                        acked=row.acked,
                        pending=row.pending,
                        buffered=row.buffered,
                        last_seq=row.last_seq,
                        lag=lag,
                        mark=mark,
                    )
                )
        return sorted(views, key=lambda v: (v.node, v.prefix, v.name))

    def _topics(self, snapshots: list[NodeSnapshot], now: float) -> list[TopicView]:
        before = (
            {(t.publisher_id, t.topic): t for t in self._previous.topics} if self._previous else {}
        )
        received: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for snap in snapshots:
            for row in snap.streams:
                received.setdefault((row.sender, row.topic), []).append((row.seq, row.gaps))
        views = []
        for snap in snapshots:
            for topic in snap.topics:
                seen = received.get((snap.id, topic.topic), [])
                gaps = sum(g for _, g in seen)
                old = before.get((snap.id, topic.topic))
                got = sum(s for s, _ in seen)
                same = old is not None and old.subscribers == len(seen) and got >= old.received
                views.append(
                    TopicView(
                        topic=topic.topic,
                        publisher=snap.name,
                        publisher_id=snap.id,
                        published=topic.published,
                        rate=self._rate(now, old.published if old else None, topic.published),
                        subscribers=len(seen),
                        behind=max((topic.published - s for s, _ in seen), default=0),
                        gaps=gaps,
                        mark=self._grew("gaps", old.gaps if old else None, gaps),
                        received=got,
                        received_rate=self._rate(
                            now, old.received if old is not None and same else None, got
                        ),
                    )
                )
        return sorted(views, key=lambda v: (v.topic, v.publisher))

    def _services(
        self, names: dict[str, str], snapshots: list[NodeSnapshot], now: float
    ) -> list[ServiceView]:
        names = {**names, self.node.id: self.node.name}
        rows = {(snap.id, row.name): row for snap in snapshots for row in snap.service_stats}
        before = {
            (call.node, service.name): call
            for service in (self._previous.services if self._previous else ())
            for call in service.calls
        }
        views = []
        for service, providers in sorted(self.node.services().items()):
            if service == INTROSPECT_SERVICE or stream_of_service(service) is not None:
                continue
            calls = []
            for provider in sorted(providers, key=lambda i: names.get(i, i[:8])):
                node = names.get(provider, provider[:8])
                row = rows.get((provider, service))
                if row is None:
                    calls.append(ProviderView(node))
                    continue
                old = before.get((node, service))
                calls.append(
                    ProviderView(
                        node,
                        served=row.served,
                        rate=self._rate(now, old.served if old else None, row.served),
                        errors=row.errors,
                        p50=row.p50,
                        p99=row.p99,
                        mark=self._grew("errors", old.errors if old else None, row.errors),
                    )
                )
            views.append(ServiceView(service, tuple(c.node for c in calls), tuple(calls)))
        return views

    def _streams(self, names: dict[str, str], errors: list[str]) -> list[StreamView]:
        before: dict[tuple[str, str], StreamView] = (
            {(s.stream, s.relay): s for s in self._previous.streams} if self._previous else {}
        )
        relays = {
            stream: providers
            for service, providers in self.node.services().items()
            if (stream := stream_of_service(service)) is not None
        }
        views = []
        for stream, providers in sorted(relays.items()):
            conflict = ""
            if len(providers) > 1 and len(relay_stores(self.node, providers)) > 1:
                conflict = f"claimed by {len(providers)} relays"
            overlapping = [
                o for o in relays if o != stream and (o.startswith(stream) or stream.startswith(o))
            ]
            if overlapping:
                conflict = f"overlaps stream {overlapping[0]!r}"
            try:
                result = self.node.gather(
                    RELAY_SERVICE_PREFIX + stream, ["info"], timeout=self.timeout
                )
            except (NoProviders, MeshqError):
                continue  # the relay left between the lookup and now
            for relay_id, info in sorted(result.replies.items()):
                relay = names.get(relay_id, relay_id[:8])
                try:
                    views.append(self._stream(stream, relay, info, conflict, before))
                except (KeyError, TypeError, ValueError) as exc:
                    errors.append(f"{relay}: bad stream info for {stream!r} ({exc})")
        return views

    @staticmethod
    def _stream(
        stream: str,
        relay: str,
        info: Any,
        conflict: str,
        before: dict[tuple[str, str], StreamView],
    ) -> StreamView:
        old = before.get((stream, relay))
        old_lag = {c.name: c.lag for c in old.consumers} if old else {}
        consumers = []
        for name, state in sorted(dict(info["consumers"]).items()):
            lag, out = int(state["lag"]), int(state["out"])
            grew = name in old_lag and lag > old_lag[name]
            consumers.append(
                ConsumerView(
                    str(name),
                    lag,
                    out,
                    f"falling behind (lag +{lag - old_lag[name]})" if grew else "",
                )
            )
        dead = int(info["dead_letters"])
        # The relay's own finding (PROTOCOL.md 9.10), for one this observer cannot see.
        reported = str(info.get("conflict") or "")
        marks = [conflict] if conflict else [f"conflict: {reported}"] if reported else []
        if old is not None and dead > old.dead_letters:
            marks.append(f"dead letters +{dead - old.dead_letters}")
        return StreamView(
            stream=stream,
            relay=relay,
            messages=int(info["messages"]),
            bytes=int(info["bytes"]),
            first_seq=int(info["first_seq"]),
            last_seq=int(info["last_seq"]),
            dead_letters=dead,
            consumers=tuple(consumers),
            mark="; ".join(marks),
            conflict=bool(conflict or reported),
        )
