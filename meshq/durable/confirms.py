"""Confirm bookkeeping: durable publishes in flight, batched, resent and settled (no I/O).

What the sync and asyncio durable publishers share: the messages not yet
sent, the "pubs" requests in flight (PROTOCOL 9.10) and the messages each
carries, what a reply, a refusal or a lost attempt does to them, the
failures ``flush()`` reports, and the counters. A front-end supplies how a
request is sent (:meth:`ConfirmBook._request`, returning its own kind of
handle) and how a caller waits; this module never blocks and reads no socket.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from ..errors import MeshqError, NoProviders, ProtocolError, RemoteError, Timeout
from ..relaywire import MAX_PUBS
from .lookup import ATTEMPT, STORE_RETRY_FIRST, STORE_RETRY_MAX, retry_later

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ConfirmBook", "DurableMessageOut", "PublishFailed", "Unconfirmed"]

#: Failures kept for ``flush()`` to report (the rest are counted).
MAX_FAILURES_KEPT = 10_000

H = TypeVar("H")  # a front-end's handle on one request in flight


class PublishFailed(MeshqError):
    """Durable publishes failed (timed out or refused) and no ``result()`` raised it yet.

    ``failures``: (message id, the error) for each, oldest first (at most
    10,000); ``count``: how many failed in all.
    """

    def __init__(self, failures: list[tuple[bytes, BaseException]], count: int) -> None:
        shown = ", ".join(msg_id.hex() for msg_id, _ in failures[:5])
        more = f" and {count - 5} more" if count > 5 else ""
        first = f"; first: {failures[0][1]}" if failures else ""
        super().__init__(f"{count} durable publish(es) failed: ids {shown}{more}{first}")
        self.failures = failures
        self.count = count


class DurableMessageOut(NamedTuple):
    """A message ready for a relay: the stream it goes to and its encoded fields."""

    stream: str
    msg_id: bytes
    flags: int
    payload: bytes


@dataclass
class Unconfirmed:
    """One durable message from send until its confirm or failure."""

    topic: str
    stream: str
    msg_id: bytes
    flags: int
    payload: bytes
    timeout: float  # seconds from the first send
    deadline: float = 0.0  # monotonic; set when first sent
    seq: int = 0
    error: BaseException | None = None
    reported: bool = False  # its error was raised by a confirm's result()

    @property
    def size(self) -> int:
        """Bytes this message adds to a request, give or take the framing."""
        return len(self.payload) + len(self.topic) + len(self.msg_id)

    @property
    def settled(self) -> bool:
        return bool(self.seq) or self.error is not None


@dataclass
class Batch(Generic[H]):
    """One "pubs" request in flight and the messages it carries, in order."""

    entries: list[Unconfirmed]
    future: H


class ConfirmBook(Generic[H]):
    """The bookkeeping of a durable publisher; see :class:`meshq.DurablePublisher`.

    Counters: ``confirmed``, ``failed`` (timed out or refused), ``resent``
    (messages sent again after an attempt went unanswered or was refused
    for now), ``requests`` (sent to relays; fewer than messages when they
    travel in batches), and ``in_flight`` (sent, not yet confirmed or failed).
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_in_flight: int,
        max_requests: int,
        max_batch: int,
        max_request_bytes: int,
    ) -> None:
        if timeout <= 0 or max_in_flight < 1 or max_requests < 1 or not 0 < max_batch <= MAX_PUBS:
            raise ValueError(
                f"need timeout > 0 s, max_in_flight and max_requests >= 1, max_batch 1..{MAX_PUBS}"
            )
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_requests = max_requests
        self.max_batch = max_batch
        self.max_request_bytes = max_request_bytes
        self._unsent: collections.deque[Unconfirmed] = collections.deque()
        self._batches: collections.deque[Batch[H]] = collections.deque()
        self._unconfirmed = 0
        # Failures for flush() to report (by id(entry), oldest first), and
        # how many there were since the last flush (some may not be kept).
        self._failures: dict[int, Unconfirmed] = {}
        self._unreported = 0
        self._hold_until = 0.0  # no request before this (monotonic): the store failed
        self._store_pause = STORE_RETRY_FIRST
        self.confirmed = 0
        self.failed = 0
        self.resent = 0
        self.requests = 0

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet confirmed or failed."""
        return self._unconfirmed

    def _request(self, stream: str, request: list[object], timeout: float) -> H:
        """Send ``request`` to the relay owning ``stream``; raise NoProviders if none is known."""
        raise NotImplementedError

    def _settled(self, entries: list[Unconfirmed]) -> None:
        """Called once ``entries`` are confirmed or failed (a front-end wakes its waiters)."""

    def _add(self, topic: str, out: DurableMessageOut) -> Unconfirmed:
        entry = Unconfirmed(topic, *out, self.timeout)
        self._unsent.append(entry)
        self._unconfirmed += 1
        return entry

    def _dispatch(self) -> None:
        """Send what is unsent, as requests of up to max_batch messages of one stream.

        Like Nagle's algorithm: with nothing in flight a message goes at
        once; while requests are out, messages wait for an answer (or for a
        full batch), so that they travel and are committed together.
        """
        now = time.monotonic()
        if now < self._hold_until:  # the relay's store failed: wait out the pause
            while self._unsent and self._unsent[0].deadline and now >= self._unsent[0].deadline:
                first = self._unsent.popleft()
                self._fail([first], Timeout(f"durable publish to {first.topic!r} not confirmed"))
            return
        while (
            self._unsent
            and len(self._batches) < self.max_requests
            and (not self._batches or len(self._unsent) >= self.max_batch)
        ):
            first = self._unsent[0]
            if not first.deadline:
                first.deadline = now + first.timeout
            if now >= first.deadline:
                self._unsent.popleft()
                self._fail([first], Timeout(f"durable publish to {first.topic!r} not confirmed"))
                continue
            entries: list[Unconfirmed] = []
            size = 0
            while (
                self._unsent
                and len(entries) < self.max_batch
                and self._unsent[0].stream == first.stream
                and (not entries or size + self._unsent[0].size <= self.max_request_bytes)
            ):
                entry = self._unsent.popleft()
                if not entry.deadline:  # its timeout runs from now
                    entry.deadline = now + entry.timeout
                entries.append(entry)
                size += entry.size
            attempt = min(ATTEMPT, max(0.001, min(e.deadline for e in entries) - now))
            request: list[object] = [
                "pubs",
                [[e.topic, e.msg_id, e.flags, e.payload] for e in entries],
            ]
            try:
                future = self._request(first.stream, request, attempt)
            except NoProviders:  # the relay is restarting: try again later
                self._unsent.extendleft(reversed(entries))
                return
            self._batches.append(Batch(entries, future))
            self.requests += 1

    def _settle(self, batch: Batch[H], result: Callable[[], object]) -> None:
        """Take ``batch``'s outcome: ``result()`` returns the reply or raises the error."""
        self._batches.remove(batch)
        try:
            seqs = result()
        except RemoteError as exc:
            if retry_later(exc):
                # Nothing of the request was stored (the relay's disk is
                # full, or it is not the stream's owner, or not yet): resend
                # the same ids after a pause, to the owner.
                self.resent += len(batch.entries)
                self._unsent.extendleft(reversed(batch.entries))
                self._hold_until = time.monotonic() + self._store_pause
                self._store_pause = min(2 * self._store_pause, STORE_RETRY_MAX)
                return
            self._fail(batch.entries, exc)
            return
        except (Timeout, NoProviders):
            # The relay is slow, stopped or restarting: resend, same ids.
            self.resent += len(batch.entries)
            self._unsent.extendleft(reversed(batch.entries))
            return
        except MeshqError as exc:  # the node closed, a reply too large to read, ...
            self._fail(batch.entries, exc)
            return
        if not (
            isinstance(seqs, list)
            and len(seqs) == len(batch.entries)
            and all(type(seq) is int and seq > 0 for seq in seqs)
        ):
            error = ProtocolError(f"relay confirmed {len(batch.entries)} messages with {seqs!r}")
            self._fail(batch.entries, error)
            return
        self._store_pause = STORE_RETRY_FIRST
        for entry, seq in zip(batch.entries, seqs, strict=True):
            entry.seq = seq
        self.confirmed += len(seqs)
        self._unconfirmed -= len(seqs)
        self._settled(batch.entries)

    def _fail(self, entries: list[Unconfirmed], error: BaseException) -> None:
        for entry in entries:
            entry.error = error
            self.failed += 1
            self._unconfirmed -= 1
            self._unreported += 1
            if len(self._failures) < MAX_FAILURES_KEPT:
                self._failures[id(entry)] = entry
        self._settled(entries)

    def _fail_everything(self, error: BaseException) -> None:
        """The node closed: every message not settled fails with ``error``."""
        entries = [*self._unsent, *(e for b in self._batches for e in b.entries)]
        self._unsent.clear()
        self._batches.clear()
        self._fail(entries, error)

    def _take_failures(self) -> PublishFailed | None:
        """What ``flush()`` raises: failures no ``result()`` raised, or None (then forgotten)."""
        failures = [(e.msg_id, e.error) for e in self._failures.values() if e.error is not None]
        count, self._unreported = self._unreported, 0
        self._failures.clear()
        return PublishFailed(failures, count) if count else None

    def reported(self, entry: Unconfirmed) -> None:
        """``entry``'s failure was raised to the caller: flush() need not say it again."""
        entry.reported = True
        if self._failures.pop(id(entry), None) is not None or self._unreported > len(
            self._failures
        ):
            self._unreported -= 1

    def outcome(self, entry: Unconfirmed) -> int:
        """A settled-or-not entry's sequence number; raises its error (reported once) or Timeout."""
        if entry.error is not None:
            if not entry.reported:
                self.reported(entry)
            raise entry.error
        if not entry.seq:
            raise Timeout(f"no confirm yet for {entry.topic!r}")
        return entry.seq
