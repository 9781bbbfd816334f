"""The control protocol as a pure state machine: nodes driven against each other, no sockets.

A fake network carries each ``Send`` action to the protocol object that
owns the endpoint; time moves only when a test says so, and only to the
deadline the protocol itself asked for (as the control loop does).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from meshq.config import MeshConfig
from meshq.discovery import Candidate
from meshq.peers import EventKind, PeerEvent, PeerState
from meshq.protocol import (
    Action,
    Ban,
    CloseLinks,
    ControlProtocol,
    Count,
    Directories,
    LocalNode,
    PeersChanged,
    Send,
    SendEach,
)
from meshq.security import KeyBook
from meshq.wire import (
    PING_HEAD,
    Bye,
    Hello,
    Limits,
    Ping,
    decode_control,
    encode_control,
    routing_id,
)

CONFIG = MeshConfig()  # heartbeat 0.5 s, suspect 1.5 s, gone 3 s, gossip 5 s, hello 0.5 s


@dataclass
class Node:
    name: str
    protocol: ControlProtocol
    node_id: bytes
    endpoint: str
    events: list[PeerEvent] = field(default_factory=list)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    links: set[str] = field(default_factory=set)
    directories: Directories | None = None
    peers: list[str] = field(default_factory=list)  # names, from the last PeersChanged
    heard: int = 0  # signs of life: heartbeats that changed only liveness
    rtt: float | None = None  # as the live views show it after the last heartbeat
    bans: list[bytes] = field(default_factory=list)
    down: bool = False  # its "host" drops everything sent to it


class Net:
    """Endpoints -> nodes; carries Send actions at once, in order."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.now = 0.0
        self.sent: list[tuple[str, str, object]] = []  # (from, to, decoded message)
        self.tried: list[tuple[str, str, bytes]] = []  # (from, endpoint, frame), delivered or not
        #: (sender name, endpoint) of links that deliver nothing (a stalled
        #: connect, say) until the sender closes them; a new link works.
        self.broken: set[tuple[str, str]] = set()
        #: Seconds each message takes to arrive (0: at once); delayed ones
        #: wait in ``pending`` until ``advance`` reaches their time.
        self.delay = 0.0
        self.pending: list[tuple[float, int, Node, list[bytes]]] = []
        self._order = itertools.count()
        #: Hand PINGs to on_heartbeat, as the control loop does, instead of
        #: on_frames (which returns actions for a PING of the common case).
        self.batched = False

    def add(self, name: str, keys: KeyBook | None = None, key: bytes = b"") -> Node:
        node_id = bytes([len(self.nodes) + 1]) + os.urandom(15)
        endpoint = f"tcp://198.18.0.{len(self.nodes) + 1}:7000"
        local = LocalNode(
            node_id=node_id,
            name=name,
            mesh="m",
            control=(endpoint,),
            publish=(f"tcp://198.18.0.{len(self.nodes) + 1}:7001",),
            key=key,
            local_publish=f"inproc://pub-{name}",
        )
        protocol = ControlProtocol(CONFIG, local, self.now, limits=Limits(), keys=keys)
        node = Node(name, protocol, node_id, endpoint)
        self.nodes[endpoint] = node
        return node

    def run(self, node: Node, actions: Iterable[Action], proven: bytes = b"") -> None:
        queue = collections.deque([(node, list(actions))])
        while queue:
            source, batch = queue.popleft()
            for action in batch:
                if isinstance(action, Send | SendEach):
                    if isinstance(action, Send):
                        messages = [(endpoint, action.frame) for endpoint in action.endpoints]
                    else:
                        messages = list(action.messages)
                    for endpoint, frame in messages:
                        source.links.add(endpoint)
                        self.tried.append((source.name, endpoint, frame))
                        target = self.nodes.get(endpoint)
                        if target is None or target.down or source.down:
                            continue
                        if (source.name, endpoint) in self.broken:
                            continue
                        message = decode_control(routing_id(source.node_id, 1), frame, Limits())
                        self.sent.append((source.name, target.name, message))
                        frames = [routing_id(source.node_id, 1), frame]
                        if self.delay:
                            when = self.now + self.delay
                            heapq.heappush(self.pending, (when, next(self._order), target, frames))
                            continue
                        queue.append((target, self.deliver(target, frames, proven)))
                elif isinstance(action, CloseLinks):
                    source.links.difference_update(action.endpoints)
                    for endpoint in action.endpoints:
                        self.broken.discard((source.name, endpoint))
                elif isinstance(action, PeersChanged):
                    source.events.extend(action.events)
                    source.peers = sorted(peer.name for peer in action.peers)
                elif isinstance(action, Directories):
                    source.directories = action
                elif isinstance(action, Count):
                    source.counts[action.what] += action.n
                elif isinstance(action, Ban):
                    source.bans.append(action.key)

    def deliver(self, target: Node, frames: list[bytes], proven: bytes = b"") -> list[Action]:
        """What ``target`` does with a message, read alone (or as the loop reads PINGs).

        A heartbeat that changed nothing but liveness (a sign of life) shows
        only in the protocol's live views, which are checked here as the
        node's state reads them: ``heard`` counts them, ``rtt`` follows.
        """
        protocol = target.protocol
        lively = protocol.signs_of_life
        if not self.batched or frames[1][:4] != PING_HEAD:
            actions = protocol.on_frames(frames, self.now, proven)
        else:
            actions = protocol.on_heartbeat(frames[0], frames[1], self.now, proven) or []
        if protocol.signs_of_life != lively:
            seen, rtt = protocol.liveness()
            sender = frames[0][:16]
            assert seen[sender] == self.now  # what the node's state reads
            target.heard += 1
            target.rtt = rtt.get(sender)
        return actions

    def find(self, a: Node, b: Node) -> None:
        """``a``'s discovery reports ``b`` (as mDNS would)."""
        self.run(a, a.protocol.on_found(Candidate(b.endpoint, b.node_id, "mdns"), self.now))

    def advance(self, until: float) -> None:
        """Move the clock to ``until``, stopping at every deadline any node asked for."""
        while True:
            due = min(node.protocol.next_deadline() for node in self.nodes.values())
            arrival = self.pending[0][0] if self.pending else math.inf
            if min(due, arrival) > until:
                break
            if arrival < due:  # a delayed message arrives first
                self.now, _, target, frames = heapq.heappop(self.pending)
                self.run(target, self.deliver(target, frames))
                continue
            self.now = max(self.now, due)
            for node in list(self.nodes.values()):
                if node.protocol.next_deadline() <= self.now:
                    self.run(node, node.protocol.on_timer(self.now))
        self.now = until


