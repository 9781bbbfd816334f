"""The control plane: the node's background thread and everything it owns.

It owns the control ROUTER, one DEALER per peer (and per endpoint being
dialled), the peer table and the dialer; all of them are used from this
thread only. It learns of candidates from discovery through typed commands,
answers HELLOs, sends heartbeats and periodic gossip, turns silence into
peer events, and tells subscriptions where publishers are.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import zmq

from .discovery import Candidate
from .errors import ProtocolError
from .interfaces import choose_endpoint
from .offences import Offences
from .peers import Dialer, EventKind, Peer, PeerEvent, PeerState, PeerTable
from .publishing import TAIL_INTERVAL, bind_all
from .ratelimit import RateLimitedLog
from .subscription import BLOCKING_SUFFIX
from .wire import (
    NODE_ID_BYTES,
    Bye,
    ControlMessage,
    Hello,
    Ping,
    decode_control,
    encode_control,
    routing_id,
)

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Announce", "Command", "ControlPlane", "Found", "Lost", "Redial", "Stop"]

log = logging.getLogger("meshq.control")

# How often the control thread re-evaluates liveness; detection lands within
# this much of the configured timeouts.
_TICK = 0.05
_DEALER_HWM = 8  # control messages queued per peer while it is unreachable
_MAX_BATCH = 256  # control messages handled before looking at the clock again


@dataclass(frozen=True)
class Found:
    candidate: Candidate


@dataclass(frozen=True)
class Lost:
    candidate: Candidate


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Announce:
    """The node's own services (or publish sockets) changed."""


@dataclass(frozen=True)
class Redial:
    """A handshake with ``endpoint`` failed: its DEALER is dead, make a new one when due."""

    endpoint: str


Command = Found | Lost | Stop | Announce | Redial


