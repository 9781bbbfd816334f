"""What this machine's network looks like to meshq: interfaces, routes, ports.

Read-only facts for ``meshq doctor`` (meshq/doctor.py): the IPv4 interfaces
with their kind and carrier (from ``/sys/class/net``), the IPv4 routing table
(``/proc/net/route``), whether a TCP port can be bound, whether a TCP
endpoint answers. Linux only where it reads ``/sys`` and ``/proc``; on other
systems those parts report nothing rather than fail.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

import ifaddr

__all__ = [
    "Interface",
    "Route",
    "bind_error",
    "connect_error",
    "list_interfaces",
    "multicast_route",
    "parse_routes",
    "read_routes",
]

#: Name prefixes of interfaces that container and VM tools create. Such an
#: interface often has an address but nothing meshq could reach behind it.
VIRTUAL_PREFIXES = (
    "docker",
    "br-",
    "veth",
    "virbr",
    "vnet",
    "cni",
    "flannel",
    "cali",
    "vxlan",
    "podman",
    "lxcbr",
    "lxdbr",
    "tun",
    "tap",
    "zt",
    "tailscale",
    "wg",
)
MDNS_GROUP = ipaddress.IPv4Address("224.0.0.251")


@dataclass(frozen=True)
class Interface:
    """One network interface with IPv4 addresses.

    ``kind`` is ``loopback``, ``bridge``, ``veth``, ``virtual`` (a name a
    container or VPN tool uses) or ``physical`` (anything else).
    ``carrier`` is None when the kernel does not say.
    """

    name: str
    addresses: tuple[tuple[str, int], ...]  # (address, prefix length)
    kind: str
    operstate: str
    carrier: bool | None
    #: For a bridge: how many interfaces are attached to it (None otherwise).
    ports: int | None = None

    @property
    def virtual(self) -> bool:
        return self.kind in ("bridge", "veth", "virtual")

    @property
    def dead(self) -> bool:
        """Up in name only: no carrier (an unplugged cable) or a bridge with no ports."""
        return self.carrier is False or self.operstate == "down" or self.ports == 0

    @property
    def why_dead(self) -> str:
        if self.ports == 0:
            return "no ports attached"
        return f"no carrier (state {self.operstate})"


@dataclass(frozen=True, order=True)
class Route:
    """One IPv4 route: ``network`` reached through ``device``."""

    prefix_len: int
    network: ipaddress.IPv4Network = field(compare=False)
    device: str = field(compare=False)


def list_interfaces(sysfs: str = "/sys/class/net") -> list[Interface]:
    """Every interface that has an IPv4 address, in the order the OS lists them."""
    found: list[Interface] = []
    for adapter in ifaddr.get_adapters():
        addresses = tuple(
            (ip.ip, ip.network_prefix) for ip in adapter.ips if isinstance(ip.ip, str)
        )
        if not addresses:
            continue
        name = adapter.nice_name
        base = Path(sysfs) / name
        operstate = _read(base / "operstate") or "unknown"
        carrier_text = _read(base / "carrier")
        carrier = None if carrier_text is None else carrier_text == "1"
        if all(ipaddress.IPv4Address(a).is_loopback for a, _ in addresses):
            kind = "loopback"
        elif (base / "bridge").is_dir():
            kind = "bridge"
        elif name.startswith("veth"):
            kind = "veth"
        elif name.startswith(VIRTUAL_PREFIXES):
            kind = "virtual"
        else:
            kind = "physical"
        ports = None
        if kind == "bridge":
            try:
                ports = len(list((base / "brif").iterdir()))
            except OSError:
                ports = None
        found.append(Interface(name, addresses, kind, operstate, carrier, ports))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None  # no such file, or the kernel refuses (carrier of a down link)


def parse_routes(text: str) -> list[Route]:
    """The routes in the text of ``/proc/net/route`` (little-endian hex columns).

    Lines that do not parse are skipped. Raises nothing.
    """
    routes = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 8:
            continue
        try:
            destination = socket.inet_ntoa(int(parts[1], 16).to_bytes(4, "little"))
            mask = socket.inet_ntoa(int(parts[7], 16).to_bytes(4, "little"))
            network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        except ValueError:
            continue
        routes.append(Route(network.prefixlen, network, parts[0]))
    return routes


def read_routes(path: str = "/proc/net/route") -> list[Route]:
    """The main IPv4 routing table, or an empty list where it cannot be read."""
    text = _read(Path(path))
    return [] if text is None else parse_routes(text)


def multicast_route(routes: list[Route], device: str) -> Route | None:
    """The route that sends mDNS (224.0.0.251) out of ``device``, if any.

    That is the most specific route to the group among those through
    ``device``; a default route through ``device`` counts.
    """
    matching = [r for r in routes if r.device == device and MDNS_GROUP in r.network]
    return max(matching) if matching else None


def bind_error(address: str, port: int) -> str | None:
    """Why ``address:port`` cannot be bound for TCP, or None when it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "already in use"
            return exc.strerror or str(exc)
    return None


def connect_error(address: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to ``address:port`` fails within ``timeout`` s, or None."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