def kinds(node: Node) -> list[tuple[EventKind, str]]:
    return [(event.kind, event.peer.name) for event in node.events]


def test_one_discovery_joins_both_sides_and_fills_the_directories() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    assert kinds(a) == [(EventKind.JOINED, "b")]
    assert kinds(b) == [(EventKind.JOINED, "a")]
    assert a.directories is not None
    assert a.directories.publishers[b.node_id.hex()] == "tcp://198.18.0.2:7001"
    assert a.directories.publishers[a.node_id.hex()] == "inproc://pub-a"
    hellos = [(s, t, m.reply) for s, t, m in net.sent if isinstance(m, Hello)]
    # A asks, B answers (asked, and A is new), A greets B (new): PROTOCOL.md 7.5.
    assert hellos == [("a", "b", True), ("b", "a", False), ("a", "b", False)]


def test_the_next_deadline_is_the_next_heartbeat_when_idle() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    for node in (a, b):
        assert node.protocol.next_deadline() == pytest.approx(CONFIG.heartbeat_interval)
    net.advance(2.0)
    # Peers heard every 0.5 s: nothing due before the next heartbeat, no 50 ms tick.
    assert a.protocol.next_deadline() == pytest.approx(2.5)
    assert kinds(a) == [(EventKind.JOINED, "b")]


