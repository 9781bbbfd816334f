"""Reaching a peer when hosts share addresses: pure rules, no socket, no clock.

Every docker host has the same docker0 address, so an endpoint string does
not say which host it leads to, and two live nodes may advertise the same
one (with a fixed control port, ``tcp://172.17.0.1:7600`` on each). Three
rules keep such a mesh whole and steady (docs/PROTOCOL.md 3.3, 7.2, 7.5):

* **Choice.** A peer is talked to at the endpoint its own traffic comes
  from when it lists one there; otherwise at the best of
  :func:`meshq.interfaces.rank_endpoints`, keeping a choice already made
  while the peer still lists it, so the choice does not flap.
* **Restart.** A node id says who a peer is. A HELLO from a new id
  replaces a known peer only if it lists the endpoint this node talks to
  that peer through, and comes from the address that peer's traffic came
  from. An endpoint both merely advertise is no restart.
* **Fallback.** A candidate that never answers is given up after a while
  for the next of its endpoints (:class:`Route`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from .interfaces import endpoint_host, rank_endpoints

__all__ = ["Route", "choose_control", "is_restart"]


def choose_control(
    control: Sequence[str],
    networks: Sequence[ipaddress.IPv4Network],
    *,
    own: Collection[ipaddress.IPv4Address] = frozenset(),
    source: str | None = None,
    exclude: Collection[str] = (),
    current: str | None = None,
) -> str | None:
    """Which of a peer's control endpoints to talk to; None if none is left.

    ``networks`` and ``own`` are this node's networks and this machine's
    addresses, ``source`` the address the peer's HELLO came from,
    ``exclude`` this node's own endpoints, ``current`` the endpoint chosen
    before (kept unless the peer's traffic names a better one, the peer no
    longer lists it, or it is at an address of this machine while a better
    one is not).
    """
    ranked = rank_endpoints(control, networks, own=own, source=source, exclude=exclude)
    if not ranked:
        return None
    best = ranked[0]
    if source is not None and endpoint_host(best) == source:
        return best
    if current is not None and current in ranked and _here(current, own) <= _here(best, own):
        return current
    return best


def _here(endpoint: str, own: Collection[ipaddress.IPv4Address]) -> bool:
    """True for an endpoint at an address of this machine."""
    try:
        return ipaddress.IPv4Address(endpoint_host(endpoint)) in own
    except ValueError:
        return False


def is_restart(
    known_endpoint: str,
    known_source: str | None,
    control: Sequence[str],
    source: str | None,
) -> bool:
    """Whether a HELLO from another id means the known peer restarted.

    ``known_endpoint`` is the endpoint this node talks to the known peer
    through and ``known_source`` the address its traffic came from;
    ``control`` and ``source`` are the new HELLO's. A restart keeps the
    endpoint (a fixed control port) and the host; when either source is
    unknown the endpoint alone decides, as it did before.
    """
    if known_endpoint not in control:
        return False
    return known_source is None or source is None or known_source == source


@dataclass
class Route:
    """One candidate's endpoints, best first, tried one at a time.

    The current endpoint is dialled until it answers; once it has been
    tried for ``give_up_after`` seconds without an answer, the next one is
    tried (after the last, the first again).
    """

    endpoints: tuple[str, ...]
    since: float
    index: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("a route needs at least one endpoint")

    @property
    def current(self) -> str:
        """The endpoint being tried now."""
        return self.endpoints[self.index]

    def answered(self, connected: set[str]) -> bool:
        """True if any of the route's endpoints leads to a peer we hold."""
        return any(endpoint in connected for endpoint in self.endpoints)

    def advance(self, now: float, give_up_after: float) -> bool:
        """Move on if the current endpoint had its time; True if it changed."""
        if len(self.endpoints) < 2 or now - self.since < give_up_after:
            return False
        self.index = (self.index + 1) % len(self.endpoints)
        self.since = now
        return True

    def next_change(self, give_up_after: float) -> float | None:
        """When :meth:`advance` next moves on (None: a single endpoint, never)."""
        return None if len(self.endpoints) < 2 else self.since + give_up_after
