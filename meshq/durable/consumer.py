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
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from ..errors import Closed, MeshqError, NoProviders, ProtocolError, Timeout
from ..relaywire import RELAY_SERVICE_PREFIX, START_KINDS, decode_records
from ..wire import decode_payload
from .lookup import ATTEMPT, NO_RELAY_PAUSE, relay_stream

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["DurableMessage", "DurableSubscription", "Start"]

log = logging.getLogger("meshq.durable")

_CLOSE_CHECK = 0.1  # seconds between looks at the node's state during a long poll


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
        #: Messages handed to the application, redeliveries skipped as
        #: duplicates, and messages this process could not decode (naked).
        self.delivered = 0
        self.duplicates = 0
        self.undecodable = 0
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
                timeout=ATTEMPT,
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
        if self._closed or self.node.closed:
            raise Closed("durable subscription or its node is closed")
        if self._unacked is not None:
            self._ack(self._unacked)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._buffer:
                message = self._buffer.popleft()
                if message.msg_id in self._seen:
                    # Processed and acknowledged before (the ack was lost, or
                    # the relay restarted): acknowledge again, hand out never.
                    self.duplicates += 1
                    self._acks.append(message.seq)
                    continue
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
        # Remembered when acknowledged, not when received: a message handed
        # out and never acknowledged must come back (and be dead-lettered).
        self._remember(message.msg_id)
        self._acks.append(message.seq)

    def _nak(self, message: DurableMessage) -> None:
        if message is self._unacked:
            self._unacked = None
        self._send_naks([message.seq])

    def _send_naks(self, seqs: list[int]) -> None:
        if self._stream is None:
            return
        try:
            self.node.request(
                RELAY_SERVICE_PREFIX + self._stream,
                ["nak", self.name, seqs],
                timeout=ATTEMPT,
                retries=0,
            )
        except MeshqError as exc:
            log.info("nak of %s seqs %s not sent (%s)", self._stream, seqs[:5], exc)

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
                timeout=wait + ATTEMPT,
                retries=0,
            )
            # In slices, so that a node closing meanwhile (its on_message
            # threads wait here) is noticed at once, not after the long poll.
            while not future.ready:
                if self.node.closed:
                    raise Closed("node is closed")
                with contextlib.suppress(Timeout):
                    future.result(_CLOSE_CHECK)
            reply = future.result(0)
        except NoProviders:
            if not self._warned:
                self._warned = True
                log.warning("no relay holds %r yet; waiting for one", self.prefix)
            self._stream = None
            time.sleep(min(wait, NO_RELAY_PAUSE))
            return
        except Timeout:
            return  # a stopped or restarting relay: ask again
        self._acks = []
        limits = self.node._limits
        undecodable = []
        for record in decode_records(reply):
            try:
                data = decode_payload(record.flags, record.payload, limits)
            except ProtocolError as exc:
                # Stored by a relay that did not check, or bigger than our
                # max_msgpack_bytes: back to the relay, to be dead-lettered.
                log.warning("%s seq %d not decodable here (%s)", self._stream, record.seq, exc)
                undecodable.append(record.seq)
                continue
            self._buffer.append(
                DurableMessage(
                    self,
                    self._stream,
                    record.seq,
                    record.topic,
                    record.msg_id,
                    data,
                    record.time_ns,
                    record.deliveries,
                )
            )
        if undecodable:
            self.undecodable += len(undecodable)
            self._send_naks(undecodable)

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

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._unacked is not None:
            # The block failed, probably on the message in hand: not done.
            self._nak(self._unacked)
        self.close()