@pytest.fixture(params=[False, True], ids=["alone", "batched"])
def either_net(request: pytest.FixtureRequest) -> Net:
    """A Net whose nodes read heartbeats one at a time, then (second run) in batches."""
    net = Net()
    net.batched = request.param
    return net


def test_heartbeat_rounds_keep_dialling_a_candidate_that_never_answers(either_net: Net) -> None:
    """Rounds of heartbeats alone skip the dialer, but never a HELLO it has due (7.5)."""
    net = either_net
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.find(a, b)
    c.down = True
    net.find(a, c)
    net.tried.clear()
    net.advance(5.2)
    to_c = [
        decode_control(routing_id(a.node_id, 1), frame, Limits())
        for s, endpoint, frame in net.tried
        if s == "a" and endpoint == c.endpoint
    ]
    # At 0.5, 1.0, ... 5.0: every hello_interval, heartbeats to b between.
    assert len(to_c) == 10
    assert all(isinstance(m, Hello) and m.reply for m in to_c)
    assert a.peers == ["b"] and [k for k, _ in kinds(a)] == [EventKind.JOINED]


def test_a_suspect_peer_recovers_by_a_ping_read_in_a_batch() -> None:
    net = Net()
    net.batched = True
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    b.down = True
    net.advance(1.6)
    assert kinds(a)[-1] == (EventKind.SUSPECT, "b")
    heard = a.heard
    actions = a.protocol.on_heartbeat(routing_id(b.node_id, 1), b"MQ\x01\x02", 1.7)
    assert actions is not None  # an event: not a heartbeat like the others
    net.run(a, actions)
    assert kinds(a)[-1] == (EventKind.RECOVERED, "b")
    assert a.heard == heard  # told by the new snapshot instead
    seen, rtt = a.protocol.liveness()
    assert seen[b.node_id] == 1.7
    # Back to the common case: no action; the live views show it at once.
    assert a.protocol.on_heartbeat(routing_id(b.node_id, 1), b"MQ\x01\x02", 1.8) is None
    assert seen[b.node_id] == 1.8 and b.node_id not in rtt
    assert a.protocol.peers[0].last_seen == 1.8
    assert kinds(a)[-1] == (EventKind.RECOVERED, "b")  # no new event


def test_heartbeats_go_to_every_peer_and_refresh_liveness(either_net: Net) -> None:
    net = either_net
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.find(a, b)
    net.find(a, c)
    net.find(b, c)
    net.sent.clear()
    net.advance(0.5)
    pings = sorted((s, t) for s, t, m in net.sent if isinstance(m, Ping))
    assert pings == sorted((x, y) for x in "abc" for y in "abc" if x != y)
    assert a.heard == 2
    assert a.protocol.last_round == 0.5  # what the loop's quiet spells start from
    net.advance(20.0)  # 40 heartbeat periods, four gossip rounds
    assert [kind for kind, _ in kinds(a)] == [EventKind.JOINED, EventKind.JOINED]


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_silent_peer_is_suspect_then_gone_at_its_deadlines(batched: bool) -> None:
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    net.advance(1.0)
    b.down = True  # from now on nothing of b's arrives
    net.advance(2.4)
    assert kinds(a)[-1] == (EventKind.JOINED, "b")
    net.advance(2.5)  # last heard at 1.0: suspect at 2.5
    assert kinds(a)[-1] == (EventKind.SUSPECT, "b")
    net.advance(3.99)
    assert kinds(a)[-1] == (EventKind.SUSPECT, "b")
    net.advance(4.0)
    assert kinds(a)[-1] == (EventKind.LEFT, "b")
    assert a.node_id.hex() not in [p for p in a.peers]
    assert a.events[-1].reason == "timeout"


