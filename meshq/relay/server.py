"""The relay: a node's service that stores chosen streams and serves them back.

Everything runs on the node's service thread (meshq/services.py): requests
come in through deferred handlers, and a ticker commits batches, answers
long-polling fetches whose wait is over, applies retention and watches for
a second relay claiming one of our streams. No lock is needed: the SQLite
file and the consumers are used from that thread only (``meshq streams``
asks through the "info" request, like any other client).

A confirm (the reply to a ``pub``) is sent only after the transaction that
stored the message has committed with ``synchronous=FULL``. Fetches read
only committed messages, so a consumer never sees a message that a crash
could take back.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from ..durable import STORE_HEADER, relay_stores
from ..errors import MeshqError, ProtocolError
from ..relaywire import (
    RELAY_SERVICE_PREFIX,
    START_KINDS,
    Record,
    parse_ack,
    parse_fetch,
    parse_nak,
    parse_open,
    parse_publishes,
    parse_read,
    stream_of_service,
)
from ..services import DeferredHandler, ReplyTo
from ..wire import decode_payload
from .consumers import Consumer
from .gateway import Gateway
from .interface import StreamStore
from .store import Store, StoredMessage

if TYPE_CHECKING:
    from ..seams import MeshNode

__all__ = ["MAX_STREAM_NAME_BYTES", "Relay", "StoreInUse", "StreamConfig"]

log = logging.getLogger("meshq.relay")

#: A stream's service name, meshq/relay/<stream>, is at most 255 bytes.
MAX_STREAM_NAME_BYTES = 255 - len(RELAY_SERVICE_PREFIX)
_HOUSEKEEPING = 1.0  # seconds between retention runs and conflict checks
#: Payload bytes per fetch reply (at least one message): well inside the
#: max_msgpack_bytes (4 MiB by default) a consumer decodes a reply with.
_FETCH_BYTES = 1024 * 1024
_MAX_PARKED = 10_000  # fetches waiting for news; more are answered at once, empty


@dataclass(frozen=True)
class StreamConfig:
    """One stream a relay stores: every topic starting with ``name``.

    Args:
        name: the topic prefix, such as ``"orders/"``.
        durability: ``"fsync"`` commits (and fsyncs) each request's messages
            before confirming them; ``"batched"`` commits the requests that
            arrived together as one group (at least every ``batch_interval``
            seconds) and confirms them after the group is on disk.
        max_age: seconds a message is kept (None: no limit).
        max_messages, max_bytes: most messages / payload bytes kept; the
            oldest go first.
        live: also publish each stored message to plain subscribers.

    Raises ValueError for an empty name or unknown durability.
    """

    name: str
    durability: Literal["fsync", "batched"] = "fsync"
    max_age: float | None = None
    max_messages: int | None = None
    max_bytes: int | None = None
    live: bool = True

    def __post_init__(self) -> None:
        if not 0 < len(self.name.encode()) <= MAX_STREAM_NAME_BYTES or "\0" in self.name:
            raise ValueError(
                f"a stream name is a topic prefix of 1..{MAX_STREAM_NAME_BYTES} UTF-8 bytes"
            )
        if self.durability not in ("fsync", "batched"):
            raise ValueError(f"durability is 'fsync' or 'batched', not {self.durability!r}")


@dataclass
class _Parked:
    """A fetch with nothing to deliver, waiting for news until ``deadline``."""

    consumer: Consumer
    limit: int
    deadline: float
    reply: ReplyTo


class Relay:
    """Stores ``streams`` of ``node``'s mesh in ``data_dir/relay.sqlite`` and serves them.

    Args:
        node: the node to serve on (a relay is a peer like any other).
        data_dir: directory for the SQLite file (created if missing).
        streams: stream names (topic prefixes) or :class:`StreamConfig`.
        batch_interval: longest time (s) a batched stream's writes wait for a
            group commit while requests keep arriving.
        dedup_window: seconds a message id is remembered to drop a producer's retry.
        store: serve the streams from this store (meshq.relay.JetStreamStore)
            instead of SQLite in ``data_dir``; see meshq/relay/interface.py.

    Raises ValueError for no streams, duplicate or overlapping names,
    StoreInUse if another relay serves ``data_dir``, sqlite3.Error if the file
    cannot be opened, meshq.BindError if the service port is taken.
    """

    counts: dict[str, int]

    def __init__(
        self,
        node: MeshNode,
        data_dir: str | Path | None = None,
        streams: Sequence[str | StreamConfig] = (),
        *,
        batch_interval: float = 0.002,
        dedup_window: float = 120.0,
        store: StreamStore | None = None,
    ) -> None:
        configs = [s if isinstance(s, StreamConfig) else StreamConfig(s) for s in streams]
        names = [c.name for c in configs]
        if not configs or len(set(names)) != len(names):
            raise ValueError("a relay needs at least one stream, each named once")
        for name in names:
            for other in names:
                if other != name and other.startswith(name):
                    raise ValueError(f"streams {name!r} and {other!r} overlap")
        self.node = node
        self.streams = {c.name: c for c in configs}
        self.batch_interval = batch_interval
        self.dedup_window = dedup_window
        if (data_dir is None) == (store is None):
            raise ValueError("a relay has a data_dir (SQLite) or a store, one of them")
        # Another store (JetStream): this relay is a gateway to it (gateway.py).
        self._gateway = None if store is None else Gateway(node, store, configs, dedup_window)
        if self._gateway is not None:
            self.counts = self._gateway.counts
            return
        assert data_dir is not None
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._lock = _lock_directory(Path(data_dir))
        try:
            self._store = Store(Path(data_dir) / "relay.sqlite")
        except BaseException:
            self._lock.close()
            raise
        #: The highest sequence per stream that is committed (safe to serve).
        self._committed = {name: self._store.last_seq(name) for name in names}
        self._last = dict(self._committed)  # the highest assigned, committed or not
        self._confirms: list[tuple[ReplyTo, object]] = []  # waiting for the commit
        self._fresh: list[tuple[str, Record]] = []  # stored since the last commit, for live
        self._dirty_since: float | None = None
        self._consumers: dict[tuple[str, str], Consumer] = {}
        self._parked: list[_Parked] = []
        self._next_housekeeping = 0.0
        self._conflicts: set[str] = set()
        #: Counters: stored, duplicates, confirmed, delivered, corrupt ...
        self.counts = {}
        self._operations: dict[str, Callable[[str, list[object], ReplyTo], None]] = {
            "pub": self._publish,
            "pubs": self._publish,
            "fetch": self._fetch,
            "open": self._open,
            "ack": self._acknowledge,
            "nak": self._nak,
            "read": self._read,
            "dead": self._read,
            "info": self._describe,
        }
        node.set_header(STORE_HEADER, self._store.store_id)
        for name in names:
            node.serve_deferred(RELAY_SERVICE_PREFIX + name, self._handler(name))
        node.add_ticker(self._tick)
        log.info("relay on %s storing %s in %s", node.name, names, self._store.path)

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
        try:
            operation(stream, data, reply)
        except sqlite3.Error as exc:
            self._abort(exc)
            raise MeshqError(f"relay store failed: {exc}") from None

    def _publish(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        """Store the messages of a pub(s) request; confirm once they are committed."""
        publishes = parse_publishes(data)
        for pub in publishes:
            if not pub.topic.startswith(stream):
                raise ValueError(f"topic {pub.topic!r} is not in stream {stream!r}")
            # What consumers could not decode is refused now, not stored.
            decode_payload(pub.flags, pub.payload, self.node.limits)
        store = self._store
        seqs = []
        for pub in publishes:
            seq = store.seq_of(stream, pub.msg_id)
            if seq is not None:
                self._count("duplicates")
            else:
                seq = self._last[stream] + 1
                time_ns = time.time_ns()
                store.append(stream, seq, pub.topic, pub.msg_id, pub.flags, pub.payload, time_ns)
                self._last[stream] = seq
                self._fresh.append(
                    (stream, Record(seq, pub.topic, pub.msg_id, pub.flags, pub.payload, time_ns, 0))
                )
                self._count("stored")
            seqs.append(seq)
        answer: object = seqs[0] if data[0] == "pub" else seqs
        if not store.dirty:  # duplicates of committed messages: confirm again at once
            reply.send(answer)
            return
        self._confirms.append((reply, answer))
        self._mark_dirty()
        if self.streams[stream].durability == "fsync":
            self._commit()

    def _fetch(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        fetch = parse_fetch(data)
        consumer = self._consumer(
            stream, fetch.consumer, fetch.prefix, fetch.start, fetch.start_arg
        )
        # Deadlines are set per delivery, with the ack_wait of whoever fetched.
        consumer.ack_wait = fetch.ack_wait
        consumer.max_deliver = fetch.max_deliver
        if fetch.acks:
            self._ack(consumer, fetch.acks)
        now = time.monotonic()
        found = self._deliver(consumer, now, fetch.limit)
        if found or fetch.wait <= 0 or len(self._parked) >= _MAX_PARKED:
            reply.send(found)
        else:
            self._parked.append(_Parked(consumer, fetch.limit, now + fetch.wait, reply))

    def _open(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        request = parse_open(data)
        consumer = self._consumer(
            stream, request.consumer, request.prefix, request.start, request.start_arg
        )
        reply.send(consumer.ack_floor)

    def _acknowledge(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        request = parse_ack(data)
        consumer = self._existing_consumer(stream, request.consumer)
        consumer.release(request.released, delivered=False)
        reply.send(self._ack(consumer, request.acks))

    def _nak(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        request = parse_nak(data)
        self._existing_consumer(stream, request.consumer).release(request.seqs, delivered=True)
        self._serve_parked(time.monotonic(), {stream})
        reply.send(None)

    def _read(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        request = parse_read(data)
        if request.consumer:  # "dead": that consumer's dead letters
            letters = self._store.dead_letters(
                stream, request.consumer, request.after, request.limit, _FETCH_BYTES
            )
            reply.send([_record(message, deliveries) for message, deliveries in letters])
            return
        found = self._store.read(
            stream,
            request.after,
            request.limit,
            max_bytes=_FETCH_BYTES,
            upto=self._committed[stream],
        )
        reply.send([_record(m, 0) for m in found])

    def _describe(self, stream: str, data: list[object], reply: ReplyTo) -> None:
        reply.send(self._info(stream))

    def _deliver(self, consumer: Consumer, now: float, limit: int) -> list[list[object]]:
        floor = consumer.ack_floor
        found = consumer.fetch(
            self._store, now, limit, _FETCH_BYTES, upto=self._committed[consumer.stream]
        )
        if consumer.ack_floor != floor:  # dead letters and skipped topics are done too
            self._store.save_acks(consumer.stream, consumer.name, consumer.ack_floor, [])
            self._mark_dirty()
        self._count("delivered", len(found))
        self._count("redelivered", sum(1 for d in found if d.deliveries > 1))
        return [_record(d.message, d.deliveries) for d in found]

    def _ack(self, consumer: Consumer, seqs: list[int]) -> int:
        added = consumer.ack(seqs, upto=self._committed[consumer.stream])
        if added:
            self._store.save_acks(consumer.stream, consumer.name, consumer.ack_floor, added)
            self._mark_dirty()
            self._count("acked", len(added))
        return len(added)

    def _known_consumer(self, stream: str, name: str) -> Consumer | None:
        """Consumer ``name`` from memory or, after a restart, from the store."""
        consumer = self._consumers.get((stream, name))
        if consumer is None:
            row = self._store.consumer(stream, name)
            if row is not None:
                consumer = Consumer(stream, name, row.prefix, row.ack_floor, set(row.acked))
                self._consumers[(stream, name)] = consumer
        return consumer

    def _existing_consumer(self, stream: str, name: str) -> Consumer:
        """Consumer ``name``; raises ValueError (an error reply) if there is none."""
        consumer = self._known_consumer(stream, name)
        if consumer is None:
            raise ValueError(f"no consumer {name!r} of {stream!r}")
        return consumer

    def _consumer(
        self, stream: str, name: str, prefix: str, start: str, start_arg: int
    ) -> Consumer:
        """Consumer ``name``, created at ``start`` if new. Raises ValueError for another prefix."""
        consumer = self._known_consumer(stream, name)
        if consumer is None:
            if not prefix.startswith(stream):
                raise ValueError(f"prefix {prefix!r} is not in stream {stream!r}")
            floor = self._start_floor(stream, start, start_arg)
            self._store.create_consumer(stream, name, prefix, floor)
            self._mark_dirty()
            consumer = Consumer(stream, name, prefix, floor)
            self._consumers[(stream, name)] = consumer
            log.info("new consumer %r of %r from seq %d", name, stream, floor + 1)
        if consumer.prefix != prefix:
            raise ValueError(
                f"consumer {name!r} reads {consumer.prefix!r}, not {prefix!r}: use another name"
            )
        return consumer

    def _start_floor(self, stream: str, start: str, start_arg: int) -> int:
        if start not in START_KINDS:
            raise ProtocolError(f"unknown start position {start!r}")
        if start == "new":
            return self._committed[stream]
        if start == "seq":
            return max(0, start_arg - 1)
        if start == "time":
            return self._store.first_seq_at(stream, start_arg) - 1
        return 0

    # ------------------------------------------------------------------
    # Commits and the ticker (service thread)

    def _mark_dirty(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()

    def _commit(self) -> None:
        """Commit, then confirm, then serve the new messages (live and parked fetches)."""
        try:
            self._store.commit()
        except sqlite3.Error as exc:
            self._abort(exc)
            return
        self._dirty_since = None
        for stream, seq in self._last.items():
            self._committed[stream] = seq
        confirms, self._confirms = self._confirms, []
        for reply, answer in confirms:
            reply.send(answer)
        self._count("confirmed", sum(len(a) if isinstance(a, list) else 1 for _, a in confirms))
        fresh, self._fresh = self._fresh, []
        if not fresh:
            return
        for stream, record in fresh:
            if self.streams[stream].live:
                self._publish_live(record)
        streams = {stream for stream, _ in fresh}
        self._serve_parked(time.monotonic(), streams)

    def _abort(self, error: sqlite3.Error) -> None:
        """The store failed (disk full, I/O error): undo the open transaction, refuse its confirms.

        Producers resend what was refused (same ids). Acknowledgements in the
        transaction are lost too: those messages are delivered again.
        """
        log.error(
            "RELAY STORE FAILED in %s: %s; unconfirmed writes undone", self._store.path, error
        )
        self._count("store_errors")
        try:
            self._store.rollback()
        except sqlite3.Error:
            log.exception("rollback failed")
        self._last = dict(self._committed)
        self._fresh = []
        self._dirty_since = None
        confirms, self._confirms = self._confirms, []
        for reply, _ in confirms:
            reply.fail(MeshqError(f"relay store failed: {error}"))
        # Consumers' unsaved acknowledgements went with the transaction: start
        # them afresh from what the store holds.
        self._consumers.clear()
        for parked in self._parked:
            parked.reply.send([])
        self._parked = []

    def _publish_live(self, record: Record) -> None:
        try:
            data = decode_payload(record.flags, record.payload, self.node.limits)
            self.node.publish(record.topic, data)
        except (MeshqError, ValueError, TypeError) as exc:
            self._count("live_failed")
            log.debug("live copy of %s seq %d not sent: %s", record.topic, record.seq, exc)

    def _serve_parked(self, now: float, streams: set[str] | None) -> None:
        still: list[_Parked] = []
        for parked in self._parked:
            if streams is None or parked.consumer.stream in streams:
                found = self._deliver(parked.consumer, now, parked.limit)
                if found or now >= parked.deadline:
                    parked.reply.send(found)
                    continue
            elif now >= parked.deadline:
                parked.reply.send([])
                continue
            still.append(parked)
        self._parked = still

    def _tick(self, now: float, idle: bool) -> float | None:
        wait = _HOUSEKEEPING
        if self._dirty_since is not None:
            # Group commit: everything that arrived together is committed
            # together as soon as no request is waiting, and at least every
            # batch_interval under a steady stream of requests.
            due = self._dirty_since + self.batch_interval
            if idle or now >= due:
                self._commit()
            else:
                wait = due - now
        if self._parked:
            # Redeliveries come due and waits end: look again at every parked fetch.
            self._serve_parked(now, None)
            soonest = min(p.deadline for p in self._parked) if self._parked else now + wait
            wait = min(wait, max(0.0, soonest - now), 0.1)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING
            try:
                self._housekeeping()
            except sqlite3.Error as exc:
                self._abort(exc)
        return wait

    def _housekeeping(self) -> None:
        for config in self.streams.values():
            deleted = self._store.trim(
                config.name,
                max_age=config.max_age,
                max_messages=config.max_messages,
                max_bytes=config.max_bytes,
                dedup_window=self.dedup_window,
            )
            self._count("trimmed", deleted)
        self._mark_dirty()
        services = self.node.services()
        advertised = [stream_of_service(service) or "" for service in services]
        for name in self.streams:
            providers = services.get(RELAY_SERVICE_PREFIX + name, [])
            problem = ""
            if len(providers) > 1 and len(relay_stores(self.node, providers)) > 1:
                problem = (
                    f"claimed by {len(providers)} relays ({', '.join(p[:8] for p in providers)})"
                )
            overlapping = [
                other
                for other in advertised
                if other and other != name and (other.startswith(name) or name.startswith(other))
            ]
            if overlapping:
                problem = f"overlaps stream {overlapping[0]!r} of another relay"
            if problem and name not in self._conflicts:
                self._conflicts.add(name)
                log.error(
                    "CONFIGURATION ERROR: stream %r is %s; durable publishes to it fail until "
                    "that is fixed",
                    name,
                    problem,
                )
            elif not problem:
                self._conflicts.discard(name)

    # ------------------------------------------------------------------
    # Observability

    def _info(self, stream: str) -> dict[str, object]:
        """Per-stream facts: messages, bytes, first and last seq, consumers and their lag."""
        stats = self._store.stats(stream)
        consumers: dict[str, object] = {}
        for name, floor in self._store.consumers(stream):
            live = self._consumers.get((stream, name))
            acked = len(live.acked) if live else 0
            floor = live.ack_floor if live else floor
            consumers[name] = {
                "ack_floor": floor,
                "lag": max(0, stats.last_seq - floor - acked),
                "out": len(live.pending) if live else 0,
            }
        return {
            "stream": stream,
            "messages": stats.messages,
            "bytes": stats.bytes,
            "first_seq": stats.first_seq,
            "last_seq": stats.last_seq,
            "consumers": consumers,
            "dead_letters": self._store.dead_letter_count(stream),
            "corrupt": self._store.corrupt,
            "durability": self.streams[stream].durability,
        }

    def _count(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    def close(self) -> None:
        """Close the node (a relay's node stops with it), then the file or store."""
        if self._gateway is not None:
            self._gateway.close()
            return
        self.node.close()
        self._store.close()
        self._lock.close()


class StoreInUse(MeshqError):
    """Another relay (process) already serves the store in ``directory``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory} is in use by another relay")
        self.directory = directory


def _lock_directory(directory: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``directory`` while this relay runs; raises StoreInUse."""
    handle = open(directory / "relay.lock", "ab")  # noqa: SIM115  # held until close()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreInUse(directory) from None
    return handle


def _record(m: StoredMessage, deliveries: int) -> list[object]:
    return [*m, deliveries]  # seq, topic, msg_id, flags, payload, time_ns, deliveries
