"""Default interfaces and endpoint ranking (pure), and mDNS candidates built from records."""

from __future__ import annotations

import ipaddress
import logging
import socket

import pytest
from zeroconf import ServiceInfo

from meshq.discovery import SERVICE_TYPE, MdnsDiscovery
from meshq.interfaces import (
    Adapter,
    choose_endpoint,
    default_interfaces,
    rank_endpoints,
    rank_interfaces,
)
from meshq.wire import PROTOCOL_VERSION


def adapter(name: str, address: str, plugged: bool | None = True) -> Adapter:
    return Adapter(name, ipaddress.IPv4Address(address), 24, plugged)


def names(adapters: list[Adapter]) -> list[str]:
    return [a.name for a in adapters]


def test_a_bridge_with_nothing_plugged_in_is_left_out() -> None:
    used, left_out = rank_interfaces(
        [
            adapter("lo", "127.0.0.1"),
            adapter("docker0", "172.17.0.1", plugged=False),
            adapter("eth0", "192.168.1.5"),
            adapter("virbr0", "192.168.122.1", plugged=False),
        ]
    )
    assert names(used) == ["eth0"]
    assert names(left_out) == ["docker0", "virbr0"]


def test_bridges_in_use_or_unknown_go_last_in_their_order() -> None:
    used, left_out = rank_interfaces(
        [
            adapter("br-0f3a9c", "172.18.0.1"),
            adapter("cni0", "10.88.0.1", plugged=None),
            adapter("eth0", "192.168.1.5"),
            adapter("flannel.1", "10.244.0.0"),
            adapter("wlan0", "192.168.2.5", plugged=False),  # not a bridge: kept, in place
            adapter("veth12ab", "169.254.3.3"),
        ]
    )
    assert names(used) == ["eth0", "wlan0", "br-0f3a9c", "cni0", "flannel.1", "veth12ab"]
    assert left_out == []


def test_only_dead_bridges_are_used_rather_than_nothing() -> None:
    used, left_out = rank_interfaces(
        [adapter("lo", "127.0.0.1"), adapter("docker0", "172.17.0.1", plugged=False)]
    )
    assert names(used) == ["docker0"] and left_out == []


def test_names_that_merely_look_alike_are_no_bridges() -> None:
    assert not adapter("bridge0", "10.0.0.1").virtual_bridge
    assert not adapter("enp0s3", "10.0.0.1").virtual_bridge
    assert adapter("docker_gwbridge", "10.0.0.1").virtual_bridge
    assert adapter("virbr0-nic", "10.0.0.1").virtual_bridge


def test_default_interfaces_come_from_this_machine_without_loopback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="meshq.interfaces"):
        chosen = default_interfaces()
    assert "127.0.0.1" not in chosen
    for address in chosen:
        socket.inet_aton(address)  # each one a dotted quad


NETWORKS = (ipaddress.IPv4Network("198.18.91.0/24"), ipaddress.IPv4Network("198.18.93.0/24"))
MINE = frozenset({ipaddress.IPv4Address("198.18.91.1"), ipaddress.IPv4Address("198.18.93.1")})


def test_an_endpoint_at_an_address_of_this_machine_ranks_last() -> None:
    # Every docker host has 198.18.93.1: a peer that lists it first is not here.
    endpoints = ["tcp://198.18.93.1:7600", "tcp://198.18.91.2:7600"]
    assert rank_endpoints(endpoints, NETWORKS, own=MINE) == (
        "tcp://198.18.91.2:7600",
        "tcp://198.18.93.1:7600",
    )
    assert choose_endpoint(endpoints, NETWORKS, own=MINE) == "tcp://198.18.91.2:7600"


def test_own_endpoints_are_never_ranked() -> None:
    endpoints = ["tcp://198.18.93.1:7600", "tcp://198.18.91.2:7600"]
    ranked = rank_endpoints(endpoints, NETWORKS, own=MINE, exclude=["tcp://198.18.93.1:7600"])
    assert ranked == ("tcp://198.18.91.2:7600",)


def test_the_address_traffic_comes_from_ranks_first() -> None:
    endpoints = ["tcp://198.18.91.2:1", "tcp://198.18.91.7:1", "tcp://10.9.9.9:1"]
    assert rank_endpoints(endpoints, NETWORKS, own=MINE, source="10.9.9.9")[0] == "tcp://10.9.9.9:1"
    assert (
        rank_endpoints(endpoints, NETWORKS, own=MINE, source="198.18.91.7")[0]
        == "tcp://198.18.91.7:1"
    )


def test_local_networks_rank_before_others_and_ties_keep_the_peer_order() -> None:
    endpoints = ["tcp://10.9.9.9:1", "tcp://198.18.91.9:1", "tcp://198.18.91.3:1"]
    assert rank_endpoints(endpoints, NETWORKS, own=MINE) == (
        "tcp://198.18.91.9:1",
        "tcp://198.18.91.3:1",
        "tcp://10.9.9.9:1",
    )


def test_a_peer_on_this_machine_is_still_reached() -> None:
    endpoints = ["tcp://198.18.93.1:5000", "tcp://198.18.91.1:5000"]
    assert (
        choose_endpoint(endpoints, NETWORKS, own=MINE) == "tcp://198.18.93.1:5000"
    )  # the peer's own order


def test_choosing_from_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        choose_endpoint([], NETWORKS, own=MINE)


def record(port: int, addresses: list[str], node_id: bytes, mesh: str) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        f"peer-{node_id.hex()[:12]}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(a) for a in addresses],
        port=port,
        properties={"v": str(PROTOCOL_VERSION), "id": node_id.hex(), "mesh": mesh},
    )


def test_an_mdns_record_never_yields_our_own_endpoint(mesh: str) -> None:
    mine, theirs = bytes(range(1, 17)), bytes(range(2, 18))
    discovery = MdnsDiscovery(
        node_id=mine, name="me", mesh=mesh, interfaces=["127.0.0.1"], control_port=7600
    )
    # The same fixed port on a shared address: that endpoint is us.
    same_port = discovery._candidate(record(7600, ["127.0.0.1", "198.18.5.5"], theirs, mesh))
    assert same_port is not None
    assert (same_port.endpoint, same_port.alternatives) == ("tcp://198.18.5.5:7600", ())
    assert discovery._candidate(record(7600, ["127.0.0.1"], theirs, mesh)) is None
    # Another port on this machine may be a neighbour: kept, but tried last.
    other_port = discovery._candidate(record(7601, ["127.0.0.1", "198.18.5.5"], theirs, mesh))
    assert other_port is not None
    assert other_port.endpoint == "tcp://198.18.5.5:7601"
    assert other_port.alternatives == ("tcp://127.0.0.1:7601",)
