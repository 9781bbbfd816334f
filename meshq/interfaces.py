"""Which IPv4 addresses a node listens and advertises on.

The default is every non-loopback IPv4 address of the machine; the
environment variable ``MESHQ_INTERFACES`` (comma-separated addresses)
overrides it, and an explicit ``interfaces=`` argument overrides both.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

import ifaddr

__all__ = ["ENV_INTERFACES", "choose_endpoint", "local_networks", "resolve_interfaces"]

ENV_INTERFACES = "MESHQ_INTERFACES"


def resolve_interfaces(interfaces: Sequence[str] | None) -> tuple[str, ...]:
    """The addresses to use, validated.

    Raises ValueError for an address that is not IPv4, or when no interface
    is left (say so, rather than silently listening nowhere).
    """
    if interfaces is None:
        from_env = os.environ.get(ENV_INTERFACES, "").strip()
        if from_env:
            interfaces = [part.strip() for part in from_env.split(",") if part.strip()]
        else:
            interfaces = [str(ip) for ip, _ in _machine_ipv4() if not ip.is_loopback]
    addresses: list[str] = []
    for text in interfaces:
        try:
            address = str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"not an IPv4 interface address: {text!r}") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValueError(
            f"no IPv4 interface to listen on; pass interfaces=['127.0.0.1'] or set {ENV_INTERFACES}"
        )
    return tuple(addresses)


def local_networks(addresses: Sequence[str]) -> list[ipaddress.IPv4Network]:
    """The networks (address/prefix) that the given local addresses sit in."""
    wanted = set(addresses)
    return [
        ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False)
        for ip, prefix in _machine_ipv4()
        if str(ip) in wanted
    ]


def choose_endpoint(endpoints: Sequence[str], networks: Sequence[ipaddress.IPv4Network]) -> str:
    """Pick the endpoint most likely reachable: first one on a local network.

    Falls back to the first endpoint. Raises ValueError if there is none.
    """
    if not endpoints:
        raise ValueError("no endpoint to choose from")
    for endpoint in endpoints:
        host = endpoint[6:].rpartition(":")[0]
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            continue
        if any(address in network for network in networks):
            return endpoint
    return endpoints[0]


def _machine_ipv4() -> list[tuple[ipaddress.IPv4Address, int]]:
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.append((ipaddress.IPv4Address(ip.ip), ip.network_prefix))
    return found
