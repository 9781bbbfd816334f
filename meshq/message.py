"""A received publish/subscribe message."""

from __future__ import annotations

import struct

__all__ = ["Message"]

# Offsets after a data frame's topic terminator (docs/PROTOCOL.md, data
# messages): version u8, sender 16 bytes, flags u8, sequence u64, time u64.
_SENDER_START = 2
_SENDER_END = _SENDER_START + 16
_TIME_START = _SENDER_END + 1 + 8
_TIME = struct.Struct(">Q")


class Message:
    """One message received by a subscription.

    Only what every consumer needs is kept apart: the payload and the
    sequence number. ``topic``, ``sender`` and ``timestamp`` are read from
    the frame when asked for: a subscriber makes one of these per message,
    so each field it does not set is time saved on the hot path.
    Subscription.recv also makes them without ``__init__`` (its expected
    frame, meshq/subscription.py): a new field must be set there too.
    """

    __slots__ = ("_frame", "_topic_end", "data", "seq")

    def __init__(self, frame: bytes, topic_end: int, seq: int, data: object) -> None:
        self._frame = frame
        self._topic_end = topic_end
        #: The publisher's sequence number for this topic, from 1.
        self.seq = seq
        #: bytes if bytes were published, otherwise the decoded msgpack object.
        self.data = data

    @property
    def topic(self) -> str:
        """The full topic the message was published on."""
        return self._frame[: self._topic_end].decode("utf-8", "replace")

    @property
    def sender(self) -> str:
        """The publishing node's id (hex)."""
        end = self._topic_end
        return self._frame[end + _SENDER_START : end + _SENDER_END].hex()

    @property
    def timestamp(self) -> float:
        """When it was published: seconds since the epoch, publisher's clock."""
        (time_ns,) = _TIME.unpack_from(self._frame, self._topic_end + _TIME_START)
        return float(time_ns / 1e9)

    def __repr__(self) -> str:
        return f"Message(topic={self.topic!r}, sender={self.sender[:8]}, seq={self.seq})"
