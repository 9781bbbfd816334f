"""Durable traffic, the client side: publishing with confirms and consuming with acks.

Both talk to the relay that holds the topic's stream (meshq/relay/) over the
ordinary request/reply path, using the relay protocol (meshq/relaywire.py).

Publishing: every message gets an id (this node's id plus a counter, or the
caller's own), and a retry after a lost confirm carries the same id, so the
relay stores it once. A confirm means the message is on the relay's disk.

Consuming: a named consumer pulls batches from the relay (a long poll, so
live messages arrive at once) and acknowledges what it processed. What is
not acknowledged within ``ack_wait`` seconds is delivered again, to this or
another process using the same name; the consumer skips a message whose id
it has already processed (within ``dedup_ids`` ids), so a redelivery is not
handed to the application twice.

Both objects belong to the thread that made them (like every meshq socket).
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from .errors import Closed, MeshqError, NoProviders, ProtocolError, RemoteError, Timeout
from .relaywire import (
    MAX_MSG_ID_BYTES,
    MAX_PUBS,
    RELAY_SERVICE_PREFIX,
    START_KINDS,
    decode_records,
)
from .requester import RequestFuture
from .wire import decode_payload, encode_payload

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "DurableMessage",
    "DurablePublisher",
    "DurableSubscription",
    "RelayConflict",
    "Start",
    "relay_stores",
    "relay_stream",
]

log = logging.getLogger("meshq.durable")

_ATTEMPT = 1.0  # seconds one attempt waits for a relay's answer before resending
_NO_RELAY_PAUSE = 0.05  # seconds between looks for a relay that went away


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


# --------------------------------------------------------------------------
# Publishing


#: Numbers for message ids, shared by every publisher of the process: an id
#: is the node id plus one of these, so two publishers of one node (two
#: threads, say) never give two messages the same id. (next() on a count is
#: atomic under the GIL.)
_message_numbers = itertools.count(1)


@dataclass
class _Unconfirmed:
    topic: str
    stream: str
    msg_id: bytes
    flags: int
    payload: bytes
    deadline: float  # monotonic
    seq: int = 0
    error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return bool(self.seq) or self.error is not None


@dataclass
class _Batch:
    """One "pubs" request in flight and the messages it carries, in order."""

    entries: list[_Unconfirmed]
    future: RequestFuture


class Confirm:
    """A durable publish in flight; ``result()`` waits for the relay's confirm."""

    def __init__(self, publisher: DurablePublisher, entry: _Unconfirmed) -> None:
        self._publisher = publisher
        self._entry = entry

    @property
    def msg_id(self) -> bytes:
        return self._entry.msg_id

    def done(self) -> bool:
        """True once confirmed or failed (reads the replies that are in first)."""
        if not self._entry.settled:
            self._publisher.poll()
        return self._entry.settled

    def result(self, timeout: float | None = None) -> int:
        """The stream sequence number the relay stored it under.

        Raises meshq.Timeout once the publish's own timeout passed unconfirmed
        (or this wait's ``timeout``), meshq.RemoteError if the relay refused it.
        """
        self._publisher.wait(self._entry, timeout)
        if self._entry.error is not None:
            raise self._entry.error
        if not self._entry.seq:
            raise Timeout(f"no confirm yet for {self._entry.topic!r}")
        return self._entry.seq


