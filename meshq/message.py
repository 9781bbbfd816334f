"""A received publish/subscribe message."""

from __future__ import annotations

__all__ = ["Message"]


class Message:
    """One message received by a subscription.

    ``topic`` and ``sender`` are decoded from the frame only when read, since
    many consumers never look at them.
    """

    __slots__ = ("_frame", "_sender", "_time_ns", "_topic_end", "data", "seq")

    def __init__(
        self, frame: bytes, topic_end: int, sender: bytes, seq: int, time_ns: int, data: object
    ) -> None:
        self._frame = frame
        self._topic_end = topic_end
        self._sender = sender
        #: The publisher's sequence number for this topic, from 1.
        self.seq = seq
        self._time_ns = time_ns
        #: bytes if bytes were published, otherwise the decoded msgpack object.
        self.data = data

    @property
    def topic(self) -> str:
        """The full topic the message was published on."""
        return self._frame[: self._topic_end].decode("utf-8", "replace")

    @property
    def sender(self) -> str:
        """The publishing node's id (hex)."""
        return self._sender.hex()

    @property
    def timestamp(self) -> float:
        """When it was published: seconds since the epoch, publisher's clock."""
        return self._time_ns / 1e9

    def __repr__(self) -> str:
        return f"Message(topic={self.topic!r}, sender={self.sender[:8]}, seq={self.seq})"
