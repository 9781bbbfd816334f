"""Peer liveness and dialling as pure state machines fed with an injected clock.

The rule, in one place: a peer *joins* when its HELLO arrives. Any message
from it afterwards refreshes ``last_seen``. Silent for ``suspect_after``
seconds it becomes *suspect* (and *recovers* on the next message); silent for
``gone_after`` seconds, or after a BYE, it *leaves* and is forgotten. A new
id whose HELLO lists the endpoint we talk to a peer through, and comes from
the address that peer's traffic came from, means that peer restarted: the
old id leaves at once (meshq/reach.py; an endpoint two live nodes merely
both advertise, such as a docker0 address with a fixed port, is no restart).
Discovery never decides liveness.

:class:`Dialer` tracks control endpoints we were told about (mDNS, seeds,
gossip) and says when to (re)send a HELLO to each one that has no live peer
behind it, moving on to a candidate's next endpoint when one never answers.

Nothing here touches a socket or reads a clock; the node feeds events in and
performs the returned actions.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, KeysView, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .config import MeshConfig
from .reach import Route, is_restart
from .wire import Hello

__all__ = ["Dialer", "EventKind", "Peer", "PeerEvent", "PeerState", "PeerTable"]


class PeerState(enum.Enum):
    """Liveness of a peer as seen from this node."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    GONE = "gone"


class EventKind(enum.Enum):
    """What happened to a peer."""

    JOINED = "joined"
    SUSPECT = "suspect"
    RECOVERED = "recovered"
    LEFT = "left"


@dataclass(frozen=True)
class Peer:
    """A snapshot of a peer; ``headers`` is read-only.

    ``last_seen`` is when the peer was last heard from: seconds since the
    epoch in what a Node hands out (the pure PeerTable uses its own clock).
    """

    id: str
    name: str
    endpoint: str
    state: PeerState
    last_seen: float
    headers: Mapping[str, str] = field(default_factory=dict)
    control: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    #: Request/reply services the peer offers, and its service endpoints.
    services: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    #: Endpoints of the peer's never-dropping publish socket, if it opened one.
    publish_block: tuple[str, ...] = ()
    #: Smoothed round-trip time to the peer in seconds, timed by echo PINGs
    #: (PROTOCOL.md 16.4); None until the first sample, or if it sends none.
    rtt: float | None = None


@dataclass(frozen=True)
class PeerEvent:
    """A change in a peer's state. ``reason`` explains LEFT: bye, timeout, restarted."""

    kind: EventKind
    peer: Peer
    reason: str = ""


