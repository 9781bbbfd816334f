"""Docker hosts as pure control protocols: a shared docker0 address, one fixed port, no flapping.

Each host has a LAN address and the same docker0 address; a frame sent to
an endpoint at the docker0 address (or the host's own LAN address) stays
on the sending host, as the kernel would route it. Messages carry the
address they came from, as the control loop reads it from ZeroMQ. Time
moves only to the deadlines the protocols ask for.
"""

from __future__ import annotations

import collections
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from meshq.config import MeshConfig
from meshq.discovery import Candidate
from meshq.interfaces import endpoint_host, rank_endpoints
from meshq.peers import EventKind, PeerEvent
from meshq.protocol import (
    Action,
    CloseLinks,
    ControlProtocol,
    LocalNode,
    PeersChanged,
    Send,
    SendEach,
)
from meshq.wire import Limits, routing_id

CONFIG = MeshConfig()
LAN = "198.18.91"
DOCKER = "198.18.93.1"
PORT = 7600
WATCH = 25.0  # seconds of protocol time, as the namespace soak test watches


@dataclass
class Host:
    lan: str
    protocol: ControlProtocol
    node_id: bytes
    networks: tuple[ipaddress.IPv4Network, ...]
    own: frozenset[ipaddress.IPv4Address]
    events: list[PeerEvent] = field(default_factory=list)
    links: set[str] = field(default_factory=set)


class DockerHosts:
    """Hosts on one LAN, each with the same docker0 address, every node on port 7600."""

    def __init__(self, count: int, *, docker_first: bool) -> None:
        self.now = 0.0
        self.hosts: dict[str, Host] = {}
        for index in range(count):
            lan = f"{LAN}.{index + 1}"
            addresses = (DOCKER, lan) if docker_first else (lan, DOCKER)
            networks = (
                ipaddress.IPv4Network(f"{LAN}.0/24"),
                ipaddress.IPv4Network(f"{DOCKER}/24", strict=False),
            )
            own = frozenset(ipaddress.IPv4Address(a) for a in addresses)
            node_id = bytes([index + 1]) + os.urandom(15)
            local = LocalNode(
                node_id=node_id,
                name=f"h{index + 1}",
                mesh="m",
                control=tuple(f"tcp://{a}:{PORT}" for a in addresses),
                publish=tuple(f"tcp://{a}:{PORT + 1}" for a in addresses),
            )
            protocol = ControlProtocol(CONFIG, local, self.now, limits=Limits(), networks=networks)
            self.hosts[lan] = Host(lan, protocol, node_id, networks, own)

    def route(self, sender: Host, endpoint: str) -> tuple[Host, str] | None:
        """(receiving host, the address the message comes from), or None: nobody listens."""
        address, _, port = endpoint[len("tcp://") :].rpartition(":")
        if int(port) != PORT:
            return None
        if address in (sender.lan, DOCKER):
            return sender, address  # stays on the sending host
        target = self.hosts.get(address)
        return None if target is None else (target, sender.lan)

    def run(self, host: Host, actions: Iterable[Action]) -> None:
        queue = collections.deque([(host, list(actions))])
        while queue:
            sender, batch = queue.popleft()
            for action in batch:
                if isinstance(action, Send | SendEach):
                    if isinstance(action, Send):
                        messages = [(endpoint, action.frame) for endpoint in action.endpoints]
                    else:
                        messages = list(action.messages)  # a round of heartbeats
                    for endpoint, frame in messages:
                        sender.links.add(endpoint)
                        reached = self.route(sender, endpoint)
                        if reached is None:
                            continue
                        target, source = reached
                        frames = [routing_id(sender.node_id, 1), frame]
                        actions = target.protocol.on_frames(frames, self.now, source=source)
                        queue.append((target, actions))
                elif isinstance(action, CloseLinks):
                    sender.links.difference_update(action.endpoints)
                elif isinstance(action, PeersChanged):
                    sender.events.extend(action.events)

    def announce_all(self) -> None:
        """Every host's mDNS finds every other, addresses ranked as discovery ranks them."""
        for finder in self.hosts.values():
            for other in self.hosts.values():
                if other is finder:
                    continue
                advertised = sorted(other.protocol.local.control)
                ranked = rank_endpoints(
                    advertised,
                    finder.networks,
                    own=finder.own,
                    exclude=finder.protocol.local.control,
                )
                candidate = Candidate(ranked[0], other.node_id, "mdns", alternatives=ranked[1:])
                self.run(finder, finder.protocol.on_found(candidate, self.now))

    def advance(self, until: float) -> None:
        while True:
            due = min(host.protocol.next_deadline() for host in self.hosts.values())
            if due > until:
                break
            self.now = max(self.now, due)
            for host in self.hosts.values():
                if host.protocol.next_deadline() <= self.now:
                    self.run(host, host.protocol.on_timer(self.now))
        self.now = until


@pytest.mark.parametrize("docker_first", [True, False], ids=["dock0-first", "dock0-last"])
def test_three_docker_hosts_on_one_port_mesh_once_at_their_lan_addresses(
    docker_first: bool,
) -> None:
    hosts = DockerHosts(3, docker_first=docker_first)
    hosts.announce_all()
    hosts.advance(WATCH)
    for host in hosts.hosts.values():
        others = sorted(f"h{i + 1}" for i in range(3) if f"{LAN}.{i + 1}" != host.lan)
        joined = sorted(e.peer.name for e in host.events if e.kind is EventKind.JOINED)
        left = [(e.peer.name, e.reason) for e in host.events if e.kind is EventKind.LEFT]
        assert (joined, left) == (others, []), host.lan
        peers = host.protocol.peers
        assert sorted(endpoint_host(p.endpoint) for p in peers) == sorted(
            other for other in hosts.hosts if other != host.lan
        )
        assert not any(endpoint_host(link) == DOCKER for link in host.links), host.links


def test_a_candidate_that_never_answers_gives_way_to_its_next_endpoint() -> None:
    hosts = DockerHosts(2, docker_first=False)
    h1, h2 = hosts.hosts.values()
    # h1's discovery offers h2 at a dead address first (a stale record, say).
    dead = f"tcp://198.18.99.9:{PORT}"
    candidate = Candidate(dead, h2.node_id, "mdns", alternatives=(f"tcp://{h2.lan}:{PORT}",))
    hosts.run(h1, h1.protocol.on_found(candidate, hosts.now))
    hosts.advance(WATCH)
    assert [e.peer.name for e in h1.events if e.kind is EventKind.JOINED] == ["h2"]
    assert [e.peer.name for e in h2.events if e.kind is EventKind.JOINED] == ["h1"]
    assert not any(e.kind is EventKind.LEFT for e in (*h1.events, *h2.events))
    assert dead not in h1.links  # given up, and its link closed
