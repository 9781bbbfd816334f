"""What a relay needs from the store behind its streams, written down from server.py.

The relay protocol (meshq/relaywire.py, docs/PROTOCOL.md 9.10) has nine
operations; a store answers each of them for one stream. The relay parses
and checks every request (the topic is in the stream, the payload is one
consumers can decode) before a store sees it, and sends whatever the store
answers. A store may answer later and from another thread: ``Reply`` hands
the answer back to the node's service thread.

===========  ======================================  =============================
operation    what the store does                      answer
===========  ======================================  =============================
publish      append with dedup by message id          :class:`Published` once the
             (a repeated id gets its first seq back)  messages are confirmed
open         create a durable consumer at a start     its ack floor
             (first, a seq, a time, new only)
fetch        acks first, then up to ``limit``         records (seq, topic, id, flags,
             deliveries (due redeliveries first),     payload, time_ns, deliveries);
             waiting up to ``wait`` s for news;       a message out ``max_deliver``
             each is out for ``ack_wait`` s           times is a dead letter instead
ack          mark seqs done; ``released`` ones due    how many were newly done
             again without counting a delivery
nak          seqs due again now, delivery counted     None
read         stored records after a seq, or one       records
             consumer's dead letters
info         messages, bytes, first/last seq,         a dict (``meshq streams``)
             consumers with ack floor, lag, out
===========  ======================================  =============================

Retention (age, count, bytes) and the dedup window are the store's to apply.

Two stores exist:

- SQLite (meshq/relay/store.py, driven by :class:`meshq.relay.server.Relay`
  itself): one relay process owns the file; its operations are the relay's
  own methods, table ``Relay._operations``. A confirm means the message is
  in the file and fsynced (``synchronous=FULL``).
- NATS JetStream (meshq/relay/jetstream.py): :class:`JetStreamStore`; any
  number of relays are stateless gateways to one cluster. A confirm means
  JetStream acknowledged the message: stored on a majority of the stream's
  replicas, fsynced only if the servers run with ``sync_interval: always``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..relaywire import Ack, Fetch, Nak, Open, Publish, Read, Record

__all__ = ["Published", "Reply", "StreamSettings", "StreamStore"]


class StreamSettings(Protocol):
    """What a store needs of a stream's configuration (meshq.StreamConfig has it)."""

    @property
    def name(self) -> str: ...

    @property
    def max_age(self) -> float | None: ...

    @property
    def max_messages(self) -> int | None: ...

    @property
    def max_bytes(self) -> int | None: ...

    @property
    def live(self) -> bool: ...


class Reply(Protocol):
    """Where a store sends one answer: exactly one of these, once, from any thread."""

    def send(self, answer: object) -> None:
        """Answer with ``answer`` (anything msgpack encodes)."""

    def fail(self, error: BaseException) -> None:
        """Answer with an error; the caller raises it as meshq.RemoteError."""


@dataclass(frozen=True)
class Published:
    """A publish's answer: a seq per message, and the records that are new.

    ``stored`` (not the duplicates) go to plain subscribers as live copies
    when the stream is ``live``.
    """

    seqs: list[int]
    stored: list[Record] = field(default_factory=list)


class StreamStore(Protocol):
    """A store a relay serves streams from (see the module docstring for each operation).

    ``store_id`` is announced by the relay (the ``meshq.relay-store`` header):
    relays with the same id serve the same data, so clients spread their
    requests over them (a JetStream store's id names its cluster, so any
    number of gateways share it; a SQLite file's id is its own).
    """

    store_id: str

    def attach(self, streams: Sequence[StreamSettings], dedup_window: float, mesh: str) -> None:
        """Make the streams exist with their retention; blocks. Raises MeshqError."""

    def publish(self, stream: str, publishes: list[Publish], reply: Reply) -> None: ...

    def open_consumer(self, stream: str, request: Open, reply: Reply) -> None: ...

    def fetch(self, stream: str, request: Fetch, reply: Reply) -> None: ...

    def ack(self, stream: str, request: Ack, reply: Reply) -> None: ...

    def nak(self, stream: str, request: Nak, reply: Reply) -> None: ...

    def read(self, stream: str, request: Read, reply: Reply) -> None: ...

    def info(self, stream: str, reply: Reply) -> None: ...

    def close(self) -> None:
        """Stop: answers still owed are failed or dropped; blocks until done."""
