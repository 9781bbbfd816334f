"""A relay that serves streams from a :class:`~meshq.relay.interface.StreamStore`.

The relay protocol is parsed and checked on the node's service thread, as
in the SQLite relay; the store answers later, from its own thread (the
JetStream store's event loop). Answers come back through a queue and a
wake-up of the service thread, whose ticker sends them: a ``ReplyTo`` is
used on the service thread only, and nothing polls.
"""

from __future__ import annotations

import collections
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
from .interface import Published, StreamStore

if TYPE_CHECKING:
    from ..node import Node
    from .server import StreamConfig

__all__ = ["Gateway"]

log = logging.getLogger("meshq.relay")

_Answer = tuple[ReplyTo, object, BaseException | None, Callable[[object], object] | None]


class _Handoff:
    """A :class:`~meshq.relay.interface.Reply` a store may use from any thread."""

    __slots__ = ("_gateway", "_reply", "_shape")

    def __init__(
        self,
        gateway: Gateway,
        reply: ReplyTo,
        shape: Callable[[object], object] | None = None,
    ) -> None:
        self._gateway = gateway
        self._reply = reply
        self._shape = shape

    def send(self, answer: object) -> None:
        self._gateway._hand_back((self._reply, answer, None, self._shape))

    def fail(self, error: BaseException) -> None:
        self._gateway._hand_back((self._reply, None, error, None))


class Gateway:
    """Serves ``streams`` of ``node``'s mesh from ``store``: the relay protocol, unchanged.

    Raises MeshqError if the store cannot set up the streams.
    """

    def __init__(
        self,
        node: Node,
        store: StreamStore,
        streams: Sequence[StreamConfig],
        dedup_window: float,
    ) -> None:
        self.node = node
        self.store = store
        self.streams = {c.name: c for c in streams}
        #: Counters: stored, duplicates, confirmed, delivered, acked, ...
        self.counts: dict[str, int] = {}
        self._answers: collections.deque[_Answer] = collections.deque()
        self._signalled = False
        store.attach(list(streams), dedup_window, node.mesh)
        node._set_header(STORE_HEADER, store.store_id)
        self._operations: dict[str, Callable[[str, list[object], ReplyTo], None]] = {
            "pub": self._publish,
            "pubs": self._publish,
            "fetch": lambda s, d, r: store.fetch(s, parse_fetch(d), self._records(r)),
            "open": lambda s, d, r: store.open_consumer(s, parse_open(d), _Handoff(self, r)),
            "ack": lambda s, d, r: store.ack(s, parse_ack(d), _Handoff(self, r)),
            "nak": lambda s, d, r: store.nak(s, parse_nak(d), _Handoff(self, r)),
            "read": lambda s, d, r: store.read(s, parse_read(d), _Handoff(self, r)),
            "dead": lambda s, d, r: store.read(s, parse_read(d), _Handoff(self, r)),
            "info": lambda s, d, r: store.info(s, _Handoff(self, r)),
        }
        for name in self.streams:
            node._serve_deferred(RELAY_SERVICE_PREFIX + name, self._handler(name))
        runner = node._service_runner
        assert runner is not None  # started by the first _serve_deferred
        self._wake = runner._wake
        node._add_service_ticker(self._tick)
        log.info("relay on %s serving %s from %s", node.name, list(self.streams), store.store_id)

    # ------------------------------------------------------------------
    # Requests (service thread)

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
            decode_payload(pub.flags, pub.payload, self.node._limits)
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

        self.store.publish(stream, publishes, _Handoff(self, reply, confirmed))

    def _records(self, reply: ReplyTo) -> _Handoff:
        def delivered(answer: object) -> object:
            if isinstance(answer, list):
                self._count("delivered", len(answer))
            return answer

        return _Handoff(self, reply, delivered)

    def _publish_live(self, topic: str, flags: int, payload: bytes) -> None:
        try:
            self.node.publish(topic, decode_payload(flags, payload, self.node._limits))
        except (MeshqError, ValueError, TypeError) as exc:
            self._count("live_failed")
            log.debug("live copy on %s not sent: %s", topic, exc)

    # ------------------------------------------------------------------
    # Answers coming back (store thread -> service thread)

    def _hand_back(self, answer: _Answer) -> None:
        self._answers.append(answer)
        if not self._signalled and not self.node.closed:
            # One wake-up per batch of answers: the ticker clears the flag
            # before it empties the queue, so no answer waits for another.
            # (A closed node's wake-up pipe is gone, its number maybe reused.)
            self._signalled = True
            self._wake()

    def _tick(self, now: float, idle: bool) -> float | None:
        self._signalled = False
        answers = self._answers
        while answers:
            reply, answer, error, shape = answers.popleft()
            if error is not None:
                self._count("store_errors")
                reply.fail(error)
                continue
            try:
                reply.send(shape(answer) if shape is not None else answer)
            except Exception as exc:  # a bug in one answer must not drop the others
                log.exception("relay answer could not be sent")
                reply.fail(MeshqError(f"relay answer failed: {exc}"))
        # Under load the service loop ticks after every request when asked
        # for 0 s; when idle, the wake-up above is what brings it back.
        return None if idle else 0.0

    def _count(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    def close(self) -> None:
        """Close the store (what it still owed is answered with an error), then the node."""
        self.store.close()
        self.node.close()
