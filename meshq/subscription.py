"""Subscriptions: the receiving half of publish/subscribe.

A subscription owns one SUB socket, used only by the thread that created it.
The node's control thread never touches that socket: it updates the
:class:`PublisherDirectory` and wakes the subscription, which connects to new
publishers and disconnects from gone ones on its next call. The data path
never crosses a thread.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import repeat
from types import MappingProxyType
from typing import Protocol

import zmq

from .errors import Closed, ProtocolError, Timeout
from .message import Message
from .ownership import Owner, current
from .ratelimit import RateLimitedLog
from .sockets import RefusedLinks, SocketFactory
from .wire import (
    DATA_HEADER_BYTES,
    ENTRY_HEADER_BYTES,
    FLAG_BATCH,
    MAX_BATCH,
    NODE_ID_BYTES,
    PROTOCOL_VERSION,
    Limits,
    TailMarker,
    decode_data,
)
from .zmqerrors import translate

__all__ = [
    "BLOCKING_SUFFIX",
    "Gap",
    "Inbox",
    "News",
    "own",
    "refresh_this_thread",
    "PublisherDirectory",
    "PublisherLinks",
    "Subscription",
    "Watcher",
]

log = logging.getLogger("meshq.subscription")
_bad_input_log = RateLimitedLog(log, interval=5.0)


#: Directory key of a node's never-dropping publish socket: its id plus this.
BLOCKING_SUFFIX = "/block"


class Watcher(Protocol):
    """A subscription as the directory sees it."""

    #: ``threading.get_ident()`` of the thread that owns the socket.
    owner: int

    def wake(self) -> None:
        """Note that the directory changed; called from any thread, must not block."""

    def close(self) -> None:
        """Release the socket; only ever called from the owner thread."""

    def refresh(self) -> None:
        """Apply pending connects now; only ever called from the owner thread."""


class News:
    """Wake-ups for subscriptions blocked in ``recv``: frames on an inproc PUB of the node.

    A subscription waits in its SUB socket's own blocking ``recv`` (a poll
    of that socket and a pipe, then a read, costs several microseconds per
    message more). Its SUB is also connected here, so news of publishers
    joining or leaving (and of the close) is a frame that ends that wait:
    the subscription's prefix (so that its socket lets the frame through),
    then ``tail``, a NUL and 16 random bytes. No topic contains a NUL, so no
    data frame starts like that; ``tail`` tells these frames apart from a
    malformed one that a peer could send. They never leave the process.

    The node's publish socket owns one (PublishSocket.news), so that the
    control thread runs its commands (PublishSocket.process_commands): a
    closed subscription's link is let go only then. Used from any thread,
    under a lock (the socket itself is not thread-safe); a no-op after
    :meth:`close`, and what it sent stays readable after it (inproc).
    """

    def __init__(self, context: zmq.Context) -> None:  # type: ignore[type-arg]
        self.tail = b"\0" + os.urandom(16)
        self.endpoint = f"inproc://meshq-news-{os.urandom(8).hex()}"
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._sock = context.socket(zmq.PUB)
        except zmq.ZMQError as exc:  # the context is gone (the node closed)
            raise translate(exc, "open the subscriptions' wake-up socket") from exc
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise translate(exc, "bind the subscriptions' wake-up socket") from exc

    def send(self, prefix: bytes) -> None:
        """Wake the subscriptions whose prefix begins ``prefix`` (at least the one of it)."""
        with self._lock:
            if self._closed:
                return
            try:
                # A SUB that connected a moment ago is attached, and its
                # prefix known, once this socket runs its pending commands,
                # which a send does at most once a millisecond: run them now.
                self._sock.getsockopt(zmq.EVENTS)
                self._sock.send(prefix + self.tail, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a full queue already holds a wake-up; a closing context ends every wait

    def process_commands(self) -> None:
        """Run the socket's pending commands (links made and closed); see the class."""
        with self._lock:
            if not self._closed:
                self._sock.getsockopt(zmq.EVENTS)

    def fd(self) -> int:
        """The socket's ZMQ_FD: readable while commands wait (poll it, then process_commands)."""
        with self._lock:
            return int(self._sock.getsockopt(zmq.FD))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._sock.close(linger=0)


