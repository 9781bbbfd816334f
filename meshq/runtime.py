"""One node's machinery: its sockets, threads and shared state, and their lifecycle.

:class:`Runtime` is what the front-ends (:class:`meshq.Node`, and
:class:`meshq.AsyncNode` over it) are built on. It starts and stops the
node's threads:

* the control thread (meshq/control.py) owns the control sockets;
* the event thread runs peer and rejection callbacks, so a slow callback
  never stalls heartbeats;
* the service thread (meshq/services.py) is started by the first service;
* the gatekeeper thread (meshq/gatekeeper.py) only with security.

Every other socket belongs to the thread that asked for it (subscriptions,
callers), or to whoever holds the publisher's lock. Threads reach the
control thread through the mailbox (meshq/mailbox.py) and read what it
learnt from the shared state (meshq/state.py).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence

import zmq

from .config import MeshConfig
from .control import ControlLoop
from .discovery import Candidate, Discovery, MdnsDiscovery, SeedDiscovery
from .errors import Closed
from .gatekeeper import Gatekeeper
from .interfaces import local_networks
from .mailbox import Announce, Found, Lost, Mailbox, Redial, Stop, WatchPublisher
from .offences import Offences
from .peers import PeerEvent
from .protocol import LocalNode
from .publishing import PublishSocket
from .replywait import CloseAlarm, wait_any
from .requester import Requester, RequestFuture
from .security import Curve, KeyBook, Rejection
from .services import ServiceRunner, Ticker
from .sockets import SocketFactory
from .state import NodeState, RejectionCallback
from .wire import MAX_SERVICES, Limits, check_identity
from .zmqerrors import translated

__all__ = ["Runtime"]

log = logging.getLogger("meshq.node")

_HANDLER_JOIN = 5.0  # seconds close() waits for a busy on_message handler
_MAX_REJECTIONS = 1000  # security refusals kept for rejections()


class Runtime:
    """The sockets, threads and shared state of one node; see the module docstring.

    Raises meshq.BindError if a port cannot be bound, ValueError for a bad
    identity or a keyless seed under security.
    """

    def __init__(
        self,
        *,
        node_id: bytes,
        name: str,
        mesh: str,
        interfaces: tuple[str, ...],
        seeds: Sequence[str],
        config: MeshConfig,
        headers: Mapping[str, str],
        discovery: bool,
        security: Curve | None,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.id = node_id.hex()
        self.name = name
        self.mesh = mesh
        self.headers: Mapping[str, str] = dict(headers)
        self.interfaces = interfaces
        self.networks = local_networks(interfaces)
        self.security = security
        self.limits = Limits(
            max_control_bytes=config.max_control_bytes,
            max_topic_bytes=config.max_topic_bytes,
            max_peers=config.max_peers,
            max_headers=config.max_headers,
            max_payload_bytes=config.max_message_bytes,
            max_msgpack_bytes=config.max_msgpack_bytes,
        )
        check_identity(name, mesh, self.headers, len(interfaces), self.limits)
        seed_discovery = SeedDiscovery(seeds)  # validates before anything starts
        if security is not None and seed_discovery.keyless:
            raise ValueError(
                f"with security a seed needs its public key, as ENDPOINT#KEY: "
                f"{seed_discovery.keyless[0]}"
            )
        self.state = NodeState(config.event_queue_size)
        self.mailbox = Mailbox()
        self._rejections: collections.deque[Rejection] = collections.deque(maxlen=_MAX_REJECTIONS)
        self._rejected = 0
        self._rejection_lock = threading.Lock()
        self._rejection_callbacks: list[RejectionCallback] = []
        self._close_lock = threading.Lock()
        self._close_alarm: CloseAlarm | None = None  # made by the first wait_any
        self._threads = threading.local()  # per calling thread: its Requester
        self._service_runner: ServiceRunner | None = None
        self._service_lock = threading.Lock()
        self.handler_threads: list[threading.Thread] = []
        self.discoveries: list[Discovery] = []
        self.context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
        self.gatekeeper: Gatekeeper | None = None
        keys = KeyBook()
        try:
            if security is not None:
                self.gatekeeper = Gatekeeper(
                    self.context, security, keys, self._on_rejected, self._on_handshake_failed
                )
            self.sockets = SocketFactory(
                config, curve=security, keys=keys, gatekeeper=self.gatekeeper
            )
            if self.gatekeeper is not None:
                with translated("bind the ZAP handler"):
                    self.gatekeeper.start()
            # Application side: publishing goes straight into this socket.
            self.publisher = PublishSocket(
                self.context,
                self.sockets,
                node_id=node_id,
                interfaces=interfaces,
                port=config.publish_port,
                limits=self.limits,
                max_topics=config.max_topics,
            )
        except BaseException:
            self._release_early()
            raise
        self.publisher.on_subscribers_changed = self.state.subscribers_moved
        self.control_endpoints = self._start_control()
        self._dispatcher = threading.Thread(
            target=self._dispatch_main, name=f"meshq-events-{self.id[:8]}", daemon=True
        )
        self._dispatcher.start()
        if discovery:
            self.discoveries.append(
                MdnsDiscovery(
                    node_id=node_id,
                    name=name,
                    mesh=mesh,
                    interfaces=interfaces,
                    control_port=int(self.control_endpoints[0].rpartition(":")[2]),
                    public_key=None if security is None else security.public_key,
                    max_records=config.max_mdns_records,
                    max_txt_bytes=config.max_txt_bytes,
                )
            )
        self.discoveries.append(seed_discovery)
        try:
            for source in self.discoveries:
                source.start(self._on_found, self._on_lost)
        except BaseException:
            self.close()
            raise

    #: The control thread's loop (its counters: ``wakeups``, ``timer_runs``).
    control_loop: ControlLoop | None = None

    def _start_control(self) -> tuple[str, ...]:
        started = threading.Event()
        outcome: list[object] = []

        def main() -> None:
            try:
                loop = ControlLoop(
                    config=self.config,
                    limits=self.limits,
                    context=self.context,
                    sockets=self.sockets,
                    state=self.state,
                    mailbox=self.mailbox,
                    publisher=self.publisher,
                    interfaces=self.interfaces,
                    networks=self.networks,
                    describe=self.describe,
                    gatekeeper=self.gatekeeper,
                )
            except BaseException as exc:
                outcome.append(exc)
                started.set()
                return
            outcome.append(loop.endpoints)
            self.control_loop = loop
            started.set()
            try:
                loop.run()
            except Exception:
                log.exception("control thread crashed; node %s is deaf now", self.name)
            finally:
                loop.close()

        self._control_thread = threading.Thread(
            target=main, name=f"meshq-control-{self.id[:8]}", daemon=True
        )
        self._control_thread.start()
        started.wait()
        result = outcome[0]
        if isinstance(result, BaseException):
            self.publisher.close()
            self._release_early()
            raise result
        assert isinstance(result, tuple)
        return result

    def _release_early(self) -> None:
        """Undo a start that failed before any thread but the gatekeeper ran."""
        self.mailbox.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.context.term()

    # ------------------------------------------------------------------
    # What API threads use

    @property
    def closed(self) -> bool:
        return self.state.closed

    def check_open(self) -> None:
        """Raise meshq.Closed after close()."""
        if self.state.closed:
            raise Closed("node is closed")

    def check_prefix(self, prefix: str) -> None:
        """Raise TypeError for a prefix that is not a str, ValueError for one no topic
        can have, meshq.Closed after close()."""
        self.check_open()
        if not isinstance(prefix, str):
            fix = f"; decode it: {prefix!r}.decode()" if isinstance(prefix, bytes) else ""
            raise TypeError(
                "prefix must be a str such as 'sensors/', "
                f"not {type(prefix).__name__} {prefix!r}{fix}"
            )
        encoded = prefix.encode()
        if len(encoded) > self.config.max_topic_bytes or b"\0" in encoded:
            raise ValueError(f"prefix must be at most {self.config.max_topic_bytes} bytes, no NUL")

    def count(self, what: str, n: int = 1) -> None:
        self.state.count(what, n)

    def count_missed(self, missed: int) -> None:
        """A subscription saw a gap: ``messages_missed`` in stats() sums them all."""
        self.state.count("messages_missed", missed)

    def announce(self) -> None:
        """Tell every peer what this node offers now (a new HELLO)."""
        self.mailbox.post(Announce())

    def watch_publisher(self) -> None:
        """A publish socket was opened: the control thread watches it for subscribers."""
        self.mailbox.post(WatchPublisher())

    def describe(self, control: tuple[str, ...]) -> LocalNode:
        """What this node says about itself in HELLO (control thread)."""
        runner = self._service_runner
        services, service = (runner.names(), runner.endpoints) if runner else ((), ())
        publisher = self.publisher
        return LocalNode(
            node_id=self.node_id,
            name=self.name,
            mesh=self.mesh,
            control=control,
            publish=publisher.endpoints,
            headers=self.headers,
            services=services,
            service=service,
            publish_block=publisher.block_endpoints,
            key=b"" if self.security is None else self.security.public_key,
            local_publish=publisher.local_endpoint,
            local_publish_block=publisher.block_local_endpoint if publisher.block_endpoints else "",
            local_service=runner.local_endpoint if runner else "",
        )

    def requester(self) -> Requester:
        """The calling thread's caller side (request/reply), made on first use."""
        requester: Requester | None = getattr(self._threads, "requester", None)
        if self.state.closed:
            if requester is not None:
                requester.close()  # its owner's first call since the close: release it
            raise Closed("node is closed")
        if requester is None:
            requester = Requester(
                self.context, self.sockets, self.state.services, self.limits, self.count
            )
            self.state.publishers.watch(requester)  # so it closes with the node
            self._threads.requester = requester
            self._threads.thread_end = _CloseAtThreadEnd(requester)
        return requester

    def wait_any(self, futures: Sequence[RequestFuture], timeout: float | None) -> bool:
        """Wait until one of ``futures`` (this thread's) ends, or ``timeout`` s pass.

        True if one ended. Raises meshq.Closed as soon as the node closes;
        see meshq/replywait.py.
        """
        with self._close_lock:
            if self._close_alarm is None:
                self._close_alarm = CloseAlarm()
            alarm = self._close_alarm
        # Made under the lock close() sets ``closed`` under: a close from now
        # on rings it, and one before shows here.
        requester = self.requester()  # raises Closed once closed
        return wait_any(requester, alarm, futures, timeout)

    def close_thread_requester(self) -> None:
        """Close the calling thread's caller side, if it has one (a thread that ends)."""
        requester: Requester | None = getattr(self._threads, "requester", None)
        if requester is not None:
            requester.close()

    def _thread_reply_sockets(self) -> list[zmq.Socket]:  # type: ignore[type-arg]
        requester: Requester | None = getattr(self._threads, "requester", None)
        return requester.sockets() if requester is not None else []

    def _read_thread_replies(self) -> None:
        requester: Requester | None = getattr(self._threads, "requester", None)
        if requester is not None:
            requester.pump(0.0)

    def thread_local(self) -> threading.local:
        """Per-thread storage that lives as long as the node (durable publishers use it)."""
        return self._threads

    # ------------------------------------------------------------------
    # Services

    def offer(self, name: str, handler: Callable[..., object], *, deferred: bool) -> None:
        """Add a service to the runner (started on first use), and announce it.

        Raises ValueError past MAX_SERVICES or for a HELLO that would no
        longer fit, meshq.BindError, meshq.Closed.
        """
        self.check_open()
        with self._service_lock:
            if self._service_runner is None:
                self._service_runner = ServiceRunner(
                    self.context,
                    self.sockets,
                    node_id=self.id,
                    interfaces=self.interfaces,
                    port=self.config.service_port,
                    limits=self.limits,
                    count=self.state.count,  # as Runtime.count, a call layer less
                    on_exit=self.close_thread_requester,
                    offences=Offences(
                        self.config.max_offences, self.config.offence_window, self.config.ban_time
                    ),
                )
                self._service_runner.reply_sockets = self._thread_reply_sockets
                self._service_runner.read_replies = self._read_thread_replies
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
                    self.limits,
                    services=(*names, name),
                )
            if deferred:
                self._service_runner.add_deferred(name, handler)  # type: ignore[arg-type]
            else:
                self._service_runner.add(name, handler)
        self.announce()

    def add_ticker(self, ticker: Ticker) -> None:
        """Run ``ticker`` on the service thread (see services.Ticker). Raises RuntimeError
        if this node serves nothing yet."""
        runner = self._service_runner
        if runner is None:
            raise RuntimeError("offer a service before adding a ticker")
        runner.add_ticker(ticker)

    def service_endpoints(self) -> tuple[str, ...]:
        """Where this node's service socket listens (empty until it serves)."""
        runner = self._service_runner
        return runner.endpoints if runner is not None else ()

    def set_header(self, key: str, value: str) -> None:
        """Add or change a header; peers see it with the HELLO sent now. ValueError if too big."""
        headers = {**self.headers, key: value}
        check_identity(self.name, self.mesh, headers, len(self.interfaces), self.limits)
        self.headers = headers
        self.announce()

    # ------------------------------------------------------------------
    # Security refusals

    def rejections(self) -> list[Rejection]:
        with self._rejection_lock:
            return list(self._rejections)

    def rejected(self) -> int:
        with self._rejection_lock:
            return self._rejected

    def add_rejection_callback(self, callback: RejectionCallback) -> None:
        with self._rejection_lock:
            self._rejection_callbacks.append(callback)

    def _on_rejected(self, rejection: Rejection) -> None:
        # On the gatekeeper or control thread; must not block.
        with self._rejection_lock:
            self._rejections.append(rejection)
            self._rejected += 1
            callbacks = list(self._rejection_callbacks)
        if callbacks:
            self.state.enqueue_rejection(callbacks, rejection)

    def _on_handshake_failed(self, endpoint: str) -> None:
        # On the gatekeeper thread: the control thread owns the DEALERs.
        self.sockets.refused.add(endpoint)  # subscriptions and requesters retry it
        if not self.state.closed:
            self.mailbox.post(Redial(endpoint))

    # ------------------------------------------------------------------
    # Discovery and events

    def _on_found(self, candidate: Candidate) -> None:
        if not self.state.closed:
            self.mailbox.post(Found(candidate))

    def _on_lost(self, candidate: Candidate) -> None:
        if not self.state.closed:
            self.mailbox.post(Lost(candidate))

    def _dispatch_main(self) -> None:
        while True:
            item = self.state.dispatch.get()
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
                    self.count("callback_errors")
                    log.exception("peer event callback %r failed", callback)

    # ------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye and release every thread and socket; see :meth:`meshq.Node.close`."""
        with self._close_lock:
            if self.state.closed:
                return
            self.state.closed = True
            alarm = self._close_alarm
        if alarm is not None:
            alarm.ring()  # threads waiting in wait_any stop now
        self.state.publishers.close()  # subscriptions learn first, before the slow goodbyes
        self.mailbox.post(Stop())
        self._control_thread.join()
        for source in self.discoveries:
            try:
                source.close()
            except Exception:
                log.exception("discovery backend failed to close")
        self.publisher.close()
        with self._service_lock:
            if self._service_runner is not None:
                self._service_runner.close()
        for thread in self.handler_threads:
            if thread is not threading.current_thread():
                thread.join(_HANDLER_JOIN)  # a handler still running may hold it up
        self.state.dispatch.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()
        self.state.close()
        self.mailbox.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.close_thread_requester()
        # Sockets of other threads (a subscription, a caller side) close on
        # their owner's next call, or when collected: the context ends with
        # the last of them, now if none is left. No thread waits for it.
        self.sockets.when_all_closed(self.context.term)


class _CloseAtThreadEnd:
    """Closes a thread's Requester as the thread ends (kept in its local storage).

    A request in flight refers to its Requester and the Requester to it, so
    a thread that ends with one in flight would leave its DEALERs open until
    a garbage collection, and the node's context unended meanwhile. The
    local storage of a thread goes as it ends, and with it this object.
    """

    __slots__ = ("_requester",)

    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    def __del__(self) -> None:
        try:
            self._requester.close()
        except Exception:  # a finalizer must not raise
            log.exception("closing the request sockets of a thread that ended failed")


def new_node_id() -> bytes:
    """16 random bytes; never a leading zero byte, which ZeroMQ reserves in routing ids."""
    while True:
        node_id = os.urandom(16)
        if node_id[0]:
            return node_id
