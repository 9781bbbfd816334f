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

    Raises TypeError for ``interfaces`` that is not a list of strings (a
    single string is the usual slip), ValueError for an address that is not
    a usable IPv4 address (``0.0.0.0`` cannot be advertised), or when no
    interface is left (say so, rather than silently listening nowhere).
    Errors in ``MESHQ_INTERFACES`` name the variable.
    """
    if interfaces is None:
        from_env = os.environ.get(ENV_INTERFACES, "").strip()
        if from_env:
            parts = [part.strip() for part in from_env.split(",") if part.strip()]
            try:
                return _check_addresses(parts, "interfaces")
            except ValueError as exc:
                raise ValueError(
                    f"{ENV_INTERFACES}={from_env!r}: {_first_clause(exc)}; "
                    f"set it to comma-separated IPv4 addresses such as 127.0.0.1,198.18.0.2, "
                    "or unset it"
                ) from None
        interfaces = [str(ip) for ip, _ in _machine_ipv4() if not ip.is_loopback]
        if not interfaces:
            raise ValueError(
                "no IPv4 interface to listen on: this machine has no non-loopback address; "
                f"pass interfaces=['127.0.0.1'] or set {ENV_INTERFACES}"
            )
    elif isinstance(interfaces, (str, bytes)):
        example = interfaces if isinstance(interfaces, str) else interfaces.decode(errors="replace")
        raise TypeError(
            f"interfaces must be a list of IPv4 addresses, not a {type(interfaces).__name__}: "
            f"pass interfaces=[{example!r}]"
        )
    return _check_addresses(interfaces, "interfaces")


def _check_addresses(texts: Sequence[str], argument: str) -> tuple[str, ...]:
    """Validated, deduplicated addresses; errors start with ``argument``."""
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(
            f"{argument} must be a list of IPv4 addresses such as ['127.0.0.1'], "
            f"not {type(texts).__name__}"
        ) from None
    addresses: list[str] = []
    for text in items:
        if not isinstance(text, str):
            raise TypeError(
                f"{argument}: each address must be a str such as '127.0.0.1', "
                f"not {type(text).__name__} {text!r}"
            )
        try:
            address = ipaddress.IPv4Address(text.strip())
        except ValueError:
            raise ValueError(
                f"{argument}: not an IPv4 interface address: {text!r}; "
                "pass addresses such as interfaces=['127.0.0.1']"
            ) from None
        if address.is_unspecified or address.is_multicast or address == _BROADCAST:
            raise ValueError(
                f"{argument}: {address} is not the address of one interface, so peers "
                "could not be told where to connect; name the addresses, as in "
                "interfaces=['127.0.0.1'], or leave interfaces out for every non-loopback one"
            )
        if str(address) not in addresses:
            addresses.append(str(address))
    if not addresses:
        raise ValueError(
            f"{argument}: no IPv4 interface to listen on; pass interfaces=['127.0.0.1'] "
            f"or set {ENV_INTERFACES}"
        )
    return tuple(addresses)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _first_clause(error: Exception) -> str:
    """What was wrong, without the argument's name or the Python advice after it."""
    return str(error).removeprefix("interfaces: ").split(";")[0]


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
