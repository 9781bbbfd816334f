"""The one place where meshq creates ZeroMQ sockets.

Every socket a node opens comes from :class:`SocketFactory`, so options that
must hold everywhere (size limits, linger, ZMTP heartbeats, CURVE keys) are
applied once and cannot be forgotten by a new pattern. With security on,
every TCP connect goes through :meth:`SocketFactory.connect`, which sets the
server key the peer must prove and refuses keys not in the allowlist.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from .config import MeshConfig
from .gatekeeper import ZAP_DOMAIN, Gatekeeper
from .security import Curve, KeyBook
from .zmqerrors import translate

__all__ = ["SocketFactory"]

S = TypeVar("S", bound=zmq.Socket)  # type: ignore[type-arg]
#: Factories whose when_all_closed callback (a node's context.term) waits
#: for sockets still open: held here until it runs, so that the context
#: stays reachable. Left unreachable together with such a socket (one in a
#: reference cycle, say), the context would be finalized by pyzmq in the
#: same garbage collection: its __del__ terminates it, and the collector
#: has cleared the socket's weak reference but not yet closed it, so
#: zmq_ctx_term waits forever for a close that the same thread was to make
#: next, on whichever thread the collection ran (an event loop, say).
_WAITING: set[SocketFactory] = set()
_waiting_lock = threading.Lock()
#: Socket types that listen (bind) in meshq, and so act as CURVE servers.
_SERVER_TYPES = frozenset({zmq.ROUTER, zmq.XPUB, zmq.PUB, zmq.PULL, zmq.REP})


class RefusedLinks:
    """Client links that were refused, by a peer's handshake or by our own allowlist.

    libzmq never retries a refused handshake, and a link we declined to make
    is not tried again by itself; yet an allowlist may change while nodes
    run. So each refusal is noted here (from any thread), and the sockets'
    owners (subscriptions, request sockets) make such links anew once the
    refusal is ``retry_after`` seconds old, so a refused peer is tried about
    once per ``retry_after`` while it stays refused. At most MAX endpoints
    are remembered.
    """

    MAX = 1024

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self._when: dict[str, float] = {}  # endpoint -> monotonic time of the latest refusal
        self._lock = threading.Lock()
        self._announced = 0.0  # refusals up to this time were announced by ripe()
        #: True until the first refusal: a check per request without a call.
        self.none = True

    def add(self, endpoint: str) -> None:
        self.none = False
        with self._lock:
            self._when.pop(endpoint, None)  # re-inserted: the dict stays oldest first
            self._when[endpoint] = time.monotonic()
            if len(self._when) > self.MAX:
                del self._when[next(iter(self._when))]

    def due(self, handled: dict[str, float]) -> list[tuple[str, float]]:
        """(endpoint, when refused) of refusals new to ``handled`` and old enough; marks them.

        ``handled`` is the caller's own memory (one per socket owner). A
        caller remakes its link to such an endpoint only if that link was
        made before ``when``: a newer link is not the one that was refused.
        """
        if not self._when:
            return []  # the common case, without a lock
        now = time.monotonic()
        with self._lock:
            refusals = list(self._when.items())
        due = []
        for endpoint, when in refusals:
            if when > handled.get(endpoint, -1.0) and now - when >= self.retry_after:
                handled[endpoint] = when
                due.append((endpoint, when))
        return due

    def next_ripe(self) -> float | None:
        """When :meth:`ripe` next turns true (monotonic); None if no refusal waits."""
        if not self._when:
            return None  # the common case, without a lock
        with self._lock:
            pending = [when for when in self._when.values() if when > self._announced]
        return min(pending) + self.retry_after if pending else None

    def ripe(self) -> bool:
        """True once per batch of refusals that became due (to wake the sockets' owners)."""
        if not self._when:
            return False
        now = time.monotonic()
        with self._lock:
            latest = max(
                (when for when in self._when.values() if now - when >= self.retry_after),
                default=0.0,
            )
            if latest <= self._announced:
                return False
            self._announced = latest
            return True


class SocketFactory:
    """Creates sockets with the node's common options on a given context.

    Sockets must be used only by the thread (or event loop) that asks for
    them; pass a ``zmq.asyncio.Context`` shadow to get asyncio sockets.
    """

    def __init__(
        self,
        config: MeshConfig,
        *,
        curve: Curve | None = None,
        keys: KeyBook | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self._config = config
        self._curve = curve
        self._keys = keys or KeyBook()
        self._gatekeeper = gatekeeper
        #: Links refused so far, retried by their owners (see RefusedLinks).
        self.refused = RefusedLinks(retry_after=max(1.0, config.heartbeat_interval))
        # Sockets made and not closed yet, and what to run once none is left.
        self._open = 0
        self._open_lock = threading.Lock()
        self._when_all_closed: Callable[[], None] | None = None
        self._classes: dict[type, type] = {}

    @property
    def keys(self) -> KeyBook:
        """Server keys to expect at each endpoint (hints learnt by the control plane)."""
        return self._keys

    @property
    def curve(self) -> Curve | None:
        return self._curve

    def make(
        self,
        context: zmq.Context[S],
        socket_type: int,
        *,
        max_message_bytes: int | None = None,
        heartbeats: bool = True,
    ) -> S:
        """A new socket of ``socket_type`` with the common options set.

        ZMTP heartbeats come mostly from the listening side of each
        connection (see below); ``heartbeats=False`` leaves them out: for
        the control sockets, whose own PINGs (and remade links) do their job.

        Raises meshq.TransportError if the process cannot open another socket,
        meshq.Closed once the node's context is gone.
        """
        try:
            sock = context.socket(socket_type, socket_class=self._tracked_class(context))
        except zmq.ZMQError as exc:  # e.g. too many open files, or the context is gone
            raise translate(exc, "open a ZeroMQ socket") from exc
        with self._open_lock:
            self._open += 1
        config = self._config
        sock.setsockopt(zmq.LINGER, 0)
        # The largest message a peer may send us; bigger ones make ZeroMQ drop
        # the connection before we buffer them.
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes or config.max_message_bytes)
        # ZMTP heartbeats drop a TCP connection whose peer vanished (a cable
        # pulled, a host frozen) so ZeroMQ reconnects instead of waiting on
        # TCP retransmission timeouts that last minutes. The listening side
        # sends a PING every heartbeat_interval and drops a connection whose
        # PONGs stop for gone_after; the TTL each PING carries makes the
        # connecting side drop one that brought nothing for gone_after
        # (libzmq re-arms that timer on every PING it receives). The
        # connecting side's own PINGs, every gone_after only, cover a peer
        # that vanished before its first PING armed that timer (their
        # PONGs time out after gone_after as well). An idle data
        # connection carries about 2.3 ZMTP commands per heartbeat_interval
        # instead of 4 (PROTOCOL.md 4.3).
        heartbeat_ms = int(config.heartbeat_interval * 1000)
        if heartbeats:
            gone_ms = int(config.gone_after * 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, gone_ms)
            if socket_type in _SERVER_TYPES:  # listening
                sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
                sock.setsockopt(zmq.HEARTBEAT_TTL, gone_ms)
            else:
                # No TTL in these PINGs: a remote side that sends no PINGs of
                # its own would hear nothing else from us for gone_after.
                sock.setsockopt(zmq.HEARTBEAT_IVL, gone_ms)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, heartbeat_ms)
        # A connect whose SYN a busy peer dropped (its listen queue full)
        # would wait for the kernel's retransmissions, 1, 3, 7, 15, 31, 63 s
        # after the first try, even once the peer is fine again: give up on
        # it and let libzmq try anew on its own schedule instead.
        sock.setsockopt(zmq.CONNECT_TIMEOUT, int(config.gone_after * 1000 / 2))
        # And a connection stuck in its ZMTP (or CURVE) greeting is dropped
        # after this, not after libzmq's 30 s.
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(config.handshake_timeout * 1000))
        if socket_type in (zmq.PUB, zmq.XPUB):
            sock.setsockopt(zmq.SNDHWM, config.publish_hwm)
        elif socket_type == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, config.subscribe_hwm)
        elif socket_type == zmq.ROUTER:
            # A peer that reconnects with the same id (new TCP connection after
            # a link flap) takes over its old, half-dead pipe.
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self._curve is not None:
            self._secure(sock, socket_type in _SERVER_TYPES)
        return sock

    def _tracked_class(self, context: zmq.Context[Any]) -> Any:
        """A socket class of the context's kind whose close() is counted here."""
        base: Any = zmq.asyncio.Socket if isinstance(context, zmq.asyncio.Context) else zmq.Socket
        tracked = self._classes.get(base)
        if tracked is None:
            factory = self

            def close(sock: Any, linger: int | None = None) -> None:
                was_open = not sock.closed
                base.close(sock, linger)
                if was_open:
                    factory._closed_one()

            tracked = type(f"Tracked{base.__name__}", (base,), {"close": close})
            self._classes[base] = tracked
        return tracked

    def _closed_one(self) -> None:
        with self._open_lock:
            self._open -= 1
            callback = self._when_all_closed if self._open == 0 else None
            if callback is not None:
                self._when_all_closed = None
        if callback is not None:
            # On the thread that closed the last socket: maybe the garbage
            # collector's, finalizing a socket (safe: none is left open).
            try:
                callback()
            finally:
                with _waiting_lock:
                    _WAITING.discard(self)

    @property
    def open_sockets(self) -> int:
        """Sockets made here and not closed yet."""
        with self._open_lock:
            return self._open

    def when_all_closed(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every socket made here is closed: now, or on the last close.

        The node's close() ends its context this way: a socket owned by a
        thread that has not called since is closed by that thread on its
        next call (or when it is collected), and the context ends then,
        with no thread left waiting for it.
        """
        with self._open_lock:
            if self._open:
                self._when_all_closed = callback
                with _waiting_lock:
                    _WAITING.add(self)  # see _WAITING: until the callback runs
                return
        callback()

    def _secure(self, sock: zmq.Socket, server: bool) -> None:  # type: ignore[type-arg]
        curve = self._curve
        assert curve is not None
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
        if server:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            # Fail closed: without ZAP_ENFORCE_DOMAIN, libzmq admits every
            # CURVE client when no ZAP handler is bound; with it, none.
            sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if self._gatekeeper is not None:
            self._gatekeeper.watch(sock, server=server)

    def connect(self, sock: zmq.Socket, endpoint: str) -> bool:  # type: ignore[type-arg]
        """Connect ``sock`` to ``endpoint``; False (recorded as a rejection) if security forbids.

        With security, a TCP endpoint needs a known server key that is in
        the allowlist: the CURVE handshake then proves the peer holds it.
        inproc endpoints (the node's own sockets) need no key.
        """
        if not self.admits(endpoint):
            return False
        key = self._keys.get(endpoint)
        if self._curve is not None and key is not None and not endpoint.startswith("inproc://"):
            # libzmq copies the options into each connection as it is made, so
            # one socket can connect to several servers, each with its own key.
            sock.setsockopt(zmq.CURVE_SERVERKEY, key)
        sock.connect(endpoint)
        return True

    def admits(self, endpoint: str) -> bool:
        """Whether security lets us connect to ``endpoint`` now; a refusal is recorded."""
        curve = self._curve
        if curve is None or endpoint.startswith("inproc://"):
            return True
        key = self._keys.get(endpoint)
        if key is not None and curve.allows(key):
            return True
        self.refused.add(endpoint)
        if self._gatekeeper is not None:
            reason = (
                "it announced no public key (a node without security?)"
                if key is None
                else "key not in allowlist"
            )
            self._gatekeeper.record(endpoint, "" if key is None else key.decode(), reason)
        return False