def test_each_heartbeat_round_goes_to_the_peers_and_links_of_its_moment() -> None:
    """The round is kept from one heartbeat to the next: a peer that leaves, or a
    link that is remade, must show in the next round all the same."""
    net = Net()
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.find(a, b)
    net.find(a, c)
    net.advance(0.5)  # a first round, to both

    def pinged(since: int) -> set[str]:
        return {e for s, e, frame in net.tried[since:] if s == "a" and frame[:4] == PING_HEAD}

    bye = [routing_id(c.node_id, 1), encode_control(Bye(c.node_id))]
    net.run(a, a.protocol.on_frames(bye, net.now))
    start = len(net.tried)
    net.advance(1.0)
    assert pinged(start) == {b.endpoint}
    # The link to b is remade (its handshake failed): the next round's PING
    # makes it anew, and the protocol knows it has it.
    net.run(a, a.protocol.on_redial(b.endpoint))
    assert b.endpoint not in a.protocol.goodbye()[0]
    start = len(net.tried)
    net.advance(1.5)
    assert pinged(start) == {b.endpoint}
    assert b.endpoint in a.protocol.goodbye()[0]


def test_gossip_brings_two_nodes_that_never_met_together() -> None:
    net = Net()
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.find(a, b)
    net.find(c, a)  # b and c never discover each other
    # a's answer to c gossips b: c dials b at once (PROTOCOL.md 7.1 step 7).
    assert sorted(b.peers) == ["a", "c"]
    assert sorted(c.peers) == ["a", "b"]
    net.advance(CONFIG.gossip_interval + 0.01)
    assert sorted(b.peers) == ["a", "c"] and sorted(c.peers) == ["a", "b"]


def test_periodic_gossip_heals_a_pair_that_lost_each_other() -> None:
    net = Net()
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.find(a, b)
    net.find(a, c)
    net.find(b, c)
    # b and c drop each other (say, a link between them only was down), while
    # both stay with a; b forgets its discovery of c.
    frames = [routing_id(c.node_id, 1), encode_control(Bye(c.node_id))]
    net.run(b, b.protocol.on_frames(frames, net.now))
    frames = [routing_id(b.node_id, 1), encode_control(Bye(b.node_id))]
    net.run(c, c.protocol.on_frames(frames, net.now))
    assert b.peers == ["a"] and c.peers == ["a"]
    net.advance(CONFIG.gossip_interval + 0.01)  # a's periodic HELLO gossips each to the other
    assert b.peers == ["a", "c"] and c.peers == ["a", "b"]


def test_bye_removes_at_once_and_closes_the_link() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.find(b, a)  # only b dials: a's link to b exists because it answered
    frames = [routing_id(b.node_id, 1), encode_control(Bye(b.node_id))]
    net.run(a, a.protocol.on_frames(frames, net.now))
    assert kinds(a)[-1] == (EventKind.LEFT, "b")
    assert a.events[-1].reason == "bye"
    assert b.endpoint not in a.links  # no peer and not dialled: closed


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_ping_from_an_unknown_peer_with_a_candidate_sends_a_hello_at_once(batched: bool) -> None:
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    b.down = True
    net.advance(5.0)  # a timed b out; a keeps b's mDNS candidate and dials it
    assert kinds(a)[-1] == (EventKind.LEFT, "b")
    b.down = False
    net.sent.clear()
    ping = [routing_id(b.node_id, 1), encode_control(Ping(b.node_id))]
    net.run(a, net.deliver(a, ping))
    assert a.counts["unknown_sender"] == 1
    assert ("a", "b", True) in [(s, t, m.reply) for s, t, m in net.sent if isinstance(m, Hello)]
    assert kinds(a)[-1] == (EventKind.JOINED, "b")


def test_malformed_frames_are_counted_and_a_repeat_offender_is_cut_off() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    junk = [routing_id(b.node_id, 1), b"MQ\x01\x09garbage"]
    for _ in range(CONFIG.max_offences):
        net.run(a, a.protocol.on_frames(junk, net.now))
    assert a.counts["protocol_errors"] == CONFIG.max_offences
    assert a.counts["peers_banned"] == 1
    assert kinds(a)[-1] == (EventKind.LEFT, "b")
    assert a.events[-1].reason == "cut off: malformed input"
    ping = [routing_id(b.node_id, 1), encode_control(Ping(b.node_id))]
    assert a.protocol.on_frames(ping, net.now) == [Count("banned_dropped")]
    three = [routing_id(b.node_id, 1), b"", b""]
    a.protocol.on_frames(three, net.now + CONFIG.ban_time + 1)  # ban over: counted again
    assert a.protocol.on_frames(three, net.now + CONFIG.ban_time + 1) != [Count("banned_dropped")]