class PeerTable:
    """Peers by raw id, with the liveness rule stated in the module docstring.

    ``choose_endpoint(control, source, current)`` picks which of a peer's
    control endpoints to talk to, given the address its HELLO came from
    (None if unknown) and the endpoint chosen before (None for a newcomer).
    """

    def __init__(
        self,
        config: MeshConfig,
        choose_endpoint: Callable[[tuple[str, ...], str | None, str | None], str],
    ) -> None:
        self._config = config
        self._choose_endpoint = choose_endpoint
        self._peers: dict[bytes, Peer] = {}
        # The address each peer's latest HELLO came from, where known.
        self._sources: dict[bytes, str] = {}
        # When each peer was last heard from; a Peer's own last_seen is only
        # brought up to date when a snapshot is taken.
        self._seen: dict[bytes, float] = {}
        # Smoothed round-trip times (s), for peers that sent echo PINGs.
        self._rtt: dict[bytes, float] = {}
        # The SUSPECT peers: without any, next_deadline() is one min() over _seen.
        self._suspect: set[bytes] = set()
        #: HELLOs dropped because the table held ``max_peers`` already.
        self.rejected = 0

    def __contains__(self, peer_id: bytes) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def ids(self) -> KeysView[bytes]:
        """The raw ids of the peers, a live view (cheaper than ``in`` on the table)."""
        return self._peers.keys()

    def get(self, peer_id: bytes) -> Peer | None:
        """The peer with this raw id, or None."""
        peer = self._peers.get(peer_id)
        return None if peer is None else self._fresh(peer_id, peer)

    def snapshot(self) -> list[Peer]:
        """All current peers."""
        return [self._fresh(peer_id, peer) for peer_id, peer in self._peers.items()]

    def items(self) -> list[tuple[bytes, Peer]]:
        """(raw id, peer) pairs."""
        return [(peer_id, self._fresh(peer_id, peer)) for peer_id, peer in self._peers.items()]

    def peers_as_of_join(self) -> list[tuple[bytes, Peer]]:
        """(raw id, peer) pairs whose ``last_seen`` may be stale: for endpoints and names.

        Cheaper than :meth:`items` (no copy per peer heard from since).
        """
        return list(self._peers.items())

    def _fresh(self, peer_id: bytes, peer: Peer) -> Peer:
        seen = self._seen.get(peer_id, peer.last_seen)
        rtt = self._rtt.get(peer_id)
        if seen != peer.last_seen or rtt != peer.rtt:
            peer = replace(peer, last_seen=seen, rtt=rtt)
            self._peers[peer_id] = peer
        return peer

    def rtt_sample(self, peer_id: bytes, rtt: float) -> float | None:
        """Fold one round-trip sample (s) into the peer's smoothed value (gain 1/8, as
        TCP's SRTT); returns the new value, None for an unknown peer."""
        if peer_id not in self._peers:
            return None
        srtt = self._rtt.get(peer_id)
        srtt = rtt if srtt is None else srtt + (rtt - srtt) / 8
        self._rtt[peer_id] = srtt
        return srtt

    def ping(self, peer_id: bytes, now: float, rtt: float | None = None) -> bool:
        """A heartbeat of a peer that is known and ALIVE, the common case: it was
        heard at ``now``, and ``rtt`` (s), if given, is a round-trip sample to fold
        in as :meth:`rtt_sample` does. No event, no new snapshot object.

        False, with nothing changed, for a peer unknown or SUSPECT: :meth:`heard`
        says what then happens.
        """
        seen = self._seen  # its keys are the peers' (as _peers')
        if peer_id not in seen or peer_id in self._suspect:
            return False
        seen[peer_id] = now
        if rtt is not None:
            srtt = self._rtt.get(peer_id)
            self._rtt[peer_id] = rtt if srtt is None else srtt + (rtt - srtt) / 8
        return True

    def liveness(self) -> tuple[Mapping[bytes, float], Mapping[bytes, float]]:
        """Read-only live views, by raw id: when each peer was last heard, and its
        smoothed round-trip time (s, for peers that have one).

        They follow the table as it changes, with no copy per heartbeat; any
        thread may read them, one lookup at a time (each is atomic).
        """
        return MappingProxyType(self._seen), MappingProxyType(self._rtt)

    def rtt(self, peer_id: bytes) -> float | None:
        """The peer's smoothed round-trip time in seconds, None if not measured."""
        return self._rtt.get(peer_id)

    def _forget(self, peer_id: bytes) -> None:
        self._suspect.discard(peer_id)
        self._seen.pop(peer_id, None)
        self._sources.pop(peer_id, None)
        self._rtt.pop(peer_id, None)

    def next_deadline(self) -> float | None:
        """When the next peer turns suspect or is dropped if it stays silent; None: no peers."""
        if not self._suspect:
            # Every peer ALIVE (and each has a _seen time): the common case,
            # asked once per heartbeat round, without a loop in Python.
            return min(self._seen.values()) + self._config.suspect_after if self._seen else None
        config = self._config
        soonest: float | None = None
        for peer_id, peer in self._peers.items():
            seen = self._seen.get(peer_id, peer.last_seen)
            due = seen + (
                config.suspect_after if peer.state is PeerState.ALIVE else config.gone_after
            )
            if soonest is None or due < soonest:
                soonest = due
        return soonest

    def hello(self, message: Hello, now: float, source: str | None = None) -> list[PeerEvent]:
        """A HELLO arrived (from address ``source``, if known): the sender joins,
        or refreshes what we know of it. A known peer it shows restarted leaves."""
        events: list[PeerEvent] = []
        for old_id, old in list(self._peers.items()):
            if old_id != message.sender and is_restart(
                old.endpoint, self._sources.get(old_id), message.control, source
            ):
                del self._peers[old_id]
                seen = self._seen.get(old_id, old.last_seen)
                gone = replace(old, state=PeerState.GONE, last_seen=seen, rtt=self._rtt.get(old_id))
                self._forget(old_id)
                events.append(PeerEvent(EventKind.LEFT, gone, "restarted"))
        known = self._peers.get(message.sender)
        if known is None and len(self._peers) >= self._config.max_peers:
            self.rejected += 1
            return events
        current = None if known is None else known.endpoint
        peer = Peer(
            id=message.sender.hex(),
            name=message.name,
            endpoint=self._choose_endpoint(message.control, source, current),
            state=PeerState.ALIVE,
            last_seen=now,
            headers=MappingProxyType(dict(message.headers)),
            control=message.control,
            publish=message.publish,
            services=message.services,
            service=message.service,
            publish_block=message.publish_block,
            rtt=self._rtt.get(message.sender),
        )
        self._peers[message.sender] = peer
        self._seen[message.sender] = now
        if source is not None:
            self._sources[message.sender] = source
        if known is None:
            events.append(PeerEvent(EventKind.JOINED, peer))
        elif known.state is PeerState.SUSPECT:
            self._suspect.discard(message.sender)
            events.append(PeerEvent(EventKind.RECOVERED, peer))
        return events

    def heard(self, peer_id: bytes, now: float) -> list[PeerEvent]:
        """Any message from a peer: it is alive. Unknown ids are ignored."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return []
        if peer.state is PeerState.ALIVE:
            # The common case (a heartbeat): no new snapshot object per message.
            self._seen[peer_id] = now
            return []
        peer = replace(peer, state=PeerState.ALIVE, last_seen=now, rtt=self._rtt.get(peer_id))
        self._peers[peer_id] = peer
        self._seen[peer_id] = now
        self._suspect.discard(peer_id)
        return [PeerEvent(EventKind.RECOVERED, peer)]

    def bye(self, peer_id: bytes, reason: str = "bye") -> list[PeerEvent]:
        """The peer said goodbye (or was cut off, says ``reason``): it leaves now."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return []
        seen = self._seen.get(peer_id, peer.last_seen)
        gone = replace(peer, state=PeerState.GONE, last_seen=seen, rtt=self._rtt.get(peer_id))
        self._forget(peer_id)
        return [PeerEvent(EventKind.LEFT, gone, reason)]

    def tick(self, now: float) -> list[PeerEvent]:
        """Advance the clock: silent peers become suspect, then leave."""
        events: list[PeerEvent] = []
        for peer_id, peer in list(self._peers.items()):
            seen = self._seen.get(peer_id, peer.last_seen)
            silence = now - seen
            if silence >= self._config.gone_after:
                del self._peers[peer_id]
                gone = replace(
                    peer, state=PeerState.GONE, last_seen=seen, rtt=self._rtt.get(peer_id)
                )
                self._forget(peer_id)
                events.append(PeerEvent(EventKind.LEFT, gone, "timeout"))
            elif silence >= self._config.suspect_after and peer.state is PeerState.ALIVE:
                peer = replace(
                    peer, state=PeerState.SUSPECT, last_seen=seen, rtt=self._rtt.get(peer_id)
                )
                self._peers[peer_id] = peer
                self._suspect.add(peer_id)
                events.append(PeerEvent(EventKind.SUSPECT, peer))
        return events