class DurablePublisher:
    """Publishes to relays with confirms; many publishes may be in flight.

    ``send`` returns a :class:`Confirm` at once; ``publish`` waits for it.
    Messages sent while earlier requests are unanswered travel together in
    the next request (up to ``max_batch``), so a relay commits and confirms
    them as a group; one at a time, each is its own request. A message not
    confirmed within ``timeout`` seconds fails; until then it is resent
    (same id) after every attempt that went unanswered, also across a relay
    restart.

    Args:
        node: the node to publish through.
        timeout: seconds a publish may take, resends included.
        max_in_flight: unconfirmed messages allowed before ``send`` waits.
        max_requests: requests in flight to the relays at once.
        max_batch: most messages per request (at most 1024).
    """

    def __init__(
        self,
        node: Node,
        *,
        timeout: float = 5.0,
        max_in_flight: int = 1024,
        max_requests: int = 4,
        max_batch: int = 256,
    ) -> None:
        if timeout <= 0 or max_in_flight < 1 or max_requests < 1 or not 0 < max_batch <= MAX_PUBS:
            raise ValueError(
                f"need timeout > 0 s, max_in_flight and max_requests >= 1, max_batch 1..{MAX_PUBS}"
            )
        self.node = node
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_requests = max_requests
        self.max_batch = max_batch
        self._id_prefix = bytes.fromhex(node.id)
        self._unsent: collections.deque[_Unconfirmed] = collections.deque()
        self._batches: collections.deque[_Batch] = collections.deque()
        self._unconfirmed = 0
        #: Messages confirmed, given up on (timed out or refused), and resent.
        self.confirmed = 0
        self.failed = 0
        self.resent = 0

    def send(self, topic: str, data: object, *, msg_id: bytes | None = None) -> Confirm:
        """Send ``data`` to the relay holding ``topic``'s stream; return its pending confirm.

        ``msg_id`` (1..64 bytes) makes a publish idempotent across producer
        restarts; by default each call gets a new one. Waits while
        ``max_in_flight`` messages are unconfirmed. Raises NoProviders at
        once if no relay holds the stream, RelayConflict, ValueError for a
        bad topic or id, TypeError if msgpack cannot encode ``data``.
        """
        self.node.check_topic(topic)
        stream = relay_stream(self.node, topic)
        if msg_id is None:
            msg_id = self._id_prefix + next(_message_numbers).to_bytes(8, "big")
        elif not 0 < len(msg_id) <= MAX_MSG_ID_BYTES:
            raise ValueError(f"msg_id must be 1..{MAX_MSG_ID_BYTES} bytes")
        flags, payload = encode_payload(data)
        while self._unconfirmed >= self.max_in_flight:
            self._wait_once(None)
        entry = _Unconfirmed(topic, stream, msg_id, flags, payload, time.monotonic() + self.timeout)
        self._unsent.append(entry)
        self._unconfirmed += 1
        self._dispatch()
        return Confirm(self, entry)

    def publish(self, topic: str, data: object, *, msg_id: bytes | None = None) -> int:
        """Send and wait for the confirm; return the stream sequence number.

        Raises NoProviders, RelayConflict, meshq.Timeout, meshq.RemoteError.
        """
        return self.send(topic, data, msg_id=msg_id).result()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent is confirmed or has failed.

        Raises meshq.Timeout if some are still unconfirmed after ``timeout`` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._unconfirmed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{self._unconfirmed} durable publishes unconfirmed")
            self._wait_once(remaining)

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet confirmed or failed."""
        return self._unconfirmed

    def _dispatch(self) -> None:
        """Send what is unsent, as requests of up to max_batch messages of one stream.

        Like Nagle's algorithm: with nothing in flight a message goes at
        once; while requests are out, messages wait for an answer (or for a
        full batch), so that they travel and are committed together.
        """
        now = time.monotonic()
        while (
            self._unsent
            and len(self._batches) < self.max_requests
            and (not self._batches or len(self._unsent) >= self.max_batch)
        ):
            first = self._unsent[0]
            if now >= first.deadline:
                self._unsent.popleft()
                self._fail(first, Timeout(f"durable publish to {first.topic!r} not confirmed"))
                continue
            entries: list[_Unconfirmed] = []
            while (
                self._unsent
                and len(entries) < self.max_batch
                and self._unsent[0].stream == first.stream
            ):
                entries.append(self._unsent.popleft())
            attempt = min(_ATTEMPT, max(0.001, min(e.deadline for e in entries) - now))
            try:
                future = self.node.request_async(
                    RELAY_SERVICE_PREFIX + first.stream,
                    ["pubs", [[e.topic, e.msg_id, e.flags, e.payload] for e in entries]],
                    timeout=attempt,
                    retries=0,
                )
            except NoProviders:  # the relay is restarting: try again on the next poll
                self._unsent.extendleft(reversed(entries))
                return
            self._batches.append(_Batch(entries, future))

    def poll(self) -> None:
        """Take in the confirms that arrived; resend what went unanswered."""
        if self._batches and not self._batches[0].future.ready:
            self._batches[0].future.done()  # reads every reply that is in
        still: collections.deque[_Batch] = collections.deque()
        for batch in self._batches:
            if batch.future.ready:
                self._settle(batch)
            else:
                still.append(batch)
        self._batches = still
        self._dispatch()

    def _settle(self, batch: _Batch) -> None:
        try:
            seqs = batch.future.result(0)
        except RemoteError as exc:
            for entry in batch.entries:
                self._fail(entry, exc)
            return
        except (Timeout, NoProviders):
            # The relay is slow, stopped or restarting: resend, same ids.
            self.resent += len(batch.entries)
            self._unsent.extendleft(reversed(batch.entries))
            return
        if not (
            isinstance(seqs, list)
            and len(seqs) == len(batch.entries)
            and all(type(seq) is int and seq > 0 for seq in seqs)
        ):
            error = ProtocolError(f"relay confirmed {len(batch.entries)} messages with {seqs!r}")
            for entry in batch.entries:
                self._fail(entry, error)
            return
        for entry, seq in zip(batch.entries, seqs, strict=True):
            entry.seq = seq
        self.confirmed += len(seqs)
        self._unconfirmed -= len(seqs)

    def _fail(self, entry: _Unconfirmed, error: BaseException) -> None:
        entry.error = error
        self.failed += 1
        self._unconfirmed -= 1

    def wait(self, entry: _Unconfirmed, timeout: float | None) -> None:
        """Drive every publish in flight until ``entry`` is settled or ``timeout`` s pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not entry.settled:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self._wait_once(remaining)

    def _wait_once(self, timeout: float | None) -> None:
        """Wait (at most ``timeout`` s) for the oldest request, then poll."""
        if self.node.closed:
            for entry in [*self._unsent, *(e for b in self._batches for e in b.entries)]:
                self._fail(entry, Closed("node is closed"))
            self._unsent.clear()
            self._batches.clear()
            return
        self.poll()
        pause = _NO_RELAY_PAUSE if timeout is None else max(0.0, min(_NO_RELAY_PAUSE, timeout))
        if self._batches:
            try:
                self._batches[0].future.result(pause if timeout is not None else _ATTEMPT)
            except MeshqError:
                pass  # settled by the poll below
        elif self._unsent:
            time.sleep(pause)  # no relay right now: look again soon
        self.poll()