def test_another_mesh_is_ignored() -> None:
    net = Net()
    a = net.add("a")
    stranger = Hello(
        b"\x09" * 16, "x", "other-mesh", ("tcp://198.18.0.9:7000",), ("tcp://198.18.0.9:7001",)
    )
    frames = [routing_id(stranger.sender, 1), encode_control(stranger)]
    assert a.protocol.on_frames(frames, 0.0) == [Count("other_mesh")]
    assert a.protocol.peers == []


def test_with_security_a_hello_must_carry_the_key_its_connection_proved() -> None:
    net = Net()
    key_a, key_b = b"A" * 40, b"B" * 40
    a = net.add("a", keys=KeyBook(), key=key_a)
    b = net.add("b", keys=KeyBook(), key=key_b)
    hello = encode_control(
        Hello(b.node_id, "b", "m", (b.endpoint,), ("tcp://198.18.0.2:7001",), key=key_b)
    )
    frames = [routing_id(b.node_id, 1), hello]
    net.run(a, a.protocol.on_frames(frames, 0.0, proven=b"C" * 40))  # some other key
    assert a.counts["protocol_errors"] == 1 and a.peers == []
    net.run(a, a.protocol.on_frames(frames, 0.0, proven=key_b))
    assert a.peers == ["b"]


def test_goodbye_names_every_link() -> None:
    net = Net()
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.find(a, b)
    net.find(a, c)
    endpoints, bye = a.protocol.goodbye()
    assert sorted(endpoints) == sorted([b.endpoint, c.endpoint])
    assert isinstance(decode_control(routing_id(a.node_id, 1), bye, Limits()), Bye)


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_liveness_survives_many_silent_periods_only_at_deadlines(batched: bool) -> None:
    """The loop never needs a fixed tick: states change exactly at the deadlines asked for."""
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    steps = 0
    while net.now < 60.0:
        net.advance(a.protocol.next_deadline())
        steps += 1
    # One wake-up per heartbeat period (0.5 s) for 60 s, gossip folded in.
    assert steps <= 60.0 / CONFIG.heartbeat_interval + 1
    assert [peer.state for peer in a.protocol.peers] == [PeerState.ALIVE]


def test_a_link_that_never_delivers_an_answer_is_remade() -> None:
    """The missing link: b answers a through a link that delivers nothing.

    a keeps dialling b (no answer arrives), and its HELLOs keep a alive at
    b, so b's link to a counts as in use and would be kept for ever. A
    known peer that still asks for an answer after gone_after of answers
    shows that link is dead: b makes a new one, and the pair meshes.
    """
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.broken.add(("b", a.endpoint))
    net.find(a, b)
    assert b.peers == ["a"] and a.peers == []
    net.advance(CONFIG.gone_after - 0.1)
    assert a.peers == []  # still dialling, still unanswered
    net.advance(CONFIG.gone_after + 2 * CONFIG.hello_interval)
    assert a.peers == ["b"] and b.peers == ["a"]
    assert b.counts["links_remade"] == 1
    net.advance(30.0)
    assert b.counts["links_remade"] == 1  # a healthy link is left alone
    assert kinds(a) == [(EventKind.JOINED, "b")]


def test_a_dialled_link_that_stays_unanswered_is_remade() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.broken.add(("a", b.endpoint))
    net.find(a, b)  # b never hears of a by itself
    net.advance(CONFIG.gone_after - 0.1)
    assert a.peers == [] and b.peers == []
    net.advance(CONFIG.gone_after + 2 * CONFIG.hello_interval)
    assert a.peers == ["b"] and b.peers == ["a"]
    assert a.counts["links_remade"] == 1


