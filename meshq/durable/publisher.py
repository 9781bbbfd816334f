"""Publishing with confirms: every message on the relay's disk, stored once.

Every message gets an id (this node's id plus a process-wide counter, or
the caller's own), and a resend after a lost confirm carries the same id, so
the relay stores it once. A confirm means the message is on the relay's
disk. A publisher belongs to the thread that made it (like every meshq
socket), and its replies are read on that thread, by whichever of its calls
comes next (send, result, done, flush): no call to ``poll()`` is needed, and
a message's timeout runs from when it is first sent, so one held back while
the application is busy elsewhere does not expire unsent.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import TYPE_CHECKING

from ..errors import Closed, Timeout
from ..relaywire import MAX_MSG_ID_BYTES
from ..requester import RequestFuture
from ..wire import encode_payload
from .confirms import ConfirmBook, DurableMessageOut, PublishFailed, Unconfirmed
from .lookup import pause, relay_request, relay_stream, wait_for_relay

if TYPE_CHECKING:
    from ..seams import MeshNode

__all__ = ["Confirm", "DurablePublisher", "PublishFailed", "next_message_id"]

#: Seconds between reads of the replies that are in, from send().
_READ_EVERY = 0.001


#: Numbers for message ids, shared by every publisher of the process: an id
#: is the node id plus one of these, so two publishers of one node (two
#: threads, say) never give two messages the same id. (next() on a count is
#: atomic under the GIL.)
_message_numbers = itertools.count(1)


def next_message_id(node: MeshNode) -> bytes:
    """A new message id: the node's 16-byte id and a big-endian u64, unique in the process."""
    return bytes.fromhex(node.id) + next(_message_numbers).to_bytes(8, "big")


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


class Confirm:
    """A durable publish in flight; ``result()`` waits for the relay's confirm."""

    def __init__(self, publisher: DurablePublisher, entry: Unconfirmed) -> None:
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
        return self._publisher.outcome(self._entry)


class DurablePublisher(ConfirmBook[RequestFuture]):
    """Publishes to relays with confirms; many publishes may be in flight.

    ``send`` returns a :class:`Confirm` at once; ``publish`` waits for it.
    Messages sent while earlier requests are unanswered travel together in
    the next request (up to ``max_batch``), so a relay commits and confirms
    them as a group; one at a time, each is its own request. A message not
    confirmed within ``timeout`` seconds of its first send fails; until then
    it is resent (same id) after every attempt that went unanswered, also
    across a relay restart, and after a refusal because the relay's store
    failed (a full disk), with a pause doubling from 0.05 to 1 s. A failure
    is raised by the message's ``Confirm.result()``, or else by the next
    ``flush()`` (:class:`PublishFailed`, listing the message ids).
    :class:`meshq.AsyncDurablePublisher` is the same for asyncio.

    Counters: ``confirmed``, ``failed`` (timed out or refused), ``resent``,
    ``requests`` (batches sent), ``in_flight`` (sent, not yet confirmed or failed).

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
        # A request is one msgpack payload, and providers decode at most
        # max_msgpack_bytes of it: half of that per request leaves room for
        # the framing, and lets the relay hand any one message back in a fetch.
        super().__init__(
            timeout=timeout,
            max_in_flight=max_in_flight,
            max_requests=max_requests,
            max_batch=max_batch,
            max_request_bytes=max_message_size(node),
        )
        self.node = node
        self._next_read = 0.0

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
        if self._batches and time.monotonic() >= self._next_read:
            self.poll()  # take the confirms in: a free slot sends this one at once
        while self._unconfirmed >= self.max_in_flight:
            self._wait_once(None)
        entry = self._add(topic, out)
        self._dispatch()
        return Confirm(self, entry)

    def publish(self, topic: str, data: object, *, msg_id: bytes | None = None) -> int:
        """Send and wait for the confirm; return the stream sequence number.

        Raises NoProviders, RelayConflict, meshq.Timeout, meshq.RemoteError.
        """
        return self.send(topic, data, msg_id=msg_id).result()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent is confirmed or has failed.

        Raises PublishFailed (listing the message ids) if any message sent
        before failed and its ``Confirm.result()`` did not raise it already;
        meshq.Timeout if some are still unconfirmed after ``timeout`` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._unconfirmed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{self._unconfirmed} durable publishes unconfirmed")
            self._wait_once(remaining)
        failed = self._take_failures()
        if failed is not None:
            raise failed

    def _request(self, stream: str, request: list[object], timeout: float) -> RequestFuture:
        return relay_request(self.node, stream, request, timeout=timeout)

    def poll(self) -> None:
        """Take in the confirms that arrived; resend what went unanswered.

        Every other call of the publisher does this too: no need to call it.
        """
        self._next_read = time.monotonic() + _READ_EVERY
        if self._batches and not self._batches[0].future.ready:
            self._batches[0].future.done()  # reads every reply that is in
        for batch in [b for b in self._batches if b.future.ready]:
            self._settle(batch, functools.partial(batch.future.result, 0))
        self._dispatch()

    def wait(self, entry: Unconfirmed, timeout: float | None) -> None:
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
            self._fail_everything(Closed("node is closed"))
            return
        self.poll()
        if self._batches:
            # Until any request ends (each does by its own timeout), not
            # just the oldest: the next batch goes as soon as one is answered.
            try:
                self.node.wait_any([batch.future for batch in self._batches], timeout=timeout)
            except Closed as exc:  # the node closed meanwhile: at once, not after the requests
                self._fail_everything(exc)
                return
        elif self._unsent:
            now = time.monotonic()
            if now < self._hold_until:
                # The relay refused for now (its store failed, say): the
                # pause before the resend.
                hold = self._hold_until - now
                try:
                    pause(self.node, hold if timeout is None else min(hold, timeout))
                except Closed:
                    return  # the next call fails what is left
            else:
                # No relay right now (restarting, say): wait until one holds
                # the topic, or until the oldest message is due to time out.
                first = self._unsent[0]
                limit = (first.deadline or now + first.timeout) - now
                try:
                    wait_for_relay(
                        self.node, first.topic, limit if timeout is None else min(limit, timeout)
                    )
                except Closed:
                    return  # the next call fails what is left
        self.poll()
