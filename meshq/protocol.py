"""The control protocol (docs/PROTOCOL.md 7 and 10) as a pure state machine.

:class:`ControlProtocol` takes what arrived (control frames, discovery
reports, the node's own changes) and the time, and returns :data:`Action`
values for the control loop (meshq/control.py) to carry out: send a frame
to an endpoint, close links, publish peer events and directories, count,
ban a key. It owns the peer table, the dialer and the offence counts, and
touches no socket and reads no clock; ``next_deadline()`` says when
``on_timer`` must run next, so the loop sleeps until then or until I/O.

The rules, in the order PROTOCOL.md states them: a HELLO of our mesh makes
its sender join (7.1), answered if it asked or is new; its gossip feeds the
dialer; PINGs refresh liveness (7.3), and echo PINGs time round trips to
the peers that announce ``ping_echo`` (16.4); a BYE removes (7.4); the dialer sends
HELLOs to candidates that are not connected every ``hello_interval`` (7.5);
every ``heartbeat_interval`` a PING goes to every peer, replaced by a HELLO
with gossip every ``gossip_interval`` (7.6); links not needed are closed
(7.8); repeat offenders are cut off (11).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
from collections.abc import Mapping, Sequence

from .actions import (
    Action,
    Ban,
    CloseLinks,
    Count,
    Directories,
    LocalNode,
    PeersChanged,
    Send,
    SendEach,
)
from .config import MeshConfig
from .discovery import Candidate
from .errors import ProtocolError
from .interfaces import choose_endpoint, endpoint_host, rank_endpoints
from .offences import Offences
from .peers import Dialer, EventKind, Peer, PeerEvent, PeerState, PeerTable
from .ratelimit import RateLimitedLog
from .reach import choose_control
from .security import KeyBook
from .subscription import BLOCKING_SUFFIX
from .wire import (
    ECHO_BODY_BYTES,
    ECHO_PING_BYTES,
    NODE_ID_BYTES,
    PING_HEAD,
    ROUTING_ID_BYTES,
    Bye,
    ControlMessage,
    Hello,
    Limits,
    Ping,
    decode_control,
    decode_echo,
    encode_control,
    encode_echo_ping,
    unpack_echo_ping,
)

__all__ = [
    "Action",
    "Ban",
    "CloseLinks",
    "ControlProtocol",
    "Count",
    "Directories",
    "LocalNode",
    "PeersChanged",
    "Send",
    "SendEach",
]

log = logging.getLogger("meshq.control")


class ControlProtocol:
    """The decisions of a node's control plane; see the module docstring.

    ``keys`` is the node's key book when it runs with security (the
    protocol learns keys into it), else None. ``networks`` are the local
    networks, for choosing among a peer's endpoints (PROTOCOL.md 3.3),
    together with this node's own addresses (those of its control
    endpoints): an endpoint there leads to this machine.
    """

    def __init__(
        self,
        config: MeshConfig,
        local: LocalNode,
        now: float,
        *,
        limits: Limits,
        networks: Sequence[ipaddress.IPv4Network] = (),
        keys: KeyBook | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        self._config = config
        self.local = local
        self._limits = limits
        self._networks = list(networks)
        self._own = _addresses(local.control)
        # Pure and asked for every peer at every directory rebuild: cached.
        self._choose_cached = functools.lru_cache(maxsize=4096)(self._choose_uncached)
        self._keys = keys
        self._table = PeerTable(config, self._choose_control)
        self._dialer = Dialer(config)
        self._offences = Offences(config.max_offences, config.offence_window, config.ban_time)
        # Endpoints we asked the loop to send to -> when their link was made.
        self._links: dict[str, float] = {}
        self._now = now  # the time of the latest input
        # Heartbeats and gossip fall on multiples of their interval on the
        # wall clock (``now + clock_offset``), so that the PINGs of a whole
        # mesh arrive together and are read in one wake-up (PROTOCOL.md 7.6).
        self._offset = clock_offset
        self._next_ping = self._slot(now, config.heartbeat_interval)
        self._next_gossip = self._slot(now, config.gossip_interval)
        self._ping = encode_control(Ping(local.node_id))
        # Echo PINGs (PROTOCOL.md 16.4): the peers whose latest HELLO asked
        # for them, and per peer the ``sent`` (ns) of the latest PING read
        # from it with the time we read it, until our next PING echoes it.
        self._echoing: set[bytes] = set()
        self._to_echo: dict[bytes, tuple[int, float]] = {}
        # The latest HELLO of each peer as received (frame, proven key,
        # source) and what it decoded to: a periodic HELLO that repeats it
        # byte for byte skips decoding and the table update (7.1, 7.6).
        self._hellos: dict[bytes, tuple[bytes, bytes, str | None, Hello]] = {}
        self._bad_input_log = RateLimitedLog(log, interval=5.0)
        self._actions: list[Action] = []
        #: Messages so far that only showed a known peer alive (PINGs, and
        #: periodic HELLOs that repeat the last byte for byte): what the
        #: mesh sends every round (7.6), a peer's state unchanged by them.
        self.signs_of_life = 0
        #: When this node last sent a heartbeat round (PINGs or the periodic
        #: HELLO), on the protocol's clock; -inf before the first.
        self.last_round = -math.inf
        # The heartbeat round as (peer id, endpoint, whether it takes echo
        # PINGs), in table order; None: build it again. An input other than
        # a heartbeat (_changed) or a change of the table (_apply) clears it.
        self._round: list[tuple[bytes, str, bool]] | None = None
        # next_deadline() as last computed; None: compute again. A heartbeat
        # only moves a peer's own deadline later, so it leaves this a valid
        # (early) bound and need not clear it: the loop then wakes a little
        # early at worst, and on_timer computes it afresh.
        self._deadline: float | None = None
        # The dialer's part of it, kept across heartbeat rounds: only an input
        # other than a heartbeat (_changed) or the dialer's own work moves it.
        # None: compute again, and let on_timer run the dialer and the link
        # cleanup (7.5, 7.8) at its next round.
        self._dialer_due: float | None = None

    # ------------------------------------------------------------------
    # Inputs

    def on_frames(
        self,
        frames: Sequence[bytes],
        now: float,
        proven: bytes = b"",
        source: str | None = None,
    ) -> list[Action]:
        """One message from the control ROUTER: [routing id, body].

        ``proven`` is the CURVE key the sender proved on its connection (its
        ZAP User-Id), empty without security; ``source`` the address the
        message came from (its connection's peer address), None if unknown.
        Malformed input is counted and may get the sender banned
        (PROTOCOL.md 11); it never raises.
        """
        self._now = now
        routing = frames[0]
        # Who to blame: the key proven in the handshake if any, else the node
        # id the sender's routing id claims.
        offender = proven or routing[:NODE_ID_BYTES]
        if self._offences.active and self._offences.banned(offender, now):
            return [Count("banned_dropped")]  # changes no deadline
        if len(frames) != 2:
            self._reject(f"{len(frames)} frames in a control message", offender, now)
            return self._changed()
        body = frames[1]
        sender = routing[:NODE_ID_BYTES]
        if len(routing) == ROUTING_ID_BYTES and sender in self._table:
            # The common cases first, without a full decode: a heartbeat, and
            # a periodic HELLO that repeats the last one byte for byte.
            if body[:4] == PING_HEAD:
                size = len(body)
                if size == 4:
                    return self._heartbeat(sender, now)
                if size == 4 + ECHO_BODY_BYTES:
                    return self._echo_ping(sender, body, now)
            else:
                known = self._hellos.get(sender)
                if (
                    known is not None
                    and known[0] == body
                    and known[1] == proven
                    and known[2] == source
                    and not known[3].reply
                ):
                    return self._repeated_hello(known[3], now)
        try:
            message = decode_control(routing, body, self._limits)
        except ProtocolError as exc:
            self._reject(exc.reason, offender, now)
            return self._changed()
        if isinstance(message, Hello):
            self._on_hello(message, now, proven, source, body)
        else:
            self._handle(message, now)
        return self._changed()

    def _heartbeat(self, sender: bytes, now: float) -> list[Action]:
        """A PING of a known peer: no deadline comes nearer (unless it recovers)."""
        events = self._table.heard(sender, now)
        if not events:
            self.signs_of_life += 1
            return []
        self._apply(events)
        return self._changed()

    def on_heartbeat(
        self, routing: bytes, body: bytes, now: float, proven: bytes = b""
    ) -> list[Action] | None:
        """A one-frame control message read in a run of them, most likely a PING.

        The fast path of :meth:`on_frames` for the loop that reads a round
        of heartbeats: None when it was a PING of a known, ALIVE peer that
        changed nothing but the peer's liveness and round-trip time, which
        :meth:`liveness` shows at once (no action tells of them). Anything
        else (not a PING, an unknown sender, a peer that recovers, a
        malformed PING, an impossible echo) is handled as :meth:`on_frames`
        would, and its actions are returned.

        All in one function, with one call into the peer table: an idle
        node runs it cold, a few times a second, and each call or object
        touched is a cache miss (bench/README.md, idle.py).
        """
        size = len(body)
        if (
            (size == ECHO_PING_BYTES or size == 4)
            and len(routing) == ROUTING_ID_BYTES
            and body[:4] == PING_HEAD
            and not self._offences.active
        ):
            sender = routing[:NODE_ID_BYTES]
            if size == 4:
                if self._table.ping(sender, now):
                    self._now = now
                    self.signs_of_life += 1
                    return None
            else:
                # An echo PING (16.4): time its echo; keep its sent for our next PING.
                _, sent, echo, held = unpack_echo_ping(body)
                rtt = None
                if echo:
                    rtt = now - echo / 1e9 - held / 1e6
                    if not 0.0 <= rtt <= self._config.gone_after:
                        return self.on_frames((routing, body), now, proven, None)  # counts it
                if self._table.ping(sender, now, rtt):
                    self._now = now
                    self._to_echo[sender] = (sent, now)
                    self.signs_of_life += 1
                    return None
        return self.on_frames((routing, body), now, proven, None)

    def liveness(self) -> tuple[Mapping[bytes, float], Mapping[bytes, float]]:
        """Read-only live views of the peer table, by raw id: when each peer was
        last heard (the protocol's clock), and its smoothed round-trip time (s).

        The node's state reads them when asked for its peers, so that a
        heartbeat costs no hand-over; any thread may read them, one lookup
        at a time.
        """
        return self._table.liveness()

    def _echo_ping(self, sender: bytes, body: bytes, now: float) -> list[Action]:
        """An echo PING (16.4): keep its ``sent`` for our next PING, time its echo."""
        self._time_echo(sender, body, now)
        events = self._table.heard(sender, now)
        if not events:
            self.signs_of_life += 1
            return self._take()
        self._apply(events)
        return self._changed()

    def _time_echo(self, sender: bytes, body: bytes, now: float) -> None:
        """Keep an echo PING's ``sent`` for our next PING to its sender; time its echo (16.4)."""
        sent, echo, held = decode_echo(body[4:])
        self._to_echo[sender] = (sent, now)
        if echo:
            rtt = now - echo / 1e9 - held / 1e6
            if 0.0 <= rtt <= self._config.gone_after:
                self._table.rtt_sample(sender, rtt)
            else:
                self._actions.append(Count("rtt_discarded"))

    def _repeated_hello(self, hello: Hello, now: float) -> list[Action]:
        """A known peer's periodic HELLO, the same bytes as its last: liveness and gossip."""
        events = self._table.heard(hello.sender, now)
        learnt = self._learn_gossip(hello, now)
        if learnt:
            self._hello_due(now)
        if events:
            self._apply(events)
            return self._changed()
        self.signs_of_life += 1
        # Nothing learnt: as a heartbeat, it brings no deadline nearer.
        return self._changed() if learnt else self._take()

    def on_found(self, candidate: Candidate, now: float) -> list[Action]:
        """Discovery reports a control endpoint (mDNS record or seed)."""
        self._now = now
        seed = candidate.source == "seed"
        if candidate.key is not None and self._keys is not None:
            # A seed's key was given by the user; mDNS's is only a hint.
            self._keys.learn(candidate.endpoint, candidate.key, proven=seed)
        if not self._dialer.add(
            candidate.endpoint,
            candidate.node_id,
            now,
            lasting=True,
            pinned=seed,
            alternatives=candidate.alternatives,
        ):
            self._actions.append(Count("dial_refused"))
        self._hello_due(now)
        return self._changed()

    def on_lost(self, candidate: Candidate, now: float) -> list[Action]:
        """Discovery withdrew a candidate: stop dialling it (a connected peer stays)."""
        self._now = now
        self._dialer.remove(candidate.endpoint)
        self._close_unused_links()
        return self._changed()

    def on_redial(self, endpoint: str) -> list[Action]:
        """The link to ``endpoint`` failed its handshake: drop it; the next send makes a new one."""
        if self._links.pop(endpoint, None) is not None:
            self._actions.append(CloseLinks((endpoint,)))
        return self._changed()

    def on_announce(self, local: LocalNode) -> list[Action]:
        """This node changed (services, headers, publish sockets): tell every peer now."""
        self.local = local
        self._broadcast(self._hello(reply=False))
        self._actions.append(self._directories())
        return self._changed()

    def on_timer(self, now: float) -> list[Action]:
        """Run what is due at ``now``: heartbeats, gossip, liveness, dialer, link cleanup.

        Each part runs when its own deadline is due, so that a round of
        heartbeats alone (an idle mesh's every wake-up) costs no more than
        the PINGs: the peer table is scanned when a peer may turn suspect
        or leave, the dialer and the links when the dialer has something
        due or an input other than a heartbeat came since its last run.
        """
        self._now = now
        config = self._config
        if now >= self._next_gossip:
            # Re-announce with fresh gossip, so two nodes that lost each
            # other but still see a common peer find each other again even
            # without mDNS. It counts as a heartbeat.
            self._next_gossip = self._slot(now, config.gossip_interval)
            self._next_ping = self._slot(now, config.heartbeat_interval)
            self._broadcast(self._hello(reply=False))
            self.last_round = now
        elif now >= self._next_ping:
            self._next_ping = self._slot(now, config.heartbeat_interval)
            self._ping_all(now)
            self.last_round = now
        table = self._table.next_deadline()
        if table is not None and now >= table:
            events = self._table.tick(now)
            if events:
                self._apply(events)
                self._dialer_due = None  # who is connected changed
        dialer = self._dialer_due
        if dialer is None or now >= dialer:
            self._hello_due(now)
            self._close_unused_links()
            self._dialer_due = None
        self._deadline = None
        return self._take()

    def next_deadline(self) -> float:
        """The monotonic time at which ``on_timer`` has something to do (or a little earlier)."""
        if self._deadline is None:
            self._deadline = self._compute_deadline()
        return self._deadline

    def _compute_deadline(self) -> float:
        deadline = min(self._next_ping, self._next_gossip)
        table = self._table.next_deadline()
        if table is not None and table < deadline:
            deadline = table
        dialer = self._dialer_due
        if dialer is None:
            found = self._dialer.next_deadline(self._connected())
            dialer = self._dialer_due = math.inf if found is None else found
        return min(deadline, dialer)

    def _slot(self, now: float, interval: float) -> float:
        """The first multiple of ``interval`` on the wall clock after ``now``, on our clock."""
        return (math.floor((now + self._offset) / interval) + 1) * interval - self._offset

    def goodbye(self) -> tuple[tuple[str, ...], bytes]:
        """(every endpoint we have a link to, the BYE to send through each) for closing."""
        return tuple(self._links), encode_control(Bye(self.local.node_id))

    @property
    def peer_count(self) -> int:
        """How many peers the table holds."""
        return len(self._table)

    @property
    def peers(self) -> list[Peer]:
        """The peer table now (``last_seen`` on the protocol's clock)."""
        return self._table.snapshot()

    def directories(self) -> Directories:
        """The directories as of now (also sent as an action whenever they change)."""
        return self._directories()

    # ------------------------------------------------------------------
    # Message handling

    def _take(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def _changed(self) -> list[Action]:
        """_take() after something that may bring a deadline nearer (or change a peer)."""
        self._deadline = None
        self._dialer_due = None
        self._round = None
        return self._take()

    def _handle(self, message: ControlMessage, now: float) -> None:
        """A PING or BYE that the fast paths of on_frames did not take."""
        if isinstance(message, Bye):
            self._dialer.forget_peer(message.sender)
            self._apply(self._table.bye(message.sender))
            self._close_unused_links()
        elif message.sender in self._table:  # a PING, from a peer whose routing id is odd
            self._apply(self._table.heard(message.sender, now))
        else:
            self._actions.append(Count("unknown_sender"))
            if self._dialer.hurry(message.sender, now):
                self._hello_due(now)

    def _on_hello(
        self, hello: Hello, now: float, proven: bytes, source: str | None, frame: bytes
    ) -> None:
        local = self.local
        if hello.mesh != local.mesh:
            self._actions.append(Count("other_mesh"))
            return
        if hello.sender == local.node_id:
            return  # our own HELLO, through a seed that is ourselves
        if self._keys is not None and not self._learn_keys(hello, proven, now):
            return
        rejected_before = self._table.rejected
        before = self._table.get(hello.sender)
        events = self._table.hello(hello, now, source)
        if self._table.rejected != rejected_before:
            self._actions.append(Count("hello_rejected"))
        peer = self._table.get(hello.sender)
        if peer is not None:
            joined = any(event.kind is EventKind.JOINED for event in events)
            # A newcomer always gets our current HELLO: one we sent before it
            # joined may predate a change (say, a service added meanwhile).
            if hello.reply or joined:
                if hello.reply and not joined:
                    self._check_answers_arrive(peer.endpoint, now)
                self._send((peer.endpoint,), self._hello(reply=False))
            self._learn_gossip(hello, now)
            if hello.ping_echo:
                self._echoing.add(hello.sender)
            else:
                self._echoing.discard(hello.sender)
                self._to_echo.pop(hello.sender, None)
            self._hellos[hello.sender] = (frame, proven, source, hello)
        # A known peer's HELLO may change its endpoints, services or headers:
        # then the directories and the peer snapshot are rebuilt, even
        # without events (a periodic HELLO that changed nothing needs neither).
        changed = peer is not None and (before is None or _described(before) != _described(peer))
        self._apply(events, directories_changed=changed)
        self._hello_due(now)
        self._close_unused_links()

    def _learn_gossip(self, hello: Hello, now: float) -> bool:
        """Give the dialer the gossiped nodes we do not have; True if it took any."""
        local = self.local
        known = self._table.ids()  # a lookup in C per entry: every peer's HELLO, every round
        added = False
        for gossip_id, endpoints in hello.peers:
            if gossip_id not in known and gossip_id != local.node_id:
                ranked = rank_endpoints(
                    endpoints, self._networks, own=self._own, exclude=local.control
                )
                if not ranked:
                    continue  # nothing, or only our own endpoints
                if self._dialer.add(
                    ranked[0], gossip_id, now, lasting=False, alternatives=ranked[1:]
                ):
                    added = True
                else:
                    self._actions.append(Count("dial_refused"))
        return added

    def _check_answers_arrive(self, endpoint: str, now: float) -> None:
        """A known peer asks for an answer again: remake our link if it has long had answers.

        A peer dials us (HELLO with ``reply``) only while it does not have
        us; if our link to it is ``gone_after`` old, our answers and PINGs
        have not reached it through that link for that long (a connect or
        handshake stalled, say), while its HELLOs keep it alive here. Nothing
        else would ever replace that link: answer through a new one.
        """
        made = self._links.get(endpoint)
        if made is not None and now - made >= self._config.gone_after:
            del self._links[endpoint]
            self._actions.append(CloseLinks((endpoint,)))
            self._actions.append(Count("links_remade"))

    def _learn_keys(self, hello: Hello, proven: bytes, now: float) -> bool:
        """Remember the server keys of a HELLO's endpoints; False if its key is a lie.

        The sender's own key is the one it proved on this connection, so all
        its endpoints get it as proven. Gossiped keys are hints: a wrong one
        only makes a handshake fail.
        """
        keys = self._keys
        assert keys is not None
        if hello.key != proven:
            self._reject("HELLO key differs from the key of its connection", proven, now)
            return False
        for endpoint in (*hello.control, *hello.publish, *hello.publish_block, *hello.service):
            keys.learn(endpoint, proven, proven=True)
        for peer_id, endpoints in hello.peers:
            key = hello.peer_keys.get(peer_id)
            if key is not None:
                for endpoint in endpoints:
                    keys.learn(endpoint, key)
        return True

    def _reject(self, reason: str, offender: bytes, now: float) -> None:
        self._actions.append(Count("protocol_errors"))
        self._bad_input_log.warning("dropped malformed control message: %s", reason)
        if offender and self._offences.offend(offender, now):
            self._cut_off(offender)

    def _cut_off(self, offender: bytes) -> None:
        """Drop a repeat offender: out of the peer table, its messages ignored for a while."""
        config = self._config
        self._actions.append(Count("peers_banned"))
        secure = len(offender) != NODE_ID_BYTES  # a Z85 key, not a node id
        log.warning(
            "peer %s sent %d malformed control messages within %s s: cut off for %s s",
            offender.decode() if secure else offender.hex()[:8],
            config.max_offences,
            config.offence_window,
            config.ban_time,
        )
        if secure and self._keys is not None:
            self._actions.append(Ban(offender, config.ban_time))  # no new connection with it
            keys = self._keys
            peer_ids = [
                peer_id
                for peer_id, peer in self._table.items()
                if keys.get(peer.endpoint) == offender
            ]
        else:
            peer_ids = [offender]
        for peer_id in peer_ids:
            self._dialer.forget_peer(peer_id)
            self._apply(self._table.bye(peer_id, reason="cut off: malformed input"))
        self._close_unused_links()

    # ------------------------------------------------------------------
    # Sending

    def _hello(self, *, reply: bool) -> bytes:
        """Our HELLO, encoded; gossip is trimmed until it fits the control limit."""
        local = self.local
        peer_keys = {}
        peers = self._table.peers_as_of_join()
        if self._keys is not None:
            for peer_id, peer in peers:
                key = self._keys.get(peer.endpoint)
                if key is not None:
                    peer_keys[peer_id] = key
        gossip = [
            (peer_id, peer.control) for peer_id, peer in peers if peer.state is PeerState.ALIVE
        ]
        while True:
            frame = encode_control(
                Hello(
                    sender=local.node_id,
                    name=local.name,
                    mesh=local.mesh,
                    control=local.control,
                    publish=local.publish,
                    headers=local.headers,
                    peers=tuple(gossip),
                    reply=reply,
                    services=local.services,
                    service=local.service if local.services else (),
                    publish_block=local.publish_block,
                    key=local.key,
                    peer_keys=peer_keys,
                    ping_echo=True,
                )
            )
            if len(frame) <= self._config.max_control_bytes or not gossip:
                return frame
            gossip = gossip[: len(gossip) // 2]

    def _send(self, endpoints: tuple[str, ...], frame: bytes) -> None:
        if endpoints:
            for endpoint in endpoints:
                self._links.setdefault(endpoint, self._now)
            self._actions.append(Send(endpoints, frame))

    def _ping_all(self, now: float) -> None:
        """A round of heartbeats: an echo PING to each peer that asked for them (16.4)."""
        links = self._links
        to_echo = self._to_echo
        round_ = self._round
        if round_ is None:
            echoing = self._echoing
            round_ = self._round = [
                (peer_id, peer.endpoint, peer_id in echoing)
                for peer_id, peer in self._table.peers_as_of_join()
            ]
        sent = max(1, int(now * 1e9))  # 0 would read as "no echo" when echoed back
        unechoed = b""  # the same for every echoing peer with nothing to echo
        messages: list[tuple[str, bytes]] = []
        append = messages.append
        for peer_id, endpoint, echoes in round_:
            if echoes:
                got = to_echo.pop(peer_id, None)
                if got is not None:
                    frame = encode_echo_ping(sent, got[0], int((now - got[1]) * 1e6))
                else:
                    frame = unechoed = unechoed or encode_echo_ping(sent, 0, 0)
            else:
                frame = self._ping
            if endpoint not in links:
                links[endpoint] = now
            append((endpoint, frame))
        if messages:
            self._actions.append(SendEach(tuple(messages)))

    def _broadcast(self, frame: bytes) -> None:
        self._send(tuple(peer.endpoint for _, peer in self._table.peers_as_of_join()), frame)

    def _connected(self) -> list[str]:
        return [ep for _, peer in self._table.peers_as_of_join() for ep in peer.control]

    def _hello_due(self, now: float) -> None:
        due, _expired = self._dialer.due(now, self._connected())
        if not due:
            return
        # Control links carry no ZMTP heartbeats (PROTOCOL.md 4.3): a link
        # that has gone unanswered for gone_after may be dead (a vanished
        # host, a half-open connection). Dial through a new one.
        stale = tuple(
            endpoint
            for endpoint in due
            if now - self._links.get(endpoint, now) >= self._config.gone_after
        )
        if stale:
            for endpoint in stale:
                del self._links[endpoint]
            self._actions.append(CloseLinks(stale))
            self._actions.append(Count("links_remade", len(stale)))
        self._send(tuple(due), self._hello(reply=True))

    def _choose_uncached(self, endpoints: tuple[str, ...]) -> str:
        return choose_endpoint(endpoints, self._networks, self._own)

    def _choose_control(
        self, control: tuple[str, ...], source: str | None, current: str | None
    ) -> str:
        """A HELLO sender's control endpoint to talk to (PROTOCOL.md 3.3).

        Not the first link we happen to hold (a DEALER opened for dialling
        may lead to this machine's docker0): the endpoint the peer's traffic
        comes from, else the best ranked, keeping the one in use.
        """
        chosen = choose_control(
            control,
            self._networks,
            own=self._own,
            source=source,
            exclude=self.local.control,
            current=current,
        )
        # None: it lists only our own endpoints (a host configured like this
        # one, on a shared address alone); nothing better to dial.
        return chosen if chosen is not None else choose_endpoint(control, self._networks, self._own)

    def _close_unused_links(self) -> None:
        """Keep one link per peer, plus those still dialling unknown endpoints (7.8).

        A second link to a peer already connected (two addresses of one
        multi-homed node were dialled at once) is closed: the peer's ROUTER
        sees one node and needs one link; the spare would only add traffic.
        """
        if not self._links:
            return
        peers = [peer for _, peer in self._table.peers_as_of_join()]
        in_use = {peer.endpoint for peer in peers}
        answered = {endpoint for peer in peers for endpoint in peer.control}
        # Only the endpoint a candidate is dialled at now: one given up for
        # the next (7.5) is closed, or it would keep reconnecting for nothing.
        dialling = self._dialer.dialling(answered)
        unused = tuple(
            endpoint
            for endpoint in self._links
            if endpoint not in in_use and (endpoint in answered or endpoint not in dialling)
        )
        if unused:
            for endpoint in unused:
                del self._links[endpoint]
            self._actions.append(CloseLinks(unused))

    # ------------------------------------------------------------------
    # Results

    def _apply(self, events: list[PeerEvent], *, directories_changed: bool = False) -> None:
        """Directories first, then the peer snapshot and its events."""
        if not events and not directories_changed:
            return
        self._round = None
        if any(event.kind is EventKind.JOINED or event.kind is EventKind.LEFT for event in events):
            # A repeated HELLO is only as good as the table it was checked
            # against: a newcomer may be the restart of its sender (7.2).
            self._hellos.clear()
        # Before anyone is woken: whoever wait_for_peers() released may
        # subscribe or request at once, and must find the peer there.
        self._actions.append(self._directories())
        for event in events:
            peer = event.peer
            if event.kind is EventKind.LEFT:
                gone = bytes.fromhex(peer.id)
                self._echoing.discard(gone)
                self._to_echo.pop(gone, None)
                log.info("peer %s (%s) left: %s", peer.name, peer.id[:8], event.reason)
            elif event.kind is EventKind.JOINED:
                log.info("peer %s (%s) joined from %s", peer.name, peer.id[:8], peer.endpoint)
        self._actions.append(PeersChanged(self._table.snapshot(), events))

    def _directories(self) -> Directories:
        """Where every peer publishes and serves, this node included (7.1 step 8)."""
        local = self.local
        node_id = local.node_id.hex()
        publishers = {node_id: local.local_publish}
        if local.local_publish_block:
            publishers[node_id + BLOCKING_SUFFIX] = local.local_publish_block
        providers: dict[str, dict[str, str]] = {}
        for name in local.services:
            providers.setdefault(name, {})[node_id] = local.local_service
        choose = self._choose_cached
        for _, peer in self._table.peers_as_of_join():
            publishers[peer.id] = choose(peer.publish)
            if peer.publish_block:
                publishers[peer.id + BLOCKING_SUFFIX] = choose(peer.publish_block)
            if peer.services and peer.service:
                endpoint = choose(peer.service)
                for name in peer.services:
                    providers.setdefault(name, {})[peer.id] = endpoint
        return Directories(publishers, providers)


def _described(peer: Peer) -> tuple[object, ...]:
    """What a HELLO says of a peer, but not when it was heard."""
    return (
        peer.name,
        peer.endpoint,
        dict(peer.headers),
        peer.control,
        peer.publish,
        peer.services,
        peer.service,
        peer.publish_block,
    )


def _addresses(endpoints: Sequence[str]) -> frozenset[ipaddress.IPv4Address]:
    """The IPv4 addresses of ``tcp://A.B.C.D:PORT`` endpoints (others skipped)."""
    found = set()
    for endpoint in endpoints:
        try:
            found.add(ipaddress.IPv4Address(endpoint_host(endpoint)))
        except ValueError:
            continue
    return frozenset(found)
