"""Publishing with confirms: every message on the relay's disk, stored once.

Every message gets an id (this node's id plus a process-wide counter, or
the caller's own), and a resend after a lost confirm carries the same id, so
the relay stores it once. A confirm means the message is on the relay's
disk. A publisher belongs to the thread that made it (like every meshq socket).
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..errors import Closed, MeshqError, NoProviders, ProtocolError, RemoteError, Timeout
from ..relaywire import MAX_MSG_ID_BYTES, MAX_PUBS, RELAY_SERVICE_PREFIX
from ..requester import RequestFuture
from ..wire import encode_payload
from .lookup import ATTEMPT, relay_stream, wait_for_relay

_SLICE = 0.05  # seconds a bounded wait spends on the oldest request before looking at all

if TYPE_CHECKING:
    from ..seams import MeshNode

__all__ = ["Confirm", "DurablePublisher", "next_message_id"]


#: Numbers for message ids, shared by every publisher of the process: an id
#: is the node id plus one of these, so two publishers of one node (two
#: threads, say) never give two messages the same id. (next() on a count is
#: atomic under the GIL.)
_message_numbers = itertools.count(1)


def next_message_id(node: MeshNode) -> bytes:
    """A new message id: the node's 16-byte id and a big-endian u64, unique in the process."""
    return bytes.fromhex(node.id) + next(_message_numbers).to_bytes(8, "big")


class DurableMessageOut(NamedTuple):
    """A message ready for a relay: the stream it goes to and its encoded fields."""

    stream: str
    msg_id: bytes
    flags: int
    payload: bytes


def prepare(node: MeshNode, topic: str, data: object, msg_id: bytes | None) -> DurableMessageOut:
    """Check and encode one durable message (sync and asyncio publishers share this).

    A request must fit a provider's msgpack bound, so a message is at most
    half of ``max_msgpack_bytes``. Raises NoProviders at once if no relay
    holds the stream, RelayConflict, ValueError for a bad topic or id or a
    message too big, TypeError if msgpack cannot encode ``data``.
    """
    node.check_topic(topic)
    stream = relay_stream(node, topic)
    if msg_id is None:
        msg_id = next_message_id(node)
    elif not 0 < len(msg_id) <= MAX_MSG_ID_BYTES:
        raise ValueError(f"msg_id must be 1..{MAX_MSG_ID_BYTES} bytes")
    flags, payload = encode_payload(data)
    size, limit = len(payload) + len(topic) + len(msg_id), max_message_size(node)
    if size > limit:
        raise ValueError(
            f"a durable message is at most {limit} bytes "
            f"(half of MeshConfig.max_msgpack_bytes), this one {size}"
        )
    return DurableMessageOut(stream, msg_id, flags, payload)


def max_message_size(node: MeshNode) -> int:
    """Bytes of topic, id and payload one durable message (or request) may hold."""
    return node.config.max_msgpack_bytes // 2


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
    def size(self) -> int:
        """Bytes this message adds to a request, give or take the framing."""
        return len(self.payload) + len(self.topic) + len(self.msg_id)

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
        node: MeshNode,
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
        # A request is one msgpack payload, and providers decode at most
        # max_msgpack_bytes of it: half of that per request leaves room for
        # the framing, and lets the relay hand any one message back in a fetch.
        self.max_request_bytes = max_message_size(node)
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
        bad topic or id or a message over half of ``max_msgpack_bytes`` (2
        MiB by default), TypeError if msgpack cannot encode ``data``.
        """
        out = prepare(self.node, topic, data, msg_id)
        while self._unconfirmed >= self.max_in_flight:
            self._wait_once(None)
        entry = _Unconfirmed(topic, *out, time.monotonic() + self.timeout)
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
            size = 0
            while (
                self._unsent
                and len(entries) < self.max_batch
                and self._unsent[0].stream == first.stream
                and (not entries or size + self._unsent[0].size <= self.max_request_bytes)
            ):
                entry = self._unsent.popleft()
                entries.append(entry)
                size += entry.size
            attempt = min(ATTEMPT, max(0.001, min(e.deadline for e in entries) - now))
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
        if self._batches:
            # In slices: replies to later requests are read meanwhile, and
            # settled by the poll below.
            pause = ATTEMPT if timeout is None else max(0.0, min(_SLICE, timeout))
            try:
                self._batches[0].future.result(pause)
            except MeshqError:
                pass  # settled by the poll below
        elif self._unsent:
            # No relay right now (restarting, say): wait until one holds the
            # topic, or until the oldest message is due to time out.
            first = self._unsent[0]
            limit = first.deadline - time.monotonic()
            try:
                wait_for_relay(
                    self.node, first.topic, limit if timeout is None else min(limit, timeout)
                )
            except Closed:
                return  # the next call fails what is left
        self.poll()
