"""Node's publish/subscribe calls: a part of the :class:`meshq.Node` facade.

Publishing goes straight into the node's publish socket (meshq/publishing.py)
on the caller's thread; a subscription owns a socket of the caller's thread
(meshq/subscription.py). Nothing here crosses to the control thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, overload

from .durable import DEFAULT_BACKOFF, DurableMessage, DurablePublisher, DurableSubscription, Start
from .errors import Closed, MeshqError, Timeout
from .message import Message
from .publishing import BlockingWait
from .ratelimit import HandlerErrorLog
from .runtime import Runtime
from .state import SUBSCRIBERS, Reporting
from .subscription import Subscription, refresh_this_thread

__all__ = ["DurableMessageHandler", "MessageHandler", "PubSubApi"]

log = logging.getLogger("meshq.node")

MessageHandler = Callable[[Message], object]
DurableMessageHandler = Callable[[DurableMessage], object]


class PubSubApi:
    """Publish/subscribe methods of :class:`meshq.Node` (documented there)."""

    runtime: Runtime
    _blocking_topics: set[str]

    @overload
    def publish(
        self, topic: str, data: object, *, durable: Literal[False] = ..., timeout: float = ...
    ) -> None: ...

    @overload
    def publish(
        self, topic: str, data: object, *, durable: Literal[True], timeout: float = ...
    ) -> int: ...

    @overload
    def publish(
        self, topic: str, data: object, *, durable: bool = ..., timeout: float = ...
    ) -> int | None: ...

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
        # A Node replaces this method with its publish socket's own (a call
        # layer less per message); this body is the reference behaviour.
        if durable:
            return self._publish_durable(topic, data, timeout)
        self.runtime.publisher.publish(topic, data)
        return None

    def _publish_durable(self, topic: str, data: object, timeout: float) -> int:
        return self._durable_publisher(timeout).publish(topic, data)

    def _durable_publisher(self, timeout: float) -> DurablePublisher:
        local = self.runtime.thread_local()
        publisher: DurablePublisher | None = getattr(local, "durable", None)
        if publisher is None or publisher.timeout != timeout:
            publisher = DurablePublisher(self, timeout=timeout)  # type: ignore[arg-type]
            local.durable = publisher
        return publisher

    def publish_many(self, topic: str, items: Iterable[object]) -> int:
        """Publish many messages on one topic at once; return how many.

        Same delivery as calling :meth:`publish` for each item, but up to
        1024 messages travel in one frame, which is several times faster for
        small messages. Subscribers still receive them one by one.
        """
        return self.runtime.publisher.publish_many(topic, items)

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
        self.runtime.publisher.publish_blocking(topic, data, timeout)

    def is_blocking(self, topic: str) -> bool:
        """Whether ``topic`` was declared blocking on this node (cheap; may forget old topics)."""
        return topic in self._blocking_topics

    def try_publish_blocking(
        self, topic: str, flags: int, payload: bytes, wait: BlockingWait | None = None
    ) -> bool:
        """One non-waiting try of a blocking publish; False if a subscriber is full.

        For front-ends that wait their own way (asyncio); ``flags, payload``
        come from ``meshq.publishing.encode_blocking``. A failed try
        registers ``wait``, whose ``wake`` then hears of room; call
        ``wait.end()`` when the publish is over (see BlockingWait).
        """
        return self.runtime.publisher.try_publish_blocking(topic, flags, payload, wait)

    def declare_blocking(self, topic: str) -> None:
        """Publish ``topic`` blocking from now on (:meth:`publish_blocking`), not dropping.

        The first call binds a second, never-dropping publish socket
        (``ZMQ_XPUB_NODROP``) and announces it, so subscribers connect to it
        as well; call this before :meth:`wait_for_subscribers` so that they
        are connected before the first message. Raises ValueError if
        ``topic`` was already published with :meth:`publish`,
        meshq.BindError, meshq.Closed.
        """
        runtime = self.runtime
        runtime.check_open()
        if runtime.publisher.declare_blocking(topic):
            runtime.watch_publisher()
            runtime.announce()
        if len(self._blocking_topics) >= runtime.config.max_topics:
            self._blocking_topics.clear()  # only a shortcut: declaring again is harmless
        self._blocking_topics.add(topic)

    def wait_for_subscribers(self, topic: str, n: int, timeout: float | None = None) -> int:
        """Block until at least ``n`` connected subscriptions match ``topic``; return the count.

        The answer to ZeroMQ's "slow joiner": once this returns, a message
        published on ``topic`` reaches those subscribers (their own node's
        subscriptions count too). Wakes when subscriptions arrive, no
        polling. Raises meshq.Timeout after ``timeout`` s, meshq.Closed.
        """
        state = self.runtime.state
        changed = SUBSCRIBERS.condition
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with changed:
                version = SUBSCRIBERS.version
            count = self.subscribers(topic)  # reads what arrived, may bump the version
            if count >= n:
                return count
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{count} of {n} subscribers of {topic!r} after {timeout} s")
            with changed:
                if SUBSCRIBERS.version == version and not state.closed:
                    SUBSCRIBERS.waiting += 1
                    try:
                        changed.wait(remaining)
                    finally:
                        SUBSCRIBERS.waiting -= 1

    def subscribers(self, topic: str) -> int:
        """How many connected subscriptions would receive a message on ``topic`` now.

        This thread's own idle subscriptions are connected first, so they count.
        """
        refresh_this_thread()
        return self.runtime.publisher.subscribers(topic)

    def check_topic(self, topic: str) -> None:
        """Raise ValueError unless ``topic`` can be published (1..max_topic_bytes, no NUL)."""
        self.runtime.publisher.check_topic(topic)

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
        backoff: Sequence[float] = ...,
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
        backoff: Sequence[float] = DEFAULT_BACKOFF,
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
        delivered again, up to ``max_deliver`` times, then dead-lettered. A
        naked message is delivered again after ``backoff[deliveries - 1]``
        seconds (the last repeats; default 1, 2, 4, 8, 16, 30 s, at most
        ``ack_wait``). Processes sharing one name share the messages between them.
        """
        runtime = self.runtime
        runtime.check_prefix(prefix)
        if durable is not None:
            return DurableSubscription(  # it reports itself (track_consumer)
                self,  # type: ignore[arg-type]
                prefix,
                durable,
                start=start,
                ack=ack,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                backoff=backoff,
            )
        # Let closed subscriptions' links go first (the control thread does
        # too, but a thread that subscribes and closes in a tight loop holds
        # the GIL, so that their sockets, and descriptors, would pile up).
        runtime.publisher.process_commands()
        subscription = Subscription(
            prefix,
            context=runtime.context,
            factory=runtime.sockets,
            directory=runtime.state.publishers,
            news=runtime.publisher.news,
            limits=runtime.limits,
        )
        subscription.on_gap = runtime.count_missed
        return subscription

    def track_consumer(self, consumer: Reporting) -> None:
        """Show ``consumer`` in this node's introspection replies while it is referenced.

        The seam for durable consumers (meshq/durable/), sync and asyncio:
        each registers itself with its node when made, and is forgotten
        once its owner drops it (held weakly). ``consumer.report()`` is
        called from the node's service thread; None leaves it out.
        Thread-safe.
        """
        self.runtime.state.track_consumer(consumer)

    @overload
    def on_message(self, prefix: str) -> Callable[[MessageHandler], MessageHandler]: ...

    @overload
    def on_message(
        self, prefix: str, *, durable: str, backoff: Sequence[float] = ...
    ) -> Callable[[DurableMessageHandler], DurableMessageHandler]: ...

    def on_message(
        self,
        prefix: str,
        *,
        durable: str | None = None,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
    ) -> Callable[[Any], Any]:
        """Decorator: call ``handler(message)`` for every message under ``prefix``.

        Each handler gets a thread of its own that owns its subscription, so
        a slow handler delays only itself; its backlog is bounded by
        ``subscribe_hwm`` (beyond it messages are dropped and show up as
        gaps). A handler that raises is counted (``message_handler_errors``)
        and keeps receiving; its first traceback of each kind is logged, then
        one summary line per 30 s says how many more failed. Runs until the
        node closes.

        With ``durable="name"`` the handler is that durable consumer (see
        :meth:`subscribe`): a message is acknowledged once the handler
        returns, and one whose handler raised is delivered again (``nak``)
        after ``backoff`` (as in :meth:`subscribe`).
        """
        runtime = self.runtime
        runtime.check_prefix(prefix)

        def register(handler: Any) -> Any:
            ready = threading.Event()
            thread = threading.Thread(
                target=self._handle_messages,
                args=(prefix, durable, backoff, handler, ready),
                name=f"meshq-on-message-{runtime.id[:8]}",
                daemon=True,
            )
            thread.start()
            ready.wait()  # subscribed: what is published from now on reaches it
            runtime.handler_threads.append(thread)
            return handler

        return register

    def _handle_messages(
        self,
        prefix: str,
        durable: str | None,
        backoff: Sequence[float],
        handler: Any,
        ready: threading.Event,
    ) -> None:
        subscription: Subscription | DurableSubscription
        try:
            if durable is None:
                subscription = self.subscribe(prefix)
            else:
                subscription = self.subscribe(prefix, durable=durable, backoff=backoff)
        except MeshqError as exc:
            if not isinstance(exc, Closed):
                log.error("on_message(%r, durable=%r) not started: %s", prefix, durable, exc)
            return
        finally:
            ready.set()
        errors = HandlerErrorLog(log, f"on_message handler {handler!r}")
        with subscription:
            try:
                for message in subscription:
                    try:
                        handler(message)
                    except Exception as exc:
                        self.runtime.count("message_handler_errors")
                        errors.failed(exc)
                        if isinstance(message, DurableMessage):
                            message.nak()
            except Closed:
                return
        self.runtime.close_thread_requester()  # a durable consumer's caller side
