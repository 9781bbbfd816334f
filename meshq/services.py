"""Request/reply services, the provider side, and the directory of who offers what.

A provider (:class:`ServiceRunner`) owns one ROUTER and one thread that reads
requests and calls the handlers, one at a time, answering each request with
a reply that also says how many requests it still holds (its load). The
caller side is meshq/requester.py.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import zmq

from .errors import PayloadTooLarge, ProtocolError
from .offences import Offences
from .publishing import bind_all, raw_send
from .ratelimit import RateLimitedLog
from .servicestats import ServiceStats, record_request
from .servicewire import REPLY_HEAD, REQUEST_HEAD, decode_request, encode_answer, encode_reply
from .sockets import SocketFactory
from .wire import (
    FLAG_MSGPACK,
    PROTOCOL_VERSION,
    Limits,
    check_payload_size,
    decode_payload,
    encode_payload,
)

__all__ = ["DeferredHandler", "Handler", "ReplyTo", "ServiceDirectory", "ServiceRunner", "Ticker"]

log = logging.getLogger("meshq.services")
_bad_input_log = RateLimitedLog(log, interval=5.0)

Handler = Callable[[object], object]
#: A handler that answers later: ``handler(data, reply_to)``; see :class:`ReplyTo`.
DeferredHandler = Callable[[object, "ReplyTo"], None]
#: Called by the service thread with the monotonic time and whether no
#: request is waiting (idle); returns the seconds until it wants to be
#: called again (None: no wish).
Ticker = Callable[[float, bool], "float | None"]
_READ_AHEAD = 256  # requests a provider takes off its socket before answering
_MAX_NAMES = 1024  # encoded service names whose decoding the service thread remembers
# pyzmq's compiled recv, without the lookup through zmq.Socket (as raw_send).
_raw_recv: Callable[..., Any] = getattr(zmq.backend, "Socket", zmq.Socket).recv
_REQUEST_FIELDS = REQUEST_HEAD.unpack_from
_REQUEST_HEAD_BYTES = REQUEST_HEAD.size
_REPLY_PACK = REPLY_HEAD.pack
# Plain ints: the zmq constants are enum members, whose operators run in Python.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)


_NONE: Mapping[str, str] = MappingProxyType({})


class ServiceDirectory:
    """Who offers what: service name -> {provider node id (hex): service endpoint}.

    Written by the control thread, read by callers on any thread.
    """

    def __init__(self) -> None:
        self._providers: Mapping[str, Mapping[str, str]] = MappingProxyType({})
        self._lock = threading.Lock()

    def update(self, providers: Mapping[str, Mapping[str, str]]) -> None:
        frozen = MappingProxyType(
            {name: MappingProxyType(dict(by_id)) for name, by_id in providers.items()}
        )
        with self._lock:
            self._providers = frozen

    def providers(self, service: str) -> Mapping[str, str]:
        """The providers of ``service`` right now (possibly empty)."""
        # No lock: the map is replaced whole, never changed, and reading
        # one attribute is atomic (this runs once per request).
        return self._providers.get(service, _NONE)

    def all(self) -> Mapping[str, Mapping[str, str]]:
        return self._providers


# --------------------------------------------------------------------------
# Provider side


class ReplyTo:
    """The return address of a request a deferred handler answers later.

    Answer each request at most once; answers after the first are ignored.
    Any thread may answer: the reply is encoded on the answering thread and
    sent by the service thread, which owns the socket.
    """

    __slots__ = ("_answered", "_identity", "_request_id", "_runner")

    def __init__(self, runner: ServiceRunner, identity: bytes, request_id: int) -> None:
        self._runner = runner
        self._identity = identity
        self._request_id = request_id
        self._answered = False

    def send(self, result: object) -> None:
        """Answer with ``result`` (bytes, or anything msgpack encodes).

        Raises TypeError if msgpack cannot encode it (then nothing was sent,
        and :meth:`fail` can still answer).
        """
        if self._answered:
            return
        flags, payload = encode_payload(result)
        try:
            check_payload_size(flags, payload, self._runner.limits, "reply")
        except PayloadTooLarge as exc:
            self.fail(exc)  # the caller learns why, as RemoteError
            raise
        if self._claim():
            self._runner.post_reply(
                self._identity, encode_answer(self._request_id, 0, flags, payload)
            )
            self._runner.count("requests_served")

    def fail(self, error: BaseException) -> None:
        """Answer with an error; the caller raises it as meshq.RemoteError."""
        if self._claim():
            self._runner.post_reply(self._identity, encode_reply(self._request_id, 0, error=error))

    def _claim(self) -> bool:
        """True for the first answer only, whichever threads answer at once."""
        with self._runner.reply_lock:
            if self._answered:
                return False
            self._answered = True
            return True


class ServiceRunner:
    """Answers requests for this node's services on a thread of its own.

    Handlers run one at a time on that thread (never on the node's control
    thread); a handler that raises is answered with its type and message and
    counted, and the service keeps serving. Raises meshq.BindError if the
    port cannot be bound.
    """

    def __init__(
        self,
        context: zmq.Context,  # type: ignore[type-arg]
        factory: SocketFactory,
        *,
        node_id: str,
        interfaces: Sequence[str],
        port: int,
        limits: Limits,
        count: Callable[[str], None],
        on_exit: Callable[[], None] = lambda: None,
        offences: Offences | None = None,
    ) -> None:
        self._context = context
        self._factory = factory
        self._limits = limits
        self._count = count
        #: Counts into the node's stats (ReplyTo uses it for deferred answers).
        self.count = count
        #: The bounds receivers apply (ReplyTo refuses replies over them).
        self.limits = limits
        #: Per service: requests answered, errors, latest latencies (introspection).
        self.service_stats: dict[str, ServiceStats] = {}
        # Run on the service thread as it ends: releases what handlers made
        # there (a handler that calls services owns that thread's DEALERs).
        self._on_exit = on_exit
        # Callers (by connection) that sent malformed requests; None: no bans.
        self._offences = offences
        self._handlers: dict[str, Handler] = {}
        self._deferred: dict[str, DeferredHandler] = {}
        # Encoded name -> name, of names once served by a plain handler
        # (service thread only): the handler itself is looked up per request.
        self._names: dict[bytes, str] = {}
        self._tickers: list[Ticker] = []
        # Replies answered on other threads (ReplyTo), sent by the service thread.
        self._outbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._thread_id = 0  # the service thread's ident, once it runs
        #: The service thread's own request sockets, and what reads their
        #: replies (set by the node): while a ticker waits for something
        #: (a handler's request, say) the thread wakes for their replies too.
        self.reply_sockets: Callable[[], list[zmq.Socket]] = list  # type: ignore[type-arg]
        self.read_replies: Callable[[], None] = _nothing
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]  # the service thread's
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Wake-ups of the service thread, which waits in its ROUTER's own
        # recv: an empty message from this DEALER (made and closed by the
        # service thread, used by any thread under reply_lock), connected
        # to the ROUTER over inproc with a random routing id that no remote
        # caller can guess. One unread wake-up is enough (_wake_pending).
        self._waker: zmq.Socket | None = None  # type: ignore[type-arg]
        self._wake_id = b"\xff" + os.urandom(15)  # never a leading zero byte (ZeroMQ's)
        self._wake_pending = False
        self._done = False  # the service thread has sent its last reply
        #: Guards ReplyTo's answered flag, and the waker against closing
        #: while another thread wakes the service thread through it.
        self.reply_lock = threading.Lock()
        self.local_endpoint = f"inproc://meshq-svc-{node_id}"
        self.endpoints: tuple[str, ...] = ()
        ready = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._main,
            args=(interfaces, port, ready, failed),
            name=f"meshq-serve-{node_id[:8]}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]

    # The handler maps are replaced, never changed in place, so the service
    # thread reads them without the lock; a deferred handler is published
    # before its _handlers entry, which is what the service thread reads first.

    def add(self, name: str, handler: Handler) -> None:
        with self._lock:
            self._handlers = {**self._handlers, name: handler}

    def add_deferred(self, name: str, handler: DeferredHandler) -> None:
        """Serve ``name`` with a handler that answers through a :class:`ReplyTo`, maybe later."""
        with self._lock:
            self._deferred = {**self._deferred, name: handler}
            self._handlers = {**self._handlers, name: _never_called}

    def add_ticker(self, ticker: Ticker) -> None:
        """Call ``ticker(now, idle)`` whenever no request is waiting, and when it asked to be."""
        with self._lock:
            self._tickers.append(ticker)
        self._wake()

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._handlers)

    def post_reply(self, identity: bytes, reply: bytes) -> None:
        """Send an encoded reply from any thread (handed to the service thread, which sends it)."""
        if threading.get_ident() == self._thread_id:
            self.send_reply(identity, reply)
            return
        with self.reply_lock:
            if self._done:  # the service stopped: nobody will send it
                self._count("service_replies_dropped")
                return
            self._outbox.append((identity, reply))
        self._wake()

    def _send_posted(self) -> None:
        """Send the replies other threads handed over (service thread only)."""
        outbox = self._outbox
        while outbox:
            identity, reply = outbox.popleft()
            self.send_reply(identity, reply)

    def send_reply(self, identity: bytes, reply: bytes) -> None:
        """Send an encoded reply (service thread only); a reply that cannot go is counted."""
        assert self._sock is not None, "replies are sent from the service thread"
        sock = self._sock
        try:
            # Two sends of pyzmq's compiled method: send_multipart's Python
            # loop costs more than the sends. A ROUTER message is atomic: if
            # the identity part is refused, nothing was queued.
            raw_send(sock, identity, _SNDMORE_NOBLOCK)
            raw_send(sock, reply, _NOBLOCK)
        except zmq.ZMQError:  # caller gone, or not reading its replies
            self._count("service_replies_dropped")

    def _tick(self, idle: bool) -> int | None:
        """Run the tickers; the poll timeout (ms) until the soonest asks again."""
        with self._lock:
            tickers = list(self._tickers)
        now = time.monotonic()
        soonest: float | None = None
        for ticker in tickers:
            try:
                wait = ticker(now, idle)
            except Exception:  # a bug in one must not stop every service
                self._count("internal_errors")
                log.exception("service ticker failed")
                wait = 1.0
            if wait is not None and (soonest is None or wait < soonest):
                soonest = wait
        return None if soonest is None else max(0, int(soonest * 1000 + 0.999))

    def _main(
        self,
        interfaces: Sequence[str],
        port: int,
        ready: threading.Event,
        failed: list[BaseException],
    ) -> None:
        try:
            sock = self._factory.make(self._context, zmq.ROUTER)
            # Fail a reply loudly (EAGAIN, EHOSTUNREACH) instead of ZeroMQ's
            # silent drop, so that what we could not deliver is counted.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            waker: zmq.Socket | None = None  # type: ignore[type-arg]
            try:
                bound = bind_all(sock, interfaces, port)
                sock.bind(self.local_endpoint)
                waker = self._context.socket(zmq.DEALER)
                waker.setsockopt(zmq.LINGER, 0)
                waker.setsockopt(zmq.ROUTING_ID, self._wake_id)
                waker.connect(self.local_endpoint)
            except BaseException:
                if waker is not None:
                    waker.close(linger=0)
                sock.close(linger=0)
                raise
        except BaseException as exc:
            failed.append(exc)
            ready.set()
            return
        self.endpoints = tuple(f"tcp://{ip}:{bound}" for ip in interfaces)
        self._sock = sock
        self._waker = waker
        self._thread_id = threading.get_ident()
        ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        backlog: collections.deque[tuple[bytes, bytes]] = collections.deque()
        tick_due = 0.0  # monotonic time a ticker wants its next call, even under load
        stopped = self._stop.is_set
        wake_id = self._wake_id
        recv = _raw_recv
        send = raw_send
        try:
            while not stopped():
                readable = False  # the poll just said a request waits
                first: bytes | None = None  # a message's first part, read by the wait
                if not backlog:
                    wait = self._tick(idle=True) if self._tickers else None
                    if wait is None:
                        # Nothing but the ROUTER to wait for: block in its
                        # own recv (RCVTIMEO unset), as a raw ROUTER loop
                        # does. A poll of it before a read costs about three
                        # system calls more per request. Wake-ups (a reply
                        # posted, a ticker added, the stop) come through it.
                        first = recv(sock)
                    else:
                        # Only while a ticker waits for something: the
                        # request path (no ticker waiting) pays nothing for it.
                        replies = self.reply_sockets()
                        for reply_sock in replies:
                            poller.register(reply_sock, zmq.POLLIN)
                        replied = False
                        for fd, _ in poller.poll(wait):
                            if fd is sock:
                                readable = True
                            else:
                                replied = True
                        for reply_sock in replies:
                            poller.unregister(reply_sock)
                        if replied:
                            self.read_replies()  # then the tickers see them settled
                elif self._tickers and time.monotonic() >= tick_due:
                    wait = self._tick(idle=False)
                    tick_due = time.monotonic() + (0.05 if wait is None else wait / 1000)
                if self._outbox:
                    self._send_posted()
                # Ask before reading (a zmq.Again costs more than the
                # question), except right after the poll said "readable".
                # Each getsockopt costs about 1 us (pyzmq makes an enum of
                # the option), so a request is read with one, not five, and
                # the socket is read again only once the backlog is answered
                # (one question per burst, not one per request).
                while first is not None or (
                    (readable or not backlog)
                    and len(backlog) < _READ_AHEAD
                    and (readable or sock.getsockopt(_EVENTS) & _POLLIN)
                ):
                    readable = False
                    try:
                        if first is None:
                            identity = recv(sock, _NOBLOCK)
                        else:
                            identity, first = first, None
                        # A ROUTER message is whole once its first part is
                        # in, and it always has one part after the identity.
                        # That part as a zmq.Frame, whose ``more`` is cheaper
                        # than a getsockopt(RCVMORE) (pyzmq makes an enum of
                        # the option): more than [identity, request] is bad.
                        part = recv(sock, _NOBLOCK, False)
                    except zmq.Again:
                        break
                    frame = part.bytes
                    extra = part.more
                    if extra:  # take the rest of the message off the socket
                        recv(sock, _NOBLOCK)
                        while sock.getsockopt(_RCVMORE):
                            recv(sock, _NOBLOCK)
                    if identity == wake_id:
                        # A ticker was added (tick again), replies were
                        # posted (sent below), or the stop.
                        with self.reply_lock:
                            self._wake_pending = False
                        if self._outbox:
                            self._send_posted()
                        continue
                    offences = self._offences
                    if (
                        offences is not None
                        and offences.active  # no clock read while nobody is banned
                        and offences.banned(identity, time.monotonic())
                    ):
                        self._count("service_banned_dropped")
                        continue
                    if not extra:
                        backlog.append((identity, frame))
                    else:
                        self._count("service_protocol_errors")
                        self._offend(identity)
                if backlog:
                    identity, frame = backlog.popleft()
                    try:
                        reply = self._answer(identity, frame, load=len(backlog))
                    except Exception:  # a bug must not silence every service of the node
                        self._count("internal_errors")
                        log.exception("request could not be answered")
                        continue
                    if reply is not None:
                        try:  # as send_reply, without the call
                            send(sock, identity, _SNDMORE_NOBLOCK)
                            send(sock, reply, _NOBLOCK)
                        except zmq.ZMQError:  # caller gone, or not reading its replies
                            self._count("service_replies_dropped")
        finally:
            with self.reply_lock:
                self._done = True  # later answers are counted as dropped
                self._waker = None  # and later wake-ups are no-ops
            # Before the ROUTER: the context may end as that (tracked) closes.
            waker.close(linger=0)
            self._send_posted()  # answers handed over before the stop
            sock.close(linger=0)
            try:
                self._on_exit()
            except Exception:
                log.exception("service thread cleanup failed")

    def _answer(self, identity: bytes, frame: bytes, load: int) -> bytes | None:
        """The reply to one request frame (None: none is due, or a deferred handler has it).

        The common request, well formed and for a plain handler, is read
        here with the checks of decode_request (docs/PROTOCOL.md 9.5) and no
        Request built; anything else takes :meth:`_answer_other`.
        """
        try:
            kind, version, flags, request_id, length = _REQUEST_FIELDS(frame)
        except struct.error:
            kind = b""
        if kind == b"Q" and version == PROTOCOL_VERSION and flags <= FLAG_MSGPACK:
            end = _REQUEST_HEAD_BYTES + length
            # A known name is 1..255 bytes of valid UTF-8; the length check
            # keeps a truncated name from matching a shorter one.
            service = self._names.get(frame[_REQUEST_HEAD_BYTES:end])
            if service is not None and len(frame) >= end:
                handler = self._handlers.get(service)
                if handler is not None and handler is not _never_called:
                    if flags:
                        try:
                            data = decode_payload(flags, frame[end:], self._limits)
                        except ProtocolError as exc:
                            self._refuse(identity, exc)
                            return None
                    else:
                        data = frame[end:]
                    return self._call(handler, service, data, request_id, load)
        return self._answer_other(identity, frame, load)

    def _call(
        self, handler: Handler, service: str, data: object, request_id: int, load: int
    ) -> bytes:
        """Run a plain handler on a request's data; its reply frame (a result or an error)."""
        started = time.perf_counter()
        try:
            result = handler(data)
            if type(result) is bytes:  # the common case, without two calls
                flags, payload = 0, result
            else:
                flags, payload = encode_payload(result)
                check_payload_size(flags, payload, self._limits, "reply")
        except BaseException as exc:  # the caller gets it as RemoteError; we keep serving
            self._count("handler_errors")
            record_request(self.service_stats, service, started, error=True)
            log.debug("handler of %r raised", service, exc_info=True)
            return encode_reply(request_id, load, error=exc)
        self._count("requests_served")
        entry = self.service_stats.get(service)  # record_request, inline
        if entry is None:
            entry = self.service_stats[service] = ServiceStats()
        entry.served += 1
        entry.latencies.append(time.perf_counter() - started)
        # load: the requests held, at most _READ_AHEAD, so within a u32.
        return _REPLY_PACK(b"A", PROTOCOL_VERSION, flags, request_id, load) + payload

    def _answer_other(self, identity: bytes, frame: bytes, load: int) -> bytes | None:
        """:meth:`_answer` for a malformed request, a name not served, or a deferred handler."""
        try:
            request = decode_request(frame, self._limits)
        except ProtocolError as exc:
            self._refuse(identity, exc)
            return None
        handler = self._handlers.get(request.service)
        deferred = self._deferred.get(request.service) if handler is _never_called else None
        if handler is None:
            return encode_reply(request.request_id, load, not_served=True)
        if deferred is not None:
            reply_to = ReplyTo(self, identity, request.request_id)
            try:
                deferred(request.data, reply_to)
            except BaseException as exc:
                self._count("handler_errors")
                log.debug("handler of %r raised", request.service, exc_info=True)
                reply_to.fail(exc)
            return None
        if len(self._names) < _MAX_NAMES:  # served by a plain handler: _answer's from now on
            self._names[request.service.encode()] = request.service
        return self._call(handler, request.service, request.data, request.request_id, load)

    def _refuse(self, identity: bytes, exc: ProtocolError) -> None:
        """Drop a malformed request: counted, logged, and an offence of its connection."""
        self._count("service_protocol_errors")
        _bad_input_log.warning("dropped malformed request: %s", exc.reason)
        self._offend(identity)

    def _wake(self) -> None:
        # Under the lock the service thread takes to close the waker (and
        # to take note that it read a wake-up).
        with self.reply_lock:
            waker = self._waker
            if waker is None or self._wake_pending:
                return
            try:
                waker.send(b"", _NOBLOCK)
                self._wake_pending = True
            except zmq.ZMQError:
                pass  # full: a wake-up is pending already

    def _offend(self, identity: bytes) -> None:
        """Count a malformed request against its connection; ignore a repeat offender."""
        if self._offences is not None and self._offences.offend(identity, time.monotonic()):
            # A ROUTER cannot drop one connection: its requests are ignored
            # instead, for the ban time (a new connection starts afresh).
            self._count("service_callers_banned")
            log.warning("caller %s sent repeated malformed requests: ignored", identity.hex())

    def close(self, wait: float = 5.0) -> None:
        """Stop serving; wait at most ``wait`` s for a handler still running.

        Safe to call from a handler itself (then nothing is waited for).
        """
        self._stop.set()
        self._wake()
        if threading.current_thread() is self._thread:
            return  # the loop ends when this handler returns, and releases all
        # A handler stuck past ``wait``: the loop releases all once it returns.
        self._thread.join(wait)


def _nothing() -> None:
    pass


def _never_called(data: object) -> object:
    raise AssertionError("deferred services are answered by their deferred handler")
