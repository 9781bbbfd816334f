"""Every tunable of a node, in one frozen dataclass.

All durations are seconds as floats; all sizes are bytes unless a name says
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIN_MESSAGE_BYTES", "MeshConfig"]

#: The smallest max_message_bytes: every node accepts a coalesced burst
#: (up to 8 KiB of payloads, a topic of up to 1 KiB, the header).
MIN_MESSAGE_BYTES = 8 * 1024 + 1024 + 64


@dataclass(frozen=True)
class MeshConfig:
    """Tunables of a :class:`meshq.Node`. Defaults suit a LAN.

    Raises ``ValueError`` at construction if the timings are inconsistent.
    """

    #: Seconds between heartbeats sent to each peer.
    heartbeat_interval: float = 0.5
    #: A peer silent for this long (seconds) is reported suspect.
    suspect_after: float = 1.5
    #: A peer silent for this long (seconds) is reported gone and dropped.
    gone_after: float = 3.0
    #: Seconds between HELLOs to a discovered endpoint that has not answered.
    hello_interval: float = 0.5
    #: Seconds between HELLOs re-sent to every peer with the current peer
    #: list, so that a mesh formed through seeds heals after a partition.
    gossip_interval: float = 5.0
    #: Control port to bind; 0 picks a free port. Seeds need a fixed one.
    control_port: int = 0
    #: Publish socket port to bind; 0 picks a free port.
    publish_port: int = 0
    #: Service (request/reply) socket port, bound at start when the node
    #: answers introspection, else on the first serve(); 0: a free port.
    service_port: int = 0
    #: Messages queued per subscriber connection before new ones are dropped
    #: (ZeroMQ SNDHWM on the publish socket, RCVHWM on subscriptions).
    publish_hwm: int = 100_000
    subscribe_hwm: int = 100_000
    #: Largest message (bytes) any socket accepts; larger ones drop the
    #: connection at the ZeroMQ level (ZMQ_MAXMSGSIZE).
    max_message_bytes: int = 64 * 1024 * 1024
    #: Largest control message body (bytes), such as a HELLO.
    max_control_bytes: int = 64 * 1024
    #: Longest topic, in UTF-8 bytes.
    max_topic_bytes: int = 1024
    #: Most peers a node keeps; further HELLOs are counted and dropped. Each
    #: peer costs a socket plus a TCP connection per subscription: mind the
    #: process's file descriptor limit (often 1024) when raising this.
    max_peers: int = 256
    #: Most endpoints learnt from gossip remembered for dialling; beyond it,
    #: and beyond max_peers + max_dialing endpoints from all sources, more
    #: are counted (``dial_refused``) and ignored.
    max_dialing: int = 64
    #: Most user headers one HELLO may carry.
    max_headers: int = 64
    #: Topics a node keeps publishing state (prefix, sequence) for; beyond
    #: this the oldest is forgotten and its sequence restarts at 1.
    max_topics: int = 10_000
    #: Peer events kept for ``Node.events()`` before the oldest are dropped.
    event_queue_size: int = 10_000
    #: Seconds ``close()`` waits for queued goodbyes to leave.
    linger: float = 0.2
    #: Seconds a connection may spend in its ZeroMQ/CURVE handshake before
    #: it is dropped (ZMQ_HANDSHAKE_IVL).
    handshake_timeout: float = 5.0
    #: Largest msgpack payload (bytes) decoded; raw bytes payloads may go
    #: up to max_message_bytes. msgpack can expand ~78x in memory (a
    #: payload of nested empty arrays), so this bound is kept smaller.
    max_msgpack_bytes: int = 4 * 1024 * 1024
    #: Most mDNS services remembered at once; a flood of unique names
    #: beyond it is counted and ignored. And the largest TXT record (bytes).
    max_mdns_records: int = 1024
    max_txt_bytes: int = 1024
    #: A peer that sends ``max_offences`` malformed control messages within
    #: ``offence_window`` seconds is cut off for ``ban_time`` seconds: it
    #: leaves the peer table, its messages are dropped (``banned_dropped``)
    #: and, with security, its key may not connect again meanwhile.
    max_offences: int = 10
    offence_window: float = 10.0
    ban_time: float = 60.0
    #: Answer ``meshq/introspect`` (docs/PROTOCOL.md 16), which ``meshq top``,
    #: ``meshq exporter`` and ``meshq doctor`` ask, from the start. It costs
    #: the node its service socket and thread from the start (asleep until a
    #: request comes) and nothing on the message path. False: tools do not
    #: see the node, and its service socket opens on the first serve().
    introspection: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0 seconds")
        if not self.heartbeat_interval < self.suspect_after < self.gone_after:
            raise ValueError(
                "need heartbeat_interval < suspect_after < gone_after (seconds), got "
                f"{self.heartbeat_interval}, {self.suspect_after}, {self.gone_after}"
            )
        if self.hello_interval <= 0 or self.gossip_interval <= 0:
            raise ValueError("hello_interval and gossip_interval must be > 0 seconds")
        for name in ("control_port", "publish_port", "service_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be 0..65535, got {port}")
        for name in (
            "publish_hwm",
            "subscribe_hwm",
            "max_message_bytes",
            "max_control_bytes",
            "max_topic_bytes",
            "max_peers",
            "max_dialing",
            "max_topics",
            "max_headers",
            "event_queue_size",
            "handshake_timeout",
            "max_msgpack_bytes",
            "max_mdns_records",
            "max_txt_bytes",
            "max_offences",
            "offence_window",
            "ban_time",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            # Coalesced bursts travel in frames of up to 8 KiB (PROTOCOL.md 8.4).
            raise ValueError(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}")
