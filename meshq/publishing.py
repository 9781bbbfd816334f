"""The sending half of publish/subscribe: one PUB socket per node.

Publishing is the hot path, so this module trades a little elegance for
speed where it was measured to matter (bench/pubsub.py): the per-topic frame
header is one ``struct`` call on a prebuilt prefix, and sends go straight to
pyzmq's compiled ``send``, skipping the Python wrapper. A lock makes
``publish`` safe from any thread; ZeroMQ sockets themselves are not.

What happens at a subscriber's high-water mark is chosen per topic. By
default (``publish``) the full subscriber misses the message, as with a
ZeroMQ PUB, and sees the gap in sequence numbers. ``publish_blocking`` waits
for room instead. ``ZMQ_XPUB_NODROP`` is a socket-wide option, and a pipe
that a lossy send found full stops being checked until it drains, so the
two behaviours cannot share one socket: blocking topics go through a second
XPUB with NODROP set, bound on first use and announced in HELLO
(``publish_block``). A topic is published by one of the two sockets only,
so its sequence numbers stay one ordered stream and gap detection holds.
"""

from __future__ import annotations

import collections
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NoReturn

import zmq

from .errors import BindError, Closed, Timeout
from .sockets import SocketFactory
from .subscription import News
from .wire import (
    ENTRY_HEADER_BYTES,
    FLAG_BATCH,
    FLAG_MSGPACK,
    FLAG_TAIL,
    MAX_BATCH,
    Limits,
    check_payload_size,
    data_header_packer,
    encode_batch,
    encode_msgpack,
    encode_payload,
    topic_prefix,
)
from .zmqerrors import translate

__all__ = ["BlockingWait", "PublishSocket", "bind_all", "encode_blocking", "raw_send"]

log = logging.getLogger("meshq.publishing")

# pyzmq's compiled send; the sugar method in front of it adds ~0.2 us per call.
raw_send: Callable[..., object] = getattr(zmq.backend, "Socket", zmq.Socket).send


# Coalescing (see PublishSocket.publish). A message published less than
# _BUSY_NS after the previous frame went out is held for company, at most
# _HOLD_NS, then sent with the others as one batch frame (FLAG_BATCH, as
# publish_many sends); a message published when the socket was idle goes
# at once. Each frame is a Python-to-C round trip on both sides, so a
# burst costs a fraction per message; at 1,000 msg/s nothing is ever held.
_BUSY_NS = 50_000
_HOLD_NS = 100_000
# A flusher that wakes to find the batch it waited for already sent (the
# publisher filled it, or ended it at a leg's end past its deadline) is in
# a sustained burst, where the publisher keeps the deadlines itself: it
# then sleeps this much longer than the next deadline. Each of its wakes
# takes the GIL from the publishing thread and gives it back, which cost
# the publisher 20-30 % of its rate when it woke once per batch; the last
# batch of such a burst may wait this much longer for it.
_SUSTAINED_NS = 3 * _HOLD_NS
_COALESCE_MAX_BYTES = 4096  # a larger payload never starts a batch
# Small enough for any receiver: MeshConfig refuses a max_message_bytes
# below it, so a coalesced frame never cuts off a subscriber that set a
# smaller limit than its publisher (PROTOCOL.md 8.4).
_HOLD_MAX_BYTES = 8 * 1024
# What each held payload takes from a batch's room besides its bytes: its
# entry header, plus enough that 64 KiB never hold more than MAX_BATCH
# entries (the decoder's bound), which spares a count per message.
_ENTRY_COST = _HOLD_MAX_BYTES // MAX_BATCH + 1
# A message joins the held batch without a clock read while the batch's
# current leg of this many bytes (payloads plus _ENTRY_COST each) has room;
# the deadline is checked as each leg ends. A clock read costs about as much
# as the rest of a join, and a publisher that keeps the GIL (and so the
# flusher) past the deadline gets at most one leg more into the batch.
_LEG_BYTES = 1024

#: Seconds a blocking publish waits for news of room before it tries again
#: anyway: the bound on a wake-up lost to a race inside libzmq (see BlockingWait).
ROOM_RECHECK = 0.5


#: Tail markers (see PublishSocket.announce_tails): one every this many
#: seconds while a topic is published, then after 1, 2, 4, ... quiet
#: rounds, the last one about _TAIL_ROUNDS rounds after the topic fell quiet.
TAIL_INTERVAL = 0.5
_TAIL_ROUNDS = 128


