"""Which relay holds a topic: the stream lookup shared by durable publishers, consumers and relays.

One rule settles which relay owns a stream that several relays claim, and
everyone applies it to what discovery told them: each relay announces (peer
headers) its store's id and, per stream, when that store first claimed
it. The owner is the store with the oldest claim (then the smallest store
id). Publishers and consumers send a stream's requests to the owner only;
the other relays refuse them; a relay accepts nothing for a stream in its
first ``settle`` seconds, while discovery finds the others. So a stream is
never split between two relays, and a newcomer never takes a stream over.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import MeshqError, NoProviders, RemoteError, Timeout
from ..relaywire import RELAY_SERVICE_PREFIX, stream_of_service

if TYPE_CHECKING:
    from ..requester import RequestFuture
    from ..seams import AsyncMeshNode, MeshNode, Providers

__all__ = [
    "CLAIMS_HEADER",
    "NOT_OWNER",
    "SETTLING",
    "STORE_FAILED",
    "STORE_HEADER",
    "RelayConflict",
    "claims_header",
    "pause",
    "pause_async",
    "relay_holding",
    "relay_owner",
    "relay_request",
    "relay_request_async",
    "relay_stores",
    "relay_stream",
    "retry_later",
    "stream_owner",
    "wait_for_relay",
]

#: Seconds one attempt waits for a relay's answer before it is resent.
ATTEMPT = 1.0
#: Seconds between looks for a relay that went away (restarting, say).
NO_RELAY_PAUSE = 0.05


class RelayConflict(MeshqError):
    """Streams overlap (``overlapping``: the other's name): a configuration error to fix.

    Which of two overlapping streams a topic belongs to would depend on
    which relays are up. (Two relays claiming one stream are settled by
    the ownership rule instead: see this module.)
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
#: ... when it claims the stream but another relay owns it (resend: to the owner).
NOT_OWNER = "relay does not own stream"
#: ... when it started moments ago and is still finding the other relays.
SETTLING = "relay settling"

#: After a store-failure refusal, a resend waits this long (s), doubling up to
#: STORE_RETRY_MAX while the refusals go on.
STORE_RETRY_FIRST = 0.05
STORE_RETRY_MAX = 1.0


def retry_later(error: BaseException) -> bool:
    """True if ``error`` is a relay's refusal that a later resend may get past.

    Its store failed, or it is not (or not yet) the stream's owner. Nothing
    of the request was stored.
    """
    return isinstance(error, RemoteError) and error.remote_message.startswith(
        (STORE_FAILED, NOT_OWNER, SETTLING)
    )


def store_failed(error: BaseException) -> bool:
    """True if ``error`` is a relay's refusal because its store failed (resend later)."""
    return isinstance(error, RemoteError) and error.remote_message.startswith(STORE_FAILED)


#: The peer header naming the relay store a node serves: one store may
#: briefly have two providers, a restarted relay and its dead predecessor.
STORE_HEADER = "meshq.relay-store"
#: The peer header with the store's claims: JSON {stream: ns since the epoch}.
CLAIMS_HEADER = "meshq.relay-claims"
_MAX_HEADER_CHARS = 1024  # wire.py's limit on a header value


def claims_header(claims: Mapping[str, int]) -> str:
    """The CLAIMS_HEADER value for ``claims``: as many (oldest first) as fit in one header.

    A stream left out counts as claimed last (a relay serves at most 64).
    """
    kept: dict[str, int] = {}
    for stream, ns in sorted(claims.items(), key=lambda item: (item[1], item[0])):
        trial = json.dumps({**kept, stream: ns}, separators=(",", ":"))
        if len(trial) > _MAX_HEADER_CHARS:
            break
        kept[stream] = ns
    return json.dumps(kept, separators=(",", ":"))


def relay_stream(node: MeshNode, topic: str) -> str:
    """The stream holding ``topic``: the relay stream whose name prefixes it.

    Raises NoProviders if no relay stores the topic, RelayConflict if two
    streams prefix it (streams must not overlap: which one a topic belongs
    to would depend on which relays are up).
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
    return matching[0]


def stream_owner(node: MeshNode, stream: str, relays: Sequence[str]) -> str | None:
    """Which of ``relays`` (node ids claiming ``stream``) owns it; None if they share one store.

    The owner's store has the oldest claim on the stream, then the smallest
    id; a relay that announces no claim counts as claiming last. Of several
    relays serving the owner's store (a restart), the first by id is named.
    """
    headers = {peer.id: peer.headers for peer in node.peers()}
    headers[node.id] = node.headers
    keys: dict[str, tuple[float, str]] = {}
    for relay in relays:
        found = headers.get(relay, {})
        store = found.get(STORE_HEADER) or f"?{relay}"
        try:
            claims = json.loads(found.get(CLAIMS_HEADER, "{}"))
            claimed = float(claims[stream]) if isinstance(claims, dict) else float("inf")
        except (ValueError, KeyError, TypeError):
            claimed = float("inf")
        keys[relay] = (claimed, store)
    if len({store for _, store in keys.values()}) <= 1:
        return None
    return min(relays, key=lambda relay: (keys[relay], relay))


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


def pause(node: MeshNode, seconds: float) -> None:
    """Wait ``seconds`` before a resend a relay asked for, on the directory's Condition.

    Not a sleep: a deadline wait that also sees the node close (raises
    meshq.Closed). Directory changes (a relay coming or going) wake it, and
    it waits on to the deadline.
    """
    with contextlib.suppress(Timeout):
        node.wait_for_providers(_never, timeout=max(0.0, seconds))


async def pause_async(node: AsyncMeshNode, seconds: float) -> None:
    """:func:`pause` from asyncio."""
    with contextlib.suppress(Timeout):
        await node.wait_for_providers(_never, timeout=max(0.0, seconds))


def _never(services: Providers) -> None:
    """A wait_for_providers test that never passes: the wait runs to its deadline."""


def relay_owner(node: MeshNode, stream: str) -> str | None:
    """The node id of the relay that owns ``stream``, or None: any of its providers will do."""
    relays = node.providers().get(RELAY_SERVICE_PREFIX + stream, {})
    if len(relays) < 2:
        return None
    return stream_owner(node, stream, list(relays))


def relay_request(
    node: MeshNode, stream: str, data: object, *, timeout: float, retries: int = 0
) -> RequestFuture:
    """Send a relay request for ``stream`` to its owner; raises NoProviders at once.

    With no owner known (fewer than two relays of the stream), any provider
    is asked; a relay that does not own the stream refuses, for a resend.
    """
    owner = relay_owner(node, stream)
    service = RELAY_SERVICE_PREFIX + stream
    return node.request_async(service, data, timeout=timeout, retries=retries, only=owner)


async def relay_request_async(
    node: AsyncMeshNode, stream: str, data: object, *, timeout: float, retries: int = 0
) -> object:
    """:func:`relay_request` from asyncio: the reply's data."""
    owner = relay_owner(node.node, stream)
    service = RELAY_SERVICE_PREFIX + stream
    return await node.request(service, data, timeout=timeout, retries=retries, only=owner)


def relay_stores(node: MeshNode, relays: list[str]) -> set[str]:
    """The distinct stores behind ``relays`` (node ids); an unknown one counts as its own."""
    headers = {peer.id: peer.headers for peer in node.peers()}
    headers[node.id] = node.headers
    return {headers.get(r, {}).get(STORE_HEADER) or f"?{r}" for r in relays}