class PublisherDirectory:
    """Where each known publisher listens: node id (hex) -> PUB endpoint.

    A node that publishes blocking topics has a second entry, its id plus
    ``BLOCKING_SUFFIX``; subscriptions connect to every entry alike.

    Written by the node's control thread, read by subscriptions on any
    thread. Each change bumps ``version`` and wakes every watcher. Watchers
    are held weakly: a subscription dropped without ``close()`` is still
    garbage-collected.
    """

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._endpoints: Mapping[str, str] = MappingProxyType({})
        self._watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
        self._lock = threading.Lock()

    def snapshot(self) -> tuple[int, Mapping[str, str]]:
        """(version, endpoints by node id) as of now."""
        with self._lock:
            return self.version, self._endpoints

    def update(self, endpoints: Mapping[str, str]) -> None:
        """Replace the map; wake watchers if anything changed."""
        with self._lock:
            if dict(endpoints) == dict(self._endpoints):
                return
            self._endpoints = MappingProxyType(dict(endpoints))
            self.version += 1
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.wake()

    def touch(self) -> None:
        """Make every subscription sync on its next call (refused links are due a retry)."""
        with self._lock:
            self.version += 1
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.wake()

    def close(self) -> None:
        """The node is closing: close the caller's own subscriptions, wake the rest.

        Subscriptions owned by other threads close themselves on their next
        call (their sockets may only be touched by their owners).
        """
        with self._lock:
            self.closed = True
            self.version += 1
            watchers = list(self._watchers)
        me = threading.get_ident()
        for watcher in watchers:
            if watcher.owner == me:
                watcher.close()
            else:
                watcher.wake()

    def watch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.add(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)


_this_thread = threading.local()  # .watchers: the calling thread's subscriptions


def own(watcher: Watcher) -> None:
    """Record ``watcher`` as belonging to the calling thread (held weakly)."""
    watchers = getattr(_this_thread, "watchers", None)
    if watchers is None:
        watchers = _this_thread.watchers = weakref.WeakSet()
    watchers.add(watcher)


def refresh_this_thread() -> None:
    """Let the calling thread's subscriptions, of any node, connect to publishers now.

    A subscription's socket may only be touched by its thread, so it
    connects to a new publisher when that thread next calls recv(); the
    nodes' waiting calls run this too, so that a single-threaded program
    which subscribes and then waits is connected meanwhile.
    """
    for watcher in list(getattr(_this_thread, "watchers", ())):
        watcher.refresh()


#: Seconds a departed publisher's link is kept at least: what it published
#: just before its goodbye may still be on the way (another TCP connection).
DRAIN_GRACE = 0.5


