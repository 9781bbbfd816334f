"""The sending half of publish/subscribe: one PUB socket per node.

Publishing is the hot path, so this module trades a little elegance for
speed where it was measured to matter (bench/pubsub.py): the per-topic frame
header is one ``struct`` call on a prebuilt prefix, and sends go straight to
pyzmq's compiled ``send``, skipping the Python wrapper. A lock makes
``publish`` safe from any thread; ZeroMQ sockets themselves are not.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import zmq

from .errors import BindError, Closed
from .sockets import SocketFactory
from .wire import (
    ENTRY_HEADER_BYTES,
    FLAG_BATCH,
    FLAG_MSGPACK,
    MAX_BATCH,
    Limits,
    data_header_packer,
    encode_batch,
    encode_msgpack,
    encode_payload,
    topic_prefix,
)

__all__ = ["PublishSocket", "bind_all", "raw_send"]

# pyzmq's compiled send; the sugar method in front of it adds ~0.2 us per call.
raw_send: Callable[..., object] = getattr(zmq.backend, "Socket", zmq.Socket).send


class _Topic:
    __slots__ = ("budget", "pack", "prefix", "seq")

    def __init__(self, prefix: bytes, max_frame_bytes: int) -> None:
        self.prefix = prefix
        self.pack = data_header_packer(prefix)
        self.seq = 0
        #: Largest payload whose frame a subscriber's socket still accepts.
        self.budget = max_frame_bytes - len(self.pack(prefix, 0, 0, 0))


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
    ) -> None:
        self._node_id = node_id
        self._max_topics = max_topics
        self._limits = limits
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._closed = False
        # XPUB rather than PUB: it tells us which prefixes connected
        # subscribers want, which answers the "slow joiner" without sleeps
        # (wait_for_subscribers). Verbose in both directions, so every
        # subscription and every departure is counted, not just the first.
        self._sock = factory.make(context, zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._subscribers: collections.Counter[bytes] = collections.Counter()
        try:
            bound_port = bind_all(self._sock, interfaces, port)
        except BaseException:
            self._sock.close(linger=0)
            raise
        self.endpoints = tuple(f"tcp://{ip}:{bound_port}" for ip in interfaces)
        self.local_endpoint = f"inproc://meshq-pub-{node_id.hex()}"
        self._sock.bind(self.local_endpoint)

    def check_topic(self, topic: str) -> None:
        """Raise ValueError unless ``topic`` can be published."""
        topic_prefix(topic, self._node_id, self._limits)

    def publish(self, topic: str, data: object) -> None:
        """Send one message; see :meth:`meshq.Node.publish`."""
        if type(data) is bytes:
            flags = 0
        else:
            flags, data = encode_payload(data)
        with self._lock:
            entry = self._topics.get(topic)
            if entry is None:
                entry = self._open_topic(topic)
            if len(data) > entry.budget:
                raise ValueError(f"payload of {len(data)} bytes exceeds {entry.budget}")
            entry.seq += 1
            try:
                raw_send(
                    self._sock, entry.pack(entry.prefix, flags, entry.seq, time.time_ns()) + data
                )
            except zmq.ZMQError as exc:
                raise Closed("node is closed") from exc

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
        with self._lock:
            entry = self._topics.get(topic)
            if entry is None:
                entry = self._open_topic(topic)
            limit = entry.budget - ENTRY_HEADER_BYTES
            largest = max(map(len, batch), default=0)
            if largest > limit:
                raise ValueError(f"an item of {largest} bytes exceeds {limit}")
            now = time.time_ns()
            for chunk in _chunks(batch, entry.budget):
                header = entry.pack(entry.prefix, encoding | FLAG_BATCH, entry.seq + 1, now)
                entry.seq += len(chunk)
                try:
                    raw_send(self._sock, header + encode_batch(chunk))
                except zmq.ZMQError as exc:
                    raise Closed("node is closed") from exc
        return len(batch)

    def process_commands(self) -> None:
        """Read subscription changes, and let ZeroMQ finish pending socket work.

        libzmq handles a socket's internal commands only when the socket is
        used; a node that never publishes would otherwise keep every closed
        local subscription half-open (and its file descriptors) forever. The
        control thread calls this on each tick.
        """
        with self._lock:
            if not self._closed:
                self._read_subscriptions()

    def _read_subscriptions(self) -> None:
        # Called with the lock held. Reading also runs the socket's pending
        # internal commands, such as detaching closed subscribers.
        while True:
            try:
                message = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not message:
                continue
            prefix = message[1:]
            if message[0] == 1:
                self._subscribers[prefix] += 1
            elif message[0] == 0 and self._subscribers[prefix] > 0:
                self._subscribers[prefix] -= 1
                if not self._subscribers[prefix]:
                    del self._subscribers[prefix]

    def subscribers(self, topic: str) -> int:
        """How many subscriptions now connected would receive a message on ``topic``."""
        encoded = topic.encode()
        with self._lock:
            if self._closed:
                raise Closed("node is closed")
            self._read_subscriptions()
            return sum(n for prefix, n in self._subscribers.items() if encoded.startswith(prefix))

    def _open_topic(self, topic: str) -> _Topic:
        if self._closed:
            raise Closed("node is closed")
        prefix = topic_prefix(topic, self._node_id, self._limits)
        if len(self._topics) >= self._max_topics:
            # Forget the oldest topic; if it is used again its sequence
            # restarts at 1, which subscribers see as a new stream.
            del self._topics[next(iter(self._topics))]
        entry = self._topics[topic] = _Topic(prefix, self._limits.max_payload_bytes)
        return entry

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sock.close(linger=0)


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
