"""The node: identity, control plane, peer table, and the publish socket.

One background thread (the control thread) owns the control ROUTER, one
DEALER per peer, and the peer table; every control socket is used from that
thread only. Other threads talk to it through typed commands on a queue plus
a wake-up pipe. Peer events reach the application on a separate dispatcher
thread, so a slow callback never stalls heartbeats.

The publish socket (meshq/publishing.py) belongs to the application side:
``publish`` sends straight into it under a lock, with no thread hop.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import zmq

from .config import MeshConfig
from .discovery import Candidate, Discovery, MdnsDiscovery, SeedDiscovery
from .errors import Closed, ProtocolError, Timeout
from .interfaces import choose_endpoint, local_networks, resolve_interfaces
from .peers import Dialer, EventKind, Peer, PeerEvent, PeerState, PeerTable
from .publishing import PublishSocket, bind_all
from .ratelimit import RateLimitedLog
from .sockets import SocketFactory
from .subscription import PublisherDirectory, Subscription
from .wire import (
    Bye,
    ControlMessage,
    Hello,
    Limits,
    Ping,
    check_identity,
    decode_control,
    encode_control,
    routing_id,
)

__all__ = ["Node"]

log = logging.getLogger("meshq.node")

PeerCallback = Callable[[Peer], None]

# How often the control thread re-evaluates liveness; detection lands within
# this much of the configured timeouts.
_TICK = 0.05
_DEALER_HWM = 8  # control messages queued per peer while it is unreachable
_MAX_BATCH = 256  # control messages handled before looking at the clock again


@dataclass(frozen=True)
class _Found:
    candidate: Candidate


@dataclass(frozen=True)
class _Lost:
    candidate: Candidate


@dataclass(frozen=True)
class _Stop:
    pass


_Command = _Found | _Lost | _Stop


class Node:
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

    Raises ValueError for a bad interface, seed, name, mesh or headers, and
    zmq.ZMQError if a port cannot be bound.
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
    ) -> None:
        self.config = config or MeshConfig()
        self._raw_id = _new_node_id()
        #: This node's id: 32 hex digits, new at every start.
        self.id = self._raw_id.hex()
        self.name = name or f"node-{self.id[:8]}"
        self.mesh = mesh
        self.headers = dict(headers or {})
        self.interfaces = resolve_interfaces(interfaces)
        self._networks = local_networks(self.interfaces)
        self._limits = Limits(
            max_control_bytes=self.config.max_control_bytes,
            max_topic_bytes=self.config.max_topic_bytes,
            max_peers=self.config.max_peers,
            max_headers=self.config.max_headers,
            max_payload_bytes=self.config.max_message_bytes,
        )
        check_identity(self.name, mesh, self.headers, len(self.interfaces), self._limits)
        self._discoveries: list[Discovery] = []
        seed_discovery = SeedDiscovery(seeds)  # validates before anything starts
        self._context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
        self._sockets = SocketFactory(self.config)
        self._closed = False
        self._close_lock = threading.Lock()

        # Application side: publishing goes straight into this socket.
        self._publisher = PublishSocket(
            self._context,
            self._sockets,
            node_id=self._raw_id,
            interfaces=self.interfaces,
            port=self.config.publish_port,
            limits=self._limits,
        )
        self.publish_endpoints = self._publisher.endpoints
        self._local_publish = self._publisher.local_endpoint
        self._directory = PublisherDirectory()
        self._directory.update({self.id: self._local_publish})

        # Shared with the control thread.
        self._commands: collections.deque[_Command] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._state = threading.Condition()
        self._peer_snapshot: list[Peer] = []
        self._stats: collections.Counter[str] = collections.Counter()
        self._event_queue: collections.deque[PeerEvent] = collections.deque(
            maxlen=self.config.event_queue_size
        )
        self._callbacks: dict[EventKind, list[PeerCallback]] = collections.defaultdict(list)
        # (callbacks registered when the event happened, event); None stops.
        self._dispatch_queue: queue.SimpleQueue[tuple[list[PeerCallback], PeerEvent] | None] = (
            queue.SimpleQueue()
        )

        self._control_endpoints: tuple[str, ...] = ()
        started = threading.Event()
        startup_error: list[BaseException] = []
        self._control_thread = threading.Thread(
            target=self._control_main,
            args=(started, startup_error),
            name=f"meshq-control-{self.id[:8]}",
            daemon=True,
        )
        self._control_thread.start()
        started.wait()
        if startup_error:
            self._publisher.close()
            self._context.term()
            raise startup_error[0]
        self._dispatcher = threading.Thread(
            target=self._dispatch_main, name=f"meshq-events-{self.id[:8]}", daemon=True
        )
        self._dispatcher.start()

        control_port = int(self.control_endpoints[0].rpartition(":")[2])
        if discovery:
            self._discoveries.append(
                MdnsDiscovery(
                    node_id=self._raw_id,
                    name=self.name,
                    mesh=mesh,
                    interfaces=self.interfaces,
                    control_port=control_port,
                )
            )
        self._discoveries.append(seed_discovery)
        try:
            for source in self._discoveries:
                source.start(self._on_found, self._on_lost)
        except BaseException:
            self.close()
            raise
        log.info("node %s (%s) listening on %s", self.name, self.id[:8], self._control_endpoints)

    # ------------------------------------------------------------------
    # Public API

    def publish(self, topic: str, data: object) -> None:
        """Send ``data`` (bytes, or anything msgpack can encode) to subscribers of ``topic``.

        Never blocks: a subscriber whose queue is full (``publish_hwm``)
        misses the message, and sees the gap in sequence numbers. Safe from
        any thread. Raises ValueError for a bad topic, TypeError for data
        msgpack cannot encode, meshq.Closed after close().
        """
        self._publisher.publish(topic, data)

    def publish_many(self, topic: str, items: Iterable[object]) -> int:
        """Publish many messages on one topic at once; return how many.

        Same delivery as calling :meth:`publish` for each item, but up to
        1024 messages travel in one frame, which is several times faster for
        small messages. Subscribers still receive them one by one.
        """
        return self._publisher.publish_many(topic, items)

    def check_topic(self, topic: str) -> None:
        """Raise ValueError unless ``topic`` can be published (1..max_topic_bytes, no NUL)."""
        self._publisher.check_topic(topic)

    def subscribe(self, prefix: str) -> Subscription:
        """Receive every message whose topic starts with ``prefix``, from all peers.

        The subscription belongs to the calling thread. Messages published
        before it connected to a publisher are not received (as in ZeroMQ).
        Raises meshq.Closed after close(), ValueError for an oversized prefix.
        """
        self._check_prefix(prefix)
        return Subscription(
            prefix,
            context=self._context,
            factory=self._sockets,
            directory=self._directory,
            limits=self._limits,
        )

    def peers(self) -> list[Peer]:
        """Every peer this node knows, with its state."""
        with self._state:
            return list(self._peer_snapshot)

    def wait_for_peers(self, n: int, timeout: float | None = None) -> list[Peer]:
        """Block until at least ``n`` peers are alive and connected; return them.

        Raises meshq.Timeout after ``timeout`` seconds, meshq.Closed if the
        node closes meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            while True:
                alive = [p for p in self._peer_snapshot if p.state is PeerState.ALIVE]
                if len(alive) >= n:
                    return alive
                self._check_open()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"{len(alive)} of {n} peers after {timeout} s")
                self._state.wait(remaining)

    def on_peer_joined(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` for every peer that is or becomes alive. A decorator too.

        Peers that joined before the callback was registered are reported to
        it as well, once each, so registering after ``Node()`` misses nobody.
        Callbacks run on the node's event thread, never on the I/O thread;
        an exception in one is logged and counted as ``callback_errors``.
        """
        with self._state:
            self._callbacks[EventKind.JOINED].append(callback)
            for peer in self._peer_snapshot:
                self._dispatch_queue.put(([callback], PeerEvent(EventKind.JOINED, peer)))
        return callback

    def on_peer_left(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` when a peer leaves (goodbye or timeout)."""
        with self._state:
            self._callbacks[EventKind.LEFT].append(callback)
        return callback

    def on_peer_suspect(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` when a peer falls silent past ``suspect_after``."""
        with self._state:
            self._callbacks[EventKind.SUSPECT].append(callback)
        return callback

    def events(self, timeout: float | None = None) -> Iterator[PeerEvent]:
        """Yield peer events as they happen, for ``timeout`` seconds in all.

        Events that occurred before the call and were not yet pulled come
        first (up to ``event_queue_size``; older ones are dropped and counted
        as ``events_dropped``). Ends at the deadline or when the node closes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._state:
                while not self._event_queue:
                    if self._closed:
                        return
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._state.wait(remaining)
                event = self._event_queue.popleft()
            yield event

    def stats(self) -> dict[str, int]:
        """Counters: protocol_errors, unknown_sender, other_mesh, hello_rejected, ..."""
        with self._state:
            return dict(self._stats)

    @property
    def control_endpoints(self) -> tuple[str, ...]:
        """Where this node's control socket listens, one per interface."""
        return self._control_endpoints

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Say goodbye (BYE to peers, mDNS goodbye) and release everything.

        Subscriptions of the calling thread close at once; those of other
        threads raise meshq.Closed on their next call. Safe to call twice.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._directory.close()  # subscriptions learn first, before the slow goodbyes
        self._send_command(_Stop())
        self._control_thread.join()
        for source in self._discoveries:
            try:
                source.close()
            except Exception:
                log.exception("discovery backend failed to close")
        self._publisher.close()
        self._dispatch_queue.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()
        with self._state:
            self._state.notify_all()
        os.close(self._wake_read)
        os.close(self._wake_write)
        # term() waits for sockets still open in other threads (subscriptions
        # that will close on their next call); never block close() on them.
        terminator = threading.Thread(target=self._context.term, name="meshq-term", daemon=True)
        terminator.start()
        terminator.join(self.config.linger)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Node(name={self.name!r}, id={self.id[:8]}, mesh={self.mesh!r})"

    # ------------------------------------------------------------------
    # Application side helpers

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("node is closed")

    def _check_prefix(self, prefix: str) -> None:
        self._check_open()
        encoded = prefix.encode()
        if len(encoded) > self.config.max_topic_bytes or b"\0" in encoded:
            raise ValueError(f"prefix must be at most {self.config.max_topic_bytes} bytes, no NUL")

    def _send_command(self, command: _Command) -> None:
        self._commands.append(command)
        try:
            os.write(self._wake_write, b"w")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the node is closing

    def _on_found(self, candidate: Candidate) -> None:
        if not self._closed:
            self._send_command(_Found(candidate))

    def _on_lost(self, candidate: Candidate) -> None:
        if not self._closed:
            self._send_command(_Lost(candidate))

    def _dispatch_main(self) -> None:
        while True:
            item = self._dispatch_queue.get()
            if item is None:
                return
            callbacks, event = item
            for callback in callbacks:
                try:
                    callback(event.peer)
                except Exception:
                    self._count("callback_errors")
                    log.exception("peer event callback %r failed", callback)

    def _count(self, what: str, n: int = 1) -> None:
        with self._state:
            self._stats[what] += n

    # ------------------------------------------------------------------
    # Control thread

    def _control_main(self, started: threading.Event, error: list[BaseException]) -> None:
        try:
            control = _ControlPlane(self)
        except BaseException as exc:
            error.append(exc)
            started.set()
            return
        self._control_endpoints = control.endpoints
        started.set()
        try:
            control.run()
        except Exception:
            log.exception("control thread crashed; node %s is deaf now", self.name)
        finally:
            control.close()


class _ControlPlane:
    """State and sockets of the control thread; lives and dies on that thread."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._config = node.config
        self._context = node._context
        self._router = node._sockets.make(node._context, zmq.ROUTER)
        port = bind_all(self._router, node.interfaces, self._config.control_port)
        self.endpoints = tuple(f"tcp://{ip}:{port}" for ip in node.interfaces)
        self._dealers: dict[str, zmq.Socket] = {}  # type: ignore[type-arg]
        self._links = 0  # DEALERs made so far; numbers their routing ids
        self._table = PeerTable(self._config, self._choose)
        self._dialer = Dialer(self._config)
        self._bad_input_log = RateLimitedLog(log, interval=5.0)
        self._internal_log = RateLimitedLog(log, interval=5.0)
        self._running = True

    def _choose(self, endpoints: tuple[str, ...]) -> str:
        # Reuse a link we already dial rather than open a second one to the
        # same peer (a multi-homed peer reached by two seeds, say).
        for endpoint in endpoints:
            if endpoint in self._dealers:
                return endpoint
        return choose_endpoint(endpoints, self._node._networks)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._node._wake_read, zmq.POLLIN)
        now = time.monotonic()
        next_tick = now
        next_ping = now + self._config.heartbeat_interval
        next_gossip = now + self._config.gossip_interval
        ping = encode_control(Ping(self._node._raw_id))
        while self._running:
            wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            ready = dict(poller.poll(wait_ms))
            if self._node._wake_read in ready:
                try:
                    os.read(self._node._wake_read, 4096)
                except BlockingIOError:
                    pass
            try:
                self._run_commands()
                if self._router in ready:
                    self._receive()
                now = time.monotonic()
                if now < next_tick:
                    continue
                next_tick = now + _TICK
                if now >= next_gossip:
                    # Re-announce with fresh gossip, so two nodes that lost
                    # each other but still see a common peer find each other
                    # again even without mDNS. It counts as a heartbeat.
                    next_gossip = now + self._config.gossip_interval
                    next_ping = now + self._config.heartbeat_interval
                    self._broadcast(self._hello(reply=False))
                elif now >= next_ping:
                    next_ping = now + self._config.heartbeat_interval
                    self._broadcast(ping)
                self._tick(now)
            except Exception:  # a bug must not leave the node deaf and mute
                self._node._count("internal_errors")
                self._internal_log.warning("control loop error", exc_info=True)

    def _run_commands(self) -> None:
        commands = self._node._commands
        while commands:
            command = commands.popleft()
            now = time.monotonic()
            if isinstance(command, _Stop):
                self._running = False
            elif isinstance(command, _Found):
                candidate = command.candidate
                self._dialer.add(candidate.endpoint, candidate.node_id, now, lasting=True)
                self._hello_due(now)
            elif isinstance(command, _Lost):
                self._dialer.remove(command.candidate.endpoint)

    def _receive(self) -> None:
        for _ in range(_MAX_BATCH):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            if len(frames) != 2:
                self._reject(f"{len(frames)} frames in a control message")
                continue
            try:
                message = decode_control(frames[0], frames[1], self._node._limits)
            except ProtocolError as exc:
                self._reject(exc.reason)
                continue
            try:
                self._handle(message, now)
            except Exception:  # a bug must not make the node deaf to everyone else
                self._node._count("internal_errors")
                self._internal_log.warning(
                    "control message from %s could not be handled",
                    frames[0][:16].hex(),
                    exc_info=True,
                )

    def _handle(self, message: ControlMessage, now: float) -> None:
        if isinstance(message, Hello):
            self._on_hello(message, now)
        elif isinstance(message, Bye):
            self._dialer.forget_peer(message.sender)
            self._apply(self._table.bye(message.sender))
        elif message.sender in self._table:
            self._apply(self._table.heard(message.sender, now))
        else:
            self._node._count("unknown_sender")

    def _reject(self, reason: str) -> None:
        self._node._count("protocol_errors")
        self._bad_input_log.warning("dropped malformed control message: %s", reason)

    def _on_hello(self, hello: Hello, now: float) -> None:
        if hello.mesh != self._node.mesh:
            self._node._count("other_mesh")
            return
        if hello.sender == self._node._raw_id:
            return  # our own HELLO, through a seed that is ourselves
        rejected_before = self._table.rejected
        events = self._table.hello(hello, now)
        if self._table.rejected != rejected_before:
            self._node._count("hello_rejected")
        peer = self._table.get(hello.sender)
        if peer is not None:
            if hello.reply:
                self._send(peer.endpoint, self._hello(reply=False))
            self._refresh_publishers()
            for gossip_id, endpoints in hello.peers:
                if gossip_id != self._node._raw_id and gossip_id not in self._table and endpoints:
                    self._dialer.add(self._choose(endpoints), gossip_id, now, lasting=False)
        self._apply(events)
        self._hello_due(now)
        self._close_unused_dealers()

    def _hello(self, *, reply: bool) -> bytes:
        """Our HELLO, encoded; gossip is trimmed until it fits the control limit."""
        gossip = [
            (peer_id, peer.control)
            for peer_id, peer in self._table.items()
            if peer.state is PeerState.ALIVE
        ]
        while True:
            frame = encode_control(
                Hello(
                    sender=self._node._raw_id,
                    name=self._node.name,
                    mesh=self._node.mesh,
                    control=self.endpoints,
                    publish=self._node.publish_endpoints,
                    headers=self._node.headers,
                    peers=tuple(gossip),
                    reply=reply,
                )
            )
            if len(frame) <= self._config.max_control_bytes or not gossip:
                return frame
            gossip = gossip[: len(gossip) // 2]

    def _hello_due(self, now: float) -> None:
        connected = [ep for peer in self._table.snapshot() for ep in peer.control]
        due, _expired = self._dialer.due(now, connected)
        if due:
            hello = self._hello(reply=True)
            for endpoint in due:
                self._send(endpoint, hello)

    def _tick(self, now: float) -> None:
        self._apply(self._table.tick(now))
        self._hello_due(now)
        self._close_unused_dealers()
        self._publish_snapshot()

    def _apply(self, events: list[PeerEvent]) -> None:
        if not events:
            return
        node = self._node
        for event in events:
            peer = event.peer
            if event.kind is EventKind.LEFT:
                log.info("peer %s (%s) left: %s", peer.name, peer.id[:8], event.reason)
            elif event.kind is EventKind.JOINED:
                log.info("peer %s (%s) joined from %s", peer.name, peer.id[:8], peer.endpoint)
        with node._state:
            # One lock for the snapshot and the callbacks, so that a callback
            # registered meanwhile gets each peer exactly once (see
            # Node.on_peer_joined).
            node._peer_snapshot = self._table.snapshot()
            node._state.notify_all()
            for event in events:
                if len(node._event_queue) == node._event_queue.maxlen:
                    node._stats["events_dropped"] += 1
                node._event_queue.append(event)
                callbacks = node._callbacks.get(event.kind)
                if callbacks:
                    node._dispatch_queue.put((list(callbacks), event))
        self._refresh_publishers()

    def _refresh_publishers(self) -> None:
        """Tell subscriptions where every peer publishes (a no-op if unchanged)."""
        node = self._node
        publishers = {node.id: node._local_publish}
        for peer in self._table.snapshot():
            publishers[peer.id] = choose_endpoint(peer.publish, node._networks)
        node._directory.update(publishers)

    def _publish_snapshot(self) -> None:
        node = self._node
        with node._state:
            node._peer_snapshot = self._table.snapshot()
            node._state.notify_all()

    def _send(self, endpoint: str, frame: bytes) -> None:
        dealer = self._dealers.get(endpoint)
        if dealer is None:
            dealer = self._node._sockets.make(self._context, zmq.DEALER)
            self._links += 1
            dealer.setsockopt(zmq.IDENTITY, routing_id(self._node._raw_id, self._links))
            dealer.setsockopt(zmq.SNDHWM, _DEALER_HWM)
            dealer.connect(endpoint)
            self._dealers[endpoint] = dealer
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._node._count("control_dropped")  # unreachable peer, queue full

    def _broadcast(self, frame: bytes) -> None:
        for peer in self._table.snapshot():
            self._send(peer.endpoint, frame)

    def _close_unused_dealers(self) -> None:
        """Keep one DEALER per peer, plus those still dialling unknown endpoints.

        A second DEALER to a peer already connected (two addresses of one
        multi-homed node were dialled at once) is closed: the peer's ROUTER
        sees one node and needs one link; the spare would only add traffic.
        """
        peers = self._table.snapshot()
        in_use = {peer.endpoint for peer in peers}
        answered = {endpoint for peer in peers for endpoint in peer.control}
        for endpoint in list(self._dealers):
            if endpoint in in_use:
                continue
            if endpoint in answered or endpoint not in self._dialer:
                self._dealers.pop(endpoint).close(linger=0)

    def close(self) -> None:
        """Say goodbye to every peer, then close every control socket."""
        bye = encode_control(Bye(self._node._raw_id))
        linger_ms = int(self._config.linger * 1000)
        for dealer in self._dealers.values():
            try:
                dealer.send(bye, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # unreachable peer: it will time us out instead
            dealer.close(linger=linger_ms)
        self._dealers.clear()
        self._router.close(linger=0)


def _new_node_id() -> bytes:
    """16 random bytes; never a leading zero byte, which ZeroMQ reserves in routing ids."""
    while True:
        node_id = os.urandom(16)
        if node_id[0]:
            return node_id
