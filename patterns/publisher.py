"""A publisher bound to one topic (shipped as ``meshq.patterns.publisher``)."""

from __future__ import annotations

from meshq import Node

__all__ = ["Publisher"]


class Publisher:
    """Publishes on one fixed topic of a node: ``Publisher(node, "sensors/temp").send(21.5)``.

    The topic is checked once, here (ValueError if it is empty, too long or
    contains NUL), rather than on every send.
    """

    def __init__(self, node: Node, topic: str) -> None:
        node.check_topic(topic)
        self.node = node
        self.topic = topic

    def send(self, data: object) -> None:
        """Publish ``data`` (bytes or msgpack-serialisable) on this topic."""
        self.node.publish(self.topic, data)
