"""Which relay holds a topic: the stream lookup shared by durable publishers and consumers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import MeshqError, NoProviders, RemoteError
from ..relaywire import RELAY_SERVICE_PREFIX, stream_of_service

if TYPE_CHECKING:
    from ..node import Node

__all__ = [
    "STORE_FAILED",
    "STORE_HEADER",
    "store_failed",
    "RelayConflict",
    "relay_stores",
    "relay_stream",
]

#: Seconds one attempt waits for a relay's answer before it is resent.
ATTEMPT = 1.0
#: Seconds between looks for a relay that went away (restarting, say).
NO_RELAY_PAUSE = 0.05


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


#: How a relay's error reply starts when its store failed (a full disk):
#: nothing of the request was stored, and a resend (same ids) may succeed.
STORE_FAILED = "relay store failed"

#: After a store-failure refusal, a resend waits this long (s), doubling up to
#: STORE_RETRY_MAX while the refusals go on.
STORE_RETRY_FIRST = 0.05
STORE_RETRY_MAX = 1.0


def store_failed(error: BaseException) -> bool:
    """True if ``error`` is a relay's refusal because its store failed (resend later)."""
    return isinstance(error, RemoteError) and error.remote_message.startswith(STORE_FAILED)


#: The peer header naming the relay store a node serves: one store may
#: briefly have two providers, a restarted relay and its dead predecessor.
STORE_HEADER = "meshq.relay-store"


def relay_stream(node: Node, topic: str) -> str:
    """The stream holding ``topic``: the relay stream whose name prefixes it.

    Raises NoProviders if no relay stores the topic, RelayConflict if two
    streams prefix it (streams must not overlap: which one a topic belongs
    to would depend on which relays are up) or two relays with different
    stores claim its stream (one relay restarting is not a conflict: its
    predecessor's entry goes when its heartbeats stop).
    """
    # The directory's own snapshot: no copy per message (node.services() sorts one).
    services = node._service_directory.all()
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


def relay_stores(node: Node, relays: list[str]) -> set[str]:
    """The distinct stores behind ``relays`` (node ids); an unknown one counts as its own."""
    headers = {peer.id: peer.headers for peer in node.peers()}
    headers[node.id] = node.headers
    return {headers.get(r, {}).get(STORE_HEADER) or f"?{r}" for r in relays}
