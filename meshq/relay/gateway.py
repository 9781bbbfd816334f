"""A relay that serves streams from a :class:`~meshq.relay.interface.StreamStore`.

The relay protocol is parsed and checked on the node's service thread, as
in the SQLite relay; the store answers later, from its own thread (the
JetStream store's event loop), straight through the request's ``ReplyTo``,
which any thread may use (the service thread sends the reply). Nothing
polls and no ticker is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..durable import STORE_HEADER
from ..errors import MeshqError, ProtocolError
from ..relaywire import (
    RELAY_SERVICE_PREFIX,
    parse_ack,
    parse_fetch,
    parse_nak,
    parse_open,
    parse_publishes,
    parse_read,
)
from ..services import DeferredHandler, ReplyTo
from ..wire import decode_payload
from .interface import Published, StreamSettings, StreamStore

if TYPE_CHECKING:
    from ..seams import MeshNode

__all__ = ["Gateway"]

log = logging.getLogger("meshq.relay")


class _Shaped:
    """A :class:`~meshq.relay.interface.Reply` that turns the store's answer into the
    protocol's (and does what goes with it) before it goes out; any thread."""

    __slots__ = ("_reply", "_shape")

    def __init__(self, reply: ReplyTo, shape: Callable[[object], object]) -> None:
        self._reply = reply
        self._shape = shape

    def send(self, answer: object) -> None:
        try:
            shaped = self._shape(answer)
        except Exception as exc:  # a bug here must still answer the request
            log.exception("relay answer could not be made")
            self._reply.fail(MeshqError(f"relay answer failed: {exc}"))
            return
        self._reply.send(shaped)

    def fail(self, error: BaseException) -> None:
        self._reply.fail(error)


class Gateway:
    """Serves ``streams`` of ``node``'s mesh from ``store``: the relay protocol, unchanged.

    Raises MeshqError if the store cannot set up the streams.
    """

    def __init__(
        self,
        node: MeshNode,
        store: StreamStore,
        streams: Sequence[StreamSettings],
        dedup_window: float,
    ) -> None:
        self.node = node
        self.store = store
        self.streams = {c.name: c for c in streams}
        #: Counters: stored, duplicates, confirmed, delivered (updated by the
        #: store's thread).
        self.counts: dict[str, int] = {}
        store.attach(list(streams), dedup_window, node.mesh)
        node.set_header(STORE_HEADER, store.store_id)
        self._operations: dict[str, Callable[[str, list[object], ReplyTo], None]] = {
            "pub": self._publish,
            "pubs": self._publish,
            "fetch": lambda s, d, r: store.fetch(s, parse_fetch(d), _Shaped(r, self._delivered)),
            "open": lambda s, d, r: store.open_consumer(s, parse_open(d), r),
            "ack": lambda s, d, r: store.ack(s, parse_ack(d), r),
            "nak": lambda s, d, r: store.nak(s, parse_nak(d), r),
            "read": lambda s, d, r: store.read(s, parse_read(d), r),
            "dead": lambda s, d, r: store.read(s, parse_read(d), r),
            "info": lambda s, d, r: store.info(s, r),
        }
        for name in self.streams:
            node.serve_deferred(RELAY_SERVICE_PREFIX + name, self._handler(name))
        log.info("relay on %s serving %s from %s", node.name, list(self.streams), store.store_id)

    def _handler(self, stream: str) -> DeferredHandler:
        return lambda data, reply: self._handle(stream, data, reply)

    def _handle(self, stream: str, data: object, reply: ReplyTo) -> None:
        """One request (relaywire.py); what it raises reaches the caller as RemoteError."""
        if not (type(data) is list and data and type(data[0]) is str):
            raise ProtocolError("a relay request is a list starting with its operation")
        operation = self._operations.get(data[0])
        if operation is None:
            raise ProtocolError(f"unknown relay operation {data[0]!r}")
        operation(stream, data, reply)

    def _publish(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        publishes = parse_publishes(data)
        for pub in publishes:
            if not pub.topic.startswith(stream):
                raise ValueError(f"topic {pub.topic!r} is not in stream {stream!r}")
            # What consumers could not decode is refused now, not stored.
            decode_payload(pub.flags, pub.payload, self.node.limits)
        single = data[0] == "pub"
        live = self.streams[stream].live

        def confirmed(answer: object) -> object:
            assert isinstance(answer, Published)
            self._count("stored", len(answer.stored))
            self._count("duplicates", len(answer.seqs) - len(answer.stored))
            self._count("confirmed", len(answer.seqs))
            if live:
                for record in answer.stored:
                    self._publish_live(record.topic, record.flags, record.payload)
            return answer.seqs[0] if single else answer.seqs

        self.store.publish(stream, publishes, _Shaped(reply, confirmed))

    def _delivered(self, answer: object) -> object:
        if isinstance(answer, list):
            self._count("delivered", len(answer))
        return answer

    def _publish_live(self, topic: str, flags: int, payload: bytes) -> None:
        """A stored message to plain subscribers too (node.publish is safe from any thread)."""
        try:
            self.node.publish(topic, decode_payload(flags, payload, self.node.limits))
        except (MeshqError, ValueError, TypeError) as exc:
            self._count("live_failed")
            log.debug("live copy on %s not sent: %s", topic, exc)

    def _count(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    def close(self) -> None:
        """Close the store (what it still owed is answered with an error), then the node."""
        self.store.close()
        self.node.close()