# --------------------------------------------------------------------------
# Consuming


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

    __slots__ = ("_sub", "data", "deliveries", "msg_id", "seq", "stream", "timestamp", "topic")

    def __init__(
        self,
        sub: DurableSubscription,
        stream: str,
        seq: int,
        topic: str,
        msg_id: bytes,
        data: object,
        time_ns: int,
        deliveries: int,
    ) -> None:
        self._sub = sub
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
        """Mark it processed; it will not be delivered to this consumer name again."""
        self._sub._ack(self)

    def nak(self) -> None:
        """Processing failed: have it delivered again now (this delivery counts).

        After ``max_deliver`` deliveries it becomes a dead letter. Raises
        nothing: if the relay cannot be told, it redelivers after ``ack_wait``.
        """
        self._sub._nak(self)

    def __repr__(self) -> str:
        return f"DurableMessage(topic={self.topic!r}, seq={self.seq}, deliveries={self.deliveries})"


class DurableSubscription:
    """A named durable consumer of a relay stream; see :meth:`meshq.Node.subscribe`."""

    def __init__(
        self,
        node: Node,
        prefix: str,
        name: str,
        *,
        start: Start = Start.FIRST,
        ack: Literal["auto", "explicit"] = "auto",
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        batch: int = 256,
        dedup_ids: int = 100_000,
    ) -> None:
        if ack not in ("auto", "explicit"):
            raise ValueError("ack is 'auto' or 'explicit'")
        if not 0 < len(name.encode()) <= 255:
            raise ValueError("a durable consumer name is 1..255 bytes")
        if ack_wait <= 0 or max_deliver < 1 or not 1 <= batch <= 4096 or dedup_ids < 0:
            raise ValueError("need ack_wait > 0 s, max_deliver >= 1, batch 1..4096")
        self.node = node
        self.prefix = prefix
        self.name = name
        self.start = start
        self.auto_ack = ack == "auto"
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.batch = batch
        self._stream: str | None = None
        self._buffer: collections.deque[DurableMessage] = collections.deque()
        self._acks: list[int] = []  # to send with the next fetch
        self._unacked: DurableMessage | None = None  # auto-ack: the last one handed out
        self._seen: dict[bytes, None] = {}  # ids processed, oldest first
        self._dedup_ids = dedup_ids
        self._closed = False
        self._warned = False
        #: Messages handed to the application, and redeliveries skipped as duplicates.
        self.delivered = 0
        self.duplicates = 0
        self._open()

    def _open(self) -> None:
        """Create the consumer now if a relay is known, so ``Start.NEW`` means "from now".

        Without a relay yet, the first fetch creates it. Raises RemoteError
        if the name exists with another prefix, RelayConflict.
        """
        try:
            self._stream = relay_stream(self.node, self.prefix)
            self.node.request(
                RELAY_SERVICE_PREFIX + self._stream,
                ["open", self.name, self.prefix, self.start.kind, self.start.arg],
                timeout=_ATTEMPT,
                retries=2,
            )
        except (NoProviders, Timeout):
            self._stream = None

    def recv(self, timeout: float | None = None) -> DurableMessage:
        """The next message: stored ones first, then live ones, in stream order.

        With auto-ack, receiving the next message acknowledges the previous
        one. Raises meshq.Timeout after ``timeout`` s, meshq.Closed,
        meshq.RemoteError if the relay refused (a name reused with another
        prefix), RelayConflict.
        """
        if self._closed:
            raise Closed("durable subscription is closed")
        if self._unacked is not None:
            self._ack(self._unacked)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._buffer:
                message = self._buffer.popleft()
                if message.msg_id in self._seen:
                    self.duplicates += 1
                    self._acks.append(message.seq)
                    continue
                self._remember(message.msg_id)
                self.delivered += 1
                if self.auto_ack:
                    self._unacked = message
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"no durable message on {self.prefix!r} within {timeout} s")
            self._fetch(1.0 if remaining is None else min(remaining, 1.0))

    def __iter__(self) -> Iterator[DurableMessage]:
        while not self._closed:
            yield self.recv()

    def _remember(self, msg_id: bytes) -> None:
        if self._dedup_ids:
            self._seen[msg_id] = None
            if len(self._seen) > self._dedup_ids:
                del self._seen[next(iter(self._seen))]

    def _ack(self, message: DurableMessage) -> None:
        if message is self._unacked:
            self._unacked = None
        self._acks.append(message.seq)

    def _nak(self, message: DurableMessage) -> None:
        if message is self._unacked:
            self._unacked = None
        self._seen.pop(message.msg_id, None)  # its redelivery is not a duplicate
        if self._stream is None:
            return
        try:
            self.node.request(
                RELAY_SERVICE_PREFIX + self._stream,
                ["nak", self.name, [message.seq]],
                timeout=_ATTEMPT,
                retries=0,
            )
        except MeshqError as exc:
            log.info("nak of %s seq %d not sent (%s)", message.stream, message.seq, exc)

    def _fetch(self, wait: float) -> None:
        """One long poll: send the pending acks, take a batch (maybe empty)."""
        try:
            if self._stream is None:
                self._stream = relay_stream(self.node, self.prefix)
            future = self.node.request_async(
                RELAY_SERVICE_PREFIX + self._stream,
                [
                    "fetch",
                    self.name,
                    self.prefix,
                    self.start.kind,
                    self.start.arg,
                    self.batch,
                    wait,
                    self._acks,
                    self.ack_wait,
                    self.max_deliver,
                ],
                timeout=wait + _ATTEMPT,
                retries=0,
            )
            reply = future.result()
        except NoProviders:
            if not self._warned:
                self._warned = True
                log.warning("no relay holds %r yet; waiting for one", self.prefix)
            self._stream = None
            time.sleep(min(wait, _NO_RELAY_PAUSE))
            return
        except Timeout:
            return  # a stopped or restarting relay: ask again
        self._acks = []
        limits = self.node._limits
        for record in decode_records(reply):
            self._buffer.append(
                DurableMessage(
                    self,
                    self._stream,
                    record.seq,
                    record.topic,
                    record.msg_id,
                    decode_payload(record.flags, record.payload, limits),
                    record.time_ns,
                    record.deliveries,
                )
            )

    def flush_acks(self, timeout: float = 1.0, *, release: bool = False) -> None:
        """Send the acknowledgements not yet sent; with ``release``, give back the unread.

        Released messages (fetched, not yet handed out) are due again at once
        for this consumer name. Raises meshq.Timeout, NoProviders.
        """
        if self._unacked is not None and self.auto_ack:
            self._ack(self._unacked)
        released = [m.seq for m in self._buffer] if release else []
        if (self._acks or released) and self._stream is not None:
            self.node.request(
                RELAY_SERVICE_PREFIX + self._stream,
                ["ack", self.name, self._acks, released],
                timeout=timeout,
                retries=0,
            )
            self._acks = []
            if release:
                self._buffer.clear()

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
                log.info("last acks of %r not sent (%s): they will be redelivered", self.name, exc)

    def __enter__(self) -> DurableSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
