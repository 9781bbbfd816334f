"""Which relay holds a topic: the stream lookup shared by durable publishers and consumers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import MeshqError, NoProviders
from ..relaywire import RELAY_SERVICE_PREFIX

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["STORE_HEADER", "RelayConflict", "relay_stores", "relay_stream"]

#: Seconds one attempt waits for a relay's answer before it is resent.
ATTEMPT = 1.0
#: Seconds between looks for a relay that went away (restarting, say).
NO_RELAY_PAUSE = 0.05


class RelayConflict(MeshqError):
    """More than one relay claims ``stream``: a configuration error to fix, not to guess."""

    def __init__(self, stream: str, relays: list[str]) -> None:
        super().__init__(
            f"stream {stream!r} is claimed by {len(relays)} relays ({', '.join(relays)})"
        )
        self.stream = stream
        self.relays = relays


#: The peer header naming the relay store a node serves: one store may
#: briefly have two providers, a restarted relay and its dead predecessor.
STORE_HEADER = "meshq.relay-store"


def relay_stream(node: Node, topic: str) -> str:
    """The stream holding ``topic``: the longest relay stream name that prefixes it.

    Raises NoProviders if no relay stores the topic, RelayConflict if two
    relays with different stores claim its stream (one relay restarting is
    not a conflict: its predecessor's entry goes when its heartbeats stop).
    """
    services = node.services()
    best = ""
    for service in services:
        if service.startswith(RELAY_SERVICE_PREFIX):
            stream = service[len(RELAY_SERVICE_PREFIX) :]
            if topic.startswith(stream) and len(stream) > len(best):
                best = stream
    if not best:
        raise NoProviders(f"{RELAY_SERVICE_PREFIX}? (no relay stores {topic!r})")
    relays = services[RELAY_SERVICE_PREFIX + best]
    if len(relays) > 1 and len(relay_stores(node, relays)) > 1:
        raise RelayConflict(best, [r[:8] for r in relays])
    return best


def relay_stores(node: Node, relays: list[str]) -> set[str]:
    """The distinct stores behind ``relays`` (node ids); an unknown one counts as its own."""
    headers = {peer.id: peer.headers for peer in node.peers()}
    headers[node.id] = node.headers
    return {headers.get(r, {}).get(STORE_HEADER) or f"?{r}" for r in relays}
