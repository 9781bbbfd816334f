"""Request/reply, the caller side: balancing, retries, and replies read on the caller's thread.

A caller (:class:`Requester`, one per calling thread) owns one DEALER per
provider. It sends each attempt with a fresh request id to the provider with
the fewest requests outstanding plus fresh reported load, and on an
attempt's timeout tries another provider. A reply whose attempt has timed
out is dropped and counted, so it can never reach the wrong caller. Replies
are read by whoever waits on a result, on the caller's own thread (or one
reader per event loop, see meshq/aio.py): the data path never crosses a
thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from .errors import Closed, NoProviders, ProtocolError, RemoteError, Timeout
from .ownership import Owner, current
from .publishing import raw_send
from .ratelimit import RateLimitedLog
from .services import ServiceDirectory
from .servicewire import REPLY_HEAD, REQUEST_HEAD, Reply, check_service_name, decode_reply
from .sockets import SocketFactory
from .wire import (
    FLAG_MSGPACK,
    PROTOCOL_VERSION,
    Limits,
    check_payload_size,
    decode_payload,
    encode_payload,
)
from .zmqerrors import translate

__all__ = ["DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "GatherResult", "RequestFuture", "Requester"]

log = logging.getLogger("meshq.requester")
_bad_input_log = RateLimitedLog(log, interval=5.0)

#: Defaults of request(): seconds one attempt waits, and how many providers
#: not asked yet are tried after it. A retry never goes back to a provider
#: already asked, so a slow handler runs once; 5 s outlasts most slow
#: handlers (nats.py waits 0.5 s and does not retry).
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
_LOAD_FRESH = 1.0  # seconds a provider's reported load counts for balancing
_CONNECT_WAIT = 0.05  # seconds a request may wait for its link to a provider
_SCAN_EVERY = 0.1  # seconds between checks for attempts whose provider left
#: Seconds an attempt still waits once its provider left: a provider's
#: goodbye (control link) may overtake its last replies (service link).
_LEFT_GRACE = 0.25
_MAX_NAMES = 1024  # service names whose encoding a caller remembers
# A reply's head (servicewire): "A", version, flags, request id, load.
_REPLY_HEAD = REPLY_HEAD.unpack_from
_REPLY_HEAD_BYTES = REPLY_HEAD.size
# pyzmq's compiled recv, without the lookup through zmq.Socket (as raw_send).
_raw_recv: Callable[..., bytes] = getattr(zmq.backend, "Socket", zmq.Socket).recv
# Plain ints: the zmq constants are enum members, whose operators run in Python.
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVTIMEO = int(zmq.RCVTIMEO)


class RequestFuture:
    """A request in flight. ``result()`` waits for it on the caller's thread.

    It belongs to the thread that made the request (whose sockets carry the
    reply): ``done()`` and ``result()`` from another thread raise
    RuntimeError.

    It is also the caller's record of the request (what to send, where it
    went, how it ended): one object per request, a slotted class.
    """

    __slots__ = (
        "_requester",
        "attempt_id",
        "attempts",
        "deadline",
        "endpoint",
        "error",
        "finished",
        "flags",
        "head",
        "name",
        "on_done",
        "only",
        "payload",
        "provider",
        "retries",
        "service",
        "timeout",
        "tried",
        "value",
    )

    # Set by each attempt (Requester._send), never read before it.
    attempt_id: int
    endpoint: str
    deadline: float
    provider: str
    value: object

    def __init__(
        self,
        requester: Requester,
        service: str,
        name: _Name,
        flags: int,
        payload: bytes,
        timeout: float,
        retries: int,
        only: str | None = None,
    ) -> None:
        self._requester = requester
        self.service = service
        self.name = name[0]
        self.head = name[1]  # packs a request's head for this name
        self.flags = flags
        self.payload = payload
        self.timeout = timeout
        self.retries = retries
        self.only = only  # gather: this provider and no other
        # Providers that may have received an attempt: a tuple, as a
        # request rarely tries more than one.
        self.tried: tuple[str, ...] = ()
        self.attempts = 0
        self.on_done: Callable[[RequestFuture], None] | None = None  # an event loop's wake-up
        self.finished = False
        self.error: BaseException | None = None
        # value: set as the request ends (with finished).

    def done(self) -> bool:
        """True once a reply or a final error is in (reads pending replies first)."""
        if not self.finished:
            requester = self._requester
            if current() != requester.owner:
                raise requester.owner_error(self.service)
            requester.pump(0.0)
        return self.finished

    @property
    def ready(self) -> bool:
        """True once a reply or a final error is in, as of the last read (no I/O)."""
        return self.finished

    def result(self, timeout: float | None = None) -> object:
        """The reply's data. Waits at most ``timeout`` s (None: until the request ends).

        Raises meshq.RemoteError, meshq.Timeout (attempts exhausted, or this
        wait's ``timeout``), meshq.NoProviders, meshq.Closed; RuntimeError
        from a thread other than the one that made the request.
        """
        if not self.finished:
            requester = self._requester
            if current() != requester.owner:
                raise requester.owner_error(self.service)
            requester.wait_for(self, timeout)
            if not self.finished:
                raise Timeout(f"request to {self.service!r} still in flight")
        if self.error is not None:
            raise self.error
        return self.value

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the request ends, on the thread that reads its reply.

        For front-ends that wait their own way (asyncio); must not block.
        """
        self.on_done = lambda _call: callback()

    def cancel(self) -> None:
        """Give up on the request: no more retries; a late reply is dropped."""
        self._requester.cancel(self)


#: A service name as a caller keeps it: its UTF-8 bytes, and the packer of
#: a request head for it (kind, version, flags, request id, name length, name).
_Name = tuple[bytes, Callable[..., bytes]]


def _name(service: str) -> _Name:
    """Check ``service`` (ValueError) and make its :data:`_Name`."""
    encoded = check_service_name(service)
    return encoded, struct.Struct(f"{REQUEST_HEAD.format}{len(encoded)}s").pack


@dataclass(frozen=True)
class GatherResult:
    """What ``Node.gather`` collected: replies and errors by provider id, and who stayed silent."""

    replies: Mapping[str, object]
    errors: Mapping[str, RemoteError]
    missing: tuple[str, ...]


class Requester:
    """The caller side for one thread: DEALERs to providers and the calls in flight."""

    def __init__(
        self,
        context: zmq.Context,  # type: ignore[type-arg]
        factory: SocketFactory,
        directory: ServiceDirectory,
        limits: Limits,
        count: Callable[[str], None],
    ) -> None:
        self._owner = Owner()
        self.owner = self._owner.ident
        self._context = context
        self._factory = factory
        self._directory = directory
        self._limits = limits
        self._count = count
        self._dealers: dict[str, zmq.Socket] = {}  # type: ignore[type-arg]  # by endpoint
        self._refusals_handled: dict[str, float] = {}  # see SocketFactory.refused
        self._dealer_made: dict[str, float] = {}  # endpoint -> when its DEALER was made
        self._names: dict[str, _Name] = {}  # service -> its checked UTF-8 name and head packer
        self._providers = directory.providers
        self._refused = factory.refused
        self._poller = zmq.Poller()
        self._calls: dict[int, RequestFuture] = {}  # by attempt id
        self._outstanding: collections.Counter[str] = collections.Counter()
        self._load: dict[str, tuple[int, float]] = {}  # provider -> (load, when reported)
        self._ids = itertools.count(random.getrandbits(48))
        self._next_scan = 0.0  # when _expire next looks at every call (monotonic)
        # The only DEALER, while there is exactly one (wait_for blocks in
        # it), and the RCVTIMEO (ms) wait_for last gave it (-1: not set).
        self._sole_dealer: zmq.Socket | None = None  # type: ignore[type-arg]
        self._recv_timeout_ms = -1
        self._closed = False

    def owner_error(self, service: str) -> RuntimeError:
        """The RuntimeError for a request to ``service`` used from a thread not its own."""
        return self._owner.error(f"a request to {service!r}")

    def wake(self) -> None:
        """Directory changes need no wake-up: each call looks again."""

    def refresh(self) -> None:
        """Nothing to connect ahead of time: DEALERs are made per request."""

    def start(
        self, service: str, data: object, timeout: float, retries: int, only: str | None = None
    ) -> RequestFuture:
        """Send the first attempt of a request; raises NoProviders at once if nobody offers it."""
        if self._closed:
            raise Closed("node is closed")
        if timeout <= 0 or retries < 0:
            raise ValueError("need timeout > 0 seconds and retries >= 0")
        name = self._names.get(service)
        if name is None:
            name = _name(service)
            if len(self._names) < _MAX_NAMES:
                self._names[service] = name
        if type(data) is bytes:  # the common case, without two calls
            flags, payload = 0, data
        else:
            flags, payload = encode_payload(data)
            check_payload_size(flags, payload, self._limits, "request")
        if not self._refused.none:
            refused = self._refused.due(self._refusals_handled)
            if refused:
                self._retry_refused(refused)
        call = RequestFuture(self, service, name, flags, payload, timeout, retries, only)
        if not self._send(call):
            raise NoProviders(service)
        return call

    def call(self, service: str, data: object, timeout: float, retries: int) -> object:
        """``start`` then the result, on this (the owner's) thread: Node.request.

        Two call layers and the owner check fewer than
        ``start(...).result()``; the same errors.
        """
        call = self.start(service, data, timeout, retries)
        if not call.finished:
            self.wait_for(call, None)
            if not call.finished:
                raise Timeout(f"request to {service!r} still in flight")
        if call.error is not None:
            raise call.error
        return call.value

    def _retry_refused(self, refused: list[tuple[str, float]]) -> None:
        """Replace DEALERs whose handshake was refused: libzmq never retries those.

        ``refused``: (endpoint, when) from RefusedLinks.due. Only a DEALER
        made before the refusal is the refused one. Called as a request
        starts (never while replies are being read).
        """
        for endpoint, when in refused:
            if self._dealer_made.get(endpoint, time.monotonic()) < when:
                self._close_dealer(endpoint)

    def cancel(self, call: RequestFuture) -> None:
        """Stop waiting for ``call``: no retry, and a late reply is dropped."""
        if call.finished:
            return
        if self._calls.pop(call.attempt_id, None) is not None:
            self._outstanding[call.provider] -= 1
        self._finish(call, error=Timeout(f"request to {call.service!r} cancelled"))

    def _send(self, call: RequestFuture) -> bool:
        """Send the next attempt of ``call``; False if no provider is left to try."""
        providers = self._providers(call.service)
        tried = call.tried
        if len(providers) == 1 and call.only is None and not tried:
            # The usual case: one provider, first try.
            ((provider, endpoint),) = providers.items()
        else:
            if call.only is not None:
                candidates = [call.only] if call.only in providers and not tried else []
            else:
                # A provider already tried may still be running the handler: asking
                # it again would run a slow handler twice (a payment, say).
                candidates = [p for p in providers if p not in tried]
            if not candidates:
                return False
            provider = (
                candidates[0] if len(candidates) == 1 else min(candidates, key=self._busyness)
            )
            endpoint = providers[provider]
        call.endpoint = endpoint
        dealer = self._dealers.get(endpoint) or self._dealer(endpoint)
        call.attempt_id = attempt_id = next(self._ids) & 0xFFFFFFFFFFFFFFFF
        call.provider = provider
        call.attempts += 1
        call.deadline = deadline = time.monotonic() + call.timeout
        # encode_request, with the name's own packer: one pack, one join.
        name = call.name
        frame = call.head(b"Q", PROTOCOL_VERSION, call.flags, attempt_id, len(name), name)
        frame += call.payload
        try:
            try:
                raw_send(dealer, frame, _NOBLOCK)
            except zmq.Again:
                # Not connected yet (a new link): wait up to _CONNECT_WAIT for
                # it. An unreachable or full provider leaves the attempt
                # unanswered, and it times out.
                dealer.send(frame)
            # Only a provider that may have received it counts as tried; one
            # that never got the request may be asked again by a retry.
            call.tried = (*tried, provider)
        except zmq.Again:
            self._count("requests_not_sent")
        except zmq.ZMQError as exc:
            raise translate(exc, f"send a request to {call.service!r}") from exc
        self._calls[attempt_id] = call
        self._outstanding[provider] += 1
        if deadline < self._next_scan:
            self._next_scan = deadline
        return True

    def _busyness(self, provider: str) -> tuple[int, float]:
        """Sort key: our requests outstanding there plus its fresh reported load, then chance.

        A load report older than _LOAD_FRESH seconds is ignored: otherwise a
        provider that was once busy would never be asked again, and so never
        report that it is idle now.
        """
        load, reported = self._load.get(provider, (0, 0.0))
        if time.monotonic() - reported > _LOAD_FRESH:
            load = 0
        return self._outstanding[provider] + load, random.random()

    def _dealer(self, endpoint: str) -> zmq.Socket:  # type: ignore[type-arg]
        dealer = self._dealers.get(endpoint)
        if dealer is None:
            self._prune()
            dealer = self._factory.make(self._context, zmq.DEALER)
            dealer.setsockopt(zmq.SNDHWM, 10_000)
            # Replies never outnumber our own requests, so never drop one:
            # a dropped reply would turn a served request into a timeout.
            dealer.setsockopt(zmq.RCVHWM, 0)
            # Queue requests only on a live connection: when a provider dies,
            # what it had not read is dropped with the link, rather than run
            # by whatever process binds its address next. A send waits up to
            # _CONNECT_WAIT for the first connection.
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            dealer.setsockopt(zmq.SNDTIMEO, int(_CONNECT_WAIT * 1000))
            self._factory.connect(dealer, endpoint)  # refused: requests time out
            self._dealers[endpoint] = dealer
            self._set_sole_dealer()
            self._dealer_made[endpoint] = time.monotonic()
            self._poller.register(dealer, zmq.POLLIN)
        return dealer

    def _set_sole_dealer(self) -> None:
        sole = next(iter(self._dealers.values())) if len(self._dealers) == 1 else None
        if sole is not self._sole_dealer:
            self._sole_dealer = sole
            self._recv_timeout_ms = -1  # a new socket: its RCVTIMEO is not ours yet

    def _close_dealer(self, endpoint: str) -> None:
        dealer = self._dealers.pop(endpoint, None)
        self._dealer_made.pop(endpoint, None)
        self._set_sole_dealer()
        if dealer is not None:
            self._poller.unregister(dealer)
            dealer.close(linger=0)

    def _prune(self) -> None:
        """Close DEALERs to endpoints no provider has any more, with nothing in flight."""
        live = {endpoint for by_id in self._directory.all().values() for endpoint in by_id.values()}
        busy = {call.endpoint for call in self._calls.values()}
        for endpoint in list(self._dealers):
            if endpoint not in live and endpoint not in busy:
                self._close_dealer(endpoint)
        for provider in list(self._load):
            if not self._outstanding[provider]:
                self._load.pop(provider, None)
                self._outstanding.pop(provider, None)

    def wait(self, calls: Sequence[RequestFuture], timeout: float | None) -> None:
        """Read replies until every call in ``calls`` is done or ``timeout`` s pass."""
        until = None if timeout is None else time.monotonic() + timeout
        while not all(call.finished for call in calls):
            # One clock read: a second one, after the check, may lie past
            # ``until`` (a preempted thread) and hand pump a negative wait.
            remaining = None if until is None else until - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self.pump(remaining)

    def wait_for(self, call: RequestFuture, timeout: float | None) -> None:
        """Read replies until ``call`` is done or ``timeout`` s pass.

        With one provider link (the usual case) this blocks in that
        DEALER's own ``recv`` (its RCVTIMEO set to the time left): about
        half the cost of a poll followed by a non-blocking read.
        """
        now = time.monotonic()
        until = None if timeout is None else now + timeout
        while not call.finished:
            dealer = self._sole_dealer
            if dealer is None or self._closed:
                remaining = None if until is None else max(0.0, until - time.monotonic())
                self.wait([call], remaining)
                return
            limit = self._next_scan - now
            if limit <= 0:
                self._expire(now)
                now = time.monotonic()
                continue
            if until is not None:
                if now >= until:
                    return
                limit = min(limit, until - now)
            # Whole ms, rounded up. Set again only when the one set is too
            # long, or less than half of what is allowed: the limit shrinks
            # with every request, and a setsockopt costs about 1 us (pyzmq
            # makes an enum of the option). Too short a timeout only means
            # one more turn of this loop.
            ms = int(limit * 1000) + 1
            set_ms = self._recv_timeout_ms
            if set_ms < 0 or set_ms > ms or 2 * set_ms < ms:
                dealer.setsockopt(_RCVTIMEO, ms)
                self._recv_timeout_ms = ms
            try:
                frame = _raw_recv(dealer)
            except zmq.Again:
                now = time.monotonic()
                continue  # the time is up: the loop looks at what expired
            except zmq.ZMQError as exc:  # the node closed its context meanwhile
                self.close()
                raise Closed("node is closed") from exc
            # ``now``, read before the wait, dates the reply's load report:
            # at most one RCVTIMEO (under _SCAN_EVERY) early, a clock read less.
            self._on_reply(frame, now)
            if not call.finished:
                now = time.monotonic()

    def pump(self, wait: float | None) -> None:
        """Handle replies and expired attempts, waiting at most ``wait`` s for a reply."""
        dealer = self._sole_dealer
        if wait == 0.0 and dealer is not None and self._calls and not self._closed:
            # A look without waiting at one link: ask the socket, not poll().
            if int(dealer.getsockopt(_EVENTS)) & _POLLIN:
                self._read(dealer)
            self._expire(time.monotonic())
            return
        limit_ms = self.poll_limit(wait)
        if limit_ms is None:
            return
        try:
            ready = dict(self._poller.poll(limit_ms))
        except zmq.ZMQError as exc:  # the node closed its context meanwhile
            self.close()  # from this, the owner thread, so the context can end
            raise translate(exc, "wait for replies") from exc
        self.handle(ready)

    def sockets(self) -> list[zmq.Socket]:  # type: ignore[type-arg]
        """The DEALERs replies arrive on (for an event loop's reader to poll)."""
        return list(self._dealers.values())

    def poll_limit(self, wait: float | None = None) -> int | None:
        """Milliseconds to poll for replies (until the next expiry scan, or ``wait``).

        None when nothing is in flight and no ``wait`` was asked for.
        """
        if self._closed:
            for call in list(self._calls.values()):
                self._finish(call, error=Closed("node is closed"))
            return None
        if not self._calls:
            return None if wait is None else max(0, int(wait * 1000))
        # Wake for the next expiry scan (at most _SCAN_EVERY away, so that a
        # provider that left the mesh is noticed) or the caller's limit.
        limit = max(0.0, self._next_scan - time.monotonic())
        if wait is not None:
            # Never below 0: zmq reads a negative timeout as "wait forever",
            # and a reply from a provider that died never comes.
            limit = max(0.0, min(limit, wait))
        return int(limit * 1000)

    def handle(self, ready: Mapping[Any, int]) -> None:
        """Read replies from the ``ready`` sockets, then retry or fail expired attempts."""
        for sock in ready:
            # A retry sent while reading may have pruned a link of this batch.
            if not sock.closed:
                self._read(sock)
        self._expire(time.monotonic())

    def _read(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        # The poll said "readable": read once, then ask before each further
        # read (a zmq.Again costs more than the question).
        now = time.monotonic()  # dates the load reports of this batch
        while True:
            try:
                frame = _raw_recv(sock, _NOBLOCK)
            except zmq.Again:
                return
            self._on_reply(frame, now)
            if sock.closed or not int(sock.getsockopt(_EVENTS)) & _POLLIN:
                return

    def _on_reply(self, frame: bytes, now: float) -> None:
        """Settle the call that ``frame`` answers (or count it late or malformed).

        ``now``: the monotonic time, about when the reply was read.
        """
        try:
            kind, version, flags, request_id, load = _REPLY_HEAD(frame)
        except struct.error:
            kind = b""
        if kind == b"A" and version == PROTOCOL_VERSION and flags <= FLAG_MSGPACK:
            # A plain result, the common reply: decoded here, without a Reply.
            call = self._calls.pop(request_id, None)
            if call is None:
                self._count("late_replies")  # its attempt timed out: drop it
                return
            if flags:
                try:
                    data = decode_payload(flags, frame[_REPLY_HEAD_BYTES:], self._limits)
                except ProtocolError as exc:
                    self._calls[request_id] = call  # not an answer: the call waits on
                    self._count("reply_protocol_errors")
                    _bad_input_log.warning("dropped malformed reply: %s", exc.reason)
                    return
            else:
                data = frame[_REPLY_HEAD_BYTES:]  # raw bytes: nothing to decode
            provider = call.provider
            self._outstanding[provider] -= 1
            self._load[provider] = (load, now)
            # _finish, inline: the call is out of _calls already.
            call.finished = True
            call.value = data
            if call.on_done is not None:
                call.on_done(call)
            return
        try:
            reply = decode_reply(frame, self._limits)
        except ProtocolError as exc:
            self._count("reply_protocol_errors")
            _bad_input_log.warning("dropped malformed reply: %s", exc.reason)
            return
        call = self._calls.pop(reply.request_id, None)
        if call is None:
            self._count("late_replies")  # its attempt timed out: drop it
            return
        self._outstanding[call.provider] -= 1
        self._load[call.provider] = (reply.load, now)
        if reply.error is None and not reply.not_served:
            self._finish(call, result=reply.data)  # the common case, without _settle
        else:
            self._settle(call, reply)

    def _settle(self, call: RequestFuture, reply: Reply) -> None:
        if reply.not_served:  # counts as an attempt: retries bound it
            if call.attempts > call.retries or not self._send(call):
                self._finish(call, error=NoProviders(call.service))
        elif reply.error is not None:
            self._finish(call, error=RemoteError(call.service, call.provider, *reply.error))
        else:
            self._finish(call, result=reply.data)

    def _expire(self, now: float) -> None:
        """Retry or fail expired attempts; a scan of every call, so not on every reply."""
        if now < self._next_scan:
            return
        next_scan = now + _SCAN_EVERY
        providers = self._directory.all()
        for attempt_id, call in list(self._calls.items()):
            if call.provider not in providers.get(call.service, ()):
                call.deadline = min(call.deadline, now + _LEFT_GRACE)  # kept from then on
            if now < call.deadline:
                next_scan = min(next_scan, call.deadline)
                continue
            del self._calls[attempt_id]
            self._outstanding[call.provider] -= 1
            self._count("request_timeouts")
            if call.attempts <= call.retries and self._send(call):
                self._count("request_retries")
                continue
            self._finish(
                call, error=Timeout(f"no reply from {call.service!r} after {call.attempts} tries")
            )
        # Retried calls have new deadlines; the next scan is due at the earliest.
        self._next_scan = min([next_scan, *(call.deadline for call in self._calls.values())])

    def _finish(
        self, call: RequestFuture, *, result: object = None, error: BaseException | None = None
    ) -> None:
        call.finished = True
        call.value = result
        call.error = error
        self._calls.pop(call.attempt_id, None)
        if call.on_done is not None:
            call.on_done(call)

    def gather(self, service: str, data: object, timeout: float) -> GatherResult:
        """Ask every provider of ``service`` once; collect what arrives within ``timeout`` s."""
        providers = list(self._directory.providers(service))
        if not providers:
            raise NoProviders(service)
        futures: dict[str, RequestFuture] = {}
        missing: list[str] = []
        for provider in providers:
            try:
                futures[provider] = self.start(service, data, timeout, 0, only=provider)
            except NoProviders:  # it left between the lookup and now
                missing.append(provider)
        self.wait(list(futures.values()), timeout)
        replies: dict[str, object] = {}
        errors: dict[str, RemoteError] = {}
        for provider, future in futures.items():
            call = future
            if not call.finished:
                self._calls.pop(call.attempt_id, None)
                self._outstanding[call.provider] -= 1
                missing.append(provider)
            elif isinstance(call.error, RemoteError):
                errors[provider] = call.error
            elif call.error is not None:
                missing.append(provider)
            else:
                replies[provider] = call.value
        return GatherResult(replies, errors, tuple(missing))

    def close(self) -> None:
        """Close every DEALER; calls in flight end with meshq.Closed on their next wait."""
        if self._closed:
            return
        self._closed = True
        for endpoint in list(self._dealers):
            self._close_dealer(endpoint)
