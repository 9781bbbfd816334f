"""The node: a member of a mesh, as the application sees it.

:class:`Node` is a facade. Its machinery (sockets, threads, the control
loop, the state the control thread shares) is the node's
:class:`~meshq.runtime.Runtime`; publish/subscribe calls are in
meshq/node_pubsub.py, request/reply calls in meshq/node_services.py, and
the peer calls here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence

from .config import MeshConfig
from .errors import Timeout
from .interfaces import resolve_interfaces
from .introspect import install as install_introspection
from .node_pubsub import DurableMessageHandler, MessageHandler, PubSubApi
from .node_services import DIRECT_SERVICE, DirectHandler, ServiceApi, TaskHandler
from .peers import EventKind, Peer, PeerEvent, PeerState
from .runtime import Runtime, new_node_id
from .security import Curve, Rejection
from .signals import sigterm_as_interrupt
from .state import PeerCallback, RejectionCallback
from .subscription import refresh_this_thread
from .wire import Limits

__all__ = [
    "DIRECT_SERVICE",
    "DirectHandler",
    "DurableMessageHandler",
    "MessageHandler",
    "STATS_COUNTERS",
    "Node",
    "PeerCallback",
    "RejectionCallback",
    "TaskHandler",
]

log = logging.getLogger("meshq.node")

#: Every counter of :meth:`Node.stats`, present from the start at 0, in the
#: order docs/PROTOCOL.md (section 11) lists them: control plane, application
#: side, request/reply (tests/test_stats.py checks the two agree).
STATS_COUNTERS = (
    "protocol_errors",
    "other_mesh",
    "unknown_sender",
    "hello_rejected",
    "dial_refused",
    "control_dropped",
    "banned_dropped",
    "peers_banned",
    "dial_refused_key",
    "rejected",
    "internal_errors",
    "events_dropped",
    "callback_events_dropped",
    "callback_errors",
    "message_handler_errors",
    "messages_missed",
    "requests_served",
    "handler_errors",
    "service_protocol_errors",
    "service_callers_banned",
    "service_banned_dropped",
    "service_replies_dropped",
    "reply_protocol_errors",
    "late_replies",
    "request_timeouts",
    "request_retries",
    "requests_not_sent",
)


class Node(PubSubApi, ServiceApi):
    """A member of a mesh. Starts at construction; use as a context manager.

    Args:
        name: a human-friendly name (default: ``node-`` plus the id's start).
        mesh: nodes only join nodes of the same mesh name.
        interfaces: IPv4 addresses to listen and advertise on (default: every
            non-loopback address, or ``MESHQ_INTERFACES``). ``["127.0.0.1"]``
            makes a loopback-only mesh.
        seeds: control endpoints (``"tcp://198.18.0.5:7600"``) to join without
            multicast; one seed is enough, its peers are learned from it.
        config: tunables; see :class:`MeshConfig`.
        headers: small str -> str facts about this node, shown to peers.
        discovery: False to skip mDNS entirely (seeds only).
        security: ``meshq.Curve(secret_key_file, allow=...)`` to encrypt and
            authenticate every connection with CURVE; only peers whose keys
            are in the allowlist exchange anything with this node. Seeds then
            need their key: ``"tcp://198.18.0.5:7600#KEY"``.

    Raises ValueError for a bad interface, seed, name, mesh or headers (or a
    seed without a key under security), meshq.BindError if a port cannot be
    bound.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        mesh: str = "default",
        interfaces: Sequence[str] | None = None,
        seeds: Sequence[str] = (),
        config: MeshConfig | None = None,
        headers: Mapping[str, str] | None = None,
        discovery: bool = True,
        security: Curve | None = None,
    ) -> None:
        self.config = config or MeshConfig()
        #: The CURVE policy this node enforces, or None for no security.
        self.security = security
        raw_id = new_node_id()
        #: This node's id: 32 hex digits, new at every start.
        self.id = raw_id.hex()
        self.name = name or f"node-{self.id[:8]}"
        self.mesh = mesh
        self.interfaces = resolve_interfaces(interfaces)
        self._blocking_topics: set[str] = set()  # declared; saves a lock per publish
        #: The node's machinery, for front-ends and extensions (AsyncNode
        #: builds on it); applications need only the methods of Node.
        self.runtime = Runtime(
            node_id=raw_id,
            name=self.name,
            mesh=mesh,
            interfaces=self.interfaces,
            seeds=seeds,
            config=self.config,
            headers=headers or {},
            discovery=discovery,
            security=security,
        )
        #: Where peers connect to this node's publish socket, one per interface.
        self.publish_endpoints = self.runtime.publisher.endpoints
        if self.config.introspection:
            try:
                install_introspection(self)  # meshq top and friends see every node
            except BaseException:
                self.close()
                raise
        log.info("node %s (%s) listening on %s", self.name, self.id[:8], self.control_endpoints)

    @property
    def headers(self) -> Mapping[str, str]:
        """This node's headers, as peers see them (see :meth:`set_header`)."""
        return self.runtime.headers

    @property
    def limits(self) -> Limits:
        """The size limits this node enforces on what it receives (from its config)."""
        return self.runtime.limits

    @property
    def control_endpoints(self) -> tuple[str, ...]:
        """Where this node's control socket listens, one per interface."""
        return self.runtime.control_endpoints

    @property
    def service_endpoints(self) -> tuple[str, ...]:
        """Where this node's service socket listens, one per interface (empty until it serves)."""
        return self.runtime.service_endpoints()

    @property
    def closed(self) -> bool:
        return self.runtime.closed

    # ------------------------------------------------------------------
    # Peers

    def peers(self) -> list[Peer]:
        """Every peer this node knows, with its state."""
        return self.runtime.state.peers()

    def wait_for_peers(self, n: int, timeout: float | None = None) -> list[Peer]:
        """Block until at least ``n`` peers are alive and connected; return them.

        Raises meshq.Timeout after ``timeout`` seconds, meshq.Closed if the
        node closes meanwhile.
        """

        def enough(peers: list[Peer]) -> list[Peer] | None:
            alive = [peer for peer in peers if peer.state is PeerState.ALIVE]
            return alive if len(alive) >= n else None

        try:
            alive = self.runtime.state.wait_peers(enough, timeout)
        except Timeout:
            have = sum(1 for peer in self.peers() if peer.state is PeerState.ALIVE)
            raise Timeout(f"{have} of {n} peers after {timeout} s") from None
        # Peers that just joined are publishers this thread's subscriptions
        # should hear: connect them now rather than at the next recv().
        refresh_this_thread()
        return alive

    def on_peer_joined(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` for every peer that is or becomes alive. A decorator too.

        Peers that joined before the callback was registered are reported to
        it as well, once each, so registering after ``Node()`` misses nobody.
        Callbacks run on the node's event thread, never on the I/O thread;
        an exception in one is logged and counted as ``callback_errors``.
        """
        self.runtime.state.add_callback(EventKind.JOINED, callback)
        return callback

    def on_peer_left(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` when a peer leaves (goodbye or timeout)."""
        self.runtime.state.add_callback(EventKind.LEFT, callback)
        return callback

    def on_peer_suspect(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` when a peer falls silent past ``suspect_after``."""
        self.runtime.state.add_callback(EventKind.SUSPECT, callback)
        return callback

    def events(self, timeout: float | None = None) -> Iterator[PeerEvent]:
        """Yield peer events as they happen, for ``timeout`` seconds in all.

        Events that occurred before the call and were not yet pulled come
        first (up to ``event_queue_size``; older ones are dropped and counted
        as ``events_dropped``). Ends at the deadline or when the node closes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.runtime.state.next_event(remaining)
            if event is None:
                return
            yield event

    def stats(self) -> dict[str, int]:
        """Counters by name (docs/PROTOCOL.md, section 11); each present from the start, at 0."""
        stats = dict.fromkeys(STATS_COUNTERS, 0)
        stats.update(self.runtime.state.stats())
        stats["rejected"] = self.runtime.rejected()
        return stats

    def rejections(self) -> list[Rejection]:
        """Connections refused by security, oldest first (the latest 1000).

        Each names the address, the key (if any) and the reason, such as
        ``Rejection("198.18.0.3", "<key>", "key not in allowlist", ...)``;
        each is also logged under ``meshq.security``.
        """
        return self.runtime.rejections()

    def on_rejected(self, callback: RejectionCallback) -> RejectionCallback:
        """Call ``callback(rejection)`` for each connection security refuses. A decorator too.

        Runs on the node's event thread, like the peer callbacks; see
        :meth:`rejections` for what a rejection holds.
        """
        self.runtime.add_rejection_callback(callback)
        return callback

    # ------------------------------------------------------------------
    # Lifecycle

    def run(self, timeout: float | None = None) -> None:
        """Block while the node serves: until it is closed, Ctrl-C or SIGTERM, or ``timeout`` s.

        For a process whose only job is to offer services or callbacks.
        Ctrl-C (SIGINT) and SIGTERM, which systemd and docker stop a service
        with, return normally: the ``with`` block then says goodbye. (Called
        in the main thread, this turns SIGTERM into KeyboardInterrupt while
        it waits, unless the application set a SIGTERM handler of its own.)
        """
        with sigterm_as_interrupt():
            try:
                self.runtime.state.wait_peers(lambda _: True if self.closed else None, timeout)
            except (KeyboardInterrupt, Timeout):
                return
            except Exception:
                if not self.closed:
                    raise

    def close(self) -> None:
        """Say goodbye (BYE to peers, mDNS goodbye) and release everything.

        Subscriptions of the calling thread close at once; those of other
        threads raise meshq.Closed on their next call. Safe to call twice.
        """
        self.runtime.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Node(name={self.name!r}, id={self.id[:8]}, mesh={self.mesh!r})"
