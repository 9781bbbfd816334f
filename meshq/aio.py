"""asyncio front-end: the same surface as :class:`meshq.Node`, awaitable.

The control plane is shared with the sync node (its own thread); only the
data path differs: subscriptions own a ``zmq.asyncio`` socket in the
caller's event loop, and the control thread wakes them with
``loop.call_soon_threadsafe``, so received messages never cross a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import zmq
import zmq.asyncio

from .config import MeshConfig
from .durable import Start
from .durable.aio import AsyncDurablePublisher, AsyncDurableSubscription
from .errors import Closed, MeshqError, NoProviders, RemoteError, Timeout
from .message import Message
from .node import Node, PeerCallback
from .peers import Peer, PeerEvent, PeerState
from .publishing import BlockingWait, encode_blocking
from .requester import DEFAULT_RETRIES, DEFAULT_TIMEOUT, GatherResult, Requester
from .security import Curve, Rejection
from .services import Handler
from .sockets import SocketFactory
from .subscription import Inbox, PublisherDirectory, PublisherLinks, own
from .wire import Limits
from .workers import TaskHandler

__all__ = ["AsyncNode", "AsyncSubscription"]

log = logging.getLogger("meshq.aio")


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
                    frame = await asyncio.wait_for(self._sock.recv(), remaining)
            except asyncio.TimeoutError:
                raise Timeout(f"no message on {self.prefix!r} within the timeout") from None
            except (zmq.ZMQError, asyncio.CancelledError):
                if self._closed:
                    raise Closed("subscription is closed") from None
                raise
            message = self._take(frame)
            if message is not None:
                return message

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

    def __init__(self, requester: Requester, loop: asyncio.AbstractEventLoop) -> None:
        self._requester = requester
        self._loop = loop
        self._reader: asyncio.Task[None] | None = None
        # Set when the reader must look again: a new DEALER to watch, or a
        # new call whose deadline may come before the reader's current wait.
        self._changed = asyncio.Event()

    async def request(
        self, service: str, data: object, timeout: float, retries: int, only: str | None = None
    ) -> object:
        future = self._requester.start(service, data, timeout, retries, only=only)
        call = future._call
        done: asyncio.Future[None] = self._loop.create_future()

        def settled(_: object) -> None:
            if not done.done():
                done.set_result(None)

        call.on_done = settled
        self._changed.set()
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._read())
        try:
            await done
        except asyncio.CancelledError:
            self._requester.cancel(call)  # no retries for nobody; a late reply is dropped
            raise
        return future.result(timeout=0)

    async def _read(self) -> None:
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
            await asyncio.wait({polled, changed}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            try:
                if polled.done():
                    self._requester.handle(dict(polled.result()))
                else:
                    polled.cancel()
                    self._requester.handle({})
            except Exception:  # the reader must outlive a bad batch: calls wait on it
                log.exception("reading replies failed")
                await asyncio.sleep(0.01)

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
        self._context = zmq.asyncio.Context.shadow(self._node._context)
        self._subscriptions: weakref.WeakSet[AsyncSubscription] = weakref.WeakSet()
        self._waiters: set[asyncio.Future[None]] = set()
        self._node._event_listeners.append(self._on_control_thread)
        # The loop's thread owns the caller side; Node keeps one per thread.
        self._replies = _LoopReplies(self._node._requester(), self._loop)

    def _on_control_thread(self, events: list[PeerEvent]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake_waiters)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _next_change(self, timeout: float | None) -> None:
        """Wait until peers change (or the node closes); meshq.Timeout after ``timeout`` s."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise Timeout("no peer change within the timeout") from None
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

    def publish(self, topic: str, data: object) -> None:
        """See :meth:`Node.publish`."""
        self._node.publish(topic, data)

    def publish_many(self, topic: str, items: Iterable[object]) -> int:
        """See :meth:`Node.publish_many`."""
        return self._node.publish_many(topic, items)

    async def publish_blocking(
        self, topic: str, data: object, *, timeout: float | None = 1.0
    ) -> None:
        """See :meth:`Node.publish_blocking`; the wait for room is awaited, not slept."""
        node = self._node
        if topic not in node._blocking_topics:
            node.declare_blocking(topic)
        flags, payload = encode_blocking(data)
        wait = BlockingWait(topic, timeout)
        while not node._publisher.try_publish_blocking(topic, flags, payload):
            await asyncio.sleep(wait.pause())

    def declare_blocking(self, topic: str) -> None:
        """See :meth:`Node.declare_blocking`."""
        self._node.declare_blocking(topic)

    async def wait_for_subscribers(self, topic: str, n: int, timeout: float | None = None) -> int:
        """See :meth:`Node.wait_for_subscribers`."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            count = self._node.subscribers(topic)
            if count >= n:
                return count
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{count} of {n} subscribers of {topic!r} after {timeout} s")
            await asyncio.sleep(0.005)

    def serve(self, name: str, handler: Handler | None = None) -> Any:
        """See :meth:`Node.serve`: handlers run on the node's service thread."""
        return self._node.serve(name, handler)

    def service(self, name: str) -> Callable[[Handler], Handler]:
        """See :meth:`Node.service`."""
        return self._node.service(name)

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
    ) -> object:
        """See :meth:`Node.request`; the wait is awaited and holds no thread.

        Many may be in flight at once (``asyncio.gather`` them).
        """
        return await self._replies.request(service, data, timeout, retries)

    async def gather(self, service: str, data: object, *, timeout: float = 0.5) -> GatherResult:
        """See :meth:`Node.gather`."""
        providers = list(self._node._service_directory.providers(service))
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
    ) -> AsyncDurableSubscription:
        """See ``Node.subscribe(prefix, durable=name)``: made now if a relay is known.

        Without a relay yet, the first fetch creates the consumer.

        Raises meshq.RemoteError if ``name`` reads another prefix, ValueError.
        """
        self._node._check_prefix(prefix)
        subscription = AsyncDurableSubscription(
            self, prefix, name, start=start, ack=ack, ack_wait=ack_wait, max_deliver=max_deliver
        )
        await subscription.open()
        return subscription

    def subscribe(self, prefix: str) -> AsyncSubscription:
        """See :meth:`Node.subscribe`; call from the loop that will receive."""
        self._node._check_prefix(prefix)
        subscription = AsyncSubscription(
            prefix,
            context=self._context,
            factory=self._node._sockets,
            directory=self._node._directory,
            limits=self._node._limits,
        )
        subscription.on_gap = self._node._count_missed
        self._subscriptions.add(subscription)
        return subscription

    def peers(self) -> list[Peer]:
        return self._node.peers()

    async def wait_for_peers(self, n: int, timeout: float | None = None) -> list[Peer]:
        """See :meth:`Node.wait_for_peers`."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            alive = [peer for peer in self._node.peers() if peer.state is PeerState.ALIVE]
            if len(alive) >= n:
                return alive
            self._node._check_open()
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{len(alive)} of {n} peers after {timeout} s")
            try:
                await self._next_change(remaining)
            except Timeout:
                continue  # the loop above says how many peers there were

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
            event = self._node._next_event_nowait()
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
        for subscription in list(self._subscriptions):
            subscription.close()
        await self._replies.close()  # this loop's thread owns those sockets
        done: asyncio.Future[None] = self._loop.create_future()

        def close_node() -> None:
            try:
                self._node.close()
            finally:
                self._loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=close_node, name="meshq-aclose", daemon=True).start()
        await asyncio.shield(done)
        self._wake_waiters()

    async def __aenter__(self) -> AsyncNode:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
