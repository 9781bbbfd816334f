"""The node: identity, control plane, peer table, and the publish socket.

One background thread (the control thread) owns the control ROUTER, one
DEALER per peer, and the peer table; every control socket is used from that
thread only. Other threads talk to it through typed commands on a queue plus
a wake-up pipe. Peer events reach the application on a separate dispatcher
thread, so a slow callback never stalls heartbeats.

The publish socket (meshq/publishing.py) belongs to the application side:
``publish`` sends straight into it under a lock, with no thread hop.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import zmq

from .config import MeshConfig
from .control import Announce, Command, ControlPlane, Found, Lost, Redial, Stop
from .discovery import Candidate, Discovery, MdnsDiscovery, SeedDiscovery
from .durable import DurableMessage, DurablePublisher, DurableSubscription, Start
from .errors import Closed, MeshqError, Timeout
from .gatekeeper import Gatekeeper
from .interfaces import local_networks, resolve_interfaces
from .message import Message
from .offences import Offences
from .peers import EventKind, Peer, PeerEvent, PeerState
from .publishing import PublishSocket
from .requester import DEFAULT_RETRIES, DEFAULT_TIMEOUT, GatherResult, Requester, RequestFuture
from .security import Curve, KeyBook, Rejection
from .services import DeferredHandler, Handler, ServiceDirectory, ServiceRunner, Ticker
from .servicewire import check_service_name
from .sockets import SocketFactory
from .subscription import PublisherDirectory, Subscription, refresh_this_thread
from .wire import (
    MAX_SERVICES,
    Limits,
    check_identity,
)
from .workers import TaskHandler, serve_worker

__all__ = ["Node"]

log = logging.getLogger("meshq.node")

PeerCallback = Callable[[Peer], None]
RejectionCallback = Callable[[Rejection], None]
MessageHandler = Callable[[Message], object]
DurableMessageHandler = Callable[[DurableMessage], object]
DirectHandler = Callable[[str, object], object]
#: The service through which send_to() reaches a peer's on_direct handler.
DIRECT_SERVICE = "meshq/direct"
_HANDLER_JOIN = 5.0  # seconds close() waits for a busy on_message handler
_MAX_REJECTIONS = 1000  # security refusals kept for rejections()


class Node:
    """A member of a mesh. Starts at construction; use as a context manager.

    Args:
        name: a human-friendly name (default: ``node-`` plus the id's start).
        mesh: nodes only join nodes of the same mesh name.
        interfaces: IPv4 addresses to listen and advertise on (default: every
            non-loopback address, or ``MESHQ_INTERFACES``). ``["127.0.0.1"]``
            makes a loopback-only mesh.
        seeds: control endpoints (``"tcp://198.18.0.5:7600"``) to join without
            multicast; one seed is enough, its peers are learned from it.
        config: tunables; see :class:`MeshConfig`.
        headers: small str -> str facts about this node, shown to peers.
        discovery: False to skip mDNS entirely (seeds only).
        security: ``meshq.Curve(secret_key_file, allow=...)`` to encrypt and
            authenticate every connection with CURVE; only peers whose keys
            are in the allowlist exchange anything with this node. Seeds then
            need their key: ``"tcp://198.18.0.5:7600#KEY"``.

    Raises ValueError for a bad interface, seed, name, mesh or headers (or a
    seed without a key under security), meshq.BindError if a port cannot be
    bound.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        mesh: str = "default",
        interfaces: Sequence[str] | None = None,
        seeds: Sequence[str] = (),
        config: MeshConfig | None = None,
        headers: Mapping[str, str] | None = None,
        discovery: bool = True,
        security: Curve | None = None,
    ) -> None:
        self.config = config or MeshConfig()
        #: The CURVE policy this node enforces, or None for no security.
        self.security = security
        self._raw_id = _new_node_id()
        #: This node's id: 32 hex digits, new at every start.
        self.id = self._raw_id.hex()
        self.name = name or f"node-{self.id[:8]}"
        self.mesh = mesh
        self.headers = dict(headers or {})
        self.interfaces = resolve_interfaces(interfaces)
        self._networks = local_networks(self.interfaces)
        self._limits = Limits(
            max_control_bytes=self.config.max_control_bytes,
            max_topic_bytes=self.config.max_topic_bytes,
            max_peers=self.config.max_peers,
            max_headers=self.config.max_headers,
            max_payload_bytes=self.config.max_message_bytes,
            max_msgpack_bytes=self.config.max_msgpack_bytes,
        )
        check_identity(self.name, mesh, self.headers, len(self.interfaces), self._limits)
        self._discoveries: list[Discovery] = []
        seed_discovery = SeedDiscovery(seeds)  # validates before anything starts
        if security is not None and seed_discovery.keyless:
            raise ValueError(
                f"with security a seed needs its public key, as ENDPOINT#KEY: "
                f"{seed_discovery.keyless[0]}"
            )
        self._rejections: collections.deque[Rejection] = collections.deque(maxlen=_MAX_REJECTIONS)
        self._rejected = 0
        self._rejection_lock = threading.Lock()
        self._rejection_callbacks: list[RejectionCallback] = []
        self._context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
        keys = KeyBook()
        self._gatekeeper: Gatekeeper | None = None
        if security is not None:
            self._gatekeeper = Gatekeeper(
                self._context, security, keys, self._on_rejected, self._on_handshake_failed
            )
            self._gatekeeper.start()
        self._sockets = SocketFactory(
            self.config, curve=security, keys=keys, gatekeeper=self._gatekeeper
        )
        self._closed = False
        self._close_lock = threading.Lock()

        # Application side: publishing goes straight into this socket.
        try:
            self._publisher = PublishSocket(
                self._context,
                self._sockets,
                node_id=self._raw_id,
                interfaces=self.interfaces,
                port=self.config.publish_port,
                limits=self._limits,
                max_topics=self.config.max_topics,
            )
        except BaseException:
            self._stop_gatekeeper()
            self._context.term()
            raise
        self.publish_endpoints = self._publisher.endpoints
        self._local_publish = self._publisher.local_endpoint
        self._blocking_topics: set[str] = set()  # declared; saves a lock per publish
        self._directory = PublisherDirectory()
        # Request/reply: who offers what, our provider side (started by the
        # first serve()), and one caller side per calling thread.
        self._service_directory = ServiceDirectory()
        self._service_runner: ServiceRunner | None = None
        self._service_lock = threading.Lock()
        self._requesters = threading.local()
        self._handler_threads: list[threading.Thread] = []  # on_message handlers
        self._directory.update({self.id: self._local_publish})

        # Shared with the control thread.
        self._commands: collections.deque[Command] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._state = threading.Condition()
        self._peer_snapshot: list[Peer] = []
        self._stats: collections.Counter[str] = collections.Counter()
        self._event_queue: collections.deque[PeerEvent] = collections.deque(
            maxlen=self.config.event_queue_size
        )
        self._callbacks: dict[EventKind, list[PeerCallback]] = collections.defaultdict(list)
        # Called on the control thread with each batch of events; must not
        # block (AsyncNode hops to its event loop from here).
        self._event_listeners: list[Callable[[list[PeerEvent]], None]] = []
        # (callbacks registered when the event happened, event); None stops.
        self._dispatch_queue: queue.SimpleQueue[
            tuple[list[PeerCallback], PeerEvent] | tuple[list[RejectionCallback], Rejection] | None
        ] = queue.SimpleQueue()

        self._control_endpoints: tuple[str, ...] = ()
        started = threading.Event()
        startup_error: list[BaseException] = []
        self._control_thread = threading.Thread(
            target=self._control_main,
            args=(started, startup_error),
            name=f"meshq-control-{self.id[:8]}",
            daemon=True,
        )
        self._control_thread.start()
        started.wait()
        if startup_error:
            self._publisher.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._stop_gatekeeper()
            self._context.term()
            raise startup_error[0]
        self._dispatcher = threading.Thread(
            target=self._dispatch_main, name=f"meshq-events-{self.id[:8]}", daemon=True
        )
        self._dispatcher.start()

        control_port = int(self.control_endpoints[0].rpartition(":")[2])
        if discovery:
            self._discoveries.append(
                MdnsDiscovery(
                    node_id=self._raw_id,
                    name=self.name,
                    mesh=mesh,
                    interfaces=self.interfaces,
                    control_port=control_port,
                    public_key=None if security is None else security.public_key,
                    max_records=self.config.max_mdns_records,
                    max_txt_bytes=self.config.max_txt_bytes,
                )
            )
        self._discoveries.append(seed_discovery)
        try:
            for source in self._discoveries:
                source.start(self._on_found, self._on_lost)
        except BaseException:
            self.close()
            raise
        log.info("node %s (%s) listening on %s", self.name, self.id[:8], self._control_endpoints)

    # ------------------------------------------------------------------
    # Public API

    def publish(
        self, topic: str, data: object, *, durable: bool = False, timeout: float = 5.0
    ) -> int | None:
        """Send ``data`` (bytes, or anything msgpack can encode) to subscribers of ``topic``.

        Never blocks: a subscriber whose queue is full (``publish_hwm``)
        misses the message, and sees the gap in sequence numbers. Safe from
        any thread. Raises ValueError for a bad topic, TypeError for data
        msgpack cannot encode, meshq.Closed after close().

        With ``durable=True`` the message goes to the relay holding the
        topic's stream, and this returns its stream sequence number once the
        relay has it on disk (see meshq.DurablePublisher to pipeline many).
        Raises meshq.NoProviders at once if no relay holds the stream,
        meshq.RelayConflict if two do, meshq.Timeout after ``timeout`` s.
        """
        if durable:
            return self._durable_publisher(timeout).publish(topic, data)
        self._publisher.publish(topic, data)
        return None

    def _durable_publisher(self, timeout: float) -> DurablePublisher:
        publisher: DurablePublisher | None = getattr(self._requesters, "durable", None)
        if publisher is None or publisher.timeout != timeout:
            publisher = DurablePublisher(self, timeout=timeout)
            self._requesters.durable = publisher
        return publisher

    def publish_many(self, topic: str, items: Iterable[object]) -> int:
        """Publish many messages on one topic at once; return how many.

        Same delivery as calling :meth:`publish` for each item, but up to
        1024 messages travel in one frame, which is several times faster for
        small messages. Subscribers still receive them one by one.
        """
        return self._publisher.publish_many(topic, items)

    def publish_blocking(self, topic: str, data: object, *, timeout: float | None = 1.0) -> None:
        """Publish ``data`` on ``topic``, waiting while a subscriber's queue is full.

        Where :meth:`publish` drops for a full subscriber, this waits until
        every subscriber of ``topic`` has room, up to ``timeout`` seconds
        (None: no limit), then raises meshq.Timeout; the message then went
        to nobody and left no gap. One slow subscriber holds the topic
        back for all. A topic is published one way or the other (see
        :meth:`declare_blocking`, done here on first use). Safe from any
        thread. Raises ValueError for a topic published with
        :meth:`publish`, meshq.Closed after close().
        """
        if topic not in self._blocking_topics:
            self.declare_blocking(topic)
        self._publisher.publish_blocking(topic, data, timeout)

    def declare_blocking(self, topic: str) -> None:
        """Publish ``topic`` blocking from now on (:meth:`publish_blocking`), not dropping.

        The first call binds a second, never-dropping publish socket
        (``ZMQ_XPUB_NODROP``) and announces it, so subscribers connect to it
        as well; call this before :meth:`wait_for_subscribers` so that they
        are connected before the first message. Raises ValueError if
        ``topic`` was already published with :meth:`publish`,
        meshq.BindError, meshq.Closed.
        """
        self._check_open()
        if self._publisher.declare_blocking(topic):
            self._send_command(Announce())
        if len(self._blocking_topics) >= self.config.max_topics:
            self._blocking_topics.clear()  # only a shortcut: declaring again is harmless
        self._blocking_topics.add(topic)

    def wait_for_subscribers(self, topic: str, n: int, timeout: float | None = None) -> int:
        """Block until at least ``n`` connected subscriptions match ``topic``; return the count.

        The answer to ZeroMQ's "slow joiner": once this returns, a message
        published on ``topic`` reaches those subscribers (their own node's
        subscriptions count too). Raises meshq.Timeout after ``timeout`` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            count = self.subscribers(topic)
            if count >= n:
                return count
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"{count} of {n} subscribers of {topic!r} after {timeout} s")
            time.sleep(0.005)  # subscriptions arrive on the socket; nothing to block on

    def subscribers(self, topic: str) -> int:
        """How many connected subscriptions would receive a message on ``topic`` now.

        This thread's own idle subscriptions are connected first, so they count.
        """
        refresh_this_thread()
        return self._publisher.subscribers(topic)

    def check_topic(self, topic: str) -> None:
        """Raise ValueError unless ``topic`` can be published (1..max_topic_bytes, no NUL)."""
        self._publisher.check_topic(topic)

    @overload
    def subscribe(self, prefix: str) -> Subscription: ...

    @overload
    def subscribe(
        self,
        prefix: str,
        *,
        durable: str,
        start: Start = ...,
        ack: Literal["auto", "explicit"] = ...,
        ack_wait: float = ...,
        max_deliver: int = ...,
    ) -> DurableSubscription: ...

    def subscribe(
        self,
        prefix: str,
        *,
        durable: str | None = None,
        start: Start = Start.FIRST,
        ack: Literal["auto", "explicit"] = "auto",
        ack_wait: float = 30.0,
        max_deliver: int = 5,
    ) -> Subscription | DurableSubscription:
        """Receive every message whose topic starts with ``prefix``, from all peers.

        The subscription belongs to the calling thread. Messages published
        before it connected to a publisher are not received (as in ZeroMQ).
        Raises meshq.Closed after close(), ValueError for an oversized prefix.

        With ``durable="billing"`` it is instead the named durable consumer
        ``billing`` of the relay stream holding ``prefix``: it gets what was
        stored after its last acknowledged message, then live ones, in stream
        order. A new consumer begins at ``start``. Acknowledgement is
        automatic when the next message is received (``ack="auto"``) or by
        ``msg.ack()``; what is not acknowledged within ``ack_wait`` seconds is
        delivered again, up to ``max_deliver`` times, then dead-lettered.
        Processes sharing one name share the messages between them.
        """
        self._check_prefix(prefix)
        if durable is not None:
            self._check_open()
            return DurableSubscription(
                self,
                prefix,
                durable,
                start=start,
                ack=ack,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
            )
        subscription = Subscription(
            prefix,
            context=self._context,
            factory=self._sockets,
            directory=self._directory,
            limits=self._limits,
        )
        subscription.on_gap = self._count_missed
        return subscription

    def _count_missed(self, missed: int) -> None:
        """A subscription saw a gap: ``messages_missed`` in stats() sums them all."""
        self._count("messages_missed", missed)

    # ------------------------------------------------------------------
    # Request/reply

    def serve(self, name: str, handler: Handler | None = None) -> Any:
        """Offer service ``name``: ``handler(data)`` answers each request.

        Usable as ``node.serve("calc", fn)`` or as a decorator
        ``@node.serve("calc")``. Many nodes may offer one name; callers spread
        their requests over all of them. Handlers run one at a time on the
        node's service thread; what a handler raises reaches the caller as
        meshq.RemoteError and the service keeps serving. Returns the handler.
        Raises ValueError for a bad name or more than 64 services,
        meshq.BindError if ``service_port`` is taken.
        """
        if handler is None:
            return lambda function: self.serve(name, function)
        self._offer(name, handler)
        return handler

    def _serve_deferred(self, name: str, handler: DeferredHandler) -> None:
        """Offer ``name`` with a handler that may answer later (see services.ReplyTo)."""
        self._offer(name, handler, deferred=True)

    def _set_header(self, key: str, value: str) -> None:
        """Add a header after start (peers see it with the next HELLO, sent now)."""
        headers = {**self.headers, key: value}
        check_identity(self.name, self.mesh, headers, len(self.interfaces), self._limits)
        self.headers = headers
        self._send_command(Announce())

    def _add_service_ticker(self, ticker: Ticker) -> None:
        """Run ``ticker`` on the service thread between requests (see services.Ticker)."""
        runner = self._service_runner
        assert runner is not None, "serve something first"
        runner.add_ticker(ticker)

    def _offer(self, name: str, handler: Any, deferred: bool = False) -> None:
        """Add a service to the runner (started on first use), and announce it."""
        check_service_name(name)
        self._check_open()
        with self._service_lock:
            if self._service_runner is None:
                self._service_runner = ServiceRunner(
                    self._context,
                    self._sockets,
                    node_id=self.id,
                    interfaces=self.interfaces,
                    port=self.config.service_port,
                    limits=self._limits,
                    count=self._count,
                    on_exit=self._close_thread_requester,
                    offences=Offences(
                        self.config.max_offences, self.config.offence_window, self.config.ban_time
                    ),
                )
            names = self._service_runner.names()
            if name not in names:
                if len(names) >= MAX_SERVICES:
                    raise ValueError(f"a node offers at most {MAX_SERVICES} services")
                # Peers would refuse a HELLO that no longer fits: say so here.
                check_identity(
                    self.name,
                    self.mesh,
                    self.headers,
                    len(self.interfaces),
                    self._limits,
                    services=(*names, name),
                )
            if deferred:
                self._service_runner.add_deferred(name, handler)
            else:
                self._service_runner.add(name, handler)
        self._send_command(Announce())

    def service(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`serve`: ``@node.service("calc")``."""
        return lambda handler: self.serve(name, handler)  # type: ignore[no-any-return]

    def worker(self, stage: str) -> Callable[[TaskHandler], TaskHandler]:
        """Decorator: offer pipeline stage ``stage``; ``handler(task)`` returns the task's result.

        ``@node.worker("resize")`` is ``meshq.patterns.Worker(node, "resize",
        handler)``: producers (``meshq.patterns.Pipeline``) spread their tasks
        over every worker of the stage. A task whose handler raises fails
        alone. Raises ValueError for a bad stage name.
        """

        def register(handler: TaskHandler) -> TaskHandler:
            serve_worker(self, stage, handler)
            return handler

        return register

    def request(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> object:
        """Ask one provider of ``service`` and return its reply's data.

        Each attempt waits ``timeout`` seconds; a silent provider is replaced
        by one not asked yet, for up to ``retries`` more attempts, so the
        call returns within about ``(retries + 1) * timeout`` seconds. A
        provider is never asked twice: with one provider a slow handler
        runs once, and the call raises meshq.Timeout after ``timeout`` s.
        Raises meshq.NoProviders at once if nobody offers the service,
        meshq.RemoteError if the handler raised, meshq.Timeout when every
        attempt went unanswered, meshq.PayloadTooLarge (a ValueError) for
        ``data`` that no provider would accept.
        """
        return self.request_async(service, data, timeout=timeout, retries=retries).result()

    def request_async(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> RequestFuture:
        """Send a request and return at once; ``future.result()`` waits for the reply.

        Many may be in flight together. The future belongs to the calling
        thread: wait on it there. Raises meshq.NoProviders at once.
        """
        return self._requester().start(service, data, timeout, retries)

    def gather(self, service: str, data: object, *, timeout: float = 0.5) -> GatherResult:
        """Ask every provider of ``service`` at once; return what came back within ``timeout`` s.

        The result holds the replies and errors by provider id and the ids
        of the providers that did not answer. Raises meshq.NoProviders.
        """
        return self._requester().gather(service, data, timeout)

    def send_to(self, peer_id: str, data: object, *, timeout: float = 1.0) -> object:
        """Send ``data`` to one peer's :meth:`on_direct` handler; return what it returned.

        Delivered at most once, acknowledged by the reply. Raises
        meshq.NoProviders at once if that peer takes no direct messages (or
        is unknown), meshq.RemoteError if its handler raised, meshq.Timeout.
        """
        future = self._requester().start(
            DIRECT_SERVICE, {"from": self.id, "data": data}, timeout, 0, only=peer_id
        )
        return future.result()

    def on_direct(self, handler: DirectHandler) -> DirectHandler:
        """Take direct messages (:meth:`send_to`): ``handler(sender_id, data)``, a decorator too.

        Runs on the node's service thread; its return value is the reply.
        """

        def unwrap(envelope: object) -> object:
            if not (isinstance(envelope, dict) and isinstance(envelope.get("from"), str)):
                raise ValueError("not a direct message")
            return handler(envelope["from"], envelope.get("data"))

        self.serve(DIRECT_SERVICE, unwrap)
        return handler

    def services(self) -> dict[str, list[str]]:
        """Every service on the mesh (this node's included) and the ids of its providers."""
        return {name: sorted(by_id) for name, by_id in self._service_directory.all().items()}

    def run(self, timeout: float | None = None) -> None:
        """Block while the node serves: until it is closed, Ctrl-C, or ``timeout`` s.

        For a process whose only job is to offer services or callbacks.
        Ctrl-C returns normally (the ``with`` block then says goodbye).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._state:
                while not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    # Short waits keep Ctrl-C responsive in the main thread.
                    self._state.wait(0.2 if remaining is None else min(remaining, 0.2))
        except KeyboardInterrupt:
            return

    def _requester(self) -> Requester:
        requester: Requester | None = getattr(self._requesters, "requester", None)
        if requester is None:
            self._check_open()
            requester = Requester(
                self._context, self._sockets, self._service_directory, self._limits, self._count
            )
            self._directory.watch(requester)  # so it closes with the node
            self._requesters.requester = requester
        return requester

    def _close_thread_requester(self) -> None:
        """Close the calling thread's caller side, if it has one (a thread that ends)."""
        requester: Requester | None = getattr(self._requesters, "requester", None)
        if requester is not None:
            requester.close()

    def _offered_services(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        runner = self._service_runner
        return (runner.names(), runner.endpoints) if runner is not None else ((), ())

    def _local_service_endpoint(self) -> str:
        runner = self._service_runner
        assert runner is not None, "only called while this node serves"
        return runner.local_endpoint

    # ------------------------------------------------------------------
    # Peers

    def peers(self) -> list[Peer]:
        """Every peer this node knows, with its state."""
        with self._state:
            return list(self._peer_snapshot)

    def wait_for_peers(self, n: int, timeout: float | None = None) -> list[Peer]:
        """Block until at least ``n`` peers are alive and connected; return them.

        Raises meshq.Timeout after ``timeout`` seconds, meshq.Closed if the
        node closes meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            while True:
                alive = [p for p in self._peer_snapshot if p.state is PeerState.ALIVE]
                if len(alive) >= n:
                    break
                self._check_open()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"{len(alive)} of {n} peers after {timeout} s")
                self._state.wait(remaining)
        # Peers that just joined are publishers this thread's subscriptions
        # should hear: connect them now rather than at the next recv().
        refresh_this_thread()
        return alive

    @overload
    def on_message(self, prefix: str) -> Callable[[MessageHandler], MessageHandler]: ...

    @overload
    def on_message(
        self, prefix: str, *, durable: str
    ) -> Callable[[DurableMessageHandler], DurableMessageHandler]: ...

    def on_message(self, prefix: str, *, durable: str | None = None) -> Callable[[Any], Any]:
        """Decorator: call ``handler(message)`` for every message under ``prefix``.

        Each handler gets a thread of its own that owns its subscription, so
        a slow handler delays only itself; its backlog is bounded by
        ``subscribe_hwm`` (beyond it messages are dropped and show up as
        gaps). A handler that raises is logged and counted
        (``message_handler_errors``) and keeps receiving. Runs until the node closes.

        With ``durable="name"`` the handler is that durable consumer (see
        :meth:`subscribe`): a message is acknowledged once the handler
        returns, and one whose handler raised is delivered again (``nak``).
        """
        self._check_prefix(prefix)

        def register(handler: Any) -> Any:
            ready = threading.Event()
            thread = threading.Thread(
                target=self._handle_messages,
                args=(prefix, durable, handler, ready),
                name=f"meshq-on-message-{self.id[:8]}",
                daemon=True,
            )
            thread.start()
            ready.wait()  # subscribed: what is published from now on reaches it
            self._handler_threads.append(thread)
            return handler

        return register

    def _handle_messages(
        self, prefix: str, durable: str | None, handler: Any, ready: threading.Event
    ) -> None:
        subscription: Subscription | DurableSubscription
        try:
            if durable is None:
                subscription = self.subscribe(prefix)
            else:
                subscription = self.subscribe(prefix, durable=durable)
        except MeshqError as exc:
            if not isinstance(exc, Closed):
                log.error("on_message(%r, durable=%r) not started: %s", prefix, durable, exc)
            return
        finally:
            ready.set()
        with subscription:
            try:
                for message in subscription:
                    try:
                        handler(message)
                    except Exception:
                        self._count("message_handler_errors")
                        log.exception("on_message handler %r failed", handler)
                        if isinstance(message, DurableMessage):
                            message.nak()
            except Closed:
                return

    def on_peer_joined(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` for every peer that is or becomes alive. A decorator too.

        Peers that joined before the callback was registered are reported to
        it as well, once each, so registering after ``Node()`` misses nobody.
        Callbacks run on the node's event thread, never on the I/O thread;
        an exception in one is logged and counted as ``callback_errors``.
        """
        with self._state:
            self._callbacks[EventKind.JOINED].append(callback)
            for peer in self._peer_snapshot:
                self._dispatch_queue.put(([callback], PeerEvent(EventKind.JOINED, peer)))
        return callback

    def on_peer_left(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` when a peer leaves (goodbye or timeout)."""
        with self._state:
            self._callbacks[EventKind.LEFT].append(callback)
        return callback

    def on_peer_suspect(self, callback: PeerCallback) -> PeerCallback:
        """Call ``callback(peer)`` when a peer falls silent past ``suspect_after``."""
        with self._state:
            self._callbacks[EventKind.SUSPECT].append(callback)
        return callback

    def events(self, timeout: float | None = None) -> Iterator[PeerEvent]:
        """Yield peer events as they happen, for ``timeout`` seconds in all.

        Events that occurred before the call and were not yet pulled come
        first (up to ``event_queue_size``; older ones are dropped and counted
        as ``events_dropped``). Ends at the deadline or when the node closes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._state:
                while not self._event_queue:
                    if self._closed:
                        return
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._state.wait(remaining)
                event = self._event_queue.popleft()
            yield event

    def _next_event_nowait(self) -> PeerEvent | None:
        with self._state:
            return self._event_queue.popleft() if self._event_queue else None

    def stats(self) -> dict[str, int]:
        """Counters: protocol_errors, unknown_sender, other_mesh, hello_rejected, rejected, ..."""
        with self._state:
            stats = dict(self._stats)
        with self._rejection_lock:
            if self._rejected:
                stats["rejected"] = self._rejected
        return stats

    def rejections(self) -> list[Rejection]:
        """Connections refused by security, oldest first (the latest 1000).

        Each names the address, the key (if any) and the reason, such as
        ``Rejection("198.18.0.3", "<key>", "key not in allowlist", ...)``;
        each is also logged under ``meshq.security``.
        """
        with self._rejection_lock:
            return list(self._rejections)

    def on_rejected(self, callback: RejectionCallback) -> RejectionCallback:
        """Call ``callback(rejection)`` for each connection security refuses. A decorator too.

        Runs on the node's event thread, like the peer callbacks; see
        :meth:`rejections` for what a rejection holds.
        """
        with self._rejection_lock:
            self._rejection_callbacks.append(callback)
        return callback

    def _on_rejected(self, rejection: Rejection) -> None:
        # On the gatekeeper or control thread; must not block.
        with self._rejection_lock:
            self._rejections.append(rejection)
            self._rejected += 1
            callbacks = list(self._rejection_callbacks)
        if callbacks and not self._closed:
            if self._dispatch_queue.qsize() >= self.config.event_queue_size:
                self._count("callback_events_dropped")  # a callback is stuck
            else:
                self._dispatch_queue.put((callbacks, rejection))

    def _on_handshake_failed(self, endpoint: str) -> None:
        # On the gatekeeper thread: the control thread owns the DEALERs. The
        # wake-up pipe exists from the control thread's start on.
        self._sockets.refused.add(endpoint)  # subscriptions and requesters retry it
        if hasattr(self, "_wake_write") and not self._closed:
            self._send_command(Redial(endpoint))

    def _stop_gatekeeper(self) -> None:
        if self._gatekeeper is not None:
            self._gatekeeper.stop()

    @property
    def control_endpoints(self) -> tuple[str, ...]:
        """Where this node's control socket listens, one per interface."""
        return self._control_endpoints

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Say goodbye (BYE to peers, mDNS goodbye) and release everything.

        Subscriptions of the calling thread close at once; those of other
        threads raise meshq.Closed on their next call. Safe to call twice.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._directory.close()  # subscriptions learn first, before the slow goodbyes
        self._send_command(Stop())
        self._control_thread.join()
        for source in self._discoveries:
            try:
                source.close()
            except Exception:
                log.exception("discovery backend failed to close")
        self._publisher.close()
        with self._service_lock:
            if self._service_runner is not None:
                self._service_runner.close()
        for thread in self._handler_threads:
            if thread is not threading.current_thread():
                thread.join(_HANDLER_JOIN)  # a handler still running may hold it up
        self._dispatch_queue.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()
        with self._state:
            self._state.notify_all()
            listeners = list(self._event_listeners)
        for listener in listeners:
            listener([])  # so asyncio waiters notice the close
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._stop_gatekeeper()
        # term() waits for sockets still open in other threads (subscriptions
        # that will close on their next call); never block close() on them.
        terminator = threading.Thread(target=self._context.term, name="meshq-term", daemon=True)
        terminator.start()
        terminator.join(self.config.linger)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Node(name={self.name!r}, id={self.id[:8]}, mesh={self.mesh!r})"

    # ------------------------------------------------------------------
    # Application side helpers

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("node is closed")

    def _check_prefix(self, prefix: str) -> None:
        self._check_open()
        encoded = prefix.encode()
        if len(encoded) > self.config.max_topic_bytes or b"\0" in encoded:
            raise ValueError(f"prefix must be at most {self.config.max_topic_bytes} bytes, no NUL")

    def _send_command(self, command: Command) -> None:
        self._commands.append(command)
        try:
            os.write(self._wake_write, b"w")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the node is closing

    def _on_found(self, candidate: Candidate) -> None:
        if not self._closed:
            self._send_command(Found(candidate))

    def _on_lost(self, candidate: Candidate) -> None:
        if not self._closed:
            self._send_command(Lost(candidate))

    def _dispatch_main(self) -> None:
        while True:
            item = self._dispatch_queue.get()
            if item is None:
                return
            callbacks, event = item
            for callback in callbacks:
                try:
                    if isinstance(event, PeerEvent):
                        callback(event.peer)  # type: ignore[arg-type]
                    else:
                        callback(event)  # type: ignore[arg-type]
                except Exception:
                    self._count("callback_errors")
                    log.exception("peer event callback %r failed", callback)

    def _count(self, what: str, n: int = 1) -> None:
        with self._state:
            self._stats[what] += n

    # ------------------------------------------------------------------
    # Control thread

    def _control_main(self, started: threading.Event, error: list[BaseException]) -> None:
        try:
            control = ControlPlane(self)
        except BaseException as exc:
            error.append(exc)
            started.set()
            return
        self._control_endpoints = control.endpoints
        started.set()
        try:
            control.run()
        except Exception:
            log.exception("control thread crashed; node %s is deaf now", self.name)
        finally:
            control.close()


def _new_node_id() -> bytes:
    """16 random bytes; never a leading zero byte, which ZeroMQ reserves in routing ids."""
    while True:
        node_id = os.urandom(16)
        if node_id[0]:
            return node_id