class PublisherLinks:
    """Keeps one SUB socket connected to exactly the publishers in a directory.

    A publisher that left (goodbye, timeout) is disconnected only once the
    socket has nothing left to read and ``DRAIN_GRACE`` s have passed:
    ZeroMQ's disconnect drops what is queued on that link unread, which lost
    every message published just before close(). Until then ``version``
    stays behind the directory's, so the owner syncs again on its next call.
    """

    def __init__(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        directory: PublisherDirectory,
        connect: Callable[[zmq.Socket, str], bool] | None = None,  # type: ignore[type-arg]
        refused: RefusedLinks | None = None,
    ) -> None:
        self._sock = sock
        self._directory = directory
        # SocketFactory.connect: sets the publisher's CURVE key, or refuses.
        self._connect = connect
        self._refused = refused
        self._handled: dict[str, float] = {}  # refusals already retried
        self._connected: dict[str, str] = {}
        self._connected_at: dict[str, float] = {}  # endpoint -> when connected (monotonic)
        # endpoint -> (the publisher that left it, when: monotonic s)
        self._draining: dict[str, tuple[str, float]] = {}
        self.version = -1

    def sync(self) -> None:
        """Apply pending connects and disconnects. Call from the socket's owner."""
        version, wanted = self._directory.snapshot()
        retry = set()
        if self._refused is not None:
            for endpoint, when in self._refused.due(self._handled):
                # libzmq never retries a refused handshake: make the link
                # anew, if ours is the link that was refused (made before).
                if self._connected_at.get(endpoint, math.inf) < when:
                    retry.add(endpoint)
        now = time.monotonic()
        for node_id, endpoint in list(self._connected.items()):
            if wanted.get(node_id) != endpoint or endpoint in retry:
                del self._connected[node_id]
                self._connected_at.pop(endpoint, None)
                if endpoint in retry:  # a refused handshake: nothing was received
                    self._disconnect(endpoint)
                else:
                    self._draining[endpoint] = (node_id, now)
        if self._draining:
            # (EVENTS, not poll(): the socket may be a zmq.asyncio one.)
            events = self._sock.getsockopt(zmq.EVENTS)
            readable = isinstance(events, int) and events & zmq.POLLIN
            back = set(wanted.values())
            for endpoint, (_, since) in list(self._draining.items()):
                if endpoint not in back and not readable and now - since >= DRAIN_GRACE:
                    del self._draining[endpoint]
                    self._disconnect(endpoint)
        for node_id, endpoint in wanted.items():
            if node_id not in self._connected:
                left = self._draining.pop(endpoint, None)
                if left is not None and left[0] == node_id:  # back: keep its link
                    self._connected[node_id] = endpoint
                    self._connected_at[endpoint] = now
                    continue
                if left is not None:  # another node on that port: another key, maybe
                    self._disconnect(endpoint)
                if self._connect is None:
                    self._sock.connect(endpoint)
                elif not self._connect(self._sock, endpoint):
                    continue  # refused by security (recorded): tried again when it is due
                self._connected[node_id] = endpoint
                self._connected_at[endpoint] = time.monotonic()
        self.version = -1 if self._draining else version

    def _disconnect(self, endpoint: str) -> None:
        try:
            self._sock.disconnect(endpoint)
        except zmq.ZMQError:
            pass  # already gone: nothing to undo


@dataclass(frozen=True)
class Gap:
    """``missed`` messages from publisher ``sender`` (node id) on ``topic`` never arrived."""

    sender: str
    topic: str
    missed: int


_MAX_STREAMS = 100_000  # (publisher, topic) pairs tracked for gaps before starting over
# After the topic's NUL: version, sender (skipped), flags, sequence, time (skipped).
_FAST_HEAD = struct.Struct(f">B{NODE_ID_BYTES}xBQ8x").unpack_from
assert struct.calcsize(f">B{NODE_ID_BYTES}xBQ8x") == DATA_HEADER_BYTES
_STREAM_END = 2 + NODE_ID_BYTES  # a stream key ends after the sender id
_PAYLOAD_START = 1 + DATA_HEADER_BYTES  # from the topic's NUL
_ENTRY_LENGTH = struct.Struct(">I").unpack_from  # a batch entry's length
_NO_FLAGS = b"\0"  # the flags byte of a one-message frame of raw bytes
_LAST_SEQ = 2**64 - 1  # the largest sequence number a frame can carry
_new_message = object.__new__  # a Message whose fields recv sets (see Subscription._expect)
_GAP_LOG = 100