# ----------------------------------------------------------------------
# Round-trip times from echo PINGs (PROTOCOL.md 16.4)


def old_peer_hello(node_id: bytes, index: int, *, reply: bool) -> list[bytes]:
    """The HELLO of a node written to revision 1.2 or earlier: no ``ping_echo``."""
    hello = Hello(
        node_id,
        "old",
        "m",
        (f"tcp://198.18.0.{index}:7000",),
        (f"tcp://198.18.0.{index}:7001",),
        reply=reply,
    )
    return [routing_id(node_id, 1), encode_control(hello)]


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_echo_pings_time_the_round_trip_of_every_peer(batched: bool) -> None:
    net = Net()
    net.batched = batched
    net.delay = 0.002  # every message is read 2 ms after it was sent
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    hellos = [m for _, _, m in net.sent if isinstance(m, Hello)]
    assert hellos and all(m.ping_echo for m in hellos)  # both announce it
    net.sent.clear()
    net.advance(0.5)  # the first round: nothing to echo yet
    first = [m for _, _, m in net.sent if isinstance(m, Ping)]
    assert len(first) == 2 and all(m.timed and m.echo == 0 for m in first)
    assert a.rtt is None and a.protocol.peers[0].rtt is None
    net.advance(3.0)
    pings = [m for _, _, m in net.sent if isinstance(m, Ping)]
    assert all(m.timed for m in pings)
    # Each echo names the PING read from that peer and how long it was held.
    echoed = [m for m in pings if m.echo]
    assert echoed and all(m.held == pytest.approx(498_000, abs=1) for m in echoed)
    for node in (a, b):
        (peer,) = node.protocol.peers
        assert peer.rtt == pytest.approx(0.004, abs=2e-6)  # twice the one-way delay
        assert node.rtt == peer.rtt  # as the live views show it


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_the_smoothed_rtt_follows_a_slower_path_by_an_eighth_per_sample(batched: bool) -> None:
    net = Net()
    net.batched = batched
    net.delay = 0.001
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    net.advance(2.0)
    assert a.protocol.peers[0].rtt == pytest.approx(0.002, abs=2e-6)
    net.delay = 0.005  # 5 ms each way from the round at 2.5 s on
    net.advance(2.6)  # the echo read at 2.505 went out at 1 ms and came back at 5 ms
    assert a.protocol.peers[0].rtt == pytest.approx(0.002 + (0.006 - 0.002) / 8, abs=2e-6)
    net.advance(3.1)  # now one that went both ways at 5 ms
    assert a.protocol.peers[0].rtt == pytest.approx(0.0025 + (0.010 - 0.0025) / 8, abs=2e-6)
    net.advance(20.0)  # about 30 more samples: (7/8) ** 30 of the difference is left
    assert a.protocol.peers[0].rtt == pytest.approx(0.010, abs=2e-4)


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_peer_without_ping_echo_gets_empty_pings_and_has_no_rtt(batched: bool) -> None:
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    old_id = b"\x07" * 16
    net.run(a, a.protocol.on_frames(old_peer_hello(old_id, 7, reply=True), net.now))
    assert sorted(a.peers) == ["b", "old"]
    frames: dict[str, bytes] = {}
    for action in a.protocol.on_timer(0.5):
        if isinstance(action, SendEach):
            frames.update(action.messages)
    assert frames["tcp://198.18.0.7:7000"] == b"MQ\x01\x02"  # what revision 1.2 accepts
    assert len(frames[b.endpoint]) == 24  # the new peer gets echo PINGs
    # The old peer's empty PINGs keep it alive; no round trip is made up.
    empty = [routing_id(old_id, 1), encode_control(Ping(old_id))]
    for now in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        net.now = now
        net.run(a, net.deliver(a, empty))
    assert a.rtt is None
    old = next(peer for peer in a.protocol.peers if peer.name == "old")
    assert old.state is PeerState.ALIVE and old.last_seen == 3.5 and old.rtt is None