@dataclass
class _Target:
    peer_id: bytes | None
    expires: float | None  # None: keep until discovery withdraws it
    next_hello: float
    route: Route  # the endpoint being dialled now, and the ones to try next
    pinned: bool = False  # a seed: kept for the node's whole life


class Dialer:
    """Control endpoints worth a HELLO, and when the next one is due.

    Sources: mDNS and seeds keep an endpoint until they withdraw it; gossip
    and incoming HELLOs keep it for ``gone_after`` seconds unless a peer
    answers. An endpoint whose peer is connected needs no HELLO. A candidate
    with alternatives (the other addresses of an mDNS record or a gossip
    entry) is dialled at one endpoint at a time; one that is not connected
    after ``GIVE_UP_AFTER_HELLOS`` HELLOs is given up for the next.
    """

    GIVE_UP_AFTER_HELLOS = 3

    def __init__(self, config: MeshConfig) -> None:
        self._config = config
        self._targets: dict[str, _Target] = {}
        self._give_up_after = self.GIVE_UP_AFTER_HELLOS * config.hello_interval

    def __contains__(self, endpoint: str) -> bool:
        """True for a candidate, by the endpoint it was added with."""
        return endpoint in self._targets

    def dialling(self, connected: Iterable[str]) -> set[str]:
        """The endpoints HELLOs go to now: the current one of each candidate not connected."""
        connected_set = set(connected)
        return {
            target.route.current
            for target in self._targets.values()
            if not target.route.answered(connected_set)
        }

    def __len__(self) -> int:
        return len(self._targets)

    def add(
        self,
        endpoint: str,
        peer_id: bytes | None,
        now: float,
        *,
        lasting: bool,
        pinned: bool = False,
        alternatives: Sequence[str] = (),
    ) -> bool:
        """Remember an endpoint: ``lasting`` (mDNS) until withdrawn, ``pinned``
        (seeds) for good, otherwise (gossip) for ``gone_after`` seconds.
        ``alternatives`` are the same node's other endpoints, best first.

        Returns False if refused: at most ``max_dialing`` gossiped endpoints,
        and ``max_peers + max_dialing`` in all, so that a flood of gossip or
        mDNS records never becomes a flood of sockets.
        """
        expires = None if lasting or pinned else now + self._config.gone_after
        known = self._targets.get(endpoint)
        if known is None:
            gossiped = sum(1 for target in self._targets.values() if target.expires is not None)
            if expires is not None and gossiped >= self._config.max_dialing:
                return False
            if len(self._targets) >= self._config.max_peers + self._config.max_dialing:
                return False
            route = Route((endpoint, *alternatives), since=now)
            self._targets[endpoint] = _Target(peer_id, expires, now, route, pinned)
            return True
        if (endpoint, *alternatives) != known.route.endpoints:
            known.route = Route((endpoint, *alternatives), since=now)
            known.next_hello = now
        if peer_id is not None:
            known.peer_id = peer_id
        if known.expires is not None:
            known.expires = expires
        known.pinned = known.pinned or pinned
        return True

    def remove(self, endpoint: str) -> None:
        """Forget an endpoint (discovery withdrew it); seeds stay."""
        target = self._targets.get(endpoint)
        if target is not None and not target.pinned:
            del self._targets[endpoint]

    def hurry(self, peer_id: bytes, now: float) -> bool:
        """Make a HELLO to this peer's endpoints due now; True if it has any.

        For a peer that still talks to us although we dropped it: one
        HELLO exchange brings it back without waiting for the next retry.
        """
        found = False
        for target in self._targets.values():
            if target.peer_id == peer_id:
                target.next_hello = now
                found = True
        return found

    def forget_peer(self, peer_id: bytes) -> None:
        """Forget every endpoint of a peer that said goodbye (seeds stay)."""
        for endpoint, target in list(self._targets.items()):
            if target.peer_id == peer_id and not target.pinned:
                del self._targets[endpoint]

    def next_deadline(self, connected: Iterable[str]) -> float | None:
        """When :meth:`due` next has a HELLO to send or a candidate to drop; None: never."""
        connected_set = set(connected)
        soonest: float | None = None
        for target in self._targets.values():
            if target.route.answered(connected_set):
                if target.expires is not None:
                    return float("-inf")  # due() drops it from the dialer now
                continue
            due = target.next_hello
            if target.expires is not None and target.expires < due:
                due = target.expires
            change = target.route.next_change(self._give_up_after)
            if change is not None and change < due:
                due = change
            if soonest is None or due < soonest:
                soonest = due
        return soonest

    def due(self, now: float, connected: Iterable[str]) -> tuple[list[str], list[str]]:
        """Return (endpoints to HELLO now, endpoints that expired and were dropped)."""
        connected_set = set(connected)
        hello: list[str] = []
        expired: list[str] = []
        for endpoint, target in list(self._targets.items()):
            if target.route.answered(connected_set):
                if target.expires is not None:
                    # Gossip brought us here and the peer answered: it needs
                    # no dialling now (and must not use up max_dialing).
                    del self._targets[endpoint]
                continue
            if target.expires is not None and now >= target.expires:
                del self._targets[endpoint]
                expired.append(endpoint)
                continue
            if target.route.advance(now, self._give_up_after):
                target.next_hello = now  # the next endpoint: try it at once
            if now >= target.next_hello:
                target.next_hello = now + self._config.hello_interval
                hello.append(target.route.current)
        return hello, expired
