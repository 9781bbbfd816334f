"""A durable consumer's delivery state: what is out, what is due again, what is done.

Pure bookkeeping that reads a :class:`~meshq.relay.store.Store` and never
writes it (the relay saves a consumer's state with its next commit, and
keeps it in memory across a commit that failed), with the clock passed in.
The rule: every sequence number at or below ``ack_floor`` is done
(acknowledged, dead-lettered, or not for this consumer's prefix); above it,
a sequence is done once acknowledged, out while it is ``pending`` (delivered
and waiting for its acknowledgement until its deadline), and due otherwise.
Only the floor and the acknowledged set are stored: after a relay restart
everything that was out is due again, which is why consumers deduplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import Store, StoredMessage

__all__ = ["Consumer", "Delivery"]

_NEVER = float("inf")


@dataclass
class _Out:
    deliveries: int
    deadline: float  # monotonic seconds


@dataclass(frozen=True)
class Delivery:
    """A message handed to a consumer, and how many times it has been (1 = first)."""

    message: StoredMessage
    deliveries: int


@dataclass
class Consumer:
    """One named consumer of one stream (shared by every process using the name).

    ``ack_wait`` (seconds) and ``max_deliver`` are set by the latest fetch.
    """

    stream: str
    name: str
    prefix: str
    ack_floor: int
    acked: set[int] = field(default_factory=set)
    ack_wait: float = 30.0
    max_deliver: int = 5
    #: Every sequence up to here has been looked at (delivered or skipped).
    cursor: int = -1
    pending: dict[int, _Out] = field(default_factory=dict)
    #: Dead letters made and not yet stored: (seq, deliveries).
    dead_due: list[tuple[int, int]] = field(default_factory=list)
    #: No delivery is overdue before this (monotonic s): fetches skip the scan.
    _next_due: float = 0.0

    def __post_init__(self) -> None:
        if self.cursor < 0:
            self.cursor = self.ack_floor

    def fetch(
        self, store: Store, now: float, limit: int, max_bytes: int, upto: int
    ) -> list[Delivery]:
        """Up to ``limit`` deliveries: overdue ones first, then new ones up to seq ``upto``.

        A message out ``max_deliver`` times and still not acknowledged becomes
        a dead letter instead (``dead_due``, for the relay to store), and
        counts as done.
        """
        found: list[Delivery] = []
        size = 0
        overdue = (
            sorted(s for s, out in self.pending.items() if out.deadline <= now)
            if now >= self._next_due
            else []
        )
        for seq in overdue:
            if len(found) >= limit or size >= max_bytes:
                return found
            out = self.pending[seq]
            if out.deliveries >= self.max_deliver:
                del self.pending[seq]
                self.dead_due.append((seq, out.deliveries))
                continue
            message = store.get(self.stream, seq)
            if message is None:  # trimmed by retention, or refused as corrupt
                del self.pending[seq]
                continue
            out.deliveries += 1
            out.deadline = now + self.ack_wait
            found.append(Delivery(message, out.deliveries))
            size += len(message.payload)
        deadline = now + self.ack_wait
        pending, acked = self.pending, self.acked
        while len(found) < limit and size < max_bytes and self.cursor < upto:
            batch = store.read(
                self.stream, self.cursor, limit - len(found), self.prefix, max_bytes - size, upto
            )
            if not batch:
                # Nothing more matches up to ``upto``: all of it has been seen.
                self.cursor = upto
                break
            self.cursor = batch[-1].seq
            for message in batch:
                if acked and message.seq in acked:
                    continue
                pending[message.seq] = _Out(1, deadline)
                found.append(Delivery(message, 1))
                size += len(message.payload)
        self._next_due = min((out.deadline for out in pending.values()), default=_NEVER)
        self._advance_floor()
        return found

    def ack(self, seqs: list[int], upto: int) -> list[int]:
        """Mark ``seqs`` done; return those that were not already.

        Sequences above ``upto`` (the last stored) cannot have been delivered
        and are ignored. Acknowledgements of messages delivered before a
        relay restart count too, so they are not delivered again.
        """
        added = []
        for seq in seqs:
            if seq <= self.ack_floor or seq > upto or seq in self.acked:
                continue
            self.pending.pop(seq, None)
            self.acked.add(seq)
            added.append(seq)
        self._advance_floor()
        return added

    def release(self, seqs: list[int], *, delivered: bool) -> None:
        """Make ``seqs`` due again at once.

        ``delivered``: the application had them and failed (a nak), so the
        delivery counts towards max_deliver; else they were fetched but
        never handed out, and it does not.
        """
        for seq in seqs:
            out = self.pending.get(seq)
            if out is not None:
                if not delivered:
                    out.deliveries -= 1
                out.deadline = 0.0
                self._next_due = 0.0

    def _advance_floor(self) -> None:
        # Below the cursor, whatever is not out is done; so the floor is just
        # under the oldest sequence still out.
        floor = min(self.pending) - 1 if self.pending else self.cursor
        if floor > self.ack_floor:
            self.ack_floor = floor
            self.acked = {seq for seq in self.acked if seq > floor}

    def lag(self, last_seq: int) -> int:
        """Messages up to ``last_seq`` not yet done (some may be for other prefixes)."""
        return max(0, last_seq - self.ack_floor - len(self.acked))
