"""Publishers bound to one topic, sync and asyncio (shipped as ``meshq.patterns.publisher``).

Each publisher chooses what happens when a subscriber's queue is full
(``MeshConfig.publish_hwm`` on our side plus ``subscribe_hwm`` on theirs):

* ``when_full="drop"`` (the default, as ZeroMQ PUB and ``Node.publish``):
  ``send`` never waits; the full subscriber misses the message and the
  others still get it. Nothing is lost silently: each message is numbered,
  so the subscriber that missed it counts it in ``Subscription.gaps`` (and
  its node in ``stats()["messages_missed"]``) and names this publisher and
  topic in ``gap_log``. The publisher itself cannot
  count these (ZeroMQ does not report which subscriber dropped what).
* ``when_full="block"``: ``send`` waits until every subscriber of the topic
  has room, then sends; after ``timeout`` seconds it raises meshq.Timeout,
  the message went to nobody, and ``timeouts`` counts it. One stalled
  subscriber holds the topic back for everyone. Backed by a second,
  never-dropping socket on the node (``Node.declare_blocking``).

A node publishes a topic one way only: a second publisher of the same topic
with the other choice raises ValueError (when made, or
on its first send).
"""

from __future__ import annotations

from typing import Literal

import meshq

__all__ = ["AsyncPublisher", "Publisher", "WhenFull"]

WhenFull = Literal["drop", "block"]


class _PublisherState:
    """What both publishers share: the topic, the choice, the counters."""

    def __init__(
        self,
        node: meshq.Node,
        topic: str,
        when_full: WhenFull,
        timeout: float | None,
    ) -> None:
        if when_full not in ("drop", "block"):
            raise ValueError(f"when_full must be 'drop' or 'block', not {when_full!r}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 seconds or None")
        node.check_topic(topic)
        if when_full == "block":
            node.declare_blocking(topic)  # binds and announces before the first send
        self.topic = topic
        self.when_full: WhenFull = when_full
        self.timeout = timeout
        #: Messages handed to the socket (for "drop": not necessarily received).
        self.sent = 0
        #: Sends that gave up waiting for room ("block" only): nobody got those.
        self.timeouts = 0


class Publisher(_PublisherState):
    """Publishes on one fixed topic of a node: ``Publisher(node, "sensors/temp").send(21.5)``.

    ``when_full`` is "drop" or "block" (see the module docs); ``timeout`` is
    the default wait of a blocking send, in seconds (None: no limit). The
    topic is checked once, here (ValueError if it is empty, too long or
    contains NUL), rather than on every send.
    """

    def __init__(
        self,
        node: meshq.Node,
        topic: str,
        *,
        when_full: WhenFull = "drop",
        timeout: float | None = 1.0,
    ) -> None:
        super().__init__(node, topic, when_full, timeout)
        self.node = node

    def send(self, data: object, timeout: float | None = None) -> None:
        """Publish ``data`` (bytes or msgpack-serialisable) on this topic.

        With "block", waits up to ``timeout`` seconds (default: the
        publisher's) and raises meshq.Timeout. Raises TypeError for data
        msgpack cannot encode, meshq.Closed after the node closed.
        """
        if self.when_full == "drop":
            self.node.publish(self.topic, data)
        else:
            try:
                self.node.publish_blocking(
                    self.topic, data, timeout=self.timeout if timeout is None else timeout
                )
            except meshq.Timeout:
                self.timeouts += 1
                raise
        self.sent += 1

    def wait_for_subscribers(self, n: int, timeout: float | None = None) -> int:
        """Wait until ``n`` subscriptions of the topic connected (Node.wait_for_subscribers)."""
        return self.node.wait_for_subscribers(self.topic, n, timeout)


class AsyncPublisher(_PublisherState):
    """The asyncio form of :class:`Publisher`, on a :class:`meshq.AsyncNode`.

    ``await pub.send(data)``: with "block" the wait for room is awaited, so
    the event loop keeps running.
    """

    def __init__(
        self,
        node: meshq.AsyncNode,
        topic: str,
        *,
        when_full: WhenFull = "drop",
        timeout: float | None = 1.0,
    ) -> None:
        super().__init__(node.node, topic, when_full, timeout)
        self.node = node

    async def send(self, data: object, timeout: float | None = None) -> None:
        """See :meth:`Publisher.send`."""
        if self.when_full == "drop":
            self.node.publish(self.topic, data)
        else:
            try:
                await self.node.publish_blocking(
                    self.topic, data, timeout=self.timeout if timeout is None else timeout
                )
            except meshq.Timeout:
                self.timeouts += 1
                raise
        self.sent += 1

    async def wait_for_subscribers(self, n: int, timeout: float | None = None) -> int:
        """See :meth:`Publisher.wait_for_subscribers`."""
        return await self.node.wait_for_subscribers(self.topic, n, timeout)