def test_a_peer_that_stops_announcing_ping_echo_gets_empty_pings_again() -> None:
    net = Net()
    a = net.add("a")
    peer_id = b"\x07" * 16
    hello = Hello(
        peer_id, "p", "m", ("tcp://198.18.0.7:7000",), ("tcp://198.18.0.7:7001",), ping_echo=True
    )
    net.run(a, a.protocol.on_frames([routing_id(peer_id, 1), encode_control(hello)], 0.0))

    def ping_to_peer(now: float) -> bytes:
        for action in a.protocol.on_timer(now):
            if isinstance(action, SendEach):
                return dict(action.messages)["tcp://198.18.0.7:7000"]
        raise AssertionError("no heartbeat round")

    assert len(ping_to_peer(0.5)) == 24
    net.run(a, a.protocol.on_frames(old_peer_hello(peer_id, 7, reply=False), 0.6))
    assert ping_to_peer(1.0) == b"MQ\x01\x02"


@pytest.mark.parametrize("extra", [1, 19, 21, 40])
@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_ping_body_of_the_wrong_size_is_a_counted_offence(extra: int, batched: bool) -> None:
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    bad = [routing_id(b.node_id, 1), b"MQ\x01\x02" + bytes(extra)]
    for _ in range(CONFIG.max_offences):
        net.run(a, net.deliver(a, bad))
    assert a.counts["protocol_errors"] == CONFIG.max_offences
    assert a.counts["peers_banned"] == 1 and "b" not in a.peers


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_an_echo_that_cannot_be_a_round_trip_is_counted_and_ignored(batched: bool) -> None:
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    net.advance(4.0)
    assert a.protocol.peers[0].rtt == pytest.approx(0.0, abs=2e-6)
    now = net.now = net.now + 0.1
    future = encode_control(Ping(b.node_id, sent=1, echo=int((now + 1) * 1e9), held=0, timed=True))
    stale = encode_control(Ping(b.node_id, sent=2, echo=1, held=0, timed=True))  # 4 s ago
    for frame in (future, stale):
        net.run(a, net.deliver(a, [routing_id(b.node_id, 1), frame]))
    assert a.counts["rtt_discarded"] == 2
    assert a.protocol.peers[0].rtt == pytest.approx(0.0, abs=2e-6)
    assert a.protocol.peers[0].last_seen == now  # still a sign of life


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_what_the_mesh_sends_every_round_counts_as_a_sign_of_life(batched: bool) -> None:
    """PINGs and periodic HELLOs that repeat the last count (the control loop reads a
    round of them together, 16.4); a HELLO that changes something, or a peer's
    recovery, does not."""
    net = Net()
    net.batched = batched
    a, b = net.add("a"), net.add("b")
    net.find(a, b)
    net.advance(5.2)  # every PING round, and the first periodic HELLO round (at 5.0)
    start = a.protocol.signs_of_life
    net.sent.clear()
    net.advance(10.2)  # 9 PING rounds and one periodic HELLO round, repeated byte for byte
    from_b = [m for s, t, m in net.sent if (s, t) == ("b", "a")]
    assert len(from_b) == 10 and sum(isinstance(m, Hello) for m in from_b) == 1
    assert a.protocol.signs_of_life - start == 10
    # A HELLO that says something new (a header) is no mere sign of life.
    before = a.protocol.signs_of_life
    changed = b.protocol.on_announce(
        LocalNode(
            node_id=b.node_id,
            name="b",
            mesh="m",
            control=(b.endpoint,),
            publish=b.protocol.local.publish,
            headers={"role": "new"},
            local_publish=b.protocol.local.local_publish,
        )
    )
    net.run(b, changed)
    assert a.protocol.signs_of_life == before
    # Nor is the PING that brings back a suspect peer.
    b.down = True
    net.advance(12.0)  # silent since 10.0: suspect at 11.5
    assert kinds(a)[-1] == (EventKind.SUSPECT, "b")
    b.down = False
    before = a.protocol.signs_of_life
    net.advance(12.5)
    assert kinds(a)[-1] == (EventKind.RECOVERED, "b")
    assert a.protocol.signs_of_life == before