class _Topic:
    __slots__ = (
        "blocking",
        "budget",
        "dropping_budget",
        "hold_budget",
        "pack",
        "prefix",
        "quiet",
        "seq",
        "told",
    )

    def __init__(self, prefix: bytes, max_frame_bytes: int, blocking: bool = False) -> None:
        self.prefix = prefix
        self.pack = data_header_packer(prefix)
        self.seq = 0
        #: The sequence number as of the last tail round, and how many
        #: rounds it has stayed there (tail markers slow down, then stop).
        self.told = 0
        self.quiet = 0
        #: Published through the NODROP socket (publish_blocking) only.
        self.blocking = blocking
        #: Largest payload whose frame a subscriber's socket still accepts.
        self.budget = max_frame_bytes - len(self.pack(prefix, 0, 0, 0))
        #: The budget for ``publish``: -1 refuses every payload of a blocking topic.
        self.dropping_budget = -1 if blocking else self.budget
        #: Room of one coalesced frame (payloads plus _ENTRY_COST each).
        self.hold_budget = min(self.budget, _HOLD_MAX_BYTES)


class PublishSocket:
    """A bound PUB socket plus per-topic sequence numbers.

    ``endpoints`` are where peers connect (one per interface);
    ``local_endpoint`` is an inproc address for the node's own subscriptions.
    Raises meshq.BindError if the port cannot be bound.
    """

    def __init__(
        self,
        context: zmq.Context,  # type: ignore[type-arg]
        factory: SocketFactory,
        *,
        node_id: bytes,
        interfaces: Sequence[str],
        port: int,
        limits: Limits,
        max_topics: int,
        coalesce: bool = True,
    ) -> None:
        self._node_id = node_id
        self._max_topics = max_topics
        self._limits = limits
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        #: ``publish(..., durable=True)`` goes here: (topic, data, timeout)
        #: -> the stream sequence number. The node sets it.
        self.durable_publish: Callable[[str, object, float], int] = _no_durable_publishing
        self._closed = False
        # Coalescing, under the lock: the held payloads of one topic and
        # encoding (_held_entry is None when nothing is held), the first
        # one's sequence number and time, the room left, and when the last
        # frame went out (time_ns).
        self._coalesce = coalesce
        #: Wall clock in ns for headers and the coalescing decisions (tests inject one).
        self.clock: Callable[[], int] = time.time_ns
        self._held: list[bytes] = []
        self._held_entry: _Topic | None = None
        self._held_topic: str | None = None  # the held entry's topic (None: nothing held)
        self._held_raw: str | None = None  # the same if its payloads are raw bytes, else None
        self._held_until = 0  # the held batch's deadline (time_ns)
        self._held_flags = 0
        self._held_seq = 0
        self._held_time = 0
        # Payload bytes the held batch still takes (see _ENTRY_COST): _room
        # before the next look at the clock, _reserve after it (_LEG_BYTES).
        self._room = 0
        self._reserve = 0
        self._last_send = 0
        # The held frame's flusher: waits for the held batch's deadline, or
        # with no timeout while nothing is held (an idle node pays nothing).
        # It waits on a bare lock used as a one-shot signal, released only
        # to wake an idle flusher (a Condition's wait and notify are Python
        # code, paid under the GIL once per batch of a burst).
        self._flush_wake = threading.Lock()
        self._flush_wake.acquire()  # locked: no wake-up pending
        self._flusher: threading.Thread | None = None
        # It waits with no deadline (nothing was held). While True, _flush_wake is locked.
        self._flusher_idle = False
        # XPUB rather than PUB: it tells us which prefixes connected
        # subscribers want, which answers the "slow joiner" without sleeps
        # (wait_for_subscribers). Verbose in both directions, so every
        # subscription and every departure is counted, not just the first.
        self._sock = factory.make(context, zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._subscribers: collections.Counter[bytes] = collections.Counter()
        #: Called (with the lock held) when subscriber counts changed; must not block.
        self.on_subscribers_changed: Callable[[], None] = _nothing
        try:
            bound_port = bind_all(self._sock, interfaces, port)
        except BaseException:
            self._sock.close(linger=0)
            raise
        self.endpoints = tuple(f"tcp://{ip}:{bound_port}" for ip in interfaces)
        self.local_endpoint = f"inproc://meshq-pub-{node_id.hex()}"
        self._sock.bind(self.local_endpoint)
        #: Wake-ups for the node's subscriptions (see News); its commands
        #: run with this socket's (process_commands, wake_fds).
        try:
            self.news = News(context)
        except BaseException:
            self._sock.close(linger=0)
            raise
        self._context = context
        self._factory = factory
        self._interfaces = tuple(interfaces)
        # The NODROP socket for blocking topics, bound on first use; every
        # use of it goes through this wrapper (see _NodropSocket).
        self._block_sock: _NodropSocket | None = None
        #: Where the NODROP socket listens (empty until opened), and its inproc twin.
        self.block_endpoints: tuple[str, ...] = ()
        self.block_local_endpoint = f"inproc://meshq-pub-block-{node_id.hex()}"
        # Blocking publishes waiting for room (see BlockingWait), under the
        # lock: the waits registered, a counter bumped whenever news of room
        # may have come, and the Condition the sync waits block on.
        self._block_waits: set[BlockingWait] = set()
        self._room_version = 0
        self._room_heard = threading.Condition(self._lock)

    def check_topic(self, topic: str) -> None:
        """Raise ValueError unless ``topic`` can be published."""
        topic_prefix(topic, self._node_id, self._limits)

    def publish(
        self, topic: str, data: object, *, durable: bool = False, timeout: float = 5.0
    ) -> int | None:
        """Send one message; see :meth:`meshq.Node.publish`, which is this very method.

        ``Node`` binds its ``publish`` to this one (a Python call layer less
        on the hot path), so ``durable=True`` is handed on from here to
        ``durable_publish``, which the node sets.

        A message published while the socket is idle goes out at once. One
        published within 50 us of the previous frame joins the held batch
        of its topic, which goes out as one frame when it is full, when
        another topic or encoding comes, or 100 us after its first message
        (a flusher thread sees to that; a publisher that keeps the flusher
        from the GIL ends the batch itself within 1 KiB of further
        messages). The last batch of a burst that filled more than one
        batch may wait up to 400 us (see _SUSTAINED_NS). Order and
        sequence numbers are those of the calls.
        """
        if type(data) is bytes and not durable:
            # The burst's common case first, in as few steps as can be: raw
            # bytes joining the batch of their topic held now. No closed or
            # size check is needed here: close() empties the batch, and
            # the batch's room is within the topic's budget (a blocking
            # topic is never held). The room is handed out in legs of
            # _LEG_BYTES, and the clock is read only when a leg is used up
            # (_publish_locked), so a batch still ends at its deadline when
            # the flusher is kept from the GIL by this very thread. An
            # explicit acquire/release costs less than ``with``.
            size = len(data)
            lock = self._lock
            lock.acquire()
            try:
                if topic == self._held_raw and size < self._room:
                    self._held.append(data)
                    self._room -= size + _ENTRY_COST
                    return None
                entry = self._topics.get(topic)
                if (
                    entry is not None
                    and self._held_entry is None
                    and size <= entry.dropping_budget
                    and not self._closed
                ):
                    # Nothing held, a known topic: the idle publisher's case
                    # (and a burst's first message), _publish_locked inline.
                    # A call layer less matters when the caches are cold.
                    seq = entry.seq = entry.seq + 1
                    now = self.clock()
                    busy = now - self._last_send < _BUSY_NS
                    if busy and size <= _COALESCE_MAX_BYTES and self._coalesce:
                        self._hold(topic, entry, 0, seq, now, data)
                        return None
                    self._last_send = now
                    try:
                        raw_send(self._sock, entry.pack(entry.prefix, 0, seq, now) + data)
                    except zmq.ZMQError as exc:
                        raise translate(exc, "publish") from exc
                    return None
                self._publish_locked(topic, 0, data, size)
            finally:
                lock.release()
            return None
        if durable:
            return self.durable_publish(topic, data, timeout)
        flags, payload = encode_payload(data)
        check_payload_size(flags, payload, self._limits, "message")
        with self._lock:
            self._publish_locked(topic, flags, payload, len(payload))
        return None

    def _publish_locked(self, topic: str, flags: int, data: bytes, size: int) -> None:
        """:meth:`publish` past its first check (lock held): join, hold or send ``data``."""
        if topic == self._held_topic and flags == self._held_flags:
            if size < self._room:
                self._held.append(data)
                self._room -= size + _ENTRY_COST
                return
            # The leg is used up: the next one, if the batch has room and
            # is not past its deadline; otherwise the batch goes first.
            left = self._room + self._reserve - size - _ENTRY_COST
            if left > -_ENTRY_COST and self.clock() < self._held_until:
                self._held.append(data)
                self._room = leg = min(left, _LEG_BYTES)
                self._reserve = left - leg
                return
        if self._closed:
            raise Closed("node is closed")
        entry = self._topics.get(topic)
        if entry is None:
            entry = self._open_topic(topic)
        # One comparison for both refusals: a blocking topic's budget
        # here is -1 (see _Topic.dropping_budget).
        if size > entry.dropping_budget:
            self._refuse(topic, entry, data)
        if self._held_entry is not None:  # a batch it could not join goes first
            self._flush_held()
        seq = entry.seq = entry.seq + 1
        now = self.clock()
        if now - self._last_send < _BUSY_NS and size <= _COALESCE_MAX_BYTES and self._coalesce:
            self._hold(topic, entry, flags, seq, now, data)
            return
        self._last_send = now
        try:
            raw_send(self._sock, entry.pack(entry.prefix, flags, seq, now) + data)
        except zmq.ZMQError as exc:
            raise translate(exc, "publish") from exc

    def _hold(self, topic: str, entry: _Topic, flags: int, seq: int, now: int, data: bytes) -> None:
        """Start a held batch with ``data`` (lock held); wake the flusher for its deadline."""
        self._held.append(data)
        self._held_entry = entry
        self._held_topic = topic
        self._held_flags = flags
        self._held_seq = seq
        self._held_time = now
        self._held_until = now + _HOLD_NS
        if not flags:
            self._held_raw = topic
        left = entry.hold_budget - len(data) - _ENTRY_COST
        self._room = leg = min(left, _LEG_BYTES)
        self._reserve = left - leg
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_main, name=f"meshq-flush-{self._node_id.hex()[:8]}", daemon=True
            )
            self._flusher.start()
        if self._flusher_idle:
            # Only a flusher waiting with no deadline needs the news: one in
            # a timed wait wakes at an older batch's deadline, which comes
            # first, and looks again. Waking it per batch would make it
            # fight the publishing thread for the GIL.
            self._wake_flusher()

    def _wake_flusher(self) -> None:
        """End an idle flusher's wait (lock held)."""
        if self._flusher_idle:
            self._flusher_idle = False
            self._flush_wake.release()

    def _flush_held(self) -> None:
        """Send the held batch as one frame (lock held); one message goes as a plain frame."""
        held = self._held
        entry = self._held_entry
        assert entry is not None  # held implies an entry
        # The topic's sequence number moves once per batch, not per message
        # joined: whatever reads it flushes the held batch first.
        entry.seq = self._held_seq + len(held) - 1
        if len(held) == 1:
            frame = entry.pack(entry.prefix, self._held_flags, self._held_seq, self._held_time)
            frame += held[0]
        else:
            header = entry.pack(
                entry.prefix, self._held_flags | FLAG_BATCH, self._held_seq, self._held_time
            )
            frame = header + encode_batch(held)
        held.clear()
        self._held_entry = None
        self._held_topic = None
        self._held_raw = None
        self._last_send = self.clock()
        try:
            raw_send(self._sock, frame)
        except zmq.ZMQError as exc:
            raise Closed("node is closed") from exc

    def _flush_main(self) -> None:
        """The flusher thread: send a held batch once it is _HOLD_NS old; end on close."""
        lock = self._lock
        wait = self._flush_wake.acquire
        waited_for: tuple[_Topic, int] | None = None  # the batch whose deadline it waits for
        while True:
            with lock:
                if self._closed:
                    return
                if self._held_entry is None:
                    self._flusher_idle = True
                    waited_for = None
                    pause = -1.0  # until _wake_flusher
                else:
                    late = self.clock() - self._held_time - _HOLD_NS
                    batch = (self._held_entry, self._held_seq)
                    # Another batch than the one waited for: the publisher
                    # is keeping the deadlines itself (_SUSTAINED_NS).
                    sustained = waited_for is not None and batch != waited_for
                    waited_for = batch
                    # (A clock set back: still look soon.)
                    pause = (min(-late, _HOLD_NS) + _SUSTAINED_NS * sustained) / 1e9
                    if late >= 0:
                        waited_for = None
                        try:
                            self._flush_held()
                        except Closed:
                            return
                        except Exception:  # the flusher must outlive a bad frame
                            log.exception("sending a held batch failed")
                        continue
            wait(True, pause)

    def flush(self) -> None:
        """Send what is held now (publish_many, close and the flusher do it by themselves)."""
        with self._lock:
            if self._held_entry is not None and not self._closed:
                self._flush_held()

    def _refuse(self, topic: str, entry: _Topic, data: bytes) -> NoReturn:
        if entry.blocking:
            raise ValueError(f"topic {topic!r} is published blocking: use publish_blocking")
        raise ValueError(f"payload of {len(data)} bytes exceeds {entry.budget}")

    def publish_many(self, topic: str, items: Iterable[object]) -> int:
        """Send many messages on one topic in as few frames as possible; return the count.

        Subscribers receive them one by one, with consecutive sequence
        numbers; each batch frame carries up to MAX_BATCH messages and stays
        within ``max_message_bytes``. Raises ValueError, before sending
        anything, if one item alone is too large.
        """
        batch: list[bytes] = []
        encoding = 0
        for item in items:
            if type(item) is bytes:
                batch.append(item)
            else:
                encoding = FLAG_MSGPACK
                batch.append(item)  # type: ignore[arg-type]  # encoded below
        if encoding:  # one encoding per frame: bytes items become msgpack bin
            batch = [encode_msgpack(item) for item in batch]
            for item in batch:
                check_payload_size(encoding, item, self._limits, "message")
        with self._lock:
            entry = self._topics.get(topic)
            if entry is None:
                entry = self._open_topic(topic)
            if entry.blocking:
                raise ValueError(f"topic {topic!r} is published blocking: use publish_blocking")
            limit = entry.budget - ENTRY_HEADER_BYTES
            largest = max(map(len, batch), default=0)
            if largest > limit:
                raise ValueError(f"an item of {largest} bytes exceeds {limit}")
            if self._held_entry is not None:  # what was published before goes first
                self._flush_held()
            now = time.time_ns()
            for chunk in _chunks(batch, entry.budget):
                header = entry.pack(entry.prefix, encoding | FLAG_BATCH, entry.seq + 1, now)
                entry.seq += len(chunk)
                try:
                    raw_send(self._sock, header + encode_batch(chunk))
                except zmq.ZMQError as exc:
                    raise translate(exc, "publish") from exc
            self._last_send = now
        return len(batch)

    def declare_blocking(self, topic: str) -> bool:
        """Make ``topic`` a blocking topic, binding the NODROP socket if needed.

        Returns True if the socket was just bound (the node must announce
        it). Raises ValueError if ``topic`` is already published with
        ``publish``, meshq.BindError if no port can be bound, meshq.Closed.
        """
        topic_prefix(topic, self._node_id, self._limits)  # ValueError before binding
        with self._lock:
            entry = self._topics.get(topic)
            if entry is not None and not entry.blocking:  # before binding: nothing to undo
                raise ValueError(f"topic {topic!r} is published dropping: use publish")
            opened = False
            if self._block_sock is None:
                self._block_sock = self._open_block_socket()
                opened = True
            if entry is None:
                self._open_topic(topic, blocking=True)
            return opened

    def _open_block_socket(self) -> _NodropSocket:
        if self._closed:
            raise Closed("node is closed")
        sock: zmq.Socket = self._factory.make(self._context, zmq.XPUB)  # type: ignore[type-arg]
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        # A full subscriber makes a send fail with EAGAIN (nothing is sent
        # to anyone) instead of being skipped.
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            port = bind_all(sock, self._interfaces, 0)
            sock.bind(self.block_local_endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        self.block_endpoints = tuple(f"tcp://{ip}:{port}" for ip in self._interfaces)
        return _NodropSocket(sock, self._block_waits, self._room_news)

    def publish_blocking(self, topic: str, data: object, timeout: float | None) -> None:
        """Send one message, waiting while a subscriber of ``topic`` is full.

        The message goes to every subscriber or to none: after ``timeout``
        seconds (None: no limit) without room it is not sent, consumes no
        sequence number, and meshq.Timeout is raised. The wait blocks until
        news of room comes (see BlockingWait), with the lock released, so
        other topics keep flowing meanwhile. Call :meth:`declare_blocking`
        first. Raises ValueError for a topic published with ``publish``,
        meshq.Closed if the node closes meanwhile.
        """
        flags, payload = encode_blocking(data)
        wait = BlockingWait(topic, timeout)
        try:
            while not self.try_publish_blocking(topic, flags, payload, wait):
                self._await_room(wait)
        finally:
            wait.end()

    def try_publish_blocking(
        self, topic: str, flags: int, payload: bytes, wait: BlockingWait | None = None
    ) -> bool:
        """One try of :meth:`publish_blocking`: False if a subscriber is full (nothing sent).

        With ``wait``, a failed try registers it, so that it hears of room
        from the moment of this try on (its ``wake``, and ``version``), and
        the first one starts its deadline; a successful one ends it. The
        sync and asyncio shells wait between tries on that (see BlockingWait).
        """
        with self._lock:
            sock = self._block_sock
            if self._closed or sock is None:
                raise Closed("node is closed")
            entry = self._topics.get(topic)
            if entry is None:  # forgotten past max_topics: it was declared before
                entry = self._open_topic(topic, blocking=True)
            if not entry.blocking:
                raise ValueError(f"topic {topic!r} is published dropping: use publish")
            if len(payload) > entry.budget:
                raise ValueError(f"payload of {len(payload)} bytes exceeds {entry.budget}")
            check_payload_size(flags, payload, self._limits, "message")
            frame = entry.pack(entry.prefix, flags, entry.seq + 1, time.time_ns()) + payload
            try:
                sock.send(frame)
            except zmq.Again:
                if wait is not None:
                    if wait.socket is None:
                        wait.begin(self)
                        self._block_waits.add(wait)
                    wait.version = self._room_version
                return False  # the sequence number stays unused: no gap
            except zmq.ZMQError as exc:
                raise translate(exc, "publish") from exc
            entry.seq += 1
            if wait is not None:
                self._block_waits.discard(wait)
                wait.socket = None
            return True

    def _await_room(self, wait: BlockingWait) -> None:
        """Block until news of room may have come since ``wait``'s last try, or
        for ROOM_RECHECK s. Raises meshq.Timeout past its deadline."""
        with self._lock:
            left = wait.remaining()
            if self._room_version == wait.version and not self._closed:
                self._room_heard.wait(left)

    def end_wait(self, wait: BlockingWait) -> None:
        """Forget ``wait`` (its publish is over); see :meth:`BlockingWait.end`."""
        with self._lock:
            self._block_waits.discard(wait)
            wait.socket = None

    def _room_news(self, subscribers_changed: bool) -> None:
        """(lock held) The NODROP socket ran pending commands while publishes
        wait (see _NodropSocket): room may have come."""
        if subscribers_changed:
            self.on_subscribers_changed()
        self._room_changed()

    def _room_changed(self) -> None:
        """(lock held) News of room, or the close: every waiting publish tries again."""
        self._room_version += 1
        self._room_heard.notify_all()
        for wait in self._block_waits:
            if wait.wake is not None:
                wait.wake(self._room_version)

    @property
    def has_topics(self) -> bool:
        """Whether a topic was ever published or declared here: without one,
        announce_tails() has nothing to do (no lock taken to ask)."""
        return bool(self._topics)

    def announce_tails(self) -> bool:
        """Send each recently published topic's last sequence number (a tail marker).

        Subscribers detect loss by jumps in sequence numbers, so a burst
        whose end was dropped (a stalled subscriber, a remade link) would go
        unnoticed until the topic's next message. The control thread calls
        this every TAIL_INTERVAL seconds: a topic published since the last
        round gets a marker, and a quiet one gets markers after 1, 2, 4 ...
        quiet rounds, the last about a minute after it fell quiet. Nothing
        is added to publish() itself; a round costs one comparison per topic.
        Returns False when no topic needs markers now (the caller may look
        less often).
        """
        live = False
        with self._lock:
            if self._closed:
                return False
            if self._held_entry is not None:
                # A marker must never overtake the messages it counts: a held
                # batch goes first, or its messages would look lost.
                try:
                    self._flush_held()
                except Closed:
                    return False
            now_ns = time.time_ns()
            for entry in self._topics.values():
                if entry.seq != entry.told:
                    entry.told = entry.seq
                    entry.quiet = 0
                    live = True
                elif entry.quiet > _TAIL_ROUNDS or not entry.seq:
                    continue  # quiet for long, or declared and never published
                else:
                    entry.quiet += 1
                    live = True
                    if entry.quiet & (entry.quiet - 1):
                        continue  # only after 1, 2, 4, ... quiet rounds
                marker = entry.pack(entry.prefix, FLAG_TAIL, entry.seq, now_ns)
                try:
                    if not entry.blocking:
                        raw_send(self._sock, marker, zmq.NOBLOCK)
                    elif self._block_sock is not None:
                        self._block_sock.send(marker)
                except zmq.Again:
                    pass  # a full subscriber (blocking socket): the next round tells it
                except zmq.ZMQError:
                    return False  # closing
        return live

    def process_commands(self) -> None:
        """Read subscription changes, and let ZeroMQ finish pending socket work.

        libzmq handles a socket's internal commands only when the socket is
        used; a node that never publishes would otherwise keep every closed
        local subscription half-open (and its file descriptors) forever; so
        would the subscriptions' wake-up socket (``news``), which this runs
        too. The control thread calls this when a :meth:`wake_fds` descriptor
        turns readable.
        """
        with self._lock:
            if not self._closed:
                self._read_subscriptions()
        self.news.process_commands()

    def _read_subscriptions(self) -> None:
        # Called with the lock held. Reading also runs the socket's pending
        # internal commands, such as detaching closed subscribers.
        changed = _read_subscriptions(self._sock, self._subscribers)
        if self._block_sock is not None:
            # News of room among the commands that this read runs wakes the
            # waiting publishes (_NodropSocket); the other socket's traffic
            # wakes nobody.
            changed = self._block_sock.read_subscriptions() or changed
        if changed:
            self.on_subscribers_changed()

    def wake_fds(self) -> list[int]:
        """Descriptors that turn readable when subscribers come or go (ZMQ_FD), for a poll.

        The wake-up socket's (``news``) is among them: it turns readable when
        a subscription connects to it or closes.

        Only the descriptors: whoever polls them calls :meth:`process_commands`.
        """
        with self._lock:
            if self._closed:
                return []
            fds = [int(self._sock.getsockopt(zmq.FD)), self.news.fd()]
            if self._block_sock is not None:
                fds.append(self._block_sock.fd())
            return fds

    def subscribers(self, topic: str) -> int:
        """How many subscriptions now connected would receive a message on ``topic``.

        Once the blocking socket exists, a subscription counts only when it
        is connected to both sockets, so the answer holds for either kind
        of topic.
        """
        encoded = topic.encode()
        with self._lock:
            if self._closed:
                raise Closed("node is closed")
            self._read_subscriptions()
            count = _matching(self._subscribers, encoded)
            if self._block_sock is not None:
                count = min(count, _matching(self._block_sock.subscribers, encoded))
            return count

    def _open_topic(self, topic: str, blocking: bool = False) -> _Topic:
        if self._closed:
            raise Closed("node is closed")
        prefix = topic_prefix(topic, self._node_id, self._limits)
        if len(self._topics) >= self._max_topics:
            if self._held_entry is not None:  # the held topic may be the one forgotten
                self._flush_held()
            # Forget the oldest topic; if it is used again its sequence
            # restarts at 1, which subscribers see as a new stream.
            del self._topics[next(iter(self._topics))]
        entry = self._topics[topic] = _Topic(prefix, self._limits.max_payload_bytes, blocking)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._held_entry is not None and not self._closed:
                try:
                    self._flush_held()  # handed to ZeroMQ, like every earlier publish
                except Closed:
                    pass
            self._closed = True
            self._sock.close(linger=0)
            self.news.close()  # what it sent is still read (see News)
            if self._block_sock is not None:
                self._block_sock.close()
            self._wake_flusher()  # one in a timed wait sees the close at its deadline
            self._room_changed()  # blocked publishes wake and raise Closed
            flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join()


class _NodropSocket:
    """The NODROP XPUB of blocking topics: every use of the socket goes through here.

    Room comes as a command (a subscriber's pipe reactivated) that whoever
    uses the socket next runs, which also clears the ZMQ_FD readiness that
    the control thread polls (see BlockingWait). So while publishes wait,
    each use first looks at the ZMQ_FD and, if commands are pending, runs
    them and hands the news on (``on_news``, told whether subscriptions
    changed). Running them here rather than leaving them to the send that
    follows (which, throttled, may skip them) keeps the news; a use that
    found nothing pending tells nobody, so waits that fail in turn do not
    wake each other forever. The raw socket is private to this class, so a
    new use cannot forget the look. Used with the publish lock held.
    """

    __slots__ = ("_on_news", "_ready", "_sock", "_waits", "subscribers")

    def __init__(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        waits: set[BlockingWait],
        on_news: Callable[[bool], None],
    ) -> None:
        self._sock = sock
        self._waits = waits  # the publisher's own set: a look only while it is not empty
        self._on_news = on_news
        #: Subscriptions connected to this socket, by prefix.
        self.subscribers: collections.Counter[bytes] = collections.Counter()
        self._ready = select.poll()
        self._ready.register(int(sock.getsockopt(zmq.FD)), select.POLLIN)

    def _take_news(self) -> None:
        if self._ready.poll(0):
            self._on_news(_read_subscriptions(self._sock, self.subscribers))

    def send(self, frame: bytes) -> None:
        """Send ``frame`` without blocking: zmq.Again if a subscriber is full."""
        if self._waits:
            self._take_news()
        raw_send(self._sock, frame, zmq.NOBLOCK)

    def read_subscriptions(self) -> bool:
        """Apply the waiting (un)subscriptions; True if there were any."""
        if self._waits:
            self._take_news()
        return _read_subscriptions(self._sock, self.subscribers)

    def fd(self) -> int:
        """The socket's ZMQ_FD (reading the option runs no command)."""
        return int(self._sock.getsockopt(zmq.FD))

    def close(self) -> None:
        self._sock.close(linger=0)


def encode_blocking(data: object) -> tuple[int, bytes]:
    """(flags, payload) for :meth:`PublishSocket.try_publish_blocking`; TypeError if unencodable."""
    if type(data) is bytes:
        return 0, data
    return encode_payload(data)


class BlockingWait:
    """One blocking publish's wait for room: its deadline, and how it hears of room.

    XPUB's POLLOUT (ZMQ_EVENTS, zmq_poll) does not say whether a subscriber
    is full: libzmq's ``xpub_t::xhas_out`` returns ``dist_t::has_out()``,
    which is always true, with XPUB_NODROP too (libzmq issue #1597, closed
    unfixed; checked against libzmq 4.3.5 / pyzmq 27.3: POLLOUT stays set
    through every EAGAIN).

    Room does announce itself, though not as POLLOUT: a subscriber's pipe
    that drained by its low-water mark sends the XPUB an ``activate_write``
    command, which makes the socket's ZMQ_FD readable until somebody uses
    the socket (a send, a read, ZMQ_EVENTS) and so runs the command. The
    socket is shared, so whoever runs the command passes the news on:

    * the control thread polls the ZMQ_FD and reads the socket's
      subscriptions when it turns readable (PublishSocket.process_commands);
    * that read, and every other use of the socket while publishes wait (a
      try, a tail marker, ``subscribers()``), first checks the ZMQ_FD (each
      use goes through _NodropSocket, which does it); if commands are
      pending, it runs them at once and wakes the waits. A
      use that found nothing pending wakes nobody, so that two publishes
      blocked on two full subscribers do not wake each other forever, and
      traffic on the dropping socket wakes no blocked publisher.

    Waking is a counter (the socket's room version) with a Condition for
    sync waits and a ``wake(version)`` callback for others (AsyncNode sets
    an asyncio.Event on its loop from it; no thread per wait). A wait
    registers in the same locked step as its failed try and notes the
    version then, so news that comes after its try always reaches it.

    One race remains, inside libzmq: a command that arrives between the
    ZMQ_FD check and the send that follows it is run by that send, unseen.
    So a wait also tries again every ROOM_RECHECK seconds: a lost wake-up
    costs at most that much delay, and a publisher blocked for a second
    makes a handful of tries, not the dozens a timer would.

    ``timeout`` in seconds (None: no limit), counted from the first failed
    try; ``wake`` is called with the publish lock held, from any thread, and
    must not block. Made for every blocking publish and handed to its first
    try already, so that a publish that finds room at once costs no clock
    read and no second try.
    """

    __slots__ = ("deadline", "socket", "timeout", "topic", "version", "wake")

    def __init__(
        self, topic: str, timeout: float | None, wake: Callable[[int], None] | None = None
    ) -> None:
        self.topic = topic
        self.timeout = timeout
        self.deadline = 0.0  # monotonic s; set by the first failed try
        self.wake = wake
        #: The socket's room version at the last failed try; news after it has a higher one.
        self.version = 0
        #: The socket it is registered with (after a failed try), else None.
        self.socket: PublishSocket | None = None

    def begin(self, socket: PublishSocket) -> None:
        """(The socket's lock held) The first try failed: the wait and its deadline start."""
        self.socket = socket
        if self.timeout is not None and not self.deadline:
            self.deadline = time.monotonic() + self.timeout

    def remaining(self) -> float:
        """Seconds to wait before trying again at the latest. Raises meshq.Timeout past
        the deadline."""
        if self.timeout is None:
            return ROOM_RECHECK
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout(f"a subscriber of {self.topic!r} stayed full for {self.timeout} s")
        return min(left, ROOM_RECHECK)

    def end(self) -> None:
        """Stop hearing of room: the publish is over (sent, timed out, cancelled)."""
        socket = self.socket
        if socket is not None:
            socket.end_wait(self)


def _no_durable_publishing(topic: str, data: object, timeout: float) -> int:
    raise RuntimeError("this publish socket has no node to publish durably through")


def _nothing() -> None:
    pass


def _read_subscriptions(sock: zmq.Socket, counts: collections.Counter[bytes]) -> bool:  # type: ignore[type-arg]
    """Apply the (un)subscriptions waiting on an XPUB to ``counts``; True if there were any."""
    changed = False
    while True:
        try:
            message = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return changed
        if not message:
            continue
        changed = True
        prefix = message[1:]
        if message[0] == 1:
            counts[prefix] += 1
        elif message[0] == 0 and counts[prefix] > 0:
            counts[prefix] -= 1
            if not counts[prefix]:
                del counts[prefix]


def _matching(counts: collections.Counter[bytes], topic: bytes) -> int:
    return sum(n for prefix, n in counts.items() if topic.startswith(prefix))


def _chunks(payloads: list[bytes], max_bytes: int) -> Iterator[list[bytes]]:
    """Consecutive runs of at most MAX_BATCH payloads, each encoding to <= max_bytes."""
    chunk: list[bytes] = []
    size = 0
    for payload in payloads:
        cost = ENTRY_HEADER_BYTES + len(payload)
        if chunk and (len(chunk) == MAX_BATCH or size + cost > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(payload)
        size += cost
    if chunk:
        yield chunk


def bind_all(sock: zmq.Socket, interfaces: Sequence[str], port: int) -> int:  # type: ignore[type-arg]
    """Bind ``sock`` on every interface at one port (0: pick a free one); return it.

    Raises meshq.BindError naming the address that failed.
    """
    for ip in interfaces:
        address = f"tcp://{ip}:{port}" if port else f"tcp://{ip}:*"
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            raise BindError(address, exc.strerror) from exc
        if not port:
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            port = int(endpoint.rpartition(":")[2])
    return port
