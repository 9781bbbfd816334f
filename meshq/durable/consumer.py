"""Consuming durably: a named consumer that pulls from a relay and acknowledges.

A named consumer pulls batches from the relay (a long poll, so live
messages arrive at once) and acknowledges what it processed. What is not
acknowledged within ``ack_wait`` seconds is delivered again, to this or
another process using the same name; the consumer skips a message whose id
it has already processed (within ``dedup_ids`` ids), so a redelivery is not
handed to the application twice. A subscription belongs to the thread that
made it.
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import Closed, MeshqError, NoProviders, ProtocolError, RemoteError, Timeout
from ..relaywire import RELAY_SERVICE_PREFIX, START_KINDS, decode_records
from ..wire import Limits, decode_payload
from .lookup import (
    ATTEMPT,
    NO_RELAY_PAUSE,
    pause,
    relay_request,
    relay_stream,
    retry_later,
    wait_for_relay,
)

if TYPE_CHECKING:
    from ..seams import MeshNode

__all__ = [
    "DEFAULT_BACKOFF",
    "ConsumerShell",
    "ConsumerState",
    "DurableMessage",
    "DurableSubscription",
    "Start",
]

log = logging.getLogger("meshq.durable")

#: Seconds a durable consumer looks for its relay before it warns: longer
#: than discovery takes (mDNS and a HELLO, about a second on a LAN).
NO_RELAY_WARN_AFTER = 5.0

#: Seconds a fetch may wait at the relay for news (its long poll): a
#: receive with a longer timeout makes several.
LONG_POLL = 1.0

#: Seconds before a naked message is delivered again: after its 1st
#: delivery, its 2nd, ...; the last repeats (JetStream's BackOff, exponential
#: with a cap). So a handler that fails on a transient error does not use up
#: max_deliver within milliseconds.
DEFAULT_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


@dataclass(frozen=True)
class Start:
    """Where a new durable consumer begins (a consumer that exists resumes where it was).

    ``Start.FIRST`` (the stream's first stored message), ``Start.NEW`` (only
    messages stored after the consumer is created), ``Start.at_seq(n)``, or
    ``Start.at_time(seconds_since_epoch)``.
    """

    kind: str
    arg: int = 0

    FIRST: ClassVar[Start]
    NEW: ClassVar[Start]

    def __post_init__(self) -> None:
        if self.kind not in START_KINDS or self.arg < 0:
            raise ValueError(f"start kind is one of {START_KINDS}, with arg >= 0")

    @staticmethod
    def at_seq(seq: int) -> Start:
        return Start("seq", seq)

    @staticmethod
    def at_time(when: float) -> Start:
        return Start("time", int(when * 1e9))


Start.FIRST = Start("first")
Start.NEW = Start("new")


class DurableMessage:
    """A message from a durable consumer. Call :meth:`ack` when done with it (or use auto-ack)."""

    __slots__ = ("_state", "data", "deliveries", "msg_id", "seq", "stream", "timestamp", "topic")

    def __init__(
        self,
        state: ConsumerState,
        stream: str,
        seq: int,
        topic: str,
        msg_id: bytes,
        data: object,
        time_ns: int,
        deliveries: int,
    ) -> None:
        self._state = state
        #: The stream (relay) and the stream's sequence number, from 1.
        self.stream = stream
        self.seq = seq
        self.topic = topic
        #: The producer-assigned id the relay deduplicated on.
        self.msg_id = msg_id
        self.data = data
        #: When the relay stored it, seconds since the epoch (relay's clock).
        self.timestamp = time_ns / 1e9
        #: 1 on first delivery, more when redelivered.
        self.deliveries = deliveries

    def ack(self) -> None:
        """Mark it processed; it will not be delivered to this consumer name again.

        Sent with the subscription's next fetch (or at its close).
        """
        self._state.ack(self)

    def nak(self) -> None:
        """Processing failed: have it delivered again (this delivery counts).

        Delivered again after the subscription's ``backoff`` for this
        delivery (1 s after the first, then 2, 4, 8, 16, 30 s by default;
        at most ``ack_wait``): the nak is sent with the first fetch after
        that. After ``max_deliver`` deliveries the message becomes a dead
        letter. If the relay cannot be told, it redelivers after ``ack_wait``.
        """
        self._state.nak(self)

    def __repr__(self) -> str:
        return f"DurableMessage(topic={self.topic!r}, seq={self.seq}, deliveries={self.deliveries})"


class ConsumerState:
    """What a durable subscription holds between calls, with no I/O (sync and asyncio share it).

    The fetched messages, the acknowledgements and naks to send, the
    message handed out under auto-ack, and the ids acknowledged lately (for
    dedup). The shells do the requests this describes.
    """

    def __init__(
        self,
        prefix: str,
        name: str,
        *,
        start: Start,
        ack: Literal["auto", "explicit"],
        ack_wait: float,
        max_deliver: int,
        batch: int,
        dedup_ids: int,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if any(not 0 <= delay < float("inf") for delay in backoff):
            raise ValueError("backoff is a sequence of delays in seconds, each >= 0")
        if ack not in ("auto", "explicit"):
            raise ValueError("ack is 'auto' or 'explicit'")
        if not 0 < len(name.encode()) <= 255:
            raise ValueError("a durable consumer name is 1..255 bytes")
        if ack_wait <= 0 or max_deliver < 1 or not 1 <= batch <= 4096 or dedup_ids < 0:
            raise ValueError("need ack_wait > 0 s, max_deliver >= 1, batch 1..4096")
        self.prefix = prefix
        self.name = name
        self.start = start
        self.auto_ack = ack == "auto"
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.batch = batch
        self.stream: str | None = None
        self.buffer: collections.deque[DurableMessage] = collections.deque()
        self.acks: list[int] = []  # to send with the next fetch
        self._acks_in_flight = 0  # how many of them the fetch in flight carries
        self.naks: list[int] = []  # to send before the next fetch
        self.backoff = tuple(float(delay) for delay in backoff)
        self._clock = clock
        self._held: list[tuple[float, int]] = []  # naks waiting out their backoff: (due, seq)
        self.unacked: DurableMessage | None = None  # auto-ack: the last one handed out
        self._seen: dict[bytes, None] = {}  # ids acknowledged, oldest first
        self._dedup_ids = dedup_ids
        self.warned = False
        self._no_relay_since: float | None = None  # monotonic s; None while a relay answers
        self.delivered = 0
        self.duplicates = 0
        self.undecodable = 0
        # For introspection: acks and naks the application made, and the
        # highest seq fetched (what the consumer reached in its stream).
        self.acked = 0
        self.naked = 0
        self.last_seq = 0

    def service(self) -> str:
        assert self.stream is not None, "a stream is found first"
        return RELAY_SERVICE_PREFIX + self.stream

    def open_request(self) -> list[object]:
        return ["open", self.name, self.prefix, self.start.kind, self.start.arg]

    def fetch_request(self, wait: float) -> list[object]:
        """A fetch carrying the acks made so far (those are done once its reply is taken)."""
        self._acks_in_flight = len(self.acks)
        return [
            "fetch",
            self.name,
            self.prefix,
            self.start.kind,
            self.start.arg,
            self.batch,
            wait,
            self.acks[: self._acks_in_flight],
            self.ack_wait,
            self.max_deliver,
        ]

    def release_due(self, everything: bool = False) -> None:
        """Move the naks whose backoff is over (or all) to ``naks`` (sent before the next fetch)."""
        now = float("inf") if everything else self._clock()
        while self._held and self._held[0][0] <= now:
            self.naks.append(heapq.heappop(self._held)[1])

    def next_nak_in(self, longest: float) -> float:
        """Seconds until a held nak is due (at most ``longest``): how long a fetch may wait."""
        if not self._held:
            return longest
        return max(0.0, min(longest, self._held[0][0] - self._clock()))

    def nak_request(self) -> tuple[list[object], int]:
        """A nak of the naks made so far, and how many (for :meth:`naks_sent` after)."""
        return ["nak", self.name, list(self.naks)], len(self.naks)

    def naks_sent(self, count: int) -> None:
        del self.naks[:count]  # not later ones, made while the request was out

    def acks_sent(self, count: int) -> None:
        del self.acks[:count]

    def ack_request(self, release: bool) -> tuple[list[object], int] | None:
        """The last acks (with ``release``, also the unread messages to give back), or None.

        Also how many acks it carries, for :meth:`acks_sent` once it succeeded.
        """
        if self.unacked is not None:
            self.ack(self.unacked)
        released = [m.seq for m in self.buffer] if release else []
        if not (self.acks or released) or self.stream is None:
            return None
        return ["ack", self.name, list(self.acks), released], len(self.acks)

    def begin_recv(self) -> None:
        """A new receive: under auto-ack the previous message is done."""
        if self.unacked is not None:
            self.ack(self.unacked)

    def next_message(self) -> DurableMessage | None:
        """The next message to hand out, or None: a new fetch is needed."""
        while self.buffer:
            message = self.buffer.popleft()
            if message.msg_id in self._seen:
                # Acknowledged before (the ack was lost, or the relay
                # restarted): acknowledge again, hand out never.
                self.duplicates += 1
                self.acks.append(message.seq)
                continue
            self.delivered += 1
            if self.auto_ack:
                self.unacked = message
            return message
        return None

    def take(self, reply: object, limits: Limits) -> None:
        """A fetch's reply: its records become messages; the acks it carried are done.

        Raises ProtocolError for a malformed reply. A record this process
        cannot decode (bigger than its max_msgpack_bytes, say) is naked.
        """
        self._no_relay_since = None  # a relay answered
        records = decode_records(reply)
        self.acks_sent(self._acks_in_flight)  # acks made meanwhile go with the next one
        self._acks_in_flight = 0
        assert self.stream is not None
        if records:
            self.last_seq = max(self.last_seq, max(record.seq for record in records))
        for record in records:
            try:
                data = decode_payload(record.flags, record.payload, limits)
            except ProtocolError as exc:
                log.warning("%s seq %d not decodable here (%s)", self.stream, record.seq, exc)
                self.undecodable += 1
                self.naks.append(record.seq)
                continue
            self.buffer.append(
                DurableMessage(
                    self,
                    self.stream,
                    record.seq,
                    record.topic,
                    record.msg_id,
                    data,
                    record.time_ns,
                    record.deliveries,
                )
            )

    def ack(self, message: DurableMessage) -> None:
        if message is self.unacked:
            self.unacked = None
        self.acked += 1
        # Remembered when acknowledged, not when received: a message handed
        # out and never acknowledged must come back (and be dead-lettered).
        if self._dedup_ids:
            self._seen[message.msg_id] = None
            if len(self._seen) > self._dedup_ids:
                del self._seen[next(iter(self._seen))]
        self.acks.append(message.seq)

    def nak(self, message: DurableMessage) -> None:
        """Have ``message`` delivered again after its backoff (at most ``ack_wait``)."""
        if message is self.unacked:
            self.unacked = None
        self.naked += 1
        if not self.backoff:
            self.naks.append(message.seq)
            return
        delay = self.backoff[min(message.deliveries, len(self.backoff)) - 1]
        # Past ack_wait the relay delivers it again by itself anyway.
        delay = min(delay, self.ack_wait)
        heapq.heappush(self._held, (self._clock() + delay, message.seq))

    def no_relay(self) -> None:
        # Discovery takes a moment, so a consumer started with its relay
        # running misses it at first: warn only once the relay stays missing.
        now = time.monotonic()
        if self._no_relay_since is None:
            self._no_relay_since = now
        missing = now - self._no_relay_since
        if not self.warned and missing >= NO_RELAY_WARN_AFTER:
            self.warned = True
            log.warning("no relay holds %r after %.0f s; waiting for one", self.prefix, missing)
        self.stream = None


class ConsumerShell:
    """What the sync and asyncio durable subscriptions share: options, state, counters.

    Counters: ``delivered`` (handed to the application), ``duplicates``
    (redeliveries of acknowledged messages, skipped), ``undecodable``
    (naked: this process could not decode them).
    """

    def __init__(
        self,
        node: Any,  # a Node or an AsyncNode: each subclass says which
        prefix: str,
        name: str,
        *,
        start: Start = Start.FIRST,
        ack: Literal["auto", "explicit"] = "auto",
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        batch: int = 256,
        dedup_ids: int = 100_000,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
    ) -> None:
        self.node = node
        self._state = ConsumerState(
            prefix,
            name,
            start=start,
            ack=ack,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            batch=batch,
            dedup_ids=dedup_ids,
            backoff=backoff,
        )
        self._closed = False
        self._created()
        self._mesh_node().track_consumer(self)  # introspection reports it while it lives

    def _created(self) -> None:
        """Called at the end of construction (the sync form creates the consumer there)."""

    def _mesh_node(self) -> MeshNode:
        """The sync node this consumer belongs to (its own, or its AsyncNode's)."""
        raise NotImplementedError

    @property
    def prefix(self) -> str:
        return self._state.prefix

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def batch(self) -> int:
        """Most messages one fetch takes (1..4096); settable."""
        return self._state.batch

    @batch.setter
    def batch(self, value: int) -> None:
        if not 1 <= value <= 4096:
            raise ValueError("batch is 1..4096")
        self._state.batch = value

    @property
    def backoff(self) -> tuple[float, ...]:
        """Seconds before a naked message is delivered again, by delivery (the last repeats)."""
        return self._state.backoff

    @property
    def delivered(self) -> int:
        return self._state.delivered

    @property
    def duplicates(self) -> int:
        return self._state.duplicates

    @property
    def undecodable(self) -> int:
        return self._state.undecodable

    def report(self) -> dict[str, object] | None:
        """This consumer as introspection shows it (docs/PROTOCOL.md 16.2); None once closed.

        Read from another thread (the node's service thread) without a lock:
        plain counters, each read once.
        """
        state = self._state
        if self._closed:
            return None
        delivered, acked, naked = state.delivered, state.acked, state.naked
        return {
            "prefix": state.prefix,
            "name": state.name,
            "stream": state.stream,
            "delivered": delivered,
            "acked": acked,
            "naked": naked,
            "pending": max(0, delivered - acked - naked),
            "buffered": len(state.buffer),
            "unsent_acks": len(state.acks),
            "last_seq": state.last_seq,
            "duplicates": state.duplicates,
        }


class DurableSubscription(ConsumerShell):
    """A named durable consumer of a relay stream; see :meth:`meshq.Node.subscribe`.

    Belongs to the thread that made it.
    """

    node: MeshNode

    def _mesh_node(self) -> MeshNode:
        return self.node

    def _created(self) -> None:
        """Create the consumer now if a relay is known, so ``Start.NEW`` means "from now".

        Without a relay yet, the first fetch creates it. Raises RemoteError
        if the name exists with another prefix, RelayConflict.
        """
        state = self._state
        try:
            state.stream = relay_stream(self.node, state.prefix)
            relay_request(
                self.node, state.stream, state.open_request(), timeout=ATTEMPT, retries=2
            ).result()
        except (NoProviders, Timeout):
            state.stream = None
        except RemoteError as exc:
            if not retry_later(exc):
                raise
            state.stream = None  # the first fetch creates it

    def recv(self, timeout: float | None = None) -> DurableMessage:
        """The next message: stored ones first, then live ones, in stream order.

        With auto-ack, receiving the next message acknowledges the previous
        one. Raises meshq.Timeout after ``timeout`` s, meshq.Closed,
        meshq.RemoteError if the relay refused (a name reused with another
        prefix), RelayConflict.
        """
        if self._closed or self.node.closed:
            raise Closed("durable subscription or its node is closed")
        state = self._state
        state.begin_recv()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = state.next_message()
            if message is not None:
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"no durable message on {state.prefix!r} within {timeout} s")
            # Not past the moment a held nak is due: it goes with the next fetch.
            longest = LONG_POLL if remaining is None else min(remaining, LONG_POLL)
            self._fetch(state.next_nak_in(longest))

    def __iter__(self) -> Iterator[DurableMessage]:
        while not self._closed:
            yield self.recv()

    def _send_naks(self) -> None:
        state = self._state
        state.release_due()
        if state.naks and state.stream is not None:
            request, count = state.nak_request()
            try:
                relay_request(self.node, state.stream, request, timeout=ATTEMPT).result()
            except MeshqError as exc:
                log.info("naks of %s not sent (%s): redelivered after ack_wait", state.name, exc)
            state.naks_sent(count)

    def _fetch(self, wait: float) -> None:
        """One long poll: send the pending naks and acks, take a batch (maybe empty)."""
        state = self._state
        try:
            if state.stream is None:
                state.stream = relay_stream(self.node, state.prefix)
            self._send_naks()
            future = relay_request(
                self.node, state.stream, state.fetch_request(wait), timeout=wait + ATTEMPT
            )
            # Not future.result(): a node closing meanwhile (its on_message
            # threads wait here) stops this wait at once (Closed), not after
            # the long poll.
            self.node.wait_any([future])
            reply = future.result(0)
        except NoProviders:
            state.no_relay()
            wait_for_relay(self.node, state.prefix, wait)  # Closed if the node closes
            return
        except RemoteError as exc:
            if not retry_later(exc):
                raise
            pause(self.node, min(wait, NO_RELAY_PAUSE))  # not the owner (yet): ask again
            return
        except Timeout:
            return  # a stopped or restarting relay: ask again
        state.take(reply, self.node.limits)

    def flush_acks(self, timeout: float = 1.0, *, release: bool = False) -> None:
        """Send the naks and acknowledgements not yet sent; with ``release``, give back the unread.

        Released messages (fetched, not yet handed out), and with them the
        naks still waiting out their backoff, are due again at once for this
        consumer name. Raises meshq.Timeout, NoProviders.
        """
        state = self._state
        if release:  # handing everything back: the held naks go now too
            state.release_due(everything=True)
        self._send_naks()
        last = state.ack_request(release)
        if last is not None and state.stream is not None:  # (a request needs a stream)
            request, count = last
            relay_request(self.node, state.stream, request, timeout=timeout).result()
            state.acks_sent(count)
            if release:
                state.buffer.clear()

    def close(self) -> None:
        """Send the last acknowledgements and give back what was fetched but not read.

        Best effort: what did not reach the relay is delivered again after
        ``ack_wait``, to this consumer name.
        """
        if self._closed:
            return
        self._closed = True
        if not self.node.closed:
            try:
                self.flush_acks(release=True)
            except MeshqError as exc:
                log.info(
                    "last acks of %r not sent (%s): they will be redelivered", self._state.name, exc
                )

    def __enter__(self) -> DurableSubscription:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._state.unacked is not None:
            # The block failed, probably on the message in hand: not done.
            self._state.nak(self._state.unacked)
        self.close()
