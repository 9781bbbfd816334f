"""Which relay holds a topic: the stream lookup shared by durable publishers and consumers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import MeshqError, NoProviders, Timeout
from ..relaywire import RELAY_SERVICE_PREFIX, stream_of_service

if TYPE_CHECKING:
    from ..seams import MeshNode, Providers

__all__ = [
    "STORE_HEADER",
    "RelayConflict",
    "relay_holding",
    "relay_stores",
    "relay_stream",
    "wait_for_relay",
]

#: Seconds one attempt waits for a relay's answer before it is resent.
ATTEMPT = 1.0


class RelayConflict(MeshqError):
    """Relays disagree about ``stream``: a configuration error to fix, not to guess.

    Two relays with different stores claim it (``relays``: their node ids'
    start), or another stream overlaps it (``overlapping``: its name).
    """

    def __init__(self, stream: str, relays: Sequence[str] = (), overlapping: str = "") -> None:
        if overlapping:
            text = f"streams {stream!r} and {overlapping!r} overlap"
        else:
            text = f"stream {stream!r} is claimed by {len(relays)} relays ({', '.join(relays)})"
        super().__init__(text)
        self.stream = stream
        self.relays = list(relays)
        self.overlapping = overlapping


#: The peer header naming the relay store a node serves: one store may
#: briefly have two providers, a restarted relay and its dead predecessor.
STORE_HEADER = "meshq.relay-store"


def relay_stream(node: MeshNode, topic: str) -> str:
    """The stream holding ``topic``: the relay stream whose name prefixes it.

    Raises NoProviders if no relay stores the topic, RelayConflict if two
    streams prefix it (streams must not overlap: which one a topic belongs
    to would depend on which relays are up) or two relays with different
    stores claim its stream (one relay restarting is not a conflict: its
    predecessor's entry goes when its heartbeats stop).
    """
    # The directory's own snapshot: no copy per message (node.services() sorts one).
    services = node.providers()
    streams = (stream_of_service(service) for service in services)
    matching = [stream for stream in streams if stream is not None and topic.startswith(stream)]
    if not matching:
        raise NoProviders(f"{RELAY_SERVICE_PREFIX}? (no relay stores {topic!r})")
    if len(matching) > 1:
        matching.sort(key=len)
        raise RelayConflict(matching[0], overlapping=matching[1])
    best = matching[0]
    relays = list(services[RELAY_SERVICE_PREFIX + best])
    if len(relays) > 1 and len(relay_stores(node, relays)) > 1:
        raise RelayConflict(best, [r[:8] for r in relays])
    return best


def relay_holding(services: Providers, topic: str) -> str | None:
    """The name of a relay stream that holds ``topic`` in ``services``, or None."""
    for service, providers in services.items():
        stream = stream_of_service(service)
        if stream is not None and providers and topic.startswith(stream):
            return stream
    return None


def wait_for_relay(node: MeshNode, topic: str, timeout: float) -> bool:
    """Wait up to ``timeout`` s until some relay holds ``topic``; whether one does.

    Wakes when the node's service directory changes (no polling). Raises
    meshq.Closed if the node closes meanwhile.
    """
    try:
        node.wait_for_providers(
            lambda services: relay_holding(services, topic), timeout=max(0.0, timeout)
        )
    except Timeout:
        return False
    return True


def relay_stores(node: MeshNode, relays: list[str]) -> set[str]:
    """The distinct stores behind ``relays`` (node ids); an unknown one counts as its own."""
    headers = {peer.id: peer.headers for peer in node.peers()}
    headers[node.id] = node.headers
    return {headers.get(r, {}).get(STORE_HEADER) or f"?{r}" for r in relays}
