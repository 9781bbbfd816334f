"""Which IPv4 addresses a node listens and advertises on, and which peer address it dials.

The default is every non-loopback IPv4 address of the machine, except
container and VM bridges (docker0, br-*, virbr*, ...): such a bridge is left
out when nothing is plugged into it (no peer can be behind it) and ranked
last otherwise, because every docker host has the same docker0 address and
that address is no LAN. The environment variable
``MESHQ_INTERFACES`` (comma-separated addresses) overrides the default, and
an explicit ``interfaces=`` argument overrides both.

An address that is one of this machine's own (a docker0 address that every
docker host shares, say) reaches this machine, whoever advertises it: a
peer's endpoints at such addresses are dialled only when it has no other.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import ifaddr

__all__ = [
    "ENV_INTERFACES",
    "VIRTUAL_BRIDGES",
    "Adapter",
    "choose_endpoint",
    "default_interfaces",
    "endpoint_host",
    "local_networks",
    "machine_addresses",
    "rank_endpoints",
    "rank_interfaces",
    "resolve_interfaces",
]

log = logging.getLogger("meshq.interfaces")

ENV_INTERFACES = "MESHQ_INTERFACES"

#: Interface names of container and VM bridges (docker, podman, libvirt, LXC,
#: CNI, flannel) and of the host ends of container links: their addresses are
#: the same on every such host, or lead only into this host.
VIRTUAL_BRIDGES = ("docker*", "br-*", "virbr*", "veth*", "cni*", "flannel*", "podman*", "lxcbr*")

_SYS_NET = Path("/sys/class/net")


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
        interfaces = default_interfaces()
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


@dataclass(frozen=True)
class Adapter:
    """One IPv4 address of a network interface of this machine.

    ``plugged`` says whether anything is plugged into the link (a bridge has
    a port, another link has carrier); None when the system does not say
    (no /sys/class/net).
    """

    name: str
    address: ipaddress.IPv4Address
    prefix: int
    plugged: bool | None = None

    @property
    def virtual_bridge(self) -> bool:
        """True for a container or VM bridge by its name (``VIRTUAL_BRIDGES``)."""
        return any(fnmatch.fnmatchcase(self.name, pattern) for pattern in VIRTUAL_BRIDGES)


def rank_interfaces(adapters: Sequence[Adapter]) -> tuple[list[Adapter], list[Adapter]]:
    """Split non-loopback adapters into (used, in order; left out).

    A container or VM bridge with nothing plugged in is left out (no peer
    can be behind it); one in use (or unknown) goes after every other
    interface. If that would leave no interface at all, the bridges are
    used after all, in their order: a node must listen somewhere.
    """
    plain = [a for a in adapters if not a.address.is_loopback and not a.virtual_bridge]
    bridges = [a for a in adapters if not a.address.is_loopback and a.virtual_bridge]
    alive = [a for a in bridges if a.plugged is not False]
    dead = [a for a in bridges if a.plugged is False]
    if not plain and not alive:
        return dead, []
    return plain + alive, dead


def default_interfaces() -> list[str]:
    """This machine's addresses a node uses by default, ranked by :func:`rank_interfaces`.

    Logs (INFO, logger ``meshq.interfaces``) which bridges were left out or
    ranked last, so a node's choice is never a surprise.
    """
    used, left_out = rank_interfaces(_machine_adapters())
    last = [a for a in used if a.virtual_bridge]
    if left_out or last:
        log.info(
            "default interfaces %s; container/VM bridges left out (nothing plugged in): %s; "
            "ranked last: %s; set %s or interfaces= to choose",
            ", ".join(str(a.address) for a in used) or "none",
            _describe(left_out),
            _describe(last),
            ENV_INTERFACES,
        )
    return [str(a.address) for a in used]


def _describe(adapters: Sequence[Adapter]) -> str:
    return ", ".join(f"{a.name} {a.address}" for a in adapters) or "none"


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _first_clause(error: Exception) -> str:
    """What was wrong, without the argument's name or the Python advice after it."""
    return str(error).removeprefix("interfaces: ").split(";")[0]


def local_networks(addresses: Sequence[str]) -> list[ipaddress.IPv4Network]:
    """The networks (address/prefix) that the given local addresses sit in."""
    wanted = set(addresses)
    return [
        ipaddress.IPv4Network(f"{a.address}/{a.prefix}", strict=False)
        for a in _machine_adapters()
        if str(a.address) in wanted
    ]


def machine_addresses() -> frozenset[ipaddress.IPv4Address]:
    """Every IPv4 address of this machine (an endpoint there leads to this machine)."""
    return frozenset(a.address for a in _machine_adapters())


def rank_endpoints(
    endpoints: Sequence[str],
    networks: Sequence[ipaddress.IPv4Network],
    *,
    own: Collection[ipaddress.IPv4Address] = frozenset(),
    source: str | None = None,
    exclude: Collection[str] = (),
) -> tuple[str, ...]:
    """A peer's endpoints, best first; ``exclude`` (this node's own endpoints) dropped.

    Best is an endpoint at ``source`` (the address the peer's traffic came
    from), then one not at an address of this machine (``own``), then one
    on a local network (``networks``); ties keep the list order (the peer's
    own ranking). Endpoints that are no ``tcp://A.B.C.D:PORT`` go last.
    """

    def rank(item: tuple[int, str]) -> tuple[bool, bool, bool, int]:
        index, endpoint = item
        host = endpoint_host(endpoint)
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return (True, True, True, index)
        return (
            host != source,
            address in own,
            not any(address in network for network in networks),
            index,
        )

    kept = [(i, e) for i, e in enumerate(endpoints) if e not in exclude]
    return tuple(endpoint for _, endpoint in sorted(kept, key=rank))


def choose_endpoint(
    endpoints: Sequence[str],
    networks: Sequence[ipaddress.IPv4Network],
    own: Collection[ipaddress.IPv4Address] = frozenset(),
) -> str:
    """The endpoint most likely to reach the peer: the first of :func:`rank_endpoints`.

    Raises ValueError if there is none.
    """
    if not endpoints:
        raise ValueError("no endpoint to choose from")
    return rank_endpoints(endpoints, networks, own=own)[0]


def endpoint_host(endpoint: str) -> str:
    """The host part of ``tcp://host:port``."""
    return endpoint[len("tcp://") :].rpartition(":")[0]


def _machine_adapters() -> list[Adapter]:
    found = []
    for adapter in ifaddr.get_adapters():
        name = str(adapter.nice_name)
        plugged = _plugged(name)
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.append(
                    Adapter(name, ipaddress.IPv4Address(ip.ip), ip.network_prefix, plugged)
                )
    return found


def _plugged(name: str) -> bool | None:
    """Whether anything is plugged into the link, from Linux's sysfs; None where there is none.

    A bridge counts its ports (an empty one may still say it has carrier);
    any other link its carrier.
    """
    if not _SYS_NET.is_dir():
        return None
    link = _SYS_NET / name.partition(":")[0]
    try:
        ports = link / "brif"
        if ports.is_dir():
            return any(ports.iterdir())
        return (link / "carrier").read_text().strip() == "1"
    except OSError:
        return False  # the link is down (EINVAL), or gone
