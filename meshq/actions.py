"""What the control protocol (meshq/protocol.py) returns, and what it knows of its own node.

Each action is a small frozen value the control loop (meshq/control.py)
carries out; the protocol itself touches no socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .peers import Peer, PeerEvent

__all__ = [
    "Action",
    "Ban",
    "CloseLinks",
    "Count",
    "Directories",
    "LocalNode",
    "PeersChanged",
    "Send",
    "SendEach",
]


@dataclass(frozen=True)
class LocalNode:
    """What this node says about itself, and where its own sockets are reached locally."""

    node_id: bytes
    name: str
    mesh: str
    control: tuple[str, ...]
    publish: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    publish_block: tuple[str, ...] = ()
    #: This node's CURVE public key (Z85), empty without security.
    key: bytes = b""
    #: inproc endpoints of its own publish sockets and service socket ("" if none).
    local_publish: str = ""
    local_publish_block: str = ""
    local_service: str = ""


@dataclass(frozen=True)
class Send:
    """Send ``frame`` through the link to each of ``endpoints`` (made on first use)."""

    endpoints: tuple[str, ...]
    frame: bytes


@dataclass(frozen=True)
class SendEach:
    """Send each (endpoint, frame) pair: a round of heartbeats, one frame per peer."""

    messages: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class CloseLinks:
    """Close the links to these endpoints (no linger: what is queued is dropped)."""

    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class PeersChanged:
    """The peer table changed: the new snapshot (monotonic ``last_seen``) and its events."""

    peers: list[Peer]
    events: list[PeerEvent]


@dataclass(frozen=True)
class Directories:
    """Where every publisher listens (node id -> endpoint) and who serves what."""

    publishers: Mapping[str, str]
    providers: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Count:
    """Add ``n`` to the node's counter ``what``."""

    what: str
    n: int = 1


@dataclass(frozen=True)
class Ban:
    """Refuse new connections from CURVE ``key`` for ``seconds``."""

    key: bytes
    seconds: float


Action = Send | SendEach | CloseLinks | PeersChanged | Directories | Count | Ban
