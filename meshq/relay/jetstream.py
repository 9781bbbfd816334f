"""Durable streams on a NATS JetStream cluster: the relay as a stateless gateway.

``Relay(node, streams=["orders/"], store=JetStreamStore("nats://h1:4222,nats://h2:4222",
replicas=3))`` serves the stream from JetStream; any number of relays may
do so at once, on any hosts, and publishers and consumers spread over them
and fail over when one dies. Needs ``pip install meshq[jetstream]`` (nats-py).

How meshq's concepts map onto JetStream's (README "Stores"):

- stream ``orders/`` of mesh ``m`` -> JetStream stream ``MESHQ_m_orders__<hash>``
  with subjects ``meshq.<that name>.*``; a topic is one subject token, its
  characters other than ``A-Za-z0-9-_/:`` escaped as ``%XX``.
- message id -> ``Nats-Msg-Id`` (hex); ``dedup_window`` -> the stream's
  duplicate window (counted from the publish, not from removal; at most
  ``max_age``). A duplicate is confirmed with its first copy's sequence.
- stream sequence -> JetStream's stream sequence, so ``Start.at_seq`` and
  ``Start.at_time`` (JetStream's stored timestamp) keep their meaning.
- durable name -> a durable pull consumer (explicit acks), its meshq name
  and prefix kept in the consumer's metadata.
- ``ack_wait`` / ``max_deliver`` -> the consumer's AckWait / MaxDeliver,
  updated when a fetch asks for other values.
- dead letters -> stream ``<name>_DEAD`` capturing the max-deliveries
  advisories; ``meshq replay --dead`` reads them with the original messages
  (still in the stream while retention keeps them).
- retention -> the stream's MaxAge / MaxMsgs / MaxBytes (JetStream counts
  bytes with subjects and headers).

A confirm is JetStream's publish acknowledgement: the message is stored on
a majority of the stream's replicas. JetStream fsyncs every two minutes by
default; run the servers with ``jetstream { sync_interval: always }`` for
an fsync before every acknowledgement.

Threads: nats-py is asyncio. The store owns one thread running one event
loop and the connection; relay requests cross to it as coroutines
(``run_coroutine_threadsafe``) and answers cross back through each
request's :class:`~meshq.relay.interface.Reply`. Nothing polls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..deadlines import within
from ..errors import MeshqError, Timeout
from ..relaywire import Ack, Fetch, Nak, Open, Publish, Read, Record
from .interface import Published, Reply, StreamSettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.manager import JetStreamManager

__all__ = ["JetStreamStore", "js_stream_name", "subject_token", "topic_of_token"]

log = logging.getLogger("meshq.relay")

#: Payload bytes per fetch or read answer (as the SQLite relay).
_FETCH_BYTES = 1024 * 1024
#: Seconds a relay keeps retrying a publish JetStream could not take
#: (no leader during an election, a server restarting); the publisher
#: resends after its own attempt timeout anyway, with the same ids.
_PUBLISH_RETRY = 3.0
_RETRY_PAUSE = 0.05  # seconds between retries of a publish JetStream could not take
#: Seconds a read waits for messages the stream's leader has confirmed to
#: reach the server of the read's consumer.
_CATCH_UP = 2.0
_API_TIMEOUT = 5.0
_MAX_ACK_PENDING = 100_000
#: Ack subjects remembered per consumer (seq -> the delivery's reply subject).
_REMEMBERED = 200_000
_DEFAULT_ACK_WAIT = 30.0
_DEFAULT_MAX_DELIVER = 5
_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"

_PLAIN = re.compile(r"[A-Za-z0-9_/:-]+")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


@functools.lru_cache(maxsize=4096)
def subject_token(topic: str) -> str:
    """``topic`` as one NATS subject token: characters outside ``A-Za-z0-9-_/:`` as %XX."""
    if _PLAIN.fullmatch(topic):
        return topic
    return urllib.parse.quote(topic, safe="/:").replace(".", "%2E").replace("~", "%7E")


def topic_of_token(token: str) -> str:
    """The topic :func:`subject_token` made ``token`` from."""
    return urllib.parse.unquote(token) if "%" in token else token


def js_stream_name(mesh: str, stream: str) -> str:
    """The JetStream stream holding meshq stream ``stream`` of mesh ``mesh``.

    Readable where the names allow, and a hash of both names keeps two
    that read alike apart.
    """
    digest = hashlib.sha256(f"{mesh}\0{stream}".encode()).hexdigest()[:10]
    readable = _UNSAFE_NAME.sub("_", f"{mesh}_{stream}")[:64]
    return f"MESHQ_{readable}_{digest}"


def _durable_name(name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{_UNSAFE_NAME.sub('_', name)[:64]}_{digest}"


def _import_nats() -> Any:
    try:
        import nats
    except ImportError:
        raise MeshqError(
            "the JetStream store needs nats-py: pip install 'meshq[jetstream]'"
        ) from None
    return nats


@dataclass
class _Stream:
    config: StreamSettings
    name: str  # JetStream's
    subject_prefix: str  # "meshq.<name>."
    dead: str  # the dead-letter stream


@dataclass
class _Consumer:
    stream: _Stream
    meshq_name: str
    durable: str
    prefix: str
    ack_wait: float
    max_deliver: int
    #: seq -> reply subject of its latest delivery through this relay.
    subjects: dict[int, str] = field(default_factory=dict)
    #: Delivered to this relay, not yet handed on: a reply was full.
    held: list[Msg] = field(default_factory=list)
    #: Bytes of the largest payload seen (+1), to size the pulls.
    largest: int = 16 * 1024


class _Unreachable(Exception):
    """A pull was answered "503 no responders": no server serves that consumer (yet)."""


class _Pulls:
    """Pull requests to JetStream consumers, each answered on an inbox of its own.

    JetStream delivers a pulled message under its own subject to the
    pull's subscription, so each pull needs its own subscription.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def pull(
        self,
        stream: str,
        consumer: str,
        batch: int,
        *,
        expires: float = 0.0,
    ) -> list[Msg]:
        """Up to ``batch`` messages: what is there now, or (``expires`` > 0 s) what comes
        within that time. Ends at JetStream's status answer (no messages, timeout).

        Raises _Unreachable if no server answers for the consumer.
        """
        nc = self._nc
        inbox = nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        subscription = await nc.subscribe(inbox, cb=_put(queue))
        request: dict[str, object] = {"batch": batch}
        if expires > 0:
            request["expires"] = int(expires * 1e9)
        else:
            request["no_wait"] = True
        found: list[Msg] = []
        loop = asyncio.get_running_loop()
        # The server ends every pull with a status message or a full batch;
        # the margin covers a server that died with the pull open.
        deadline = loop.time() + expires + _API_TIMEOUT
        try:
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                json.dumps(request).encode(),
                reply=inbox,
            )
            while len(found) < batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # within(), not wait_for: a cancel must not swallow a message.
                    msg = await within(queue.get(), remaining, keep=queue.put_nowait)
                except Timeout:
                    break
                status = _status(msg)
                if status == "100":  # heartbeat
                    continue
                if status == "503" and not found:
                    # Not "no messages": a consumer just made is not always
                    # known across the cluster at once.
                    raise _Unreachable(f"consumer {stream}.{consumer}: no responders")
                if status:
                    if status not in ("404", "408"):
                        log.debug("pull from %s.%s: %s", stream, consumer, msg.headers)
                    break
                found.append(msg)
        finally:
            await subscription.unsubscribe()
        return found


