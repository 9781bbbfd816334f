"""asyncio front-end: the same surface as :class:`meshq.Node`, awaitable.

The control plane is shared with the sync node (its own thread); only the
data path differs: subscriptions own a ``zmq.asyncio`` socket in the
caller's event loop, and the control thread wakes them with
``loop.call_soon_threadsafe``, so received messages never cross a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Literal, TypeVar, overload

import zmq
import zmq.asyncio

from .config import MeshConfig
from .deadlines import within
from .durable import DEFAULT_BACKOFF, DurableMessage, Start
from .durable.aio import AsyncDurablePublisher, AsyncDurableSubscription
from .errors import Closed, MeshqError, NoProviders, PayloadTooLarge, RemoteError, Timeout
from .message import Message
from .node import DIRECT_SERVICE, Node, PeerCallback, TaskHandler
from .peers import Peer, PeerEvent, PeerState
from .publishing import BlockingWait, encode_blocking
from .ratelimit import HandlerErrorLog, RateLimitedLog, retry_delay
from .requester import DEFAULT_RETRIES, DEFAULT_TIMEOUT, GatherResult, Requester
from .security import Curve, Rejection
from .services import ReplyTo
from .sockets import SocketFactory
from .state import SUBSCRIBERS, Providers
from .subscription import Inbox, PublisherDirectory, PublisherLinks, own
from .wire import Limits
from .zmqerrors import translate

__all__ = ["AsyncNode", "AsyncSubscription", "Sent"]

log = logging.getLogger("meshq.aio")
T = TypeVar("T")


class AsyncSubscription(Inbox):
    """An asyncio subscription; create through :meth:`AsyncNode.subscribe`.

    Use from the event loop that created it. ``async for msg in sub`` yields
    messages until the subscription or node closes.
    """

    def __init__(
        self,
        prefix: str,
        *,
        context: zmq.asyncio.Context,
        factory: SocketFactory,
        directory: PublisherDirectory,
        limits: Limits,
    ) -> None:
        super().__init__(prefix, directory, limits)
        self._loop = asyncio.get_running_loop()
        self._sock = factory.make(context, zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._links = PublisherLinks(self._sock, directory, factory.connect, factory.refused)
        self._closed = False
        self.owner = threading.get_ident()
        directory.watch(self)
        own(self)
        self._links.sync()

    def wake(self) -> None:
        # Called on the node's control thread: hop to our loop, touch nothing.
        try:
            self._loop.call_soon_threadsafe(self._apply_changes)
        except RuntimeError:
            pass  # the loop is closed; nothing left to wake

    def refresh(self) -> None:
        if not self._closed and self._links.version != self._directory.version:
            self._links.sync()

    def _apply_changes(self) -> None:
        if self._closed:
            return
        if self._directory.closed:
            self.close()
        elif self._links.version != self._directory.version:
            self._links.sync()

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message; wait at most ``timeout`` seconds (None: forever).

        Raises meshq.Timeout, or meshq.Closed once the subscription or node closed.
        """
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            if self._closed:
                raise Closed("subscription is closed")
            try:
                if deadline is None:
                    frame = await self._sock.recv()
                else:
                    remaining = deadline - self._loop.time()
                    if remaining <= 0:
                        raise Timeout(f"no message on {self.prefix!r} within the timeout")
                    frame = await within(
                        self._sock.recv(),
                        remaining,
                        keep=self._keep,
                        message=f"no message on {self.prefix!r} within the timeout",
                    )
            except (zmq.ZMQError, asyncio.CancelledError) as exc:
                if self._closed:
                    raise Closed("subscription is closed") from None
                if isinstance(exc, zmq.ZMQError):
                    raise translate(exc, "receive") from exc
                raise
            message = self._take(frame)
            if message is not None:
                return message

    def _keep(self, frame: bytes) -> None:
        """A frame that arrived as recv() was cancelled: the next recv() hands it out."""
        message = self._take(frame)
        if message is not None:
            self._pending.appendleft(message)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv()
            except Closed:
                return

    def close(self) -> None:
        """Stop receiving and release the socket. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._directory.unwatch(self)
        self._sock.close(linger=0)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> AsyncSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class _LoopReplies:
    """Requests in flight from one event loop, and the one task that reads their replies.

    One reader polls every DEALER of the loop's requester and settles the
    calls; each waiting coroutine awaits its own future. (A poll per waiter
    would fight over the same sockets and scan every call each time.)
    """

    def __init__(
        self,
        requester: Requester,
        loop: asyncio.AbstractEventLoop,
        count: Callable[[str], None],
    ) -> None:
        self._requester = requester
        self._loop = loop
        self._count = count  # into the node's stats
        self._failure_log = RateLimitedLog(log, interval=5.0)
        self._reader: asyncio.Task[None] | None = None
        # Set when the reader must look again: a new DEALER to watch, or a
        # new call whose deadline may come before the reader's current wait.
        self._changed = asyncio.Event()

    async def request(
        self, service: str, data: object, timeout: float, retries: int, only: str | None = None
    ) -> object:
        future = self._requester.start(service, data, timeout, retries, only=only)
        done: asyncio.Future[None] = self._loop.create_future()

        def settled() -> None:
            if not done.done():
                done.set_result(None)

        future.add_done_callback(settled)
        self._changed.set()
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._read())
        try:
            await done
        except asyncio.CancelledError:
            future.cancel()  # no retries for nobody; a late reply is dropped
            raise
        return future.result(timeout=0)

    async def _read(self) -> None:
        failures = 0  # batches in a row whose handling raised
        while True:
            limit = self._requester.poll_limit()
            if limit is None:
                return  # nothing in flight
            poller = zmq.asyncio.Poller()
            for sock in self._requester.sockets():
                poller.register(sock, zmq.POLLIN)
            self._changed.clear()
            polled = asyncio.ensure_future(poller.poll(limit))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({polled, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when close() cancels the reader: neither outlives this pass.
                changed.cancel()
                ready = polled.done()
                if not ready:
                    polled.cancel()
            try:
                self._requester.handle(dict(polled.result()) if ready else {})
            except Exception:  # the reader must outlive a bad batch: calls wait on it
                failures += 1
                self._count("internal_errors")
                self._failure_log.warning("reading replies failed", exc_info=True)
                # A fault that persists must neither spin the event loop nor
                # flood the log: pause, longer after each failure in a row.
                await asyncio.sleep(retry_delay(failures))
            else:
                failures = 0

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._requester.close()
        # Nobody reads replies any more: end what is in flight with Closed,
        # so that its awaiting coroutines (a durable consumer's long poll,
        # say) wake up instead of waiting forever.
        self._requester.poll_limit()


class AsyncNode:
    """A :class:`meshq.Node` for asyncio: ``async with AsyncNode(...) as node``.

    Takes the same arguments as Node; create it inside a running event loop.
    Waiting calls are coroutines with the same ``timeout`` rules and occupy
    no thread: the node's control thread wakes this loop when peers change.
    ``publish`` never blocks and stays a plain call.
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
        self._loop = asyncio.get_running_loop()  # RuntimeError outside a loop
        self._node = Node(
            name,
            mesh=mesh,
            interfaces=interfaces,
            seeds=seeds,
            config=config,
            headers=headers,
            discovery=discovery,
            security=security,
        )
        runtime = self._node.runtime
        self._context = zmq.asyncio.Context.shadow(runtime.context)
        self._subscriptions: weakref.WeakSet[AsyncSubscription] = weakref.WeakSet()
        self._waiters: set[asyncio.Future[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # on_message tasks
        # Awaitables of service handlers in progress on this loop.
        self._running_handlers: set[concurrent.futures.Future[object]] = set()
        # Peer events, subscriber and service changes, and the close wake our waiters.
        runtime.state.add_listener(self._on_control_thread)
        # Process-wide: held weakly, so an AsyncNode never closed can still go.
        method = weakref.WeakMethod(self._on_subscribers)

        def on_subscribers() -> None:
            wake = method()
            if wake is not None:
                wake()

        self._subscribers_listener = on_subscribers
        SUBSCRIBERS.add_listener(on_subscribers)
        # The loop's thread owns the caller side; Node keeps one per thread.
        self._replies = _LoopReplies(runtime.requester(), self._loop, runtime.count)

    def _on_control_thread(self, events: list[PeerEvent]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake_waiters)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _on_subscribers(self) -> None:
        self._on_control_thread([])

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _next_change(self, timeout: float | None) -> None:
        """Wait until peers, subscribers or services change (or the node closes).

        Raises meshq.Timeout after ``timeout`` s.
        """
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.add(waiter)
        # within(), not asyncio.wait_for: a cancelled events() iteration must
        # not go on and take the event meant for the next one.
        try:
            await within(waiter, timeout, message="no peer change within the timeout")
        finally:
            self._waiters.discard(waiter)

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._loop.time()

    @property
    def id(self) -> str:
        return self._node.id

    @property
    def name(self) -> str:
        return self._node.name

    @property
    def mesh(self) -> str:
        return self._node.mesh

    @property
    def control_endpoints(self) -> tuple[str, ...]:
        return self._node.control_endpoints

    @property
    def closed(self) -> bool:
        return self._node.closed

    @property
    def node(self) -> Node:
        """The underlying sync node."""
        return self._node

    @overload
    def publish(
        self, topic: str, data: object, *, durable: Literal[False] = ..., timeout: float = ...
    ) -> Sent: ...

    @overload
    def publish(
        self, topic: str, data: object, *, durable: Literal[True], timeout: float = ...
    ) -> Awaitable[int]: ...

    def publish(
        self, topic: str, data: object, *, durable: bool = False, timeout: float = 5.0
    ) -> Sent | Awaitable[int]:
        """See :meth:`Node.publish`: sent at once, never blocks.

        A plain call, and awaitable too (``await node.publish(...)`` is the
        same call). With ``durable=True`` it returns an awaitable of the
        stream sequence number, as :meth:`publish_durable`.
        """
        if durable:
            return self.publish_durable(topic, data, timeout=timeout)
        self._node.publish(topic, data)
        return SENT

    def publish_many(self, topic: str, items: Iterable[object]) -> int:
        """See :meth:`Node.publish_many`."""
        return self._node.publish_many(topic, items)

    async def publish_blocking(
        self, topic: str, data: object, *, timeout: float | None = 1.0
    ) -> None:
        """See :meth:`Node.publish_blocking`; the wait for room is awaited and holds no thread."""
        node = self._node
        if not node.is_blocking(topic):
            node.declare_blocking(topic)
        flags, payload = encode_blocking(data)
        loop = self._loop
        room = asyncio.Event()

        def heard(version: int) -> None:  # on the loop
            if version > wait.version:  # news since the last try, not of it
                room.set()

        def wake(version: int) -> None:  # any thread, under the publish lock
            try:
                loop.call_soon_threadsafe(heard, version)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

        wait = BlockingWait(topic, timeout, wake)
        try:
            while not node.try_publish_blocking(topic, flags, payload, wait):
                # Cleared after the try: news of room that came since is
                # still on its way to this loop (call_soon_threadsafe).
                room.clear()
                recheck = loop.call_later(wait.remaining(), room.set)
                try:
                    await room.wait()
                finally:
                    recheck.cancel()
        finally:
            wait.end()

    def declare_blocking(self, topic: str) -> None:
        """See :meth:`Node.declare_blocking`."""
        self._node.declare_blocking(topic)

    async def wait_for_subscribers(self, topic: str, n: int, timeout: float | None = None) -> int:
        """See :meth:`Node.wait_for_subscribers`."""

        def enough() -> int | None:
            count = self._node.subscribers(topic)
            return count if count >= n else None

        def failure() -> str:
            return (
                f"{self._node.subscribers(topic)} of {n} subscribers of {topic!r} after {timeout} s"
            )

        return await self._wait_until(enough, timeout, failure)

    async def _wait_until(
        self, test: Callable[[], T | None], timeout: float | None, failure: Callable[[], str]
    ) -> T:
        """Await until ``test()`` gives something but None, looking again at each change
        the node reports (peers, directories, subscribers, closing). Raises meshq.Timeout
        with ``failure()`` after ``timeout`` s (None: no limit), meshq.Closed."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            found = test()
            if found is not None:
                return found
            self._node.runtime.check_open()
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise Timeout(failure())
            try:
                await self._next_change(remaining)
            except Timeout:
                continue  # the test above decides, once more

    async def wait_for_providers(
        self, test: Callable[[Providers], T | None], *, timeout: float | None
    ) -> T:
        """See :meth:`Node.wait_for_providers`; awaited, no thread held."""
        return await self._wait_until(
            lambda: test(self._node.providers()),
            timeout,
            lambda: f"no such service within {timeout} s",
        )

    async def wait_for_service(
        self, name: str, n: int = 1, *, timeout: float | None = None
    ) -> Mapping[str, str]:
        """See :meth:`Node.wait_for_service`; awaited, no thread held."""
        try:
            return await self.wait_for_providers(
                lambda providers: _enough(providers.get(name), n), timeout=timeout
            )
        except Timeout:
            have = len(self._node.providers().get(name, {}))
            raise Timeout(f"{have} of {n} providers of {name!r} after {timeout} s") from None

    def serve(self, name: str, handler: Callable[[Any], Any] | None = None) -> Any:
        """See :meth:`Node.serve`; a decorator too.

        The handler is called on the node's service thread, one request at
        a time, as with Node. When it returns an awaitable (an ``async
        def`` handler does), that is awaited on this event loop, so many
        requests may be in progress at once; closing the node cancels them.
        """
        if handler is None:
            return lambda function: self.serve(name, function)
        self._node.serve_deferred(name, self._on_loop(handler))
        return handler

    def service(self, name: str) -> Callable[[Any], Any]:
        """Decorator form of :meth:`serve`: ``@node.service("calc")``."""
        return lambda handler: self.serve(name, handler)

    def _on_loop(self, handler: Callable[[object], object]) -> Callable[[object, ReplyTo], None]:
        """A deferred handler: ``handler(data)``, then any awaitable it returns awaited here."""
        loop = self._loop
        count = self._node.runtime.count
        running = self._running_handlers

        def answer(reply_to: ReplyTo, done: concurrent.futures.Future[object]) -> None:
            running.discard(done)
            try:
                result = done.result()
            except BaseException as exc:  # the caller gets it as RemoteError
                count("handler_errors")
                reply_to.fail(exc if not done.cancelled() else Closed("handler cancelled"))
                return
            try:
                reply_to.send(result)
            except PayloadTooLarge:
                pass  # answered with the error already
            except Exception as exc:  # msgpack cannot encode the result
                count("handler_errors")
                reply_to.fail(exc)

        def deferred(data: object, reply_to: ReplyTo) -> None:
            try:
                result = handler(data)
            except Exception as exc:  # the caller gets it as RemoteError
                count("handler_errors")
                reply_to.fail(exc)
                return
            if not inspect.isawaitable(result):
                try:
                    reply_to.send(result)
                except PayloadTooLarge:
                    pass  # answered with the error already
                except Exception as exc:  # msgpack cannot encode the result
                    count("handler_errors")
                    reply_to.fail(exc)
                return
            future = asyncio.run_coroutine_threadsafe(_awaited(result), loop)
            running.add(future)
            future.add_done_callback(lambda done: answer(reply_to, done))

        return deferred

    async def send_to(self, peer_id: str, data: object, *, timeout: float = 1.0) -> object:
        """See :meth:`Node.send_to`; awaited, no thread held."""
        envelope = {"from": self.id, "data": data}
        return await self._replies.request(DIRECT_SERVICE, envelope, timeout, 0, only=peer_id)

    def on_direct(self, handler: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """See :meth:`Node.on_direct`: ``handler(sender_id, data)``, plain or ``async def``."""

        def envelope(message: object) -> tuple[str, object]:
            if not (isinstance(message, dict) and isinstance(message.get("from"), str)):
                raise ValueError("not a direct message")
            return message["from"], message.get("data")

        self.serve(DIRECT_SERVICE, lambda message: handler(*envelope(message)))
        return handler

    def worker(self, stage: str) -> Callable[[TaskHandler], TaskHandler]:
        """See :meth:`Node.worker`: handlers run on the node's service thread."""
        return self._node.worker(stage)

    async def request(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        only: str | None = None,
    ) -> object:
        """See :meth:`Node.request`; the wait is awaited and holds no thread.

        Many may be in flight at once (``asyncio.gather`` them). ``only``:
        as for :meth:`Node.request_async`, this provider and no other.
        """
        return await self._replies.request(service, data, timeout, retries, only=only)

    async def gather(self, service: str, data: object, *, timeout: float = 0.5) -> GatherResult:
        """See :meth:`Node.gather`."""
        providers = list(self._node.providers().get(service, {}))
        if not providers:
            raise NoProviders(service)

        async def ask(provider: str) -> tuple[str, object, BaseException | None]:
            try:
                value = await self._replies.request(service, data, timeout, 0, only=provider)
                return provider, value, None
            except MeshqError as exc:
                return provider, None, exc

        outcomes = await asyncio.gather(*(ask(provider) for provider in providers))
        replies = {p: value for p, value, error in outcomes if error is None}
        errors = {p: e for p, _, e in outcomes if isinstance(e, RemoteError)}
        missing = tuple(p for p, _, e in outcomes if e is not None and p not in errors)
        return GatherResult(replies, errors, missing)

    def services(self) -> dict[str, list[str]]:
        """See :meth:`Node.services`."""
        return self._node.services()

    def check_topic(self, topic: str) -> None:
        """See :meth:`Node.check_topic`."""
        self._node.check_topic(topic)

    async def publish_durable(
        self, topic: str, data: object, *, msg_id: bytes | None = None, timeout: float = 5.0
    ) -> int:
        """See ``Node.publish(durable=True)``: returns the stream sequence number once stored.

        Raises meshq.NoProviders at once, meshq.RelayConflict, meshq.Timeout.
        """
        publisher = AsyncDurablePublisher(self, timeout=timeout)
        return await publisher.publish(topic, data, msg_id=msg_id)

    async def subscribe_durable(
        self,
        prefix: str,
        name: str,
        *,
        start: Start = Start.FIRST,
        ack: Literal["auto", "explicit"] = "auto",
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
    ) -> AsyncDurableSubscription:
        """See ``Node.subscribe(prefix, durable=name)``: made now if a relay is known.

        Without a relay yet, the first fetch creates the consumer.

        Raises meshq.RemoteError if ``name`` reads another prefix, ValueError.
        """
        self._node.runtime.check_prefix(prefix)
        subscription = AsyncDurableSubscription(
            self,
            prefix,
            name,
            start=start,
            ack=ack,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            backoff=backoff,
        )
        await subscription.open()
        return subscription

    @overload
    def subscribe(self, prefix: str) -> AsyncSubscription: ...

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
        backoff: Sequence[float] = ...,
    ) -> AsyncDurableSubscription: ...

    def subscribe(
        self,
        prefix: str,
        *,
        durable: str | None = None,
        start: Start = Start.FIRST,
        ack: Literal["auto", "explicit"] = "auto",
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
    ) -> AsyncSubscription | AsyncDurableSubscription:
        """See :meth:`Node.subscribe`; call from the loop that will receive.

        With ``durable="name"`` it is that durable consumer, as with Node:
        the consumer is made on the relay at once (in a task of this loop),
        and the first ``recv`` waits for that.
        """
        if durable is not None:
            self._node.runtime.check_prefix(prefix)
            durable_sub = AsyncDurableSubscription(
                self,
                prefix,
                durable,
                start=start,
                ack=ack,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                backoff=backoff,
            )
            durable_sub.open_soon()
            return durable_sub
        return self._subscribe(prefix)

    def _subscribe(self, prefix: str) -> AsyncSubscription:
        runtime = self._node.runtime
        runtime.check_prefix(prefix)
        subscription = AsyncSubscription(
            prefix,
            context=self._context,
            factory=runtime.sockets,
            directory=runtime.state.publishers,
            limits=runtime.limits,
        )
        subscription.on_gap = runtime.count_missed
        self._subscriptions.add(subscription)
        return subscription

    def on_message(
        self,
        prefix: str,
        *,
        durable: str | None = None,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
    ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Decorator: call ``handler(message)`` for every message under ``prefix``.

        As :meth:`Node.on_message`, but the handler (plain or ``async
        def``) runs in a task of this event loop that owns the subscription;
        an ``async def`` handler is awaited before the next message. A
        handler that raises is counted (``message_handler_errors``), logged
        as Node's are (a traceback per new kind, then a line per 30 s) and
        keeps receiving; with ``durable=`` the message is then handed back
        (``nak``), delivered again after ``backoff``. Runs until the node closes.
        """
        if durable is None:
            subscription: AsyncSubscription | AsyncDurableSubscription = self.subscribe(prefix)
        else:
            subscription = self.subscribe(prefix, durable=durable, backoff=backoff)

        def register(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
            task = self._loop.create_task(self._handle_messages(subscription, handler))
            self._handlers.add(task)
            task.add_done_callback(self._handler_ended)
            return handler

        return register

    def _handler_ended(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, Closed):  # a consumer refused by the relay, say
                self._node.runtime.count("message_handler_errors")
                log.error("on_message stopped: %s", error, exc_info=error)

    async def _handle_messages(
        self,
        subscription: AsyncSubscription | AsyncDurableSubscription,
        handler: Callable[[Any], Any],
    ) -> None:
        errors = HandlerErrorLog(log, f"on_message handler {handler!r}")
        async with subscription:
            async for message in subscription:
                try:
                    result = handler(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    self._node.runtime.count("message_handler_errors")
                    errors.failed(exc)
                    if isinstance(message, DurableMessage):
                        message.nak()

    async def run(self, timeout: float | None = None) -> None:
        """Wait while the node serves: until it is closed or ``timeout`` s pass.

        For a program whose only job is to offer services or handle
        messages; the loop runs the handlers meanwhile.
        """
        deadline = None if timeout is None else self._loop.time() + timeout
        while not self._node.closed:
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                return
            try:
                await self._next_change(remaining)
            except Timeout:
                return

    def peers(self) -> list[Peer]:
        return self._node.peers()

    async def wait_for_peers(self, n: int, timeout: float | None = None) -> list[Peer]:
        """See :meth:`Node.wait_for_peers`."""

        def alive() -> list[Peer]:
            return [peer for peer in self._node.peers() if peer.state is PeerState.ALIVE]

        def enough() -> list[Peer] | None:
            peers = alive()
            return peers if len(peers) >= n else None

        return await self._wait_until(
            enough, timeout, lambda: f"{len(alive())} of {n} peers after {timeout} s"
        )

    def on_peer_joined(self, callback: PeerCallback) -> PeerCallback:
        """See :meth:`Node.on_peer_joined`; the callback runs on the node's event thread."""
        return self._node.on_peer_joined(callback)

    def on_peer_left(self, callback: PeerCallback) -> PeerCallback:
        """See :meth:`Node.on_peer_left`."""
        return self._node.on_peer_left(callback)

    def on_peer_suspect(self, callback: PeerCallback) -> PeerCallback:
        """See :meth:`Node.on_peer_suspect`."""
        return self._node.on_peer_suspect(callback)

    async def events(self, timeout: float | None = None) -> AsyncIterator[PeerEvent]:
        """See :meth:`Node.events`: the same queue, awaited instead of blocked on."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            event = self._node.runtime.state.next_event(0)
            if event is not None:
                yield event
                continue
            if self._node.closed:
                return
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                return
            try:
                await self._next_change(remaining)
            except Timeout:
                return

    def stats(self) -> dict[str, int]:
        return self._node.stats()

    def rejections(self) -> list[Rejection]:
        """Connections refused by security; see :meth:`meshq.Node.rejections`."""
        return self._node.rejections()

    async def close(self) -> None:
        """Close this loop's subscriptions, then the node (BYE, mDNS goodbye).

        The node's goodbyes take a moment; they run on a thread of their own
        so the loop keeps going meanwhile.
        """
        for task in list(self._handlers):
            task.cancel()
        for future in list(self._running_handlers):
            future.cancel()  # their callers get an error reply, not a wait
        for subscription in list(self._subscriptions):
            subscription.close()
        await self._replies.close()  # this loop's thread owns those sockets
        done: asyncio.Future[None] = self._loop.create_future()

        def close_node() -> None:
            try:
                self._node.close()
            finally:
                self._loop.call_soon_threadsafe(_resolve, done)

        SUBSCRIBERS.remove_listener(self._subscribers_listener)
        threading.Thread(target=close_node, name="meshq-aclose", daemon=True).start()
        await asyncio.shield(done)
        self._wake_waiters()

    async def __aenter__(self) -> AsyncNode:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _enough(by_id: Mapping[str, str] | None, n: int) -> Mapping[str, str] | None:
    return by_id if by_id is not None and len(by_id) >= n else None


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable


class Sent:
    """What :meth:`AsyncNode.publish` returns: the message is sent; awaiting it is a no-op."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once: ``await`` returns None

    def __repr__(self) -> str:
        return "Sent"


SENT = Sent()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
