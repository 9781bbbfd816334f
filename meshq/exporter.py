"""``meshq exporter``: the whole mesh as Prometheus metrics (needs ``prometheus-client``).

One scrape returns every node, labelled ``node`` (and ``peer``, ``topic``,
``publisher``, ``prefix``, ``service``, ``stream``, ``relay``,
``consumer``). The mesh is collected every ``interval`` seconds on the
exporter's main thread (the observer node's request calls belong to one
thread); a scrape serves the latest collect, so scraping often costs the
mesh nothing more. Metric names are listed in README.md ("Operating a mesh").
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.registry import CollectorRegistry

from .collector import Collector, MeshView

__all__ = ["MeshMetrics", "metrics_of", "run_exporter"]

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metrics_of(view: MeshView) -> Iterator[Metric]:
    """The metric families of one view."""
    up = GaugeMetricFamily(
        "meshq_node_up", "1 for a node that answered", labels=["node", "id", "version"]
    )
    uptime = GaugeMetricFamily(
        "meshq_node_uptime_seconds", "seconds since the node started", labels=["node"]
    )
    peers = GaugeMetricFamily(
        "meshq_node_peers", "peers in the node's table", labels=["node", "state"]
    )
    for n in view.nodes:
        up.add_metric([n.name, n.id, n.version], 1)
        uptime.add_metric([n.name], n.uptime)
        peers.add_metric([n.name, "alive"], n.peers_alive)
        peers.add_metric([n.name, "suspect"], n.peers_suspect)
    rtt = GaugeMetricFamily(
        "meshq_peer_rtt_seconds",
        "smoothed round-trip time from a node to a peer, from heartbeats (when measured)",
        labels=["node", "peer"],
    )
    for snap in view.snapshots:
        for peer in snap.peers:
            if peer.rtt is not None:
                rtt.add_metric([snap.name, peer.name], peer.rtt)
    yield from (up, uptime, peers, rtt)
    missing = GaugeMetricFamily(
        "meshq_nodes_not_answering", "nodes that did not answer the last collect"
    )
    missing.add_metric([], len(view.missing))
    yield missing

    counters: dict[str, CounterMetricFamily] = {}
    for n in view.nodes:
        for key, value in sorted(n.stats.items()):
            name = "meshq_" + _NAME.sub("_", key)
            family = counters.get(name)
            if family is None:
                family = counters[name] = CounterMetricFamily(
                    name, f"node counter {key} (see node.stats())", labels=["node"]
                )
            family.add_metric([n.name], value)
    yield from counters.values()

    published = CounterMetricFamily(
        "meshq_topic_published", "messages a node published on a topic", labels=["node", "topic"]
    )
    received = GaugeMetricFamily(
        "meshq_topic_received_seq",
        "last sequence number a node's subscription received from a publisher on a topic",
        labels=["node", "prefix", "topic", "publisher"],
    )
    gaps = CounterMetricFamily(
        "meshq_subscription_gaps",
        "messages a subscription knows it missed",
        labels=["node", "prefix"],
    )
    dropped = CounterMetricFamily(
        "meshq_subscription_dropped",
        "malformed frames a subscription dropped",
        labels=["node", "prefix"],
    )
    names = {snap.id: snap.name for snap in view.snapshots}
    for snap in view.snapshots:
        for topic in snap.topics:
            published.add_metric([snap.name, topic.topic], topic.published)
        for row in snap.streams:
            received.add_metric(
                [snap.name, row.prefix, row.topic, names.get(row.sender, row.sender[:8])], row.seq
            )
        for sub in snap.subscriptions:
            gaps.add_metric([snap.name, sub.prefix], sub.gaps)
            dropped.add_metric([snap.name, sub.prefix], sub.dropped)
    yield from (published, received, gaps, dropped)

    providers = GaugeMetricFamily(
        "meshq_service_providers", "nodes offering a service", labels=["service"]
    )
    served = CounterMetricFamily(
        "meshq_service_requests", "requests a node's service answered", labels=["node", "service"]
    )
    failed = CounterMetricFamily(
        "meshq_service_errors", "requests whose handler raised", labels=["node", "service"]
    )
    latency = GaugeMetricFamily(
        "meshq_service_latency_seconds",
        "handler time of the latest requests (up to 1024), by quantile",
        labels=["node", "service", "quantile"],
    )
    for service in view.services:
        providers.add_metric([service.name], len(service.providers))
        for call in service.calls:
            if call.served is None or call.errors is None:
                continue  # a provider that does not answer introspection
            served.add_metric([call.node, service.name], call.served)
            failed.add_metric([call.node, service.name], call.errors)
            for quantile, seconds in (("0.5", call.p50), ("0.99", call.p99)):
                if seconds is not None:
                    latency.add_metric([call.node, service.name, quantile], seconds)
    yield from (providers, served, failed, latency)

    labels = ["stream", "relay"]
    stream_families = {
        "messages": GaugeMetricFamily("meshq_stream_messages", "messages stored", labels=labels),
        "bytes": GaugeMetricFamily("meshq_stream_bytes", "payload bytes stored", labels=labels),
        "first_seq": GaugeMetricFamily(
            "meshq_stream_first_seq", "oldest stored sequence", labels=labels
        ),
        "last_seq": GaugeMetricFamily(
            "meshq_stream_last_seq", "newest stored sequence", labels=labels
        ),
        "dead_letters": GaugeMetricFamily(
            "meshq_stream_dead_letters", "dead letters kept", labels=labels
        ),
    }
    lag = GaugeMetricFamily(
        "meshq_consumer_lag",
        "messages a durable consumer has not acknowledged",
        labels=[*labels, "consumer"],
    )
    out = GaugeMetricFamily(
        "meshq_consumer_outstanding",
        "messages delivered, not yet acknowledged",
        labels=[*labels, "consumer"],
    )
    conflict = GaugeMetricFamily(
        "meshq_stream_conflict", "1 while a stream has a relay conflict", labels=labels
    )
    for st in view.streams:
        for attribute, gauge in stream_families.items():
            gauge.add_metric([st.stream, st.relay], getattr(st, attribute))
        conflict.add_metric([st.stream, st.relay], 1 if st.conflict else 0)
        for c in st.consumers:
            lag.add_metric([st.stream, st.relay, c.name], c.lag)
            out.add_metric([st.stream, st.relay, c.name], c.outstanding)
    yield from stream_families.values()
    yield from (lag, out, conflict)
    yield from _node_consumers(view)


def _node_consumers(view: MeshView) -> Iterator[Metric]:
    """Durable consumers as the nodes running them count them."""
    labels = ["node", "prefix", "consumer"]
    delivered = CounterMetricFamily(
        "meshq_consumer_delivered", "messages a durable consumer handed to its node", labels=labels
    )
    acked = CounterMetricFamily(
        "meshq_consumer_acked", "messages the node acknowledged to the consumer", labels=labels
    )
    pending = GaugeMetricFamily(
        "meshq_consumer_pending",
        "messages handed to the application, not yet acknowledged or naked",
        labels=labels,
    )
    buffered = GaugeMetricFamily(
        "meshq_consumer_buffered", "messages fetched, not yet handed out", labels=labels
    )
    for c in view.consumers:
        key = [c.node, c.prefix, c.name]
        delivered.add_metric(key, c.delivered)
        acked.add_metric(key, c.acked)
        pending.add_metric(key, c.pending)
        buffered.add_metric(key, c.buffered)
    yield from (delivered, acked, pending, buffered)


class MeshMetrics(PromCollector):
    """A prometheus-client collector serving the latest :class:`MeshView`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view: MeshView | None = None

    def update(self, view: MeshView) -> None:
        with self._lock:
            self._view = view

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            view = self._view
        if view is not None:
            yield from metrics_of(view)


def run_exporter(
    collector: Collector,
    *,
    port: int,
    address: str = "127.0.0.1",
    interval: float = 1.0,
    duration: float | None = None,
    registry: CollectorRegistry = REGISTRY,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve ``/metrics`` on ``address:port``; collect every ``interval`` s.

    Calls ``on_ready()`` once the port is bound. Runs until Ctrl-C or
    ``duration`` s. Returns the exit status: 0. Raises OSError if the port
    cannot be bound.
    """
    metrics = MeshMetrics()
    metrics.update(collector.collect())
    registry.register(metrics)
    server, thread = start_http_server(port, addr=address, registry=registry)
    if on_ready is not None:
        on_ready()  # the port is bound: scrapes are answered from now on
    stop = threading.Event()  # paces the collects; nothing else sets it
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            stop.wait(
                interval
                if deadline is None
                else min(interval, max(0.0, deadline - time.monotonic()))
            )
            metrics.update(collector.collect())
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        registry.unregister(metrics)
    return 0