class Inbox:
    """What sync and async subscriptions share: decoding, counting drops and gaps.

    Every publisher numbers its messages per topic; a jump in that number
    means messages were lost on the way (a full queue, a reconnect), and is
    reported in ``gaps`` and ``gap_log``, never silently.
    """

    def __init__(self, prefix: str, directory: PublisherDirectory, limits: Limits) -> None:
        self.prefix = prefix
        #: Malformed frames received and dropped (a bad batch counts once).
        self.dropped = 0
        #: Messages known to be missed: the sum of every gap's ``missed``.
        self.gaps = 0
        #: The latest gaps, newest last (at most 100 kept).
        self.gap_log: collections.deque[Gap] = collections.deque(maxlen=_GAP_LOG)
        self._limits = limits
        self._directory = directory
        #: Called with each gap's ``missed`` (the node counts them in its stats).
        self.on_gap: Callable[[int], None] | None = None
        self._pending: collections.deque[Message] = collections.deque()  # rest of a batch
        # Last sequence number per stream; the key is the frame's start up to
        # and including the sender id: topic, NUL, version, sender.
        self._last_seq: dict[bytes, int] = {}
        # Where _take looks for the topic's end, and the longest frame (past
        # the topic) it lets through: the codec's limits, precomputed.
        self._topic_scan = limits.max_topic_bytes + 1
        self._most = _PAYLOAD_START + limits.max_payload_bytes

    def _take(self, frame: bytes) -> Message | None:
        """The first message of ``frame`` (keeping the rest of a batch), or None if malformed.

        Runs once per received frame. The common frame (one message, raw
        bytes, well formed) takes the inline path: one search, one unpack,
        one dict look-up for the gap check and a four-field Message;
        everything else goes through the codec (decode_data).
        """
        end = frame.find(b"\0", 0, self._topic_scan)
        if end > 0:
            try:
                version, flags, seq = _FAST_HEAD(frame, end + 1)
            except struct.error:  # truncated: the codec names the fault
                pass
            else:
                if flags == FLAG_BATCH and version == PROTOCOL_VERSION:
                    batch = self._take_batch(frame, end, seq)
                    if batch is not None:
                        return batch
                elif not flags and version == PROTOCOL_VERSION and len(frame) <= end + self._most:
                    stream = frame[: end + _STREAM_END]
                    last_seq = self._last_seq
                    previous = last_seq.get(stream)
                    if previous is not None:
                        if seq > previous + 1:
                            self._record_gap(frame, end, seq - previous - 1)
                    elif len(last_seq) >= _MAX_STREAMS:
                        last_seq.clear()
                    last_seq[stream] = seq
                    return Message(frame, end, seq, frame[end + _PAYLOAD_START :])
        return self._take_decoded(frame)

    def _take_batch(self, frame: bytes, end: int, first: int) -> Message | None:
        """:meth:`_take` for a batch of raw payloads (publish_many, coalesced bursts).

        One pass over the entries, making the Messages as it goes; None
        (nothing kept) for anything the codec should judge instead.
        """
        size = len(frame)
        if size > end + self._most:
            return None
        position = end + _PAYLOAD_START
        try:
            (length,) = _ENTRY_LENGTH(frame, position)
        except struct.error:  # fewer than 4 bytes: the codec refuses it
            return None
        step = length + ENTRY_HEADER_BYTES
        count, rest = divmod(size - position, step)
        if not rest and count <= MAX_BATCH:
            # Entries of one size (a burst of readings, a coalesced run of
            # equal messages) are split by a slice per entry, checked with
            # one comparison in C (the frame must be exactly these payloads
            # joined by the first entry's header), and made Messages by map:
            # no Python step per entry.
            start = position + ENTRY_HEADER_BYTES
            payloads = [frame[p : p + length] for p in range(start, start + count * step, step)]
            if frame.endswith(frame[position:start].join(payloads), start):
                self._count_stream(frame, end, first, first + count - 1)
                pending = self._pending
                pending.extend(
                    map(Message, repeat(frame), repeat(end), range(first, first + count), payloads)
                )
                return pending.popleft()
        messages: list[Message] = []
        append = messages.append
        unpack = _ENTRY_LENGTH
        seq = first
        try:
            while position < size:
                (length,) = unpack(frame, position)
                position += ENTRY_HEADER_BYTES
                stop = position + length
                if stop > size or seq - first == MAX_BATCH:
                    return None  # truncated entry, or too many: the codec refuses it
                append(Message(frame, end, seq, frame[position:stop]))
                seq += 1
                position = stop
        except struct.error:  # fewer than 4 bytes left
            return None
        if not messages or len(messages) > MAX_BATCH:
            return None
        self._count_stream(frame, end, first, seq - 1)
        if len(messages) > 1:
            self._pending.extend(messages)
            return self._pending.popleft()
        return messages[0]

    def _count_stream(self, frame: bytes, end: int, first: int, last: int) -> None:
        """The gap check for messages ``first``..``last`` of the stream that ``frame`` is of."""
        stream = frame[: end + _STREAM_END]
        last_seq = self._last_seq
        previous = last_seq.get(stream)
        if previous is not None:
            if first > previous + 1:
                self._record_gap(frame, end, first - previous - 1)
        elif len(last_seq) >= _MAX_STREAMS:
            last_seq.clear()
        last_seq[stream] = last

    def _take_decoded(self, frame: bytes) -> Message | None:
        """:meth:`_take` for any frame, through the codec."""
        try:
            decoded = decode_data(frame, self._limits)
        except ProtocolError as exc:
            self.dropped += 1
            _bad_input_log.warning("dropped a message: %s", exc.reason)
            return None
        if isinstance(decoded, Message):
            first = last = decoded
        elif isinstance(decoded, TailMarker):
            self._take_tail(frame, decoded)
            return None
        else:
            first, last = decoded[0], decoded[-1]
            self._pending.extend(decoded)
            self._pending.popleft()
        end = first._topic_end
        stream = frame[: end + _STREAM_END]
        previous = self._last_seq.get(stream)
        if previous is not None and first.seq > previous + 1:
            self._record_gap(frame, end, first.seq - previous - 1)
        elif previous is None and len(self._last_seq) >= _MAX_STREAMS:
            self._last_seq.clear()
        self._last_seq[stream] = last.seq
        return first

    def _take_tail(self, frame: bytes, tail: TailMarker) -> None:
        """A publisher's last sequence number on a topic: what we lack of it is a gap.

        A burst whose end was lost (a full queue, a dropped link) leaves no
        later message to show the jump; the publisher's tail markers do.
        Before any message of the stream, it only sets where counting starts.
        """
        stream = frame[: tail.topic_end + _STREAM_END]
        previous = self._last_seq.get(stream)
        if previous is not None and tail.seq > previous:
            topic = frame[: tail.topic_end].decode("utf-8", "replace")
            self._note_gap(tail.sender.hex(), topic, tail.seq - previous)
        elif previous is None and len(self._last_seq) >= _MAX_STREAMS:
            self._last_seq.clear()
        if previous is None or tail.seq > previous:
            self._last_seq[stream] = tail.seq

    def _record_gap(self, frame: bytes, topic_end: int, missed: int) -> None:
        message = Message(frame, topic_end, 0, None)  # names the stream
        self._note_gap(message.sender, message.topic, missed)

    def _note_gap(self, sender: str, topic: str, missed: int) -> None:
        self.gaps += missed
        self.gap_log.append(Gap(sender, topic, missed))
        if self.on_gap is not None:
            self.on_gap(missed)