def _put(queue: asyncio.Queue[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def put(msg: Msg) -> None:
        queue.put_nowait(msg)

    return put


def _status(msg: Msg) -> str:
    headers = msg.headers
    if headers and not msg.data:
        return str(headers.get("Status", ""))
    return ""


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(stream seq, deliveries, stored time in ns) from a JetStream delivery's reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[4]), int(tokens[7])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>...
    return int(tokens[7]), int(tokens[6]), int(tokens[9])


class JetStreamStore:
    """Streams kept by a NATS JetStream cluster; relays using it are stateless gateways.

    Args:
        servers: NATS URLs, a list or one comma-separated string
            (``"nats://h1:4222,nats://h2:4222"``).
        replicas: copies JetStream keeps of each stream (1..5; 3 survives
            losing a server).
        connect_timeout: seconds to reach the cluster at start.

    Raises MeshqError if nats-py is missing (``meshq[jetstream]``), ValueError
    for bad arguments. Give it to :class:`meshq.Relay` as ``store=``.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        replicas: int = 1,
        connect_timeout: float = 10.0,
    ) -> None:
        self._nats = _import_nats()
        urls = servers.split(",") if isinstance(servers, str) else list(servers)
        self.servers = [url.strip() for url in urls if url.strip()]
        if not self.servers:
            raise ValueError("give at least one NATS server URL")
        if not 1 <= replicas <= 5:
            raise ValueError("replicas is 1..5")
        self.replicas = replicas
        self.connect_timeout = connect_timeout
        self.store_id = "jetstream:?"
        self._streams: dict[str, _Stream] = {}
        self._consumers: dict[tuple[str, str], _Consumer] = {}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._jsm: JetStreamManager | None = None
        self._pulls: _Pulls | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="meshq-jetstream", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()  # requests running (loop thread only)
        self._stopping = asyncio.Event()  # set (on the loop) as the store closes

    # ------------------------------------------------------------------
    # The bridge: coroutines to the store's loop, answers back by Reply

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run ``coro`` on the store's loop and wait for it (setup only)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # and its task on the loop
            raise

    def _submit(self, coro: Coroutine[Any, Any, Any], reply: Reply) -> None:
        """Run ``coro`` on the store's loop; its result or error goes to ``reply``."""
        if self._closed:
            coro.close()
            reply.fail(MeshqError("relay store is closed"))
            return
        future = asyncio.run_coroutine_threadsafe(self._tracked(coro), self._loop)
        future.add_done_callback(functools.partial(_settle, reply))

    async def _tracked(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` as a task that close() can cancel and wait for."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await coro
        finally:
            self._tasks.discard(task)

    # ------------------------------------------------------------------
    # Setup

    def attach(self, streams: Sequence[StreamSettings], dedup_window: float, mesh: str) -> None:
        """Connect, and create or update a JetStream stream (and a dead-letter stream) per
        meshq stream. Raises MeshqError if the cluster cannot be reached or refuses."""
        try:
            self._call(self._attach(streams, dedup_window, mesh), self.connect_timeout + 30)
        except MeshqError:
            raise
        except Exception as exc:
            raise MeshqError(f"JetStream at {self.servers}: {type(exc).__name__}: {exc}") from exc

    async def _attach(
        self, streams: Sequence[StreamSettings], dedup_window: float, mesh: str
    ) -> None:
        api = self._nats.js.api
        try:
            nc = await asyncio.wait_for(
                self._nats.connect(
                    servers=self.servers,
                    connect_timeout=self.connect_timeout,
                    # Once connected, keep trying the cluster's servers for
                    # as long as the relay runs.
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    name=f"meshq-relay-{mesh}",
                    error_cb=_connection_error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=_reconnected,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise MeshqError(
                f"no NATS server of {self.servers} answered within {self.connect_timeout} s"
            ) from None
        self._nc = nc
        self._js = nc.jetstream(timeout=_API_TIMEOUT)
        self._jsm = nc.jsm(timeout=_API_TIMEOUT)
        self._pulls = _Pulls(nc)
        for config in streams:
            name = js_stream_name(mesh, config.name)
            stream = _Stream(config, name, f"meshq.{name}.", f"{name}_DEAD")
            window = dedup_window if config.max_age is None else min(dedup_window, config.max_age)
            info = await self._ensure_stream(
                api.StreamConfig(
                    name=name,
                    description=f"meshq stream {config.name!r} of mesh {mesh!r}",
                    subjects=[stream.subject_prefix + "*"],
                    storage=api.StorageType.FILE,
                    num_replicas=self.replicas,
                    duplicate_window=max(window, 0.001),
                    max_age=config.max_age,
                    max_msgs=config.max_messages,
                    max_bytes=config.max_bytes,
                )
            )
            await self._ensure_stream(
                api.StreamConfig(
                    name=stream.dead,
                    description=f"dead letters of meshq stream {config.name!r} of mesh {mesh!r}",
                    subjects=[f"{_ADVISORY}.{name}.*"],
                    storage=api.StorageType.FILE,
                    num_replicas=self.replicas,
                )
            )
            self._streams[config.name] = stream
            if info.cluster is not None:  # the cluster's name, or a lone server's
                self.store_id = f"jetstream:{info.cluster.name or info.cluster.leader}"

    async def _ensure_stream(self, config: Any) -> Any:
        """Create the stream, or update it to ``config``; its StreamInfo."""
        assert self._jsm is not None
        errors = self._nats.js.errors
        deadline = time.monotonic() + self.connect_timeout + 20
        while True:
            try:
                try:
                    return await self._jsm.add_stream(config)
                except errors.BadRequestError as exc:
                    if exc.err_code != 10058:  # "stream name already in use": update it
                        raise
                    return await self._jsm.update_stream(config)
            except (errors.ServiceUnavailableError, self._nats.errors.TimeoutError):
                # A cluster just started may still elect its meta leader.
                if time.monotonic() >= deadline:
                    raise
                await self._pause(0.25)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before a retry, or until the store closes."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ------------------------------------------------------------------
    # Publishing

    def publish(self, stream: str, publishes: list[Publish], reply: Reply) -> None:
        """Append with dedup by id; answers :class:`Published` once JetStream acknowledged all."""
        self._submit(self._publish(self._streams[stream], publishes), reply)

    async def _publish(self, stream: _Stream, publishes: list[Publish]) -> Published:
        assert self._js is not None
        js = self._js
        nats_errors = self._nats.errors
        js_errors = self._nats.js.errors
        seqs = [0] * len(publishes)
        stored: list[Record] = []
        todo = list(range(len(publishes)))
        deadline = time.monotonic() + _PUBLISH_RETRY
        while True:
            futures = []
            for i in todo:
                pub = publishes[i]
                futures.append(
                    await js.publish_async(
                        stream.subject_prefix + subject_token(pub.topic),
                        pub.payload,
                        headers={"Nats-Msg-Id": pub.msg_id.hex(), "Meshq-Flags": str(pub.flags)},
                    )
                )
            # One wait for the lot: no task per message.
            _, late = await asyncio.wait(futures, timeout=max(0.05, deadline - time.monotonic()))
            failed = []
            now = time.time_ns()
            for i, future in zip(todo, futures, strict=True):
                if future in late:
                    future.cancel()
                    failed.append(i)
                    continue
                ack = future.exception() or future.result()
                if isinstance(ack, BaseException):
                    transient = isinstance(
                        ack,
                        asyncio.TimeoutError
                        | nats_errors.TimeoutError
                        | nats_errors.NoRespondersError
                        | js_errors.ServiceUnavailableError
                        | js_errors.NoStreamResponseError,
                    )
                    if not transient:
                        raise MeshqError(f"JetStream refused the message: {ack}")
                    failed.append(i)
                    continue
                seqs[i] = ack.seq
                if not ack.duplicate:
                    pub = publishes[i]
                    stored.append(
                        Record(ack.seq, pub.topic, pub.msg_id, pub.flags, pub.payload, now, 0)
                    )
            if not failed:
                return Published(seqs, stored)
            if time.monotonic() >= deadline:
                raise MeshqError(f"JetStream did not acknowledge {len(failed)} messages in time")
            todo = failed  # same ids: what did get stored is deduplicated
            # "No responders" comes back at once while a stream elects its
            # leader: a short pause keeps the retries from spinning.
            await self._pause(_RETRY_PAUSE)

    # ------------------------------------------------------------------
    # Consumers

    def open_consumer(self, stream: str, request: Open, reply: Reply) -> None:
        """Create the durable consumer if new; answers its ack floor."""
        self._submit(self._open(stream, request), reply)

    async def _open(self, stream: str, request: Open) -> int:
        consumer = await self._consumer(
            stream, request.consumer, request.prefix, request.start, request.start_arg
        )
        assert self._jsm is not None
        info = await self._jsm.consumer_info(consumer.stream.name, consumer.durable)
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    async def _consumer(
        self,
        stream: str,
        name: str,
        prefix: str,
        start: str,
        start_arg: int,
        ack_wait: float | None = None,
        max_deliver: int | None = None,
    ) -> _Consumer:
        """The durable consumer ``name``: known, found in JetStream, or created at ``start``.

        Raises ValueError for a prefix outside the stream or another than
        the consumer's; updates AckWait / MaxDeliver when asked for others.
        """
        consumer = self._consumers.get((stream, name))
        if consumer is None:
            consumer = await self._find_or_create(stream, name, prefix, start, start_arg)
            self._consumers[(stream, name)] = consumer
        if consumer.prefix != prefix:
            raise ValueError(
                f"consumer {name!r} reads {consumer.prefix!r}, not {prefix!r}: use another name"
            )
        if (ack_wait is not None and ack_wait != consumer.ack_wait) or (
            max_deliver is not None and max_deliver != consumer.max_deliver
        ):
            consumer.ack_wait = ack_wait or consumer.ack_wait
            consumer.max_deliver = max_deliver or consumer.max_deliver
            await self._update_consumer(consumer)
        return consumer

    def _consumer_config(self, consumer: _Consumer, start: str, start_arg: int) -> Any:
        api = self._nats.js.api
        policy: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.ALL}
        if start == "seq":
            policy = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": max(1, start_arg),
            }
        elif start == "time":
            policy = {
                "deliver_policy": api.DeliverPolicy.BY_START_TIME,
                "opt_start_time": _rfc3339(start_arg),
            }
        elif start == "new":
            policy = {"deliver_policy": api.DeliverPolicy.NEW}
        return api.ConsumerConfig(
            durable_name=consumer.durable,
            description=f"meshq consumer {consumer.meshq_name!r}",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=consumer.ack_wait,
            max_deliver=consumer.max_deliver,
            max_ack_pending=_MAX_ACK_PENDING,
            num_replicas=self.replicas,
            metadata={"meshq.name": consumer.meshq_name, "meshq.prefix": consumer.prefix},
            **policy,
        )

    async def _find_or_create(
        self, stream: str, name: str, prefix: str, start: str, start_arg: int
    ) -> _Consumer:
        assert self._jsm is not None
        js_stream = self._streams[stream]
        durable = _durable_name(name)
        errors = self._nats.js.errors
        for _ in range(3):
            try:
                info = await self._jsm.consumer_info(js_stream.name, durable)
            except errors.NotFoundError:
                if not prefix.startswith(stream):
                    raise ValueError(f"prefix {prefix!r} is not in stream {stream!r}") from None
                consumer = _Consumer(
                    js_stream, name, durable, prefix, _DEFAULT_ACK_WAIT, _DEFAULT_MAX_DELIVER
                )
                try:
                    await self._jsm.add_consumer(
                        js_stream.name, self._consumer_config(consumer, start, start_arg)
                    )
                except errors.BadRequestError:
                    continue  # another relay made it first, with other settings: use theirs
                log.info("new consumer %r of %r (%s)", name, stream, start)
                return consumer
            config = info.config
            metadata = config.metadata or {}
            return _Consumer(
                js_stream,
                name,
                durable,
                metadata.get("meshq.prefix", prefix),
                float(config.ack_wait or _DEFAULT_ACK_WAIT),
                int(config.max_deliver or _DEFAULT_MAX_DELIVER),
            )
        raise MeshqError(f"consumer {name!r} of {stream!r} could not be created")

    async def _update_consumer(self, consumer: _Consumer) -> None:
        assert self._jsm is not None
        info = await self._jsm.consumer_info(consumer.stream.name, consumer.durable)
        config = info.config
        config.ack_wait = consumer.ack_wait
        config.max_deliver = consumer.max_deliver
        await self._jsm.add_consumer(consumer.stream.name, config)

    def fetch(self, stream: str, request: Fetch, reply: Reply) -> None:
        """Acks first, then what is due, waiting up to ``request.wait`` s; answers records."""
        self._submit(self._fetch(stream, request), reply)

    async def _fetch(self, stream: str, request: Fetch) -> list[list[object]]:
        consumer = await self._consumer(
            stream,
            request.consumer,
            request.prefix,
            request.start,
            request.start_arg,
            request.ack_wait,
            request.max_deliver,
        )
        await self._reply_each(consumer, request.acks, b"+ACK")
        found = await self._take(consumer, request.limit, request.wait)
        records: list[list[object]] = []
        size = 0
        for i, msg in enumerate(found):
            if size >= _FETCH_BYTES:  # the reply is full: the rest waits here
                consumer.held = found[i:] + consumer.held
                break
            seq, deliveries, time_ns = _ack_fields(msg.reply)
            topic = topic_of_token(msg.subject[len(consumer.stream.subject_prefix) :])
            if not topic.startswith(consumer.prefix):
                await self._nc_publish(msg.reply, b"+ACK")  # not for this consumer: done
                continue
            _remember(consumer.subjects, seq, msg.reply)
            records.append(_record(seq, topic, msg, time_ns, deliveries))
            size += len(msg.data)
        return records

    async def _take(self, consumer: _Consumer, limit: int, wait: float) -> list[Msg]:
        """Up to ``limit`` deliveries of about _FETCH_BYTES at most (more may come: the
        caller holds them back), waiting up to ``wait`` s for the first one.

        Pulls go in chunks sized by the largest message seen: JetStream's own
        max_bytes bound could not be used (nats-server 2.15 answered such
        pulls "409 Batch Completed" without their messages, in this
        project's tests).
        """
        assert self._pulls is not None
        pulls = self._pulls
        js_stream, durable = consumer.stream.name, consumer.durable
        found, consumer.held = consumer.held[:limit], consumer.held[limit:]
        size = sum(len(msg.data) for msg in found)
        waited = False
        while len(found) < limit and size < _FETCH_BYTES:
            chunk = max(1, min(limit - len(found), (_FETCH_BYTES - size) // consumer.largest))
            try:
                got = await pulls.pull(js_stream, durable, chunk)
                if not got and not found and wait > 0 and not waited:
                    # Long poll for one, then take what else is there: a waiting
                    # pull for more would hold messages back until it filled.
                    waited = True
                    got = await pulls.pull(js_stream, durable, 1, expires=wait)
                    chunk = 1
            except _Unreachable:
                break  # nothing this time: the consumer's next fetch asks again
            for msg in got:
                consumer.largest = max(consumer.largest, len(msg.data) + 1)
                size += len(msg.data)
            found += got
            if len(got) < chunk:
                break
        return found

    async def _nc_publish(self, subject: str, data: bytes) -> None:
        assert self._nc is not None
        await self._nc.publish(subject, data)

    async def _reply_each(self, consumer: _Consumer, seqs: list[int], verb: bytes) -> int:
        """Send ``verb`` (+ACK, -NAK) for each seq; return how many went.

        An ack of a message another relay delivered goes to a subject made
        from its stream sequence (JetStream acks by that); a nak needs the
        delivery's own subject, so one for a message delivered elsewhere is
        left to AckWait.
        """
        sent = 0
        for seq in seqs:
            subject = consumer.subjects.pop(seq, None)
            if subject is None:
                if verb != b"+ACK":
                    continue
                subject = f"$JS.ACK.{consumer.stream.name}.{consumer.durable}.1.{seq}.1.0.0"
            await self._nc_publish(subject, verb)
            sent += 1
        return sent

    def ack(self, stream: str, request: Ack, reply: Reply) -> None:
        """Acknowledge; released seqs are handed back (-NAK: JetStream counts the delivery)."""
        self._submit(self._ack(stream, request), reply)

    async def _ack(self, stream: str, request: Ack) -> int:
        consumer = self._known(stream, request.consumer)
        await self._reply_each(consumer, request.released, b"-NAK")
        return await self._reply_each(consumer, request.acks, b"+ACK")

    def nak(self, stream: str, request: Nak, reply: Reply) -> None:
        """Make seqs due again now."""
        self._submit(self._nak(stream, request), reply)

    async def _nak(self, stream: str, request: Nak) -> None:
        await self._reply_each(self._known(stream, request.consumer), request.seqs, b"-NAK")

    def _known(self, stream: str, name: str) -> _Consumer:
        consumer = self._consumers.get((stream, name))
        if consumer is None:
            # Known to JetStream maybe, but acks through a relay that never
            # served it are made from the stream sequence alone.
            consumer = _Consumer(
                self._streams[stream],
                name,
                _durable_name(name),
                "",
                _DEFAULT_ACK_WAIT,
                _DEFAULT_MAX_DELIVER,
            )
        return consumer

    # ------------------------------------------------------------------
    # Reading and observing

    def read(self, stream: str, request: Read, reply: Reply) -> None:
        """Stored records after ``request.after``, or a consumer's dead letters."""
        if request.consumer:
            self._submit(self._dead(stream, request), reply)
        else:
            self._submit(self._read(stream, request), reply)

    async def _read(self, stream: str, request: Read) -> list[list[object]]:
        js_stream = self._streams[stream]
        messages = await self._scan(js_stream.name, request.after + 1, request.limit, "")
        records: list[list[object]] = []
        for msg in messages:
            seq, _, time_ns = _ack_fields(msg.reply)
            topic = topic_of_token(msg.subject[len(js_stream.subject_prefix) :])
            records.append(_record(seq, topic, msg, time_ns, 0))
        return records

    async def _scan(
        self, stream: str, first: int, limit: int, subject: str, max_bytes: int = _FETCH_BYTES
    ) -> list[Msg]:
        """Up to ``limit`` messages of ``stream`` from seq ``first`` (an ephemeral consumer),
        about ``max_bytes`` of payload at most (at least one).

        The consumer (one replica) may sit on a server that has not yet
        stored what the stream's leader confirmed, or not yet be known to
        the other servers (both seen on a loaded machine, about 1 read in 60
        right after a publish). Unfiltered, the read goes on until it has the
        leader's last seq (waiting up to _CATCH_UP s for it), so that an
        answer short of it means the messages are not there.
        """
        assert self._jsm is not None and self._pulls is not None
        api = self._nats.js.api
        last, start = None, max(1, first)
        if not subject:
            state = (await self._jsm.stream_info(stream)).state  # the leader's answer
            last = state.last_seq if state.messages else None
            start = max(start, state.first_seq)
        info = await self._jsm.add_consumer(
            stream,
            api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(1, first),
                ack_policy=api.AckPolicy.NONE,
                filter_subject=subject or None,
                inactive_threshold=30.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        found: list[Msg] = []
        size, largest = 0, 16 * 1024
        deadline = time.monotonic() + _API_TIMEOUT
        try:
            while len(found) < limit and size < max_bytes:
                chunk = max(1, min(limit - len(found), (max_bytes - size) // largest))
                seen = _ack_fields(found[-1].reply)[0] if found else start - 1
                expires = 0.0
                if last is not None and seen < last:
                    # Known to be stored: the pull ends as soon as they are all here.
                    chunk, expires = min(chunk, last - seen), _CATCH_UP
                try:
                    got = await self._pulls.pull(stream, info.name, chunk, expires=expires)
                except _Unreachable:
                    # Not "no messages": the new consumer is not reachable yet.
                    if time.monotonic() >= deadline:
                        raise MeshqError(f"JetStream consumer on {stream} unreachable") from None
                    await self._pause(_RETRY_PAUSE)
                    continue
                for msg in got:
                    largest = max(largest, len(msg.data) + 1)
                    size += len(msg.data)
                found += got
                if len(got) < chunk:
                    break
            return found
        finally:
            try:
                await self._jsm.delete_consumer(stream, info.name)
            except Exception as exc:  # it expires by itself
                log.debug("reader consumer %s not deleted: %s", info.name, exc)

    async def _dead(self, stream: str, request: Read) -> list[list[object]]:
        assert self._jsm is not None
        js_stream = self._streams[stream]
        durable = _durable_name(request.consumer)
        advisories = await self._scan(
            js_stream.dead, 1, 1_000_000, f"{_ADVISORY}.{js_stream.name}.{durable}", 1 << 62
        )
        letters: dict[int, int] = {}
        for advisory in advisories:
            event = json.loads(advisory.data)
            letters[int(event["stream_seq"])] = int(event.get("deliveries", 0))
        records: list[list[object]] = []
        size = 0
        for seq in sorted(s for s in letters if s > request.after)[: request.limit]:
            try:
                raw = await self._jsm.get_msg(js_stream.name, seq)
            except self._nats.js.errors.NotFoundError:
                continue  # removed by retention: the advisory alone is left
            headers = raw.headers or {}
            topic = topic_of_token((raw.subject or "")[len(js_stream.subject_prefix) :])
            payload = raw.data or b""
            records.append(
                [
                    seq,
                    topic,
                    bytes.fromhex(headers.get("Nats-Msg-Id", "")),
                    int(headers.get("Meshq-Flags", "0")),
                    payload,
                    _ns(raw.time),
                    letters[seq],
                ]
            )
            size += len(payload)
            if size >= _FETCH_BYTES:
                break
        return records

    def info(self, stream: str, reply: Reply) -> None:
        """Per-stream facts, as the SQLite relay gives them."""
        self._submit(self._info(stream), reply)

    async def _info(self, stream: str) -> dict[str, object]:
        assert self._jsm is not None
        js_stream = self._streams[stream]
        info = await self._jsm.stream_info(js_stream.name)
        dead = await self._jsm.stream_info(js_stream.dead)
        state = info.state
        consumers: dict[str, object] = {}
        for consumer in await self._jsm.consumers_info(js_stream.name):
            metadata = consumer.config.metadata or {}
            name = metadata.get("meshq.name")
            if name is None:
                continue  # a reader's ephemeral consumer
            consumers[name] = {
                "ack_floor": consumer.ack_floor.stream_seq if consumer.ack_floor else 0,
                "lag": (consumer.num_pending or 0) + (consumer.num_ack_pending or 0),
                "out": consumer.num_ack_pending or 0,
            }
        return {
            "stream": stream,
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_seq if state.messages else 0,
            "last_seq": state.last_seq,
            "consumers": consumers,
            "dead_letters": dead.state.messages,
            "corrupt": 0,
            "durability": f"jetstream R{self.replicas}",
        }

    # ------------------------------------------------------------------

    async def _disconnected(self) -> None:
        if not self._closed:  # closing disconnects too
            log.warning("relay store: disconnected from NATS, reconnecting")

    async def _shutdown(self) -> None:
        """End the requests in flight (their answers fail), then close the connection."""
        self._stopping.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()

    def close(self) -> None:
        """Drain the connection, stop the loop and its thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown(), 10.0)
        except Exception as exc:
            log.debug("NATS connection close: %s", exc)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            self._loop.close()


async def _connection_error(error: Exception) -> None:
    # Every failed reconnect attempt lands here: not worth a traceback each.
    log.debug("NATS connection: %s: %s", type(error).__name__, error)


async def _reconnected() -> None:
    log.warning("relay store: reconnected to NATS")


def _settle(reply: Reply, future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled():
        reply.fail(MeshqError("relay store closed"))
        return
    error = future.exception()
    if error is None:
        reply.send(future.result())
    elif isinstance(error, ValueError | MeshqError):
        reply.fail(error)
    else:
        reply.fail(MeshqError(f"JetStream: {type(error).__name__}: {error}"))


def _remember(subjects: dict[int, str], seq: int, subject: str) -> None:
    subjects.pop(seq, None)
    subjects[seq] = subject
    if len(subjects) > _REMEMBERED:  # the oldest go; their acks are made from the seq
        del subjects[next(iter(subjects))]


def _record(seq: int, topic: str, msg: Msg, time_ns: int, deliveries: int) -> list[object]:
    headers = msg.headers or {}
    return [
        seq,
        topic,
        bytes.fromhex(headers.get("Nats-Msg-Id", "")),
        int(headers.get("Meshq-Flags", "0")),
        msg.data,
        time_ns,
        deliveries,
    ]


def _rfc3339(time_ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.timezone.utc)


def _ns(when: Any) -> int:
    if isinstance(when, datetime.datetime):
        return int(when.timestamp() * 1e9)
    if isinstance(when, str):
        return int(datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1e9)
    return 0