class ControlPlane:
    """State and sockets of the control thread; lives and dies on that thread."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._config = node.config
        self._context = node._context
        # Only control messages arrive here: ZeroMQ drops a peer that sends
        # more than the largest valid one, before we buffer it.
        self._router = node._sockets.make(
            node._context, zmq.ROUTER, max_message_bytes=self._config.max_control_bytes + 64
        )
        try:
            port = bind_all(self._router, node.interfaces, self._config.control_port)
        except BaseException:
            self._router.close(linger=0)  # or the node's context.term() waits forever
            raise
        self.endpoints = tuple(f"tcp://{ip}:{port}" for ip in node.interfaces)
        self._dealers: dict[str, zmq.Socket] = {}  # type: ignore[type-arg]
        self._links = 0  # DEALERs made so far; numbers their routing ids
        self._table = PeerTable(self._config, self._choose)
        self._dialer = Dialer(self._config)
        self._bad_input_log = RateLimitedLog(log, interval=5.0)
        self._offences = Offences(
            self._config.max_offences, self._config.offence_window, self._config.ban_time
        )
        self._internal_log = RateLimitedLog(log, interval=5.0)
        self._running = True
        self._next_tail = 0.0  # when tail markers are next due (monotonic s)

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
            if isinstance(command, Stop):
                self._running = False
            elif isinstance(command, Found):
                candidate = command.candidate
                seed = candidate.source == "seed"
                if candidate.key is not None:
                    # A seed's key was given by the user; mDNS's is only a hint.
                    self._node._sockets.keys.learn(candidate.endpoint, candidate.key, proven=seed)
                added = self._dialer.add(
                    candidate.endpoint, candidate.node_id, now, lasting=True, pinned=seed
                )
                if not added:
                    self._node._count("dial_refused")
                self._hello_due(now)
            elif isinstance(command, Lost):
                self._dialer.remove(command.candidate.endpoint)
            elif isinstance(command, Redial):
                dealer = self._dealers.pop(command.endpoint, None)
                if dealer is not None:
                    dealer.close(linger=0)
            elif isinstance(command, Announce):
                # Our services changed: tell everyone now, not at the next gossip.
                self._broadcast(self._hello(reply=False))
                self._refresh_directories()

    def _receive(self) -> None:
        secure = self._node._sockets.curve is not None
        for _ in range(_MAX_BATCH):
            proven = b""
            try:
                if secure:
                    parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    # The key the sender proved in its CURVE handshake, as our
                    # ZAP handler admitted it (its User-Id).
                    try:
                        proven = parts[-1].get("User-Id").encode()
                    except zmq.ZMQError:
                        proven = b""  # no ZAP verdict on this message: a HELLO is refused
                    frames = [part.bytes for part in parts]
                else:
                    frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            # Who to blame: the key proven in the handshake if any, else the
            # node id the sender's routing id claims.
            offender = proven or frames[0][:NODE_ID_BYTES]
            if self._offences.banned(offender, now):
                self._node._count("banned_dropped")
                continue
            if len(frames) != 2:
                self._reject(f"{len(frames)} frames in a control message", offender, now)
                continue
            try:
                message = decode_control(frames[0], frames[1], self._node._limits)
            except ProtocolError as exc:
                self._reject(exc.reason, offender, now)
                continue
            try:
                self._handle(message, now, proven)
            except Exception:  # a bug must not make the node deaf to everyone else
                self._node._count("internal_errors")
                self._internal_log.warning(
                    "control message from %s could not be handled",
                    frames[0][:16].hex(),
                    exc_info=True,
                )

    def _handle(self, message: ControlMessage, now: float, proven: bytes = b"") -> None:
        if isinstance(message, Hello):
            self._on_hello(message, now, proven)
        elif isinstance(message, Bye):
            self._dialer.forget_peer(message.sender)
            self._apply(self._table.bye(message.sender))
        elif message.sender in self._table:
            self._apply(self._table.heard(message.sender, now))
        else:
            self._node._count("unknown_sender")
            if self._dialer.hurry(message.sender, now):
                self._hello_due(now)

    def _reject(self, reason: str, offender: bytes = b"", now: float = 0.0) -> None:
        self._node._count("protocol_errors")
        self._bad_input_log.warning("dropped malformed control message: %s", reason)
        if offender and self._offences.offend(offender, now):
            self._cut_off(offender)

    def _cut_off(self, offender: bytes) -> None:
        """Drop a repeat offender: out of the peer table, its messages ignored for a while."""
        config = self._config
        self._node._count("peers_banned")
        secure = len(offender) != NODE_ID_BYTES  # a Z85 key, not a node id
        log.warning(
            "peer %s sent %d malformed control messages within %s s: cut off for %s s",
            offender.decode() if secure else offender.hex()[:8],
            config.max_offences,
            config.offence_window,
            config.ban_time,
        )
        gatekeeper = self._node._gatekeeper
        if secure and gatekeeper is not None:
            gatekeeper.ban(offender, config.ban_time)  # no new connection with that key
            peer_ids = [
                peer_id
                for peer_id, peer in self._table.items()
                if self._node._sockets.keys.get(peer.endpoint) == offender
            ]
        else:
            peer_ids = [offender]
        for peer_id in peer_ids:
            self._dialer.forget_peer(peer_id)
            self._apply(self._table.bye(peer_id, reason="cut off: malformed input"))
        self._close_unused_dealers()

    def _on_hello(self, hello: Hello, now: float, proven: bytes = b"") -> None:
        if hello.mesh != self._node.mesh:
            self._node._count("other_mesh")
            return
        if hello.sender == self._node._raw_id:
            return  # our own HELLO, through a seed that is ourselves
        if self._node._sockets.curve is not None and not self._learn_keys(hello, proven, now):
            return
        rejected_before = self._table.rejected
        events = self._table.hello(hello, now)
        if self._table.rejected != rejected_before:
            self._node._count("hello_rejected")
        peer = self._table.get(hello.sender)
        if peer is not None:
            joined = any(event.kind is EventKind.JOINED for event in events)
            # A newcomer always gets our current HELLO: one we sent before it
            # joined may predate a change (say, a service added meanwhile).
            if hello.reply or joined:
                self._send(peer.endpoint, self._hello(reply=False))
            for gossip_id, endpoints in hello.peers:
                if gossip_id != self._node._raw_id and gossip_id not in self._table and endpoints:
                    endpoint = self._choose(endpoints)
                    if not self._dialer.add(endpoint, gossip_id, now, lasting=False):
                        self._node._count("dial_refused")
        # A known peer's HELLO may change its endpoints or services: always
        # refresh the directories, even without events.
        self._apply(events, directories_changed=peer is not None)
        self._hello_due(now)
        self._close_unused_dealers()

    def _learn_keys(self, hello: Hello, proven: bytes, now: float) -> bool:
        """Remember the server keys of a HELLO's endpoints; False if its key is a lie.

        The sender's own key is the one it proved on this connection, so all
        its endpoints get it as proven. Gossiped keys are hints: a wrong one
        only makes a handshake fail.
        """
        if hello.key != proven:
            self._reject("HELLO key differs from the key of its connection", proven, now)
            return False
        keys = self._node._sockets.keys
        for endpoint in (*hello.control, *hello.publish, *hello.publish_block, *hello.service):
            keys.learn(endpoint, proven, proven=True)
        for peer_id, endpoints in hello.peers:
            key = hello.peer_keys.get(peer_id)
            if key is not None:
                for endpoint in endpoints:
                    keys.learn(endpoint, key)
        return True

    def _hello(self, *, reply: bool) -> bytes:
        """Our HELLO, encoded; gossip is trimmed until it fits the control limit."""
        services, service_endpoints = self._node._offered_services()
        curve = self._node._sockets.curve
        keys = self._node._sockets.keys
        peer_keys = {}
        if curve is not None:
            for peer_id, peer in self._table.items():
                key = keys.get(peer.endpoint)
                if key is not None:
                    peer_keys[peer_id] = key
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
                    services=services,
                    service=service_endpoints if services else (),
                    publish_block=self._node._publisher.block_endpoints,
                    key=b"" if curve is None else curve.public_key,
                    peer_keys=peer_keys,
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
        self._node._publisher.process_commands()
        if now >= self._next_tail:
            self._next_tail = now + TAIL_INTERVAL
            self._node._publisher.announce_tails()
        if self._node._sockets.refused.ripe():
            self._node._directory.touch()  # subscriptions retry their refused links
        self._apply(self._table.tick(now))
        self._hello_due(now)
        self._close_unused_dealers()
        self._publish_snapshot()

    def _apply(self, events: list[PeerEvent], *, directories_changed: bool = False) -> None:
        """Publish peer events: directories first, then peers(), waiters and callbacks."""
        if not events:
            if directories_changed:
                # A known peer's HELLO: peers() first, so whoever finds a new
                # service there also finds the provider's current headers.
                self._publish_snapshot()
                self._refresh_directories()
            return
        # Before anyone is woken: whoever wait_for_peers() released may
        # subscribe or request at once, and must find the peer there.
        self._refresh_directories()
        node = self._node
        for event in events:
            peer = event.peer
            if event.kind is EventKind.LEFT:
                log.info("peer %s (%s) left: %s", peer.name, peer.id[:8], event.reason)
            elif event.kind is EventKind.JOINED:
                log.info("peer %s (%s) joined from %s", peer.name, peer.id[:8], peer.endpoint)
        to_wall = time.time() - time.monotonic()
        events = [replace(e, peer=_wall_clock(e.peer, to_wall)) for e in events]
        snapshot = self._user_peers(to_wall)
        with node._state:
            # One lock for the snapshot and the callbacks, so that a callback
            # registered meanwhile gets each peer exactly once (see
            # Node.on_peer_joined), and peers() never lags behind an event.
            node._peer_snapshot = snapshot
            node._state.notify_all()
            for event in events:
                if len(node._event_queue) == node._event_queue.maxlen:
                    node._stats["events_dropped"] += 1
                node._event_queue.append(event)
                callbacks = node._callbacks.get(event.kind)
                if not callbacks:
                    continue
                if node._dispatch_queue.qsize() >= self._config.event_queue_size:
                    node._stats["callback_events_dropped"] += 1  # a callback is stuck
                else:
                    node._dispatch_queue.put((list(callbacks), event))
            listeners = list(node._event_listeners)
        for listener in listeners:
            listener(events)

    def _refresh_directories(self) -> None:
        """Tell subscriptions and callers where every peer publishes and serves."""
        node = self._node
        publishers = {node.id: node._local_publish}
        if node._publisher.block_endpoints:
            publishers[node.id + BLOCKING_SUFFIX] = node._publisher.block_local_endpoint
        providers: dict[str, dict[str, str]] = {}
        own_services, _ = node._offered_services()
        for name in own_services:
            providers.setdefault(name, {})[node.id] = node._local_service_endpoint()
        for peer in self._table.snapshot():
            publishers[peer.id] = choose_endpoint(peer.publish, node._networks)
            if peer.publish_block:
                publishers[peer.id + BLOCKING_SUFFIX] = choose_endpoint(
                    peer.publish_block, node._networks
                )
            if peer.services and peer.service:
                endpoint = choose_endpoint(peer.service, node._networks)
                for name in peer.services:
                    providers.setdefault(name, {})[peer.id] = endpoint
        node._directory.update(publishers)
        node._service_directory.update(providers)

    def _publish_snapshot(self) -> None:
        """Refresh what peers() returns (its ``last_seen`` moves on every tick)."""
        snapshot = self._user_peers(time.time() - time.monotonic())
        with self._node._state:
            self._node._peer_snapshot = snapshot

    def _user_peers(self, to_wall: float) -> list[Peer]:
        """The table as users see it: ``last_seen`` in seconds since the epoch."""
        return [_wall_clock(peer, to_wall) for peer in self._table.snapshot()]

    def _send(self, endpoint: str, frame: bytes) -> None:
        dealer = self._dealers.get(endpoint)
        if dealer is None:
            sockets = self._node._sockets
            if not sockets.admits(endpoint):
                self._node._count("dial_refused_key")
                return
            dealer = sockets.make(self._context, zmq.DEALER)
            self._links += 1
            dealer.setsockopt(zmq.IDENTITY, routing_id(self._node._raw_id, self._links))
            dealer.setsockopt(zmq.SNDHWM, _DEALER_HWM)
            sockets.connect(dealer, endpoint)
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


def _wall_clock(peer: Peer, to_wall: float) -> Peer:
    """The peer as users see it: ``last_seen`` in seconds since the epoch."""
    return replace(peer, last_seen=peer.last_seen + to_wall)