class Subscription(Inbox):
    """Messages whose topic starts with ``prefix``, from every current and future peer.

    Create through :meth:`meshq.Node.subscribe`. Use from one thread only.
    Iterating yields messages until the subscription or node is closed.
    """

    def __init__(
        self,
        prefix: str,
        *,
        context: zmq.Context,  # type: ignore[type-arg]
        factory: SocketFactory,
        directory: PublisherDirectory,
        news: News,
        limits: Limits,
    ) -> None:
        super().__init__(prefix, directory, limits)
        encoded = prefix.encode()
        self._sock = factory.make(context, zmq.SUB)
        # A subscription dropped without close() must not leak its socket
        # (nobody else can reach it by then, so any thread may close it).
        self._release = weakref.finalize(self, _release, self._sock)
        self._sock.setsockopt(zmq.SUBSCRIBE, encoded)
        self._sock.connect(news.endpoint)  # wake-ups: see News
        self._news = news
        self._news_frame = encoded
        self._news_tail = news.tail
        #: A wake-up was sent and not read yet (see wake).
        self._woken = False
        self._links = PublisherLinks(self._sock, directory, factory.connect, factory.refused)
        self._closed = False
        self._owner = Owner()
        self.owner = self._owner.ident
        # pyzmq's compiled recv, bound once: the hot path calls it per message.
        self._recv = self._sock.recv
        # The socket's RCVTIMEO (ms), and the timeout (s) it was set for:
        # NaN (unequal to every timeout) when set for a remainder (_recv_slow).
        self._rcvtimeo = -1
        self._timeout: float | None = None
        # The expected frame (see recv): a message that _take returned, whose
        # stream is followed next; that stream's key in _last_seq, where its
        # topic ends, the length range of its frames that _take accepts, and
        # the sequence number the next frame must carry.
        self._taken: Message | None = None
        self._stream = b""
        self._stream_end = 0
        self._stream_least = 0
        self._stream_most = 0
        self._expect_seq = 0
        # The expected frame's Message, made before the wait with its topic
        # end and sequence number (see _expect); None once handed out.
        self._ready: Message | None = None
        directory.watch(self)
        own(self)
        self._links.sync()
        if directory.closed:  # closed meanwhile, maybe before this could hear of it
            self._links.version = -1  # the first recv() looks, and raises Closed

    def wake(self) -> None:
        # From any thread: tell the owner through its own socket (see News).
        # One wake-up unread is enough: the owner syncs after reading it.
        if not self._closed and not self._woken:
            self._woken = True
            self._news.send(self._news_frame)

    def refresh(self) -> None:
        if not self._closed and self._links.version != self._directory.version:
            self._links.sync()

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; wait at most ``timeout`` seconds (None: forever).

        Raises meshq.Timeout when the time passes, meshq.Closed after close(),
        RuntimeError when called from a thread other than the one that
        subscribed. Malformed messages from peers are counted in
        ``dropped``, not raised.
        """
        if current() != self.owner:
            raise self._owner.error(f"subscription {self.prefix!r}")
        if self._pending:
            return self._pending.popleft()
        if self._links.version != self._directory.version:
            return self._recv_slow(timeout, None)
        # The common case: links up to date. Wait in the socket's own recv
        # (RCVTIMEO set once per timeout value), as a raw pyzmq SUB does;
        # news of publishers (and of the close) ends that wait (see News).
        if timeout != self._timeout:
            self._set_timeout(timeout)
        expect = self._expect()
        start = None if timeout is None else time.monotonic()
        try:
            frame = self._recv()
        except zmq.ZMQError:  # zmq.Again: the time passed; or a failure
            return self._recv_slow(timeout, start)
        # What _take would do with the expected frame, in as few steps as
        # can be: each one costs microseconds when the thread has just woken
        # and its caches are cold, which is the case of every message at a
        # low rate (bench/README.md, one-way latency).
        if (
            expect is not None
            and frame.startswith(expect)
            and self._stream_least <= len(frame) <= self._stream_most
        ):
            self._last_seq[self._stream] = self._expect_seq
            message = self._ready
            assert message is not None  # made with expect
            self._ready = None
            message._frame = frame
            message.data = frame[self._stream_least :]
            return message
        message = self._take(frame)
        if message is not None:
            self._taken = message
            return message
        return self._recv_slow(timeout, start)

    def _expect(self) -> bytes | None:
        """What the next frame starts with if it is the next message of the stream followed.

        That is, a one-message frame of raw bytes, of the protocol's version,
        from the publisher and on the topic of the last message taken from
        such a frame, whose sequence number follows the last one seen of that
        stream: the frame _take would turn into a Message with no gap. Its
        header up to the sequence number, or None if no stream is followed.
        Made before the wait, so that what comes after it is short.
        """
        taken = self._taken
        if taken is not None:  # _take returned it: follow its stream if it fits
            self._taken = None
            frame, end = taken._frame, taken._topic_end
            try:
                version, flags, _ = _FAST_HEAD(frame, end + 1)
            except struct.error:
                version = flags = -1
            if version == PROTOCOL_VERSION and not flags and type(taken.data) is bytes:
                self._stream = frame[: end + _STREAM_END]
                self._stream_end = end
                self._stream_least = end + _PAYLOAD_START
                self._stream_most = end + self._most
        if not self._stream:
            return None
        last = self._last_seq.get(self._stream)
        if last is None or last >= _LAST_SEQ:  # forgotten (_MAX_STREAMS), or no next one
            return None
        self._expect_seq = seq = last + 1
        # Its Message too, less its frame and payload: a Message() call after
        # the wait costs a few microseconds more (its __init__ is Python).
        ready = self._ready
        if ready is None:
            ready = self._ready = _new_message(Message)
        ready._topic_end = self._stream_end
        ready.seq = seq
        return self._stream + _NO_FLAGS + seq.to_bytes(8, "big")

    def _set_timeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        wait_ms = _wait_ms(timeout)
        if wait_ms != self._rcvtimeo:
            self._sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._rcvtimeo = wait_ms

    def _recv_slow(self, timeout: float | None, start: float | None) -> Message:
        """:meth:`recv` past its first read (begun at ``start``, monotonic s; None:
        not begun): sync links, check for the close, wait and read until a message."""
        if timeout is None:
            deadline = math.inf
        else:
            deadline = (time.monotonic() if start is None else start) + timeout
        sock = self._sock
        while True:
            if self._pending:  # a batch read by a previous pass
                return self._pending.popleft()
            self._check_open()
            if self._links.version != self._directory.version:
                self._links.sync()
            # Past the deadline, one look without waiting (0).
            wait_ms = -1 if deadline == math.inf else _wait_ms(deadline - time.monotonic())
            if wait_ms != self._rcvtimeo:
                sock.setsockopt(zmq.RCVTIMEO, wait_ms)
                self._rcvtimeo = wait_ms
                self._timeout = math.nan  # set for a remainder, not a whole timeout
            try:
                frame = sock.recv()
            except zmq.Again:
                if not wait_ms:
                    raise Timeout(f"no message on {self.prefix!r} within the timeout") from None
                continue  # RCVTIMEO counts whole ms: look at the clock again
            except zmq.ZMQError as exc:
                self._check_open()
                raise translate(exc, "receive") from exc
            message = self._take(frame)
            if message is not None:
                return message

    def _take_decoded(self, frame: bytes) -> Message | None:
        if frame.endswith(self._news_tail):
            # A wake-up (see News): the loop of _recv_slow syncs next. Any
            # subscription's counts, as each comes after the news it tells.
            self._woken = False
            return None
        return super()._take_decoded(frame)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("subscription is closed")
        if self._directory.closed:
            self.close()
            raise Closed("node is closed")

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until closed (meshq.Closed ends the iteration)."""
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    def close(self) -> None:
        """Stop receiving and release the socket. Safe to call twice.

        Raises RuntimeError from a thread other than the owner while open
        (the owner may be inside recv(); closing the node is how another
        thread ends it).
        """
        if self._closed:
            return
        if current() != self.owner:
            raise self._owner.error(f"subscription {self.prefix!r}")
        self._closed = True
        self._links.version = -1  # recv() takes the path that checks, and raises Closed
        self._directory.unwatch(self)
        self._pending.clear()
        self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: The longest RCVTIMEO (ms) set at once: a longer wait is made of several.
_MAX_WAIT_MS = 2**31 - 1


def _wait_ms(seconds: float | None) -> int:
    """RCVTIMEO for a wait of ``seconds`` (None: -1, no limit): rounded up, 0 if not positive."""
    if seconds is None:
        return -1
    if seconds <= 0:
        return 0
    if seconds >= _MAX_WAIT_MS / 1000:
        return _MAX_WAIT_MS
    return math.ceil(seconds * 1000)


def _release(sock: zmq.Socket) -> None:  # type: ignore[type-arg]
    sock.close(linger=0)
